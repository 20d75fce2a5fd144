//! weft's topology core: a sans-IO state machine for the mesh control plane.
//!
//! Given control messages, connection events and the current time, [`Mesh`] returns messages
//! to send, deadlines and decisions. It owns no socket, clock, thread or runtime: the router
//! (a tokio shell) and the simulator (`weft-sim mesh`, a discrete-event loop) drive the same
//! code. Layers, bottom up:
//!
//! - [`peer`]: identity ([`PeerName`], [`PeerUid`], [`ConnId`]) and the immutable, shared peer
//!   record [`PeerInfo`].
//! - [`wire`]: the versioned binary encoding of heartbeats and gossip (docs/PROTOCOL.md,
//!   "Topology gossip"), with bounded lengths and a cheap error type.
//! - [`channel`]: the one-byte channel of each control message (hello, gossip, IPAM,
//!   settings, fastdp) and the hello.
//! - [`peers`]: the peer table, the idempotent and commutative merge, view digests, garbage
//!   collection of unreachable peers.
//! - [`routes`]: unicast next hops and broadcast trees over symmetric established connections.
//! - [`targets`]: which addresses to dial and the back-off between attempts.
//! - [`mesh`]: the engine tying them together, with heartbeats and gossip scheduling.
//! - [`settings`]: the mesh-wide encryption setting (gossiped record, merge, per-peer seal
//!   decision).
//! - [`fastdp`]: the per-peer fastdp/sleeve decision (probe hysteresis) and the fastdp
//!   announcement message.
//! - [`ipam`]: the pod address allocator shared by all routers (a ring CRDT).
//! - [`sleeve`]: the sleeve's datagram codec, chunking, reassembly and path MTU search.
//! - [`mac`]: the MAC → peer learning table used by the data plane.
//! - [`dataplane`]: the forwarding rules the sleeve applies to every frame and datagram
//!   ([`dataplane::Forwarder`] over a [`dataplane::ForwardingTable`]).
//! - [`api`]: serde status types for `weft status` and `weft report`.
//! - [`netfilter`]: the nftables rules weft owns (masquerade), their netlink encoding and the
//!   reconcile from what the kernel holds.
//! - [`admission`]: who may open a control connection, judged before the handshake.
//! - [`kube`]: peer discovery from Kubernetes Node objects: the API's JSON decoded, and the
//!   pure reconcile of nodes into connect, forget and rmpeer actions.
//! - [`cluster`]: the namespaces, pods and NetworkPolicies weft follows, as plain values with
//!   the API's defaults applied, and the [`cluster::ClusterView`] a policy engine reads.
//! - [`policy`]: NetworkPolicy enforcement; [`policy::reference::allowed`], the reference
//!   evaluator (straight from the API text) the compiled rules are tested against.
//!
//! Short peer IDs are not used on the topology wire; the data plane may derive its own (at
//! least 16 bits) later.

pub mod admission;
pub mod api;
pub mod channel;
pub mod cluster;
pub mod dataplane;
pub mod fastdp;
pub mod ipam;
pub mod kube;
pub mod mac;
pub mod mesh;
pub mod netfilter;
pub mod peer;
pub mod peers;
pub mod policy;
pub mod routes;
pub mod settings;
pub mod sleeve;
pub mod targets;
pub mod wire;

pub use mesh::{CloseReason, Config, Connection, Event, Mesh};
pub use peer::{
    ConnId, ConnectionSummary, PeerInfo, PeerName, PeerNames, PeerUid, Record, RecordCache,
    RecordKey,
};
