//! Serde status snapshot types (snake_case JSON), built by [`crate::Mesh::status`] and
//! serialised by the router's `weft report` and status API. Plain data, no behaviour.

use serde::{Deserialize, Serialize};

use crate::peer::PeerName;

pub mod ipam;
pub mod release_queue;

/// The whole topology status of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// Our name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// Our incarnation.
    pub uid: u64,
    /// Our record's version.
    pub version: u64,
    /// Every peer we hold a record for, ourselves included, sorted by name.
    pub peers: Vec<PeerStatus>,
    /// Our live control connections, sorted by peer name.
    pub connections: Vec<ConnectionStatus>,
    /// Our connection targets, sorted by address.
    pub targets: Vec<TargetStatus>,
    /// Unicast routes, sorted by destination.
    pub routes: Vec<RouteStatus>,
    /// Gossip counters.
    pub gossip: GossipStats,
}

/// One peer as its latest record describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's name.
    pub name: PeerName,
    /// Its nickname.
    pub nickname: String,
    /// Its incarnation.
    pub uid: u64,
    /// Its record's version.
    pub version: u64,
    /// The connections it announces.
    pub connections: Vec<PeerConnectionStatus>,
}

/// One connection a peer announces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerConnectionStatus {
    /// The remote peer.
    pub name: PeerName,
    /// The remote address as the announcing peer sees it.
    pub address: String,
    /// True when the announcing peer dialled.
    pub outbound: bool,
    /// True when established.
    pub established: bool,
}

/// One of our control connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// The shell's connection id.
    pub conn_id: u64,
    /// The remote peer.
    pub name: PeerName,
    /// Its nickname as it told us.
    pub nickname: String,
    /// Its address.
    pub address: String,
    /// True when we dialled.
    pub outbound: bool,
    /// Always `established` for connections the core knows about.
    pub state: String,
    /// Seconds since the connection came up.
    pub up_s: f64,
}

/// One connection target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The address.
    pub address: String,
    /// True for targets added by command, false for discovered ones.
    pub direct: bool,
    /// `pending`, `connecting`, `established`, `retrying` or `failed`.
    pub state: String,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Seconds until the next attempt, when retrying.
    pub next_attempt_in_s: Option<f64>,
    /// The peer last reached at this address.
    pub peer: Option<PeerName>,
}

/// One unicast route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The destination peer.
    pub destination: PeerName,
    /// The neighbour to send to.
    pub next_hop: PeerName,
}

/// Counters of control traffic, in message bytes as produced by [`crate::wire`] (the shell's
/// framing and sealing are not included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    /// Bytes handed out by `poll_transmit`.
    pub sent_bytes: u64,
    /// Messages handed out by `poll_transmit`.
    pub sent_messages: u64,
    /// Of which heartbeats.
    pub sent_heartbeats: u64,
    /// Bytes of bucket digests queued (anti-entropy).
    pub sent_bucket_digest_bytes: u64,
    /// Bytes of summaries queued (announcements and anti-entropy).
    pub sent_summary_bytes: u64,
    /// Bytes of requests queued.
    pub sent_request_bytes: u64,
    /// Bytes of updates queued.
    pub sent_update_bytes: u64,
    /// Bytes passed to `handle_control`.
    pub received_bytes: u64,
    /// Messages passed to `handle_control`.
    pub received_messages: u64,
    /// Messages rejected by the decoder.
    pub rejected_messages: u64,
    /// Messages dropped because a connection's send queue was full.
    pub dropped_messages: u64,
    /// Records merged that were new to us.
    pub records_applied: u64,
}
