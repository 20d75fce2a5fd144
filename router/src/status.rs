//! The router's status snapshot: what `weft status` renders and `weft report` prints as JSON.
//!
//! The daemon loop owns the engine; after each tick it builds a [`RouterStatus`] and publishes it
//! through a [`StatusPublisher`] (STYLE.md §1.5). The API and metrics servers read the latest
//! snapshot through a [`StatusReader`] and never touch the engine. A snapshot is immutable once
//! published, so readers share it behind an `Arc` without locking.
//!
//! JSON keys are snake_case (DESIGN.md, "Interfaces others depend on"); this struct is the body
//! of `GET /report`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What a section that a later piece of work fills says until then.
pub const IPAM_NOT_AVAILABLE: &str = "not available yet: provided by the IPAM work";
/// What rmpeer says about reclaiming the removed peer's addresses until IPAM exists.
pub const IPAM_RECLAIM_NOT_AVAILABLE: &str =
    "IPAM reclaim not available yet: provided by the IPAM work";
/// What the per-datapath counters say until the data planes exist.
pub const DATAPATH_COUNTERS_NOT_AVAILABLE: &str =
    "not available yet: provided by the fastdp and sleeve data-plane work";

/// A full snapshot of one router's state, as the daemon loop last published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// The weft version of this router (`CARGO_PKG_VERSION`).
    pub version: String,
    /// True once the engine runs and IPAM has given this node its gateway address (so it holds
    /// the ring and space for pods) and is not fenced: see [`readiness`].
    pub ready: bool,
    /// Why the router is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    /// This peer's name, `aa:bb:cc:dd:ee:ff`.
    pub name: String,
    /// This peer's nickname (the host name by default).
    pub nickname: String,
    /// The control protocol and the versions this router speaks.
    pub protocol: ProtocolStatus,
    /// The TCP/UDP control and sleeve port.
    pub port: u16,
    /// Mesh encryption.
    pub encryption: EncryptionStatus,
    /// Whether the router connects to peers it learns from gossip.
    pub peer_discovery: bool,
    /// Subnets whose peers are trusted to carry traffic unencrypted, as CIDR strings.
    pub trusted_subnets: Vec<String>,
    /// Addresses the router was asked to connect to (`--peers`, peers file, `weft connect`).
    pub targets: Vec<TargetStatus>,
    /// This router's connections, live or being dialled.
    pub connections: Vec<ConnectionStatus>,
    /// Every peer this router knows, itself included, with the connections each reports.
    pub peers: Vec<PeerStatus>,
    /// Unicast routes: the next hop toward each reachable peer other than this router.
    pub routes: Vec<RouteStatus>,
    /// IPAM state; `None` until the IPAM work provides it ([`IPAM_NOT_AVAILABLE`]).
    pub ipam: Option<IpamStatus>,
    /// Frame counters per data path; `None` until the data planes exist
    /// ([`DATAPATH_COUNTERS_NOT_AVAILABLE`]).
    pub datapaths: Option<Vec<DatapathCounters>>,
    /// The sleeve's own counters (what it left to fastdp, delivered, dropped and why, send
    /// and TAP errors); absent without a sleeve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleeve: Option<SleeveCounters>,
    /// weft's nftables rules (masquerade), the node's sysctls and the underlay MTU; absent
    /// when the router manages no devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netfilter: Option<crate::nft::NetfilterStatus>,
    /// The link to the Kubernetes API (watches, the node condition); absent without
    /// Kubernetes settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kube::health::KubeStatus>,
}

/// The control protocol name and version range, shown as `weft 1` or `weft 1..2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolStatus {
    /// Protocol name, `weft`.
    pub name: String,
    /// Lowest protocol version spoken.
    pub min_version: u32,
    /// Highest protocol version spoken.
    pub max_version: u32,
}

