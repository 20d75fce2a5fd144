//! `weft-sim`: the deterministic mesh simulator (`mesh`), the data-plane simulator
//! (`dataplane`), the network-namespace lab (`lab`, and `demo` on it), the benchmarks
//! (`bench`), forged underlay traffic for hostile-input tests and benches (`flood`), and a
//! stand-in Kubernetes API server for tests and the lab (`kubeapi`), and the upstream
//! NetworkPolicy e2e model on the lab (`netpol`).
//!
//! The simulator drives many `topology` cores in one process on a virtual clock; the lab runs
//! real `weft` routers in network namespaces on one machine.

pub mod bench;
pub mod dataplane;
pub mod demo;
pub mod flood;
pub mod ipam;
pub mod kubeapi;
pub mod lab;
pub mod mesh;
pub mod netpol;
pub mod scale;
