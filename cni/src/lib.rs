//! weft's CNI plugin (installed as CNI type `weft`): plugs pods into the node's `weft` bridge.
//!
//! A shell in the project's sense: it moves data between the runtime (environment and stdin),
//! the kernel (netlink, in the host namespace and in the pod's) and the router (IPAM over the
//! API socket), and holds no mesh logic. Layers:
//!
//! - [`conf`]: the environment, the request configuration, results per CNI version;
//! - [`api`]: the router's IPAM request and response types (to move into `topology::api`);
//! - [`client`]: a small blocking HTTP/1.1 client over the unix socket;
//! - [`error`]: CNI error codes and the error object;
//! - [`plugin`]: the verbs.
//!
//! Supported CNI versions: 0.4.0, 1.0.0 and 1.1.0 (STATUS and GC in 1.1.0 configurations only).

pub mod api;
pub mod client;
pub mod conf;
pub mod error;
mod log;
mod netlink;
pub mod plugin;
pub mod queue;

pub use plugin::{Outcome, run};