/// Mesh encryption state (`GET /encryption`, and `encryption` in `GET /report`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionStatus {
    /// True when mesh encryption is on (traffic outside trusted subnets is sealed).
    pub enabled: bool,
    /// True when a password admits peers (`--password-file`); turning encryption off then
    /// needs proof of it. The password itself never appears anywhere in status.
    pub password_set: bool,
    /// The version of the mesh-wide setting (0: the routers' `--encryption` flags).
    #[serde(default)]
    pub version: u64,
    /// The uid (16 hex digits) of the router that made this version.
    #[serde(default)]
    pub origin: String,
    /// This router's uid: the origin of the next version a change made here would carry.
    #[serde(default)]
    pub local_origin: String,
    /// How many times the setting changed on this router since it started.
    #[serde(default)]
    pub changes: u64,
    /// Setting records refused because their password proof was missing or wrong.
    #[serde(default)]
    pub rejected: u64,
    /// Each established connection: sealed, plain or changing over, and why.
    #[serde(default)]
    pub connections: Vec<ConnectionEncryption>,
}

/// One connection's encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEncryption {
    /// The remote peer's name.
    pub remote_name: String,
    /// The remote peer's nickname.
    pub remote_nickname: String,
    /// The remote `ip:port`.
    pub remote_addr: String,
    /// Sealed, plain, or changing over.
    pub mode: EncryptionMode,
    /// Why (`mesh encryption on`, `trusted subnet 192.0.2.0/24`, `peer still sends plain`, ...).
    pub reason: String,
}

/// Whether a connection's traffic is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionMode {
    /// Sent sealed, and the peer's recent traffic is sealed too.
    Sealed,
    /// Sent authenticated but in clear, and the peer's recent traffic too.
    Plain,
    /// Switched moments ago, or the peer still sends the other mode.
    Changing,
}

impl EncryptionMode {
    /// Every mode, in label order.
    pub const ALL: [Self; 3] = [Self::Changing, Self::Plain, Self::Sealed];

    /// Returns the mode's word as status and metrics print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sealed => "sealed",
            Self::Plain => "plain",
            Self::Changing => "changing",
        }
    }
}

/// One connection target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The address as given (`host` or `host:port`).
    pub addr: String,
    /// Where the dialling of this target stands.
    pub state: TargetState,
    /// The last dial or handshake error, if any.
    pub last_error: Option<String>,
    /// Dial attempts so far.
    pub attempts: u32,
    /// Time until the next attempt, when one is scheduled.
    pub next_attempt_in_ms: Option<u64>,
}

/// The dialling state of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Being dialled for the first time.
    Connecting,
    /// Connected to its peer.
    Established,
    /// Last attempt failed; waiting out the back-off.
    Failed,
    /// Not dialled yet.
    Pending,
    /// Being dialled again after a failure.
    Retrying,
}

/// One connection of this router, live or being dialled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// True when this router dialled the connection.
    pub outbound: bool,
    /// The remote `ip:port`.
    pub remote_addr: String,
    /// The remote peer's name, once the handshake told it.
    pub remote_name: Option<String>,
    /// The remote peer's nickname, once the handshake told it.
    pub remote_nickname: Option<String>,
    /// Where the connection stands.
    pub state: ConnectionState,
    /// The last error on this connection or its dialling.
    pub last_error: Option<String>,
    /// Time until the next dial, for a failed connection that will be retried.
    pub next_attempt_in_ms: Option<u64>,
    /// The data path carrying this peer's traffic, once chosen.
    pub datapath: Option<Datapath>,
    /// Why this peer is on its data path (mostly: why it is on the sleeve).
    pub datapath_reason: Option<String>,
    /// True when traffic to this peer is sealed.
    pub encrypted: bool,
    /// The pod MTU verified on this connection's data path.
    pub mtu: Option<u32>,
    /// The largest underlay packet the sleeve's path MTU search verified toward this peer
    /// (IP and UDP headers included), once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
}

/// The state of a connection, in Weave's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Dialling for the first time.
    Connecting,
    /// Handshake done and the data path verified.
    Established,
    /// The last attempt failed; waiting out the back-off.
    Failed,
    /// TCP up, handshake or data path not yet verified.
    Pending,
    /// Dialling again after a failure.
    Retrying,
}

/// A data path between two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Datapath {
    /// Kernel VXLAN.
    Fastdp,
    /// weft's userspace UDP tunnel.
    Sleeve,
}

/// A peer as gossip describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's name.
    pub name: String,
    /// The peer's nickname.
    pub nickname: String,
    /// The peer's unique id for this incarnation.
    pub uid: u64,
    /// The version of the peer's topology entry.
    pub version: u64,
    /// The connections the peer reports.
    pub connections: Vec<PeerConnStatus>,
}

/// One connection as a peer reports it in gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConnStatus {
    /// The name of the peer at the other end.
    pub remote_name: String,
    /// The nickname of the peer at the other end.
    pub remote_nickname: String,
    /// The remote `ip:port` as the reporting peer sees it.
    pub addr: String,
    /// True when the reporting peer dialled it.
    pub outbound: bool,
    /// True when the reporting peer considers it established.
    pub established: bool,
}

/// One unicast route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The destination peer's name.
    pub destination: String,
    /// The name of the directly connected peer that traffic to `destination` goes through
    /// (the destination itself when it is a neighbour).
    pub next_hop: String,
}

/// IPAM state, filled by the IPAM work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamStatus {
    /// A one-line state (`ready`, `awaiting consensus (quorum: 3, known: 2)`, ...).
    pub status: String,
    /// The allocation range (`--ipalloc-range`).
    pub range: String,
    /// The default subnet for pods.
    pub default_subnet: String,
    /// Number of addresses in the range.
    pub range_num_ips: u64,
    /// Who owns how much of the range; this router first.
    pub owners: Vec<IpamOwner>,
    /// Conflicts and refused peers, one sentence each (`! ` lines of `weft status ipam`).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Our allocations that may be held twice (metric `weft_ipam_conflicting_addresses`).
    #[serde(default)]
    pub conflicting: u64,
}

/// One peer's share of the IPAM range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamOwner {
    /// The owning peer's name.
    pub name: String,
    /// The owning peer's nickname.
    pub nickname: String,
    /// Addresses owned.
    pub ips: u64,
    /// Addresses in use, known for this router only.
    pub active: Option<u64>,
    /// False when the owner is not in the mesh any more.
    pub reachable: bool,
}

/// Frame counters for one data path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathCounters {
    /// The data path.
    pub datapath: Datapath,
    /// Frames forwarded.
    pub frames: u64,
    /// Bytes forwarded.
    pub bytes: u64,
}

impl RouterStatus {
    /// Returns a status for a router whose engine has not published anything yet.
    pub fn starting(name: &str, nickname: &str, port: u16) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: false,
            not_ready_reason: None,
            name: name.to_owned(),
            nickname: nickname.to_owned(),
            protocol: ProtocolStatus {
                name: "weft".to_owned(),
                min_version: 1,
                max_version: 1,
            },
            port,
            encryption: EncryptionStatus {
                enabled: false,
                password_set: false,
                version: 0,
                origin: String::new(),
                local_origin: String::new(),
                changes: 0,
                rejected: 0,
                connections: Vec::new(),
            },
            peer_discovery: true,
            trusted_subnets: Vec::new(),
            targets: Vec::new(),
            connections: Vec::new(),
            peers: Vec::new(),
            routes: Vec::new(),
            ipam: None,
            datapaths: None,
            sleeve: None,
            netfilter: None,
            kubernetes: None,
        }
    }
}

impl TargetState {
    /// Returns the state's word as status prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Established => "established",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Retrying => "retrying",
        }
    }
}

impl ConnectionState {
    /// Every state, in the order `weave status` counts them.
    pub const STATUS_ORDER: [Self; 5] = [
        Self::Established,
        Self::Pending,
        Self::Retrying,
        Self::Failed,
        Self::Connecting,
    ];

    /// Returns the state's word as status prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Established => "established",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Retrying => "retrying",
        }
    }
}

impl Datapath {
    /// Every data path, in label order.
    pub const ALL: [Self; 2] = [Self::Fastdp, Self::Sleeve];

    /// Returns the data path's name as status and metrics print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fastdp => "fastdp",
            Self::Sleeve => "sleeve",
        }
    }
}

/// Creates the snapshot channel: the daemon loop keeps the publisher, the servers the readers.
pub fn status_channel(initial: RouterStatus) -> (StatusPublisher, StatusReader) {
    let (tx, rx) = watch::channel(Arc::new(initial));
    (StatusPublisher { tx }, StatusReader { rx })
}

/// The daemon loop's side of the snapshot channel.
#[derive(Debug)]
pub struct StatusPublisher {
    tx: watch::Sender<Arc<RouterStatus>>,
}

impl StatusPublisher {
    /// Replaces the published snapshot. Never blocks; readers see the new one on their next
    /// request.
    pub fn publish(&self, status: RouterStatus) {
        self.tx.send_replace(Arc::new(status));
    }

    /// Returns the snapshot last published.
    pub fn current(&self) -> Arc<RouterStatus> {
        Arc::clone(&self.tx.borrow())
    }

    /// Returns another reader of this channel.
    pub fn subscribe(&self) -> StatusReader {
        StatusReader {
            rx: self.tx.subscribe(),
        }
    }
}

/// A reader of the latest published snapshot. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusReader {
    rx: watch::Receiver<Arc<RouterStatus>>,
}

impl StatusReader {
    /// Returns the snapshot last published.
    pub fn current(&self) -> Arc<RouterStatus> {
        Arc::clone(&self.rx.borrow())
    }

    /// Waits until a published snapshot says the router is ready; false when the publisher
    /// is gone first.
    pub async fn wait_ready(&mut self) -> bool {
        self.rx.wait_for(|s| s.ready).await.is_ok()
    }
}

/// Whether the router can serve pods, and why not: `GET /ready` and the CNI plugin's STATUS
/// answer from it. Called from the engine's loop, so the mesh engine runs. IPAM must have given
/// this node its gateway address, which takes a ring (consensus or a peer's) and space of its
/// own, and must not be fenced off from a majority of the range's owners. And the data plane
/// must carry frames to every peer the router is connected to: `unrouted` names those the
/// topology has no route to yet (a new connection is routed once both ends' records list it,
/// a few hundred milliseconds). A router alone is ready.
pub fn readiness(gateway: bool, ipam_status: &str, unrouted: &[String]) -> (bool, Option<String>) {
    if !gateway {
        return (
            false,
            Some(format!("IPAM: {ipam_status} (no gateway address yet)")),
        );
    }
    if ipam_status == topology::ipam::Waiting::Fenced.as_str() {
        return (false, Some(format!("IPAM: {ipam_status}")));
    }
    if !unrouted.is_empty() {
        return (
            false,
            Some(format!(
                "data plane: no route yet to {}",
                unrouted.join(", ")
            )),
        );
    }
    (true, None)
}

#[cfg(test)]
mod tests {
    use super::readiness;

    #[test]
    fn ready_takes_a_gateway_no_fence_and_a_route_to_every_connected_peer() {
        assert_eq!(readiness(true, "ready", &[]), (true, None));
        let (ready, why) = readiness(false, "awaiting consensus", &[]);
        assert!(!ready && why.unwrap().contains("no gateway address yet"));
        let fenced = topology::ipam::Waiting::Fenced.as_str();
        assert!(!readiness(true, fenced, &[]).0);
        let (ready, why) = readiness(true, "ready", &["h2".to_owned(), "h3".to_owned()]);
        assert!(!ready);
        assert_eq!(why.unwrap(), "data plane: no route yet to h2, h3");
    }
}

/// The sleeve's counters beyond the metrics' forwarded and dropped ones.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleeveCounters {
    /// Frames read from the TAP.
    pub tap_frames: u64,
    /// Unicast frames read from the TAP.
    pub tap_unicast: u64,
    /// Unicast frames to a MAC of a peer on fastdp that the bridge still handed to the TAP
    /// (queued there before the MAC was pinned to `weft-vxlan`), carried by the sleeve.
    pub late_for_fastdp: u64,
    /// Sleeve broadcasts not delivered because their origin reaches this router by fastdp.
    pub rx_left_to_fastdp: u64,
    /// Frames sent as broadcast (unknown, broadcast or multicast destination MAC).
    pub tx_broadcast: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Frames written to the TAP.
    pub delivered: u64,
    /// Datagrams relayed to another peer.
    pub relayed: u64,
    /// Datagrams dropped, all reasons.
    pub dropped: u64,
    /// Datagrams that failed to open (bad tag, wrong key, stale epoch).
    pub dropped_decrypt: u64,
    /// Datagrams replayed or older than the replay window.
    pub dropped_replay: u64,
    /// Datagrams that did not parse (version, type, header bounds, unauthenticated type).
    pub dropped_malformed: u64,
    /// Datagrams from an address that is no connected peer.
    pub dropped_unknown_peer: u64,
    /// Frames or datagrams with no route to their destination.
    pub dropped_no_route: u64,
    /// MACs seen moving from one peer to another.
    pub mac_moves: u64,
    /// Send errors.
    pub send_errors: u64,
    /// TAP write errors.
    pub tap_write_errors: u64,
}
