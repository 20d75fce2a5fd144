//! The topology engine: one node's peers, connections, targets, gossip, heartbeats and routes.
//!
//! [`Mesh`] is a sans-IO state machine with the quinn shape (STYLE §1.2):
//!
//! - **Inputs** (`handle_*`): [`Mesh::handle_connection_up`], [`Mesh::handle_connection_down`],
//!   [`Mesh::handle_control`] (every control message: gossip and heartbeats),
//!   [`Mesh::handle_dial_started`], [`Mesh::handle_dial_failed`], [`Mesh::handle_timeout`].
//! - **Commands**: [`Mesh::add_target`], [`Mesh::forget_target`], [`Mesh::remove_peer`].
//! - **Outputs**, drained after every input in this order: [`Mesh::poll_transmit`] until None,
//!   then [`Mesh::poll_timeout`] (call `handle_timeout` when it passes), then
//!   [`Mesh::poll_event`] until None.
//! - **Getters** for status: [`Mesh::peers`], [`Mesh::connections`], [`Mesh::targets`],
//!   [`Mesh::routes`], [`Mesh::unicast_next_hop`], [`Mesh::broadcast_next_hops`],
//!   [`Mesh::stats`], [`Mesh::status`].
//!
//! Time is a monotonic `Instant` passed in; randomness comes from the seed given to
//! [`Mesh::new`]. The same inputs in the same order give the same outputs.
//!
//! # Gossip
//!
//! Each node owns one record (its connection list) and bumps its version on every change.
//! News travels as *announcements* (summaries of name, uid, version) to every neighbour except
//! those that announced the same version to us, batched every `gossip_interval`; a receiver
//! that lacks the version *requests* it and gets the record in an *update*. Every heartbeat
//! carries the sender's view digest; a digest that has differed for `anti_entropy_delay`
//! starts anti-entropy: 64 bucket digests, then complete summaries of the differing buckets,
//! then requests and updates both ways. A new connection starts with the same exchange over
//! every differing bucket (the full-state exchange). At steady state only heartbeats flow, so
//! the bytes per node per second depend on the node's degree, not on the mesh size.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::api;
use crate::peer::{
    ConnId, ConnectionSummary, PeerInfo, PeerName, PeerNames, PeerUid, Record, RecordCache,
    RecordKey,
};
use crate::peers::{Applied, Peers};
use crate::routes::Routes;
use crate::targets::{Backoff, Target, TargetState, Targets};
use crate::wire::{self, BUCKETS, ENTRY_LEN, Entry, Message};

/// Engine settings. [`Config::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our name.
    pub name: PeerName,
    /// Our nickname (truncated to 255 bytes on the wire).
    pub nickname: String,
    /// The most control connections we keep or dial (default 100).
    pub conn_limit: usize,
    /// Dial addresses learnt from gossip (default true).
    pub discovery: bool,
    /// The control port peers listen on; used for addresses discovered from inbound
    /// connections, whose source port is ephemeral (default 6783).
    pub listen_port: u16,
    /// Heartbeat period on every connection (default 500 ms).
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is closed (default 1.5 s).
    pub heartbeat_timeout: Duration,
    /// Batching delay of announcements (default 50 ms).
    pub gossip_interval: Duration,
    /// How many connections (by lowest edge hash) each peer picks for announcements; the
    /// announcement graph is the union of every peer's picks. 0 floods over every connection
    /// (default 2: the union of two picks per peer is connected with high probability, like a
    /// random 2-out graph, and anti-entropy repairs what it misses; 3 cost a fifth more
    /// summary bytes and CPU at 2,000 nodes for 0.2 s faster cold-start convergence).
    pub announce_degree: usize,
    /// Least time between two versions of our own record, and how long added connections
    /// wait to be published together (default 300 ms; Weave coalesces for 1 s).
    pub own_update_interval: Duration,
    /// How long a neighbour's digest must differ before anti-entropy starts (default 1 s).
    pub anti_entropy_delay: Duration,
    /// Least time between two anti-entropy rounds on one connection (default 2 s).
    pub anti_entropy_interval: Duration,
    /// Most summary bytes one periodic anti-entropy round sends (default 16 KiB).
    pub anti_entropy_budget: usize,
    /// How long a request is awaited before the record may be requested again (default 1 s).
    pub request_timeout: Duration,
    /// Debounce of route recalculation; None leaves routes to [`Mesh::recalculate_routes`]
    /// (default 100 ms).
    pub route_recalc_delay: Option<Duration>,
    /// Delay before removing peers orphaned by a removed connection (default 50 ms).
    pub gc_delay: Duration,
    /// Least time between searches for cut-off components, and the delay before collecting
    /// orphans that arrived as such (default 1 s).
    pub gc_interval: Duration,
    /// How long the records of peers cut off from us are kept: peers we cannot reach but that
    /// records we hold still list, as after a network split or when several neighbouring
    /// peers fail together. A peer that fails alone is listed by nobody once its neighbours
    /// notice, and goes within `gc_delay`. Kept, a split that heals costs only the peers' new
    /// versions: no fetch of every record of the other side and no full exchange with the
    /// peers we reconnect to (default 60 s).
    pub cut_off_ttl: Duration,
    /// Dial back-off (default 1 s × 1.5ⁿ, capped at 60 s, ±50 % jitter).
    pub backoff: Backoff,
    /// How long a dial may take before the target is retried (default 30 s).
    pub dial_timeout: Duration,
    /// Most bytes queued for one connection; beyond it messages are dropped and counted
    /// (anti-entropy repairs what they carried) (default 1 MiB).
    pub max_queue_bytes: usize,
    /// How long a collected peer's last record is remembered; older or equal records of it
    /// are refused meanwhile, so stale copies held by slower neighbours cannot bring it back
    /// (default 10 s).
    pub tombstone_ttl: Duration,
    /// Emit [`Event::PeerAdded`], [`Event::PeerRemoved`], [`Event::PeerCutOff`] and
    /// [`Event::PeerBack`] (default true).
    pub peer_events: bool,
    /// An optional intern table shared between engines in one process.
    pub record_cache: Option<RecordCache>,
    /// An optional name interner shared between engines in one process (the peer table is
    /// indexed by it); None makes one per engine. Give engines that share a `record_cache`
    /// the same interner too, or each record's memoised indices serve only one of them.
    pub peer_names: Option<PeerNames>,
    /// The first version of our own record (default 1). The router passes its start time in
    /// milliseconds since the epoch: versions advance at most once per
    /// `own_update_interval`, far slower than the clock, so each incarnation's records
    /// outrank every earlier incarnation's whatever its uid, and a restarted peer is neither
    /// held off by a neighbour's tombstone of its last incarnation nor outranked by a stale
    /// copy of it.
    pub initial_version: u64,
}

impl Config {
    /// Returns the defaults for a node.
    pub fn new(name: PeerName, nickname: impl Into<String>) -> Self {
        Self {
            name,
            nickname: nickname.into(),
            conn_limit: 100,
            discovery: true,
            listen_port: 6783,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_millis(1500),
            gossip_interval: Duration::from_millis(50),
            own_update_interval: Duration::from_millis(300),
            announce_degree: 2,
            anti_entropy_delay: Duration::from_secs(1),
            anti_entropy_interval: Duration::from_secs(2),
            anti_entropy_budget: 16 * 1024,
            request_timeout: Duration::from_secs(1),
            route_recalc_delay: Some(Duration::from_millis(100)),
            gc_delay: Duration::from_millis(50),
            gc_interval: Duration::from_secs(1),
            cut_off_ttl: Duration::from_secs(60),
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            dial_timeout: Duration::from_secs(30),
            max_queue_bytes: 1 << 20,
            tombstone_ttl: Duration::from_secs(10),
            peer_events: true,
            record_cache: None,
            peer_names: None,
            initial_version: 1,
        }
    }
}

/// Something the shell must act on or may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Close this connection; the core has already forgotten it.
    CloseConnection {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Dial this address; report with `handle_dial_started`, then `handle_connection_up` or
    /// `handle_dial_failed`.
    Dial(SocketAddr),
    /// A peer record was added.
    PeerAdded(PeerName),
    /// A peer was forgotten (unreachable, or removed by command).
    PeerRemoved(PeerName),
    /// A peer is cut off from us: unreachable, but listed by records we hold (a network
    /// split). Its record is kept for [`Config::cut_off_ttl`], then it is removed
    /// ([`Event::PeerRemoved`]) unless it comes back first ([`Event::PeerBack`]).
    PeerCutOff(PeerName),
    /// A peer cut off from us was heard from again, or is reachable again.
    PeerBack(PeerName),
    /// The unicast routes changed.
    RoutesChanged,
}

/// Why the core asks to close a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The remote is ourselves.
    ConnectToSelf,
    /// The connection limit is reached.
    ConnectionLimit,
    /// Another connection to the same peer won the tie-break (the one dialled by the peer with
    /// the lower name; between two in the same direction, the older).
    Duplicate,
    /// Nothing arrived for `heartbeat_timeout`.
    HeartbeatTimeout,
    /// The peer was removed by command.
    PeerRemoved,
}

impl CloseReason {
    /// Returns a short description for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectToSelf => "cannot connect to ourselves",
            Self::ConnectionLimit => "connection limit reached",
            Self::Duplicate => "duplicate connection",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::PeerRemoved => "peer removed",
        }
    }
}

/// One of our live control connections.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The shell's id.
    pub id: ConnId,
    /// The remote peer.
    pub remote: PeerName,
    /// Its incarnation.
    pub remote_uid: PeerUid,
    /// Its nickname as it told us.
    pub nickname: String,
    /// Its address.
    pub addr: SocketAddr,
    /// True when we dialled.
    pub outbound: bool,
    /// When it came up.
    pub since: Instant,
    queued: usize,
    mismatch_since: Option<Instant>,
    last_anti_entropy: Option<Instant>,
}

/// The topology engine of one node. See the module documentation for the calling contract.
#[derive(Debug)]
pub struct Mesh {
    config: Config,
    rng: ChaCha8Rng,
    uid: PeerUid,
    version: u64,
    peers: Peers,
    conns: BTreeMap<ConnId, Connection>,
    by_peer: BTreeMap<PeerName, ConnId>,
    targets: Targets,
    /// Records changed since the last announcement batch, in no order; a name's position here
    /// plus one is its [`Peers::pending_mark`] (a mark naming a position held by another
    /// name's entry, or past the end, is left over from an earlier batch).
    pending: Vec<Pending>,
    /// The zero of the tick counts in the table's request marks ([`crate::peers::RequestMark`]).
    epoch: Instant,
    /// Reused buffers for name indices.
    scratch_idx: Vec<Option<u32>>,
    /// Bumped whenever `conns` changes.
    conns_gen: u64,
    /// When something last arrived on each connection of `conns`, by id: apart from the
    /// connections so that noting a receipt touches a few bytes.
    recv: Vec<(ConnId, Instant)>,
    /// The earliest receipt time of `recv` and its connection (inner None: no connection);
    /// outer None when it must be recomputed (see [`Mesh::oldest_recv`]).
    oldest_recv: Cell<Option<Option<(Instant, ConnId)>>>,
    /// Per connection (id order): remote, the key of the remote's record when last asked
    /// (None: not asked), and whether announcements go to it; valid for `announce_cache_gen`.
    announce_cache: Vec<AnnounceEntry>,
    announce_cache_gen: u64,
    announce_ids: Vec<(ConnId, PeerName)>,
    /// Reused by `flush`: each entry to announce and its position in `pending`.
    flush_buf: Vec<(Entry, u32)>,
    /// The tombstones' expiries in the order they were made (so by expiry), with their
    /// names' indices; the keys live in the peer table ([`Peers::tombstone_at`]). A tombstone
    /// counts until the prune that finds it expired, as a map pruned at those times would.
    tombstones: VecDeque<(u32, Instant)>,
    next_tombstone_prune: Instant,
    transmit: VecDeque<(ConnId, Vec<u8>)>,
    events: VecDeque<Event>,
    routes: Routes,
    last_now: Instant,
    next_heartbeat: Instant,
    flush_at: Option<Instant>,
    recalc_at: Option<Instant>,
    orphan_gc_at: Option<Instant>,
    component_gc_at: Option<Instant>,
    last_component_gc: Option<Instant>,
    publish_at: Option<Instant>,
    last_publish: Option<Instant>,
    unpublished_since: Option<Instant>,
    unpublished_removal: bool,
    /// Peers we lost a connection to, and when (forgotten on reconnection or after
    /// `backoff.max`): while one of them is alive by gossip and not reconnected, additions to
    /// our record wait for it (see [`Mesh::rebuild_own`]).
    former: BTreeMap<PeerName, Instant>,
    /// When our connections last changed.
    last_change: Instant,
    component_pending: bool,
    /// Orphans found unreachable by the last collection, sorted.
    unreachable_suspects: Vec<PeerName>,
    /// Peers cut off from us (see [`Config::cut_off_ttl`]) by table index, sorted, each with
    /// the engine second (since `epoch`) in which a collection first found it so.
    cut_off: Vec<(u32, u32)>,
    /// True once a cut-off peer was heard from again (a newer record of it, or a connection
    /// to it) since the list last grew: the split is healing.
    cut_off_heard: bool,
    /// When a record from a neighbour last changed our table.
    last_news: Option<Instant>,
    stats: api::GossipStats,
}

impl Mesh {
    /// Makes an engine at time `now`; `seed` drives every random choice (uid, jitter).
    pub fn new(config: Config, now: Instant, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let uid = PeerUid(rng.r#gen::<u64>() | 1);
        let version = config.initial_version.max(1);
        let own = Arc::new(PeerInfo::new(
            config.name,
            uid,
            version,
            wire::truncate_utf8(&config.nickname, wire::MAX_NICKNAME_LEN).to_owned(),
            Vec::new(),
        ));
        let first_beat = config.heartbeat_interval.mul_f64(rng.gen_range(0.0..1.0));
        let mut mesh = Self {
            peers: Peers::with_names(
                Arc::clone(&own),
                config.peer_names.clone().unwrap_or_default(),
            ),
            routes: Routes::default(),
            config,
            rng,
            uid,
            version,
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            targets: Targets::default(),
            pending: Vec::new(),
            epoch: now,
            scratch_idx: Vec::new(),
            conns_gen: 0,
            oldest_recv: Cell::new(None),
            recv: Vec::new(),
            announce_cache: Vec::new(),
            announce_cache_gen: u64::MAX,
            announce_ids: Vec::new(),
            flush_buf: Vec::new(),
            tombstones: VecDeque::new(),
            next_tombstone_prune: now,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            last_now: now,
            next_heartbeat: now + first_beat,
            flush_at: None,
            recalc_at: None,
            orphan_gc_at: None,
            component_gc_at: None,
            last_component_gc: None,
            publish_at: None,
            last_publish: None,
            unpublished_since: None,
            unpublished_removal: false,
            former: BTreeMap::new(),
            last_change: now,
            component_pending: false,
            unreachable_suspects: Vec::new(),
            cut_off: Vec::new(),
            cut_off_heard: false,
            last_news: None,
            stats: api::GossipStats::default(),
        };
        if mesh.config.route_recalc_delay.is_some() {
            mesh.recalculate_routes();
        }
        mesh
    }

    // ---- getters ----

    /// Returns our name.
    pub fn name(&self) -> PeerName {
        self.config.name
    }

    /// Returns our incarnation.
    pub fn uid(&self) -> PeerUid {
        self.uid
    }

    /// Returns our record's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Returns the settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Returns the peer table (our own record included).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Returns our live connections in id order.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values()
    }

    /// Returns the connection to `peer`, if any.
    pub fn connection_to(&self, peer: PeerName) -> Option<&Connection> {
        self.by_peer.get(&peer).and_then(|id| self.conns.get(id))
    }

    /// Returns the connection targets.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Returns the routes as of the last recalculation.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Returns the neighbour to send to for `dst` (as of the last recalculation).
    pub fn unicast_next_hop(&self, dst: PeerName) -> Option<PeerName> {
        self.routes.unicast_next_hop(dst)
    }

    /// Returns the neighbours to forward a broadcast from `origin` to (ourselves for frames we
    /// originate).
    pub fn broadcast_next_hops(&self, origin: PeerName) -> Vec<PeerName> {
        self.routes.broadcast_next_hops(origin)
    }

    /// Computes fresh routes from the current peer table without storing them.
    pub fn calculate_routes(&self) -> Routes {
        Routes::calculate(&self.peers, self.config.name)
    }

    /// Returns the record count and digest of our view (see [`Peers::digest`]).
    pub fn view_digest(&self) -> (u32, u64) {
        self.peers.digest()
    }

    /// Returns the gossip counters.
    pub fn stats(&self) -> api::GossipStats {
        self.stats
    }

    /// Returns a serialisable snapshot of everything above.
    pub fn status(&self, now: Instant) -> api::MeshStatus {
        let peers = self
            .peers
            .records()
            .into_iter()
            .map(|r| api::PeerStatus {
                name: r.name,
                nickname: r.nickname.clone(),
                uid: r.uid.0,
                version: r.version,
                connections: r
                    .connections
                    .iter()
                    .map(|c| api::PeerConnectionStatus {
                        name: c.remote,
                        address: c.addr.to_string(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let mut connections: Vec<api::ConnectionStatus> = self
            .conns
            .values()
            .map(|c| api::ConnectionStatus {
                conn_id: c.id.0,
                name: c.remote,
                nickname: c.nickname.clone(),
                address: c.addr.to_string(),
                outbound: c.outbound,
                state: "established".into(),
                up_s: now.saturating_duration_since(c.since).as_secs_f64(),
            })
            .collect();
        connections.sort_by_key(|c| c.name);
        let targets = self
            .targets
            .iter()
            .map(|t| {
                let (state, last_error, next) = match &t.state {
                    TargetState::Connecting { .. } | TargetState::Requested { .. } => {
                        ("connecting", None, None)
                    }
                    TargetState::Established { .. } => ("established", None, None),
                    TargetState::Failed { last_error } => {
                        ("failed", Some(last_error.clone()), None)
                    }
                    TargetState::Pending => ("pending", None, None),
                    TargetState::Retrying {
                        next_attempt,
                        last_error,
                    } => (
                        "retrying",
                        Some(last_error.clone()),
                        Some(next_attempt.saturating_duration_since(now).as_secs_f64()),
                    ),
                };
                api::TargetStatus {
                    address: t.addr.to_string(),
                    direct: t.direct,
                    state: state.into(),
                    attempts: t.attempts,
                    last_error,
                    next_attempt_in_s: next,
                    peer: t.peer,
                }
            })
            .collect();
        let routes = self
            .routes
            .unicast()
            .into_iter()
            .map(|(destination, next_hop)| api::RouteStatus {
                destination,
                next_hop,
            })
            .collect();
        api::MeshStatus {
            name: self.config.name,
            nickname: self.config.nickname.clone(),
            uid: self.uid.0,
            version: self.version,
            peers,
            connections,
            targets,
            routes,
            gossip: self.stats,
        }
    }

    // ---- inputs ----

    /// Reports a control connection that finished its handshake.
    ///
    /// The core may answer with [`Event::CloseConnection`] (ourselves, limit, duplicate).
    pub fn handle_connection_up(
        &mut self,
        now: Instant,
        conn: ConnId,
        remote: PeerName,
        remote_uid: PeerUid,
        nickname: &str,
        addr: SocketAddr,
        outbound: bool,
    ) {
        self.last_now = now;
        if remote == self.config.name {
            self.events.push_back(Event::CloseConnection {
                conn,
                reason: CloseReason::ConnectToSelf,
            });
            if let Some(t) = self.targets.get_mut(addr).filter(|_| outbound) {
                t.state = TargetState::Failed {
                    last_error: CloseReason::ConnectToSelf.as_str().into(),
                };
            }
            return;
        }
        if let Some(&old_id) = self.by_peer.get(&remote) {
            let old_outbound = self.conns.get(&old_id).is_some_and(|c| c.outbound);
            let lower_dials = self.config.name < remote;
            // Both ends keep the connection dialled by the lower name; same direction: the older.
            let keep_new = old_outbound != outbound && outbound == lower_dials;
            if keep_new {
                // Replaced without rebuilding our record in between: the peer never
                // disappears from it, so nobody sees a removal.
                self.events.push_back(Event::CloseConnection {
                    conn: old_id,
                    reason: CloseReason::Duplicate,
                });
                self.remove_conn(now, old_id, false);
            } else {
                self.events.push_back(Event::CloseConnection {
                    conn,
                    reason: CloseReason::Duplicate,
                });
                if let Some(t) = self.targets.get_mut(addr).filter(|_| outbound) {
                    t.state = TargetState::Established { conn: old_id };
                    t.peer = Some(remote);
                }
                // Additions may have been held for this dial.
                self.schedule_publish(now);
                return;
            }
        }
        if self.conns.len() >= self.config.conn_limit {
            self.events.push_back(Event::CloseConnection {
                conn,
                reason: CloseReason::ConnectionLimit,
            });
            let (b, rng) = (self.config.backoff, &mut self.rng);
            if let Some(t) = self.targets.get_mut(addr).filter(|_| outbound) {
                t.fail(now, CloseReason::ConnectionLimit.as_str(), b, rng);
            }
            return;
        }
        self.conns_gen += 1;
        self.oldest_recv.set(None);
        if let Err(pos) = self.recv.binary_search_by_key(&conn, |r| r.0) {
            self.recv.insert(pos, (conn, now));
        }
        self.conns.insert(
            conn,
            Connection {
                id: conn,
                remote,
                remote_uid,
                nickname: wire::truncate_utf8(nickname, wire::MAX_NICKNAME_LEN).to_owned(),
                addr,
                outbound,
                since: now,
                queued: 0,
                mismatch_since: None,
                last_anti_entropy: None,
            },
        );
        self.by_peer.insert(remote, conn);
        self.former.remove(&remote);
        let cut_off = self.is_cut_off(remote);
        if cut_off {
            self.heard_from_cut_off(now);
        }
        for t in self.targets.iter_mut() {
            let matches = if outbound {
                t.addr == addr
            } else {
                t.addr.ip() == addr.ip()
            };
            let idle = !matches!(
                t.state,
                TargetState::Established { .. } | TargetState::Failed { .. }
            );
            if matches && (idle || t.addr == addr) {
                t.state = TargetState::Established { conn };
                t.peer = Some(remote);
                t.connected_at = Some(now);
            }
        }
        self.rebuild_own(now, false);
        let (count, digest) = self.peers.digest();
        let mut hb = Vec::with_capacity(14);
        wire::encode_heartbeat(count, digest, &mut hb);
        self.send(conn, hb);
        // With a peer cut off from us, we hold the records of its side as they were at the
        // split, and its side ours: the versions the reconnecting peers publish replace
        // them, and a full exchange now would first fetch the other side's interim versions
        // (half of all records, after a split in two halves). Heartbeat digests still run, and
        // anti-entropy repairs what the new versions do not.
        if !cut_off {
            let mut bd = Vec::with_capacity(4 + 8 * BUCKETS);
            wire::encode_bucket_digest(true, self.peers.bucket_digests(), &mut bd);
            self.send(conn, bd);
        }
    }

    /// Reports that a control connection closed (for any reason, including our own request).
    pub fn handle_connection_down(&mut self, now: Instant, conn: ConnId, reason: &str) {
        self.last_now = now;
        let _ = reason;
        self.remove_conn(now, conn, true);
    }

    /// Handles one control message from a connection.
    ///
    /// # Errors
    ///
    /// Returns the decoder's error for a malformed message, which is dropped and counted; the
    /// shell may close the connection.
    pub fn handle_control(
        &mut self,
        now: Instant,
        conn: ConnId,
        bytes: &[u8],
    ) -> Result<(), wire::Error> {
        self.last_now = now;
        self.stats.received_bytes += bytes.len() as u64;
        self.stats.received_messages += 1;
        if let Some(parsed) = wire::UpdateView::parse(bytes) {
            let view = match parsed {
                Ok(v) => v,
                Err(e) => {
                    self.stats.rejected_messages += 1;
                    return Err(e);
                }
            };
            if !self.touch(now, conn) {
                return Ok(());
            }
            self.on_update(now, conn, view.records());
            return Ok(());
        }
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.rejected_messages += 1;
                return Err(e);
            }
        };
        if !self.touch(now, conn) {
            return Ok(());
        }
        match msg {
            Message::Heartbeat { count, digest } => self.on_heartbeat(now, conn, (count, digest)),
            Message::BucketDigest { full, buckets } => self.on_bucket_digest(conn, full, &buckets),
            Message::Summary { entries, .. } => self.on_summary(now, conn, &entries),
            Message::Request { names } => self.on_request(conn, &names),
            // Updates are handled above, through a view that decodes only what is kept.
            Message::Update { .. } => {}
        }
        Ok(())
    }

    /// Reports that the shell started dialling `addr` (after an [`Event::Dial`] or on its own).
    pub fn handle_dial_started(&mut self, now: Instant, addr: SocketAddr) {
        self.last_now = now;
        if let Some(t) = self.targets.get_mut(addr) {
            t.state = TargetState::Connecting { since: now };
        }
    }

    /// Reports that dialling or the handshake with `addr` failed; the core schedules a retry.
    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr, reason: &str) {
        self.last_now = now;
        let (b, rng) = (self.config.backoff, &mut self.rng);
        if let Some(t) = self.targets.get_mut(addr)
            && !matches!(
                t.state,
                TargetState::Established { .. } | TargetState::Failed { .. }
            )
        {
            t.fail(now, reason, b, rng);
        }
        // Additions may have been held for this dial.
        self.schedule_publish(now);
    }

    /// Runs whatever is due at `now`: heartbeats and their timeouts, announcement batches,
    /// garbage collection, route recalculation, dials.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        let timeout = self.config.heartbeat_timeout;
        if self
            .oldest_recv()
            .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
        {
            let dead: Vec<ConnId> = self
                .recv
                .iter()
                .filter(|r| now.saturating_duration_since(r.1) >= timeout)
                .map(|r| r.0)
                .collect();
            for id in dead {
                self.close(now, id, CloseReason::HeartbeatTimeout);
            }
        }
        if now >= self.next_heartbeat {
            while self.next_heartbeat <= now {
                self.next_heartbeat += self.config.heartbeat_interval;
            }
            let (count, digest) = self.peers.digest();
            let ids: Vec<ConnId> = self.conns.keys().copied().collect();
            for id in ids {
                let mut hb = Vec::with_capacity(14);
                wire::encode_heartbeat(count, digest, &mut hb);
                self.stats.sent_heartbeats += 1;
                self.send(id, hb);
            }
            if now >= self.next_tombstone_prune {
                while let Some(&(idx, expiry)) = self.tombstones.front()
                    && expiry <= now
                {
                    self.tombstones.pop_front();
                    self.peers.drop_tombstone(idx);
                }
                if self.tombstones.is_empty() {
                    // Thousands after a partition: not kept for good by every engine.
                    self.tombstones = VecDeque::new();
                }
                self.next_tombstone_prune = now + self.config.tombstone_ttl / 8;
            }
        }
        if self.publish_at.is_some_and(|t| t <= now) {
            self.publish_own(now);
        }
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_at = None;
            self.flush();
        }
        if self.orphan_gc_at.is_some_and(|t| t <= now) {
            self.orphan_gc_at = None;
            let removed = self.peers.remove_dropped_orphans();
            self.after_removal(now, removed);
        }
        if self.component_gc_at.is_some_and(|t| t <= now) {
            self.component_gc_at = None;
            self.slow_gc(now);
        }
        if self.recalc_at.is_some_and(|t| t <= now) {
            self.recalc_at = None;
            self.recalculate_routes();
            if self.config.discovery {
                self.discover();
            }
        }
        self.drive_targets(now);
    }

    // ---- commands ----

    /// Adds a direct target: an address to stay connected to.
    pub fn add_target(&mut self, addr: SocketAddr) {
        self.targets.add(addr, true);
    }

    /// Forgets a target; an existing connection to it stays up.
    pub fn forget_target(&mut self, addr: SocketAddr) {
        self.targets.remove(addr);
    }

    /// Forgets a peer: closes our connection to it, drops discovered targets that reached it,
    /// and removes its record (which returns if the peer is alive and gossiped about).
    pub fn remove_peer(&mut self, now: Instant, peer: PeerName) {
        self.last_now = now;
        if let Some(&id) = self.by_peer.get(&peer) {
            self.close(now, id, CloseReason::PeerRemoved);
        }
        self.targets.retain(|_, t| t.direct || t.peer != Some(peer));
        // Forgotten on purpose: our additions do not wait for it to come back.
        self.former.remove(&peer);
        if let Some(rec) = self.peers.remove(peer) {
            self.after_removal(now, vec![(peer, rec.key())]);
        }
    }

    /// Recomputes the stored routes now, emitting [`Event::RoutesChanged`] if they differ.
    pub fn recalculate_routes(&mut self) {
        let fresh = self.calculate_routes();
        if fresh.unicast() != self.routes.unicast() {
            self.events.push_back(Event::RoutesChanged);
        }
        self.routes = fresh;
    }

    // ---- outputs ----

    /// Returns the next control message to send and its connection.
    pub fn poll_transmit(&mut self) -> Option<(ConnId, Vec<u8>)> {
        while let Some((id, bytes)) = self.transmit.pop_front() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.queued = c.queued.saturating_sub(bytes.len());
            self.stats.sent_bytes += bytes.len() as u64;
            self.stats.sent_messages += 1;
            return Some((id, bytes));
        }
        None
    }

    /// Returns when [`Mesh::handle_timeout`] must next be called, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut best: Option<(Instant, &'static str)> = None;
        let mut consider = |t: Option<Instant>, why: &'static str| {
            if let Some(t) = t
                && best.is_none_or(|(b, _)| t < b)
            {
                best = Some((t, why));
            }
        };
        consider(Some(self.next_heartbeat), "heartbeat");
        consider(
            self.oldest_recv()
                .map(|t| t + self.config.heartbeat_timeout),
            "heartbeat timeout",
        );
        consider(self.flush_at, "gossip batch");
        consider(self.publish_at, "own record update");
        consider(self.orphan_gc_at, "orphan gc");
        consider(self.component_gc_at, "component gc");
        consider(self.recalc_at, "route recalculation");
        // One pass over the targets: the next retry or dial deadline (as
        // `Targets::next_deadline`), how many dials are under way, whether one is pending.
        let (mut next, mut dialling, mut any_pending) = (None::<Instant>, 0usize, false);
        for t in self.targets.iter() {
            let due = match &t.state {
                TargetState::Retrying { next_attempt, .. } => Some(*next_attempt),
                TargetState::Requested { since } => {
                    dialling += 1;
                    Some(*since + self.config.dial_timeout)
                }
                TargetState::Connecting { .. } => {
                    dialling += 1;
                    None
                }
                TargetState::Pending => {
                    any_pending = true;
                    None
                }
                TargetState::Established { .. } | TargetState::Failed { .. } => None,
            };
            if let Some(d) = due
                && next.is_none_or(|n| d < n)
            {
                next = Some(d);
            }
        }
        consider(next, "target retry");
        // Pending targets are due at once, unless the connection limit holds them back (then
        // a connection going down, itself an input, frees a slot).
        let pending = self.conns.len() + dialling < self.config.conn_limit && any_pending;
        consider(pending.then_some(self.last_now), "target pending");
        best
    }

    /// Returns the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- message handlers ----

    fn on_heartbeat(&mut self, now: Instant, conn: ConnId, theirs: (u32, u64)) {
        let ours = self.peers.digest();
        let (delay, interval) = (
            self.config.anti_entropy_delay,
            self.config.anti_entropy_interval,
        );
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if theirs == ours {
            c.mismatch_since = None;
            return;
        }
        let since = *c.mismatch_since.get_or_insert(now);
        let due = c
            .last_anti_entropy
            .is_none_or(|t| now.saturating_duration_since(t) >= interval);
        // While news keeps arriving, announcements are doing the work and the digests differ
        // only because they are in flight; anti-entropy waits for a quiet `delay`, or at most
        // `QUIET_WAIT_FACTOR` delays, so that a mesh that never settles is repaired too.
        let mismatched = now.saturating_duration_since(since);
        let quiet = self
            .last_news
            .is_none_or(|t| now.saturating_duration_since(t) >= delay);
        if mismatched >= delay && due && (quiet || mismatched >= delay * QUIET_WAIT_FACTOR) {
            c.last_anti_entropy = Some(now);
            let mut bd = Vec::with_capacity(4 + 8 * BUCKETS);
            wire::encode_bucket_digest(false, self.peers.bucket_digests(), &mut bd);
            self.send(conn, bd);
        }
    }

    fn on_bucket_digest(&mut self, conn: ConnId, full: bool, theirs: &[u64; BUCKETS]) {
        let ours = self.peers.bucket_digests();
        let differing: Vec<usize> = (0..BUCKETS).filter(|&b| ours[b] != theirs[b]).collect();
        if differing.is_empty() {
            return;
        }
        // Both the exchange on a new connection (`full`) and the periodic one answer for as
        // many differing buckets as fit in the budget, from a random differing bucket on. A
        // node that lacks much (a partition heals) hears from several neighbours at once;
        // unbounded answers would each list the whole table, and announcements of what it
        // learns spread the rest.
        let _ = full;
        let start = self.rng.gen_range(0..differing.len());
        // The buckets that fit in the budget, chosen by their counts; then one pass over the
        // table collects only their entries (sorted by bucket, then name).
        let counts = self.peers.bucket_counts();
        let mut budget = self.config.anti_entropy_budget;
        let mut chosen: Vec<usize> = Vec::new();
        for k in 0..differing.len() {
            let b = differing[(start + k) % differing.len()];
            let bytes = counts[b] as usize * ENTRY_LEN;
            if !chosen.is_empty() && bytes > budget {
                break;
            }
            budget = budget.saturating_sub(bytes);
            chosen.push(b);
        }
        let all = self
            .peers
            .entries_in(chosen.iter().fold(0u64, |m, &b| m | 1 << b));
        let mut mask = 0u64;
        let mut entries: Vec<Entry> = Vec::new();
        for b in chosen {
            let lo = all.partition_point(|(x, _)| usize::from(*x) < b);
            let hi = all.partition_point(|(x, _)| usize::from(*x) <= b);
            let bucket = all.get(lo..hi).unwrap_or_default().iter().map(|(_, e)| *e);
            if mask != 0 && (entries.len() + bucket.len()) * ENTRY_LEN > SUMMARY_CHUNK_BYTES {
                self.send_summary(conn, mask, &entries);
                mask = 0;
                entries.clear();
            }
            mask |= 1 << b;
            entries.extend(bucket);
        }
        if mask != 0 {
            self.send_summary(conn, mask, &entries);
        }
    }

    fn on_summary(&mut self, now: Instant, conn: ConnId, entries: &[Entry]) {
        // Anti-entropy only pulls: both ends compare digests and send their own bucket digest,
        // so each end requests what it lacks. Pushing what the other end lacks would deliver
        // the same records once per neighbour that noticed, which after a partition heals is
        // the whole other half, many times over.
        if !self.conns.contains_key(&conn) {
            return;
        }
        let mut want: Vec<PeerName> = Vec::new();
        let mut bumped = false;
        let idxs = self.indices_of(entries.iter().map(|e| e.name));
        self.peers.prefetch(idxs.iter().flatten().copied());
        let (now_t, deadline_t) = (
            self.ticks(now),
            self.ticks(now + self.config.request_timeout),
        );
        for (e, &idx) in entries.iter().zip(&idxs) {
            let key = RecordKey {
                version: e.version,
                uid: e.uid,
            };
            if e.name == self.config.name {
                if e.uid != self.uid && e.version >= self.version {
                    self.version = e.version;
                    bumped = true;
                }
                continue;
            }
            let held =
                idx.and_then(|i| self.peers.key_at(i).or_else(|| self.peers.tombstone_at(i)));
            match held {
                Some(held) if held == key => {
                    if let Some(p) = idx.and_then(|i| self.pending_mut(i))
                        && p.key == key
                    {
                        p.excl.insert(conn);
                    }
                }
                Some(held) if held > key => {}
                Some(_) | None => {
                    let i = idx.unwrap_or_else(|| self.peers.names_interner().intern(e.name));
                    let req = self.peers.request_mark_mut(i);
                    let inflight = req.deadline > now_t && req.key >= key;
                    if !inflight {
                        req.key = key;
                        req.deadline = deadline_t;
                        want.push(e.name);
                    }
                }
            }
        }
        self.scratch_idx = recycle(idxs);
        if bumped {
            self.rebuild_own(now, false);
        }
        for chunk in want.chunks(wire::MAX_ENTRIES) {
            let mut out = Vec::with_capacity(wire::LIST_HEADER_LEN + chunk.len() * 6);
            wire::encode_request(chunk, &mut out);
            self.send(conn, out);
        }
    }

    fn on_request(&mut self, conn: ConnId, names: &[PeerName]) {
        let idxs = self.indices_of(names.iter().copied());
        self.peers.prefetch(idxs.iter().flatten().copied());
        // Encoded from the table in place: cloning each shared record's `Arc` to send it
        // was an atomic write to a line other threads' tables also hold.
        let peers = &self.peers;
        let msgs = encode_updates(
            idxs.iter()
                .filter_map(|i| peers.get_at((*i)?))
                .map(|r| &**r),
        );
        self.scratch_idx = recycle(idxs);
        for m in msgs {
            self.send(conn, m);
        }
    }

    fn on_update(&mut self, now: Instant, conn: ConnId, records: &[wire::RecordView<'_>]) {
        let mut changed = false;
        let mut removal = false;
        let mut bumped = false;
        let idxs = self.indices_of(records.iter().map(|v| v.name));
        self.peers.prefetch(idxs.iter().flatten().copied());
        if let Some(c) = &self.config.record_cache {
            c.prefetch_at(self.peers.names_interner(), idxs.iter().flatten().copied());
        }
        for (view, &idx) in records.iter().zip(&idxs) {
            let (name, key) = (
                view.name,
                RecordKey {
                    version: view.version,
                    uid: view.uid,
                },
            );
            if name == self.config.name {
                if view.uid != self.uid && view.version >= self.version {
                    self.version = view.version;
                    bumped = true;
                }
                continue;
            }
            if let Some(i) = idx
                && self.peers.request_mark(i).deadline != 0
            {
                let req = self.peers.request_mark_mut(i);
                if key >= req.key {
                    req.deadline = 0;
                }
            }
            // Most copies are not newer: the key decides without decoding the record; only an
            // equal key (which honest peers never send with other content) needs the content.
            let held = idx.and_then(|i| self.peers.key_at(i));
            let tombstone = idx.and_then(|i| self.peers.tombstone_at(i));
            if held.is_some_and(|h| h > key) || tombstone.is_some_and(|k| key <= k) {
                continue;
            }
            let names = self.peers.names_interner();
            let cache = self.config.record_cache.as_ref();
            let cached = cache.and_then(|c| c.lookup_at(view, names, idx));
            let rec = cached.unwrap_or_else(|| match cache {
                Some(c) => c.intern_at(view.decode(), names, idx),
                None => Record::from(view.decode()),
            });
            if held == Some(key) && !self.peers.is_newer(&rec) {
                continue;
            }
            let has_connections = !rec.connections.is_empty();
            match self.peers.apply(rec) {
                Applied::Added => {
                    if self.config.peer_events {
                        self.events.push_back(Event::PeerAdded(name));
                    }
                    self.peer_reappeared(now, name);
                }
                Applied::Replaced {
                    removed_connections,
                } => {
                    removal |= removed_connections;
                    if !self.cut_off.is_empty()
                        && !self.cut_off_heard
                        && idx.is_some_and(|i| self.cut_off_at(i))
                    {
                        self.heard_from_cut_off(now);
                    }
                }
                Applied::Ignored => continue,
            }
            self.stats.records_applied += 1;
            changed = true;
            // A peer without connections is unreachable for everyone but its neighbours (who
            // hear it directly); spreading it would only add a version to every table.
            let Some(i) = idx.or_else(|| self.peers.index_of(name)) else {
                continue;
            };
            if has_connections {
                self.mark_changed(now, i, Some(conn));
            } else if let Some(key) = self.peers.key_at(i)
                && let Some(p) = self.pending_mut(i)
            {
                // Not spread itself, but a batch announces the key held.
                p.key = key;
            }
        }
        self.scratch_idx = recycle(idxs);
        if bumped {
            self.rebuild_own(now, false);
        }
        if changed {
            self.last_news = Some(now);
            self.topology_changed(now, removal);
        }
    }

    // ---- helpers ----

    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let max = self.config.max_queue_bytes;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.queued + bytes.len() > max {
            self.stats.dropped_messages += 1;
            return;
        }
        c.queued += bytes.len();
        let len = bytes.len() as u64;
        match bytes.get(1).copied() {
            Some(wire::kind::BUCKET_DIGEST) => self.stats.sent_bucket_digest_bytes += len,
            Some(wire::kind::SUMMARY) => self.stats.sent_summary_bytes += len,
            Some(wire::kind::REQUEST) => self.stats.sent_request_bytes += len,
            Some(wire::kind::UPDATE) => self.stats.sent_update_bytes += len,
            Some(_) | None => {}
        }
        self.transmit.push_back((conn, bytes));
    }

    fn send_summary(&mut self, conn: ConnId, complete: u64, entries: &[Entry]) {
        let mut out = Vec::with_capacity(wire::SUMMARY_HEADER_LEN + entries.len() * ENTRY_LEN);
        wire::encode_summary(complete, entries, &mut out);
        self.send(conn, out);
    }

    /// Returns the interner index of each name (None for a name never interned) in the reused
    /// buffer; the caller gives it back with `self.scratch_idx = recycle(idxs)`.
    fn indices_of(&mut self, names: impl Iterator<Item = PeerName>) -> Vec<Option<u32>> {
        let mut idxs = std::mem::take(&mut self.scratch_idx);
        idxs.clear();
        self.peers.names_interner().get_many(names, &mut idxs);
        idxs
    }

    /// Notes that the record for `name` changed, to be announced to every neighbour except
    /// `from` (which sent it) at the next batch.
    fn mark_changed(&mut self, now: Instant, idx: u32, from: Option<ConnId>) {
        let Some(key) = self.peers.key_at(idx) else {
            return;
        };
        let entry = match self.pending_mut(idx) {
            Some(p) => p,
            None => {
                self.pending.push(Pending {
                    idx,
                    key,
                    excl: ConnSet::default(),
                });
                let pos = self.pending.len();
                self.peers
                    .set_pending_mark(idx, u32::try_from(pos).unwrap_or(u32::MAX));
                let Some(p) = self.pending.last_mut() else {
                    return;
                };
                p
            }
        };
        if entry.key != key {
            entry.key = key;
            entry.excl = ConnSet::default();
        }
        if let Some(f) = from {
            entry.excl.insert(f);
        }
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.config.gossip_interval);
        }
    }

    /// Notes that something arrived on `conn`; false when it is not one of ours.
    fn touch(&mut self, now: Instant, conn: ConnId) -> bool {
        let Ok(pos) = self.recv.binary_search_by_key(&conn, |r| r.0) else {
            return false;
        };
        self.recv[pos].1 = now;
        if self
            .oldest_recv
            .get()
            .is_none_or(|o| o.is_some_and(|(_, id)| id == conn))
        {
            self.oldest_recv.set(None);
        }
        true
    }

    /// Returns the earliest `last_recv` of our connections. Cached: receipts only move
    /// `last_recv` forward, so the minimum changes only when its own connection hears
    /// something or goes, or a connection is added.
    fn oldest_recv(&self) -> Option<Instant> {
        if let Some(o) = self.oldest_recv.get() {
            return o.map(|(t, _)| t);
        }
        let o = self
            .recv
            .iter()
            .map(|&(id, t)| (t, id))
            .min_by_key(|&(t, _)| t);
        self.oldest_recv.set(Some(o));
        o.map(|(t, _)| t)
    }

    /// Returns the tick count (nanoseconds since `epoch`) of `t`.
    fn ticks(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Returns the pending announcement of the record at `idx`, if any.
    ///
    /// A mark is valid only while the entry at its position is this name's: a batch leaves
    /// the marks it announced in place (clearing them cost a cache miss per record announced)
    /// and the next batch's entries take their positions.
    fn pending_mut(&mut self, idx: u32) -> Option<&mut Pending> {
        let pos = self.peers.pending_mark(idx).checked_sub(1)?;
        self.pending.get_mut(pos as usize).filter(|p| p.idx == idx)
    }

    /// Drops the pending announcement of the record at `idx`, if any.
    fn unpend(&mut self, idx: u32) {
        let Some(pos) = self.peers.pending_mark(idx).checked_sub(1) else {
            return;
        };
        let pos = pos as usize;
        if self.pending.get(pos).is_none_or(|p| p.idx != idx) {
            return;
        }
        self.peers.set_pending_mark(idx, 0);
        self.pending.swap_remove(pos);
        if let Some(moved) = self.pending.get(pos).map(|p| p.idx) {
            self.peers
                .set_pending_mark(moved, u32::try_from(pos + 1).unwrap_or(u32::MAX));
        }
    }

    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            self.pending = pending;
            return;
        }
        // Each entry from the pending entry's key (kept equal to the key held: a removal drops
        // the entry) and the interner's dense name list, touching neither the slot nor the
        // record (a cache miss each); the marks stay (see `pending_mut`). Sorted by name with
        // its position in `pending`, where its exclusions stay (a batch lists thousands after a
        // partition heals: 32 bytes each here, not a copy of the set).
        let mut current = std::mem::take(&mut self.flush_buf);
        current.clear();
        let peers = &self.peers;
        peers.names_interner().with_names(|names, _| {
            current.extend(pending.iter().enumerate().filter_map(|(pos, p)| {
                debug_assert_eq!(peers.key_at(p.idx), Some(p.key));
                let entry = Entry {
                    name: *names.get(p.idx as usize)?,
                    uid: p.key.uid,
                    version: p.key.version,
                };
                Some((entry, u32::try_from(pos).unwrap_or(u32::MAX)))
            }));
        });
        current.sort_unstable_by_key(|(e, _)| e.name);
        let ids = self.announce_targets();
        let mut entries: Vec<Entry> = Vec::with_capacity(current.len());
        for &(id, remote) in &ids {
            entries.clear();
            entries.extend(
                current
                    .iter()
                    .filter(|(e, pos)| {
                        e.name != remote
                            && !pending
                                .get(*pos as usize)
                                .is_some_and(|p| p.excl.contains(id))
                    })
                    .map(|(e, _)| *e),
            );
            for chunk in entries.chunks(SUMMARY_CHUNK_BYTES / ENTRY_LEN) {
                self.send_summary(id, 0, chunk);
            }
        }
        self.announce_ids = ids;
        self.flush_buf = recycle(current);
        self.pending = recycle(pending);
    }

    /// Returns the connections announcements go to (see [`Mesh::announces_to`]), in id
    /// order. Each answer is kept while our connections and the remote's record stay the
    /// same, which is most batches.
    fn announce_targets(&mut self) -> Vec<(ConnId, PeerName)> {
        let mut ids = std::mem::take(&mut self.announce_ids);
        ids.clear();
        let mut cache = std::mem::take(&mut self.announce_cache);
        if self.announce_cache_gen != self.conns_gen || cache.len() != self.conns.len() {
            cache.clear();
            cache.extend(self.conns.values().map(|c| (c.id, c.remote, None, false)));
            self.announce_cache_gen = self.conns_gen;
        }
        let idxs = self.indices_of(cache.iter().map(|e| e.1));
        for (entry, idx) in cache.iter_mut().zip(&idxs) {
            let key = idx.and_then(|i| self.peers.key_at(i));
            if entry.2 != Some(key) {
                *entry = (entry.0, entry.1, Some(key), self.announces_to(entry.1));
            }
            if entry.3 {
                ids.push((entry.0, entry.1));
            }
        }
        self.scratch_idx = recycle(idxs);
        self.announce_cache = cache;
        ids
    }

    /// Returns true when announcements go to `remote`: the connection is one of the
    /// `announce_degree` connections with the lowest edge hash at our end or, by the remote's
    /// record, at its end (an unknown record counts as yes; one that does not list us yet is
    /// read as if it did). Every peer floods over the union, a sparse
    /// subgraph that is connected with high probability; heartbeat digests run over every
    /// connection and repair what it misses.
    fn announces_to(&self, remote: PeerName) -> bool {
        let k = self.config.announce_degree;
        let me = self.config.name;
        if k == 0 || self.conns.len() <= k {
            return true;
        }
        let h = edge_hash(me, remote);
        if self
            .by_peer
            .keys()
            .filter(|&&p| edge_hash(me, p) < h)
            .count()
            < k
        {
            return true;
        }
        let Some(rec) = self.peers.get(remote) else {
            return true;
        };
        // A remote record that does not list us yet (a new connection, as after a partition
        // heals) still decides: its next version lists us too, and the connections it lists
        // with a lower edge hash stay lower. Counting such connections as picked by the remote
        // made every new connection an announcement path until the remote's next version
        // arrived: during a heal, twice the summaries per record applied.
        rec.connections
            .iter()
            .filter(|c| c.remote != me && edge_hash(remote, c.remote) < h)
            .take(k)
            .count()
            < k
    }

    /// Notes that our connections changed. Versions of our record are at least
    /// `own_update_interval` apart, and every version is a record that every peer fetches, so
    /// a burst of changes should make one version, not one per connection:
    ///
    /// - A removal (a failure) is published as soon as that allows, unless other connections
    ///   are suspects of the same failure: silent for more than `heartbeat_timeout` minus
    ///   1.5 `heartbeat_interval` (a healthy connection hears a heartbeat every interval, one
    ///   cut at the same moment as the connection that just timed out has been silent for at
    ///   least `heartbeat_timeout - heartbeat_interval`). The removal then waits until the
    ///   last suspect has timed out (at most one `heartbeat_interval`), so that a partition,
    ///   which cuts several connections within one heartbeat interval, makes one version; a
    ///   single crashed neighbour has no suspects and is published at once.
    /// - Additions wait until `own_update_interval` has passed without another one (but at
    ///   most `COALESCE_FACTOR` intervals after the first unpublished change), so that the
    ///   connections made at start-up make one version. While we are reconnecting (a dial to
    ///   a peer we were connected to before is under way or due, or such a peer is alive by
    ///   gossip and not back yet, as when a partition heals), additions wait for it, up to
    ///   `RECONNECT_HOLD_FACTOR` intervals after the first change, so that reconnecting makes
    ///   one version too.
    fn rebuild_own(&mut self, now: Instant, removal: bool) {
        self.unpublished_since.get_or_insert(now);
        self.unpublished_removal |= removal;
        self.last_change = now;
        self.schedule_publish(now);
    }

    /// Sets `publish_at` for the unpublished changes of our record (see [`Mesh::rebuild_own`]).
    fn schedule_publish(&mut self, now: Instant) {
        let Some(first) = self.unpublished_since else {
            return;
        };
        let delay = self.config.own_update_interval;
        let min_next = self.last_publish.map_or(now, |t| t + delay).max(now);
        let due = if self.unpublished_removal {
            min_next.max(self.suspects_timed_out(now))
        } else if self.redialling_former_peer(first + delay * RECONNECT_HOLD_FACTOR)
            || self.awaiting_former_peer(now)
        {
            (first + delay * RECONNECT_HOLD_FACTOR).max(min_next)
        } else {
            (self.last_change + delay)
                .min(first + delay * COALESCE_FACTOR)
                .max(min_next)
        };
        if due <= now {
            self.publish_own(now);
        } else if self.unpublished_removal {
            if self.publish_at.is_none_or(|t| due < t) {
                self.publish_at = Some(due);
            }
        } else {
            self.publish_at = Some(due);
        }
    }

    /// Returns true while a peer we lost a connection to is alive by gossip (we hold its
    /// record, and it is not cut off from us, or a cut-off peer was heard from again) and not
    /// reconnected: after a partition heals, both ends redial as soon as they
    /// see each other's record again, inbound and outbound, over a few seconds. Entries older
    /// than `backoff.max` are forgotten (the peer may never come back to us).
    fn awaiting_former_peer(&mut self, now: Instant) -> bool {
        let ttl = self.config.backoff.max;
        self.former
            .retain(|_, lost| now.saturating_duration_since(*lost) < ttl);
        self.former.keys().any(|p| {
            !self.by_peer.contains_key(p)
                && self.peers.get(*p).is_some()
                && (self.cut_off_heard || !self.is_cut_off(*p))
        })
    }

    /// Returns true while a dial of ours to a peer we were connected to before is under way or
    /// due by `until`: after a partition heals, such dials (started before the heal and still
    /// in flight, or retried as soon as the peer's record comes back) complete over a few
    /// seconds, and publishing additions before they do would make a version per completion.
    /// The peers' records need not be held (the partition's garbage collection removed them);
    /// a target that never connected (a cold start) holds nothing back.
    fn redialling_former_peer(&self, until: Instant) -> bool {
        self.targets.iter().any(|t| {
            let busy = match &t.state {
                TargetState::Connecting { .. } | TargetState::Requested { .. } => true,
                TargetState::Retrying { next_attempt, .. } => *next_attempt <= until,
                TargetState::Established { .. }
                | TargetState::Failed { .. }
                | TargetState::Pending => false,
            };
            busy && t.peer.is_some_and(|p| !self.by_peer.contains_key(&p))
        })
    }

    /// Returns when every connection suspected of being cut (see [`Mesh::rebuild_own`]) will
    /// have timed out; `now` when there is none.
    fn suspects_timed_out(&self, now: Instant) -> Instant {
        let timeout = self.config.heartbeat_timeout;
        let suspect_after = timeout.saturating_sub(self.config.heartbeat_interval.mul_f64(1.5));
        self.recv
            .iter()
            .filter(|r| now.saturating_duration_since(r.1) >= suspect_after)
            .map(|r| r.1 + timeout)
            .fold(now, Instant::max)
    }

    fn publish_own(&mut self, now: Instant) {
        self.publish_at = None;
        self.unpublished_since = None;
        self.unpublished_removal = false;
        self.last_publish = Some(now);
        self.version += 1;
        let mut connections: Vec<ConnectionSummary> = self
            .conns
            .values()
            .map(|c| ConnectionSummary {
                remote: c.remote,
                addr: c.addr,
                outbound: c.outbound,
                established: true,
            })
            .collect();
        connections.sort_unstable_by_key(|c| c.remote);
        let own = Arc::new(PeerInfo::new(
            self.config.name,
            self.uid,
            self.version,
            wire::truncate_utf8(&self.config.nickname, wire::MAX_NICKNAME_LEN).to_owned(),
            connections,
        ));
        let removed = self.peers.set_own(own);
        if let Some(i) = self.peers.index_of(self.config.name) {
            self.mark_changed(now, i, None);
        }
        self.topology_changed(now, removed);
    }

    /// Schedules the work that follows any change of the peer table.
    fn topology_changed(&mut self, now: Instant, removal: bool) {
        if let Some(d) = self.config.route_recalc_delay {
            self.recalc_at.get_or_insert(now + d);
        } else if self.config.discovery {
            self.recalc_at
                .get_or_insert(now + Duration::from_millis(100));
        }
        if removal && self.peers.has_dropped_orphans() {
            // Nobody lists these peers any more: they are gone.
            self.orphan_gc_at.get_or_insert(now + self.config.gc_delay);
        }
        // A removal may have cut off a whole component; a fresh orphan may be a stale record.
        // Both wait for the slow collector, which removes a peer only when it is unreachable
        // at two runs in a row, `gc_interval` apart.
        self.component_pending |= removal;
        if self.component_pending || !self.peers.fresh_orphans_empty() {
            self.schedule_slow_gc(now);
        }
    }

    fn schedule_slow_gc(&mut self, now: Instant) {
        let earliest = self
            .last_component_gc
            .map_or(now, |t| t + self.config.gc_interval)
            .max(now + self.config.gc_delay);
        // Sooner than a cut-off peer's expiry, which may be set.
        self.component_gc_at = Some(self.component_gc_at.map_or(earliest, |t| t.min(earliest)));
    }

    fn slow_gc(&mut self, now: Instant) {
        self.last_component_gc = Some(now);
        // Sorted lists, merged: a partition's collection lists thousands of names.
        let mut suspects = self.peers.fresh_orphans();
        let mut expired = Vec::new();
        if self.component_pending
            || !self.unreachable_suspects.is_empty()
            || !self.cut_off.is_empty()
        {
            self.component_pending = false;
            let (unlisted, listed) = self.peers.unreachable_split();
            suspects = merge_sorted(&suspects, &unlisted);
            expired = self.note_cut_off(now, &listed);
        }
        let last = std::mem::take(&mut self.unreachable_suspects);
        let (remove, keep): (Vec<PeerName>, Vec<PeerName>) = suspects
            .into_iter()
            .partition(|n| last.binary_search(n).is_ok());
        let names = self.peers.names_interner().clone();
        let removed: Vec<(PeerName, RecordKey)> = remove
            .into_iter()
            .chain(expired.into_iter().filter_map(|i| names.name(i)))
            .filter_map(|n| self.peers.remove(n).map(|r| (n, r.key())))
            .collect();
        self.unreachable_suspects = keep;
        self.after_removal(now, removed);
        if !self.unreachable_suspects.is_empty() {
            self.schedule_slow_gc(now);
        }
        if let Some(at) = self
            .cut_off
            .iter()
            .map(|&(_, s)| self.cut_off_expiry(s))
            .min()
        {
            self.component_gc_at = Some(self.component_gc_at.map_or(at, |t| t.min(at)));
        }
    }

    /// Replaces the cut-off list with `listed` (indices, sorted), keeping each peer's first
    /// second; returns those cut off for `cut_off_ttl`, which leave the list. Once a cut-off
    /// peer was heard from again, every clock starts again: the list is not searched again
    /// until something is removed, so a peer still on it may have been back since.
    fn note_cut_off(&mut self, now: Instant, listed: &[u32]) -> Vec<u32> {
        let second =
            u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX);
        let old = std::mem::take(&mut self.cut_off);
        // Those heard from were reported back then.
        let old = if self.cut_off_heard { Vec::new() } else { old };
        let mut next = Vec::with_capacity(listed.len());
        let (mut expired, mut cut, mut back) = (Vec::new(), Vec::new(), Vec::new());
        let mut k = 0;
        for &i in listed {
            while let Some(&(j, _)) = old.get(k).filter(|&&(j, _)| j < i) {
                back.push(j);
                k += 1;
            }
            let since = match old.get(k) {
                Some(&(j, since)) if j == i => {
                    k += 1;
                    since
                }
                _ => {
                    cut.push(i);
                    second
                }
            };
            if self.cut_off_expiry(since) <= now {
                expired.push(i);
            } else {
                next.push((i, since));
            }
        }
        back.extend(old.get(k..).unwrap_or_default().iter().map(|&(j, _)| j));
        if !cut.is_empty() {
            self.cut_off_heard = false;
        }
        self.cut_off = next;
        // Off the list but still held: reachable again (those collected are reported so).
        let names = self.peers.names_interner().clone();
        back.retain(|&i| self.peers.get_at(i).is_some());
        for name in back.into_iter().filter_map(|i| names.name(i)) {
            self.peer_reappeared(now, name);
            if self.config.peer_events {
                self.events.push_back(Event::PeerBack(name));
            }
        }
        if self.config.peer_events {
            let cut = cut.into_iter().filter(|i| !expired.contains(i));
            self.events
                .extend(cut.filter_map(|i| names.name(i)).map(Event::PeerCutOff));
        }
        expired
    }

    /// When a peer cut off from us since engine second `since` is collected: `cut_off_ttl`
    /// after the end of that second, so never sooner than the ttl.
    fn cut_off_expiry(&self, since: u32) -> Instant {
        self.epoch + Duration::from_secs(u64::from(since) + 1) + self.config.cut_off_ttl
    }

    fn cut_off_at(&self, idx: u32) -> bool {
        self.cut_off.binary_search_by_key(&idx, |&(i, _)| i).is_ok()
    }

    fn is_cut_off(&self, name: PeerName) -> bool {
        !self.cut_off.is_empty()
            && self
                .peers
                .index_of(name)
                .is_some_and(|i| self.cut_off_at(i))
    }

    /// A peer cut off from us was heard from again: the split is healing. Once per split
    /// (until the list grows again), every peer on the list is reported back, and our targets
    /// among them are retried within a quarter of the initial back-off (they may be waiting out
    /// a long one), as when a collected peer reappears.
    fn heard_from_cut_off(&mut self, now: Instant) {
        if std::mem::replace(&mut self.cut_off_heard, true) {
            return;
        }
        if self.config.peer_events {
            let names = self.peers.names_interner().clone();
            let back = self.cut_off.iter().filter_map(|&(i, _)| names.name(i));
            self.events.extend(back.map(Event::PeerBack));
        }
        let cut: Vec<PeerName> = self
            .targets
            .iter()
            .filter_map(|t| t.peer)
            .filter(|&p| self.is_cut_off(p))
            .collect();
        for p in cut {
            self.peer_reappeared(now, p);
        }
    }

    fn after_removal(&mut self, now: Instant, removed: Vec<(PeerName, RecordKey)>) {
        if removed.is_empty() {
            return;
        }
        let expiry = now + self.config.tombstone_ttl;
        for (name, key) in removed {
            if let Some(i) = self.peers.index_of(name) {
                self.unpend(i);
                if self.peers.add_tombstone(i, key) {
                    self.tombstones.push_back((i, expiry));
                }
            }
            if self.config.peer_events {
                self.events.push_back(Event::PeerRemoved(name));
            }
        }
        self.topology_changed(now, true);
    }

    fn close(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        if self.conns.contains_key(&conn) {
            self.events
                .push_back(Event::CloseConnection { conn, reason });
            self.remove_conn(now, conn, true);
        }
    }

    fn remove_conn(&mut self, now: Instant, conn: ConnId, rebuild: bool) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.conns_gen += 1;
        if let Ok(pos) = self.recv.binary_search_by_key(&conn, |r| r.0) {
            self.recv.remove(pos);
        }
        if self
            .oldest_recv
            .get()
            .is_none_or(|o| o.is_none_or(|(_, id)| id == conn))
        {
            self.oldest_recv.set(None);
        }
        if self.by_peer.get(&c.remote) == Some(&conn) {
            self.by_peer.remove(&c.remote);
            self.former.insert(c.remote, now);
        }
        for p in &mut self.pending {
            p.excl.remove(conn);
        }
        let (b, rng) = (self.config.backoff, &mut self.rng);
        for t in self.targets.iter_mut() {
            if t.state == (TargetState::Established { conn }) {
                t.disconnected(now, b, rng);
            }
        }
        if rebuild {
            self.rebuild_own(now, true);
        }
    }

    /// A target whose peer was collected and is back in the topology is retried within a
    /// quarter of the initial back-off.
    fn peer_reappeared(&mut self, now: Instant, name: PeerName) {
        let initial = self.config.backoff.initial;
        let rng = &mut self.rng;
        for t in self.targets.iter_mut() {
            if t.peer == Some(name)
                && let TargetState::Retrying { next_attempt, .. } = &mut t.state
            {
                let soon = now + initial.mul_f64(rng.gen_range(0.0..0.25));
                if soon < *next_attempt {
                    *next_attempt = soon;
                }
            }
        }
    }

    fn discover(&mut self) {
        let mut wanted: BTreeSet<SocketAddr> = BTreeSet::new();
        for rec in self.peers.records() {
            if rec.name == self.config.name {
                continue;
            }
            for c in &rec.connections {
                if c.remote == self.config.name || self.by_peer.contains_key(&c.remote) {
                    continue;
                }
                let addr = if c.outbound {
                    c.addr
                } else {
                    SocketAddr::new(c.addr.ip(), self.config.listen_port)
                };
                wanted.insert(addr);
            }
        }
        self.targets.retain(|addr, t| {
            t.direct
                || wanted.contains(addr)
                || matches!(
                    t.state,
                    TargetState::Established { .. } | TargetState::Connecting { .. }
                )
        });
        for addr in wanted {
            if self.targets.len() >= self.config.conn_limit {
                break;
            }
            self.targets.add(addr, false);
        }
    }

    fn drive_targets(&mut self, now: Instant) {
        let mut active = self.conns.len()
            + self
                .targets
                .iter()
                .filter(|t| {
                    matches!(
                        t.state,
                        TargetState::Connecting { .. } | TargetState::Requested { .. }
                    )
                })
                .count();
        let (limit, dial_timeout, b) = (
            self.config.conn_limit,
            self.config.dial_timeout,
            self.config.backoff,
        );
        let conns = &self.conns;
        let by_peer = &self.by_peer;
        let rng = &mut self.rng;
        let mut dials = Vec::new();
        for t in self.targets.iter_mut() {
            match &t.state {
                TargetState::Requested { since } | TargetState::Connecting { since } => {
                    if now.saturating_duration_since(*since) >= dial_timeout {
                        t.fail(now, "dial timed out", b, rng);
                        active = active.saturating_sub(1);
                    }
                    continue;
                }
                TargetState::Retrying { next_attempt, .. } if *next_attempt <= now => {}
                TargetState::Pending => {}
                TargetState::Retrying { .. }
                | TargetState::Established { .. }
                | TargetState::Failed { .. } => {
                    continue;
                }
            }
            // Already connected to the peer, or to something at that address: nothing to dial.
            let existing = t.peer.and_then(|p| by_peer.get(&p).copied()).or_else(|| {
                conns
                    .values()
                    .find(|c| c.addr.ip() == t.addr.ip() && !c.outbound)
                    .map(|c| c.id)
            });
            if let Some(conn) = existing {
                t.state = TargetState::Established { conn };
                continue;
            }
            if active >= limit {
                // Held back by the connection limit: look again later rather than spin.
                if let TargetState::Retrying { next_attempt, .. } = &mut t.state {
                    *next_attempt = now + b.initial;
                }
                continue;
            }
            active += 1;
            t.state = TargetState::Requested { since: now };
            dials.push(t.addr);
        }
        self.events.extend(dials.into_iter().map(Event::Dial));
    }
}

impl Target {
    /// Returns true when the target has a live connection.
    pub fn is_established(&self) -> bool {
        matches!(self.state, TargetState::Established { .. })
    }
}

/// Returns the union of two sorted lists, sorted, without duplicates.
fn merge_sorted(a: &[PeerName], b: &[PeerName]) -> Vec<PeerName> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(a.get(i..).unwrap_or_default());
    out.extend_from_slice(b.get(j..).unwrap_or_default());
    out
}

/// Returns a hash of the edge between two peers, the same at both ends.
fn edge_hash(a: PeerName, b: PeerName) -> u64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    crate::peers::entry_hash(lo, 0x5eed, u64::from_be_bytes(pad(hi)))
}

fn pad(n: PeerName) -> [u8; 8] {
    let b = n.bytes();
    [0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]
}

type AnnounceEntry = (ConnId, PeerName, Option<Option<RecordKey>>, bool);

/// Encodes `recs` as Update messages of at most `UPDATE_CHUNK_BYTES` (or one record) and
/// `wire::MAX_ENTRIES` records each.
fn encode_updates<'a>(recs: impl Iterator<Item = &'a PeerInfo>) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let mut batch: Vec<&PeerInfo> = Vec::new();
    let mut len = wire::LIST_HEADER_LEN;
    let mut flush = |batch: &mut Vec<&PeerInfo>, len: usize| {
        if !batch.is_empty() {
            let mut out = Vec::with_capacity(len);
            wire::encode_update(batch.drain(..), &mut out);
            msgs.push(out);
        }
    };
    for r in recs {
        let l = r.encoding().len();
        if !batch.is_empty() && (len + l > UPDATE_CHUNK_BYTES || batch.len() >= wire::MAX_ENTRIES) {
            flush(&mut batch, len);
            len = wire::LIST_HEADER_LEN;
        }
        len += l;
        batch.push(r);
    }
    flush(&mut batch, len);
    msgs
}

/// Returns an emptied buffer for reuse, or a new one if it grew large: thousands of engines
/// in one process must not each keep the largest buffer they ever needed.
pub(crate) fn recycle<T>(mut v: Vec<T>) -> Vec<T> {
    if v.capacity() > RECYCLE_MAX {
        return Vec::new();
    }
    v.clear();
    v
}

const RECYCLE_MAX: usize = 256;

/// A record to announce at the next batch, and the connections that need not hear of it.
#[derive(Clone, Debug)]
struct Pending {
    idx: u32,
    key: RecordKey,
    excl: ConnSet,
}

/// A small set of connections: a few inline, the rest in a `Vec` (no allocation for the
/// usual three or four neighbours that announce the same version).
#[derive(Clone, Debug, Default)]
struct ConnSet {
    inline: [u64; 4],
    len: u8,
    more: Vec<ConnId>,
}

impl ConnSet {
    fn contains(&self, c: ConnId) -> bool {
        self.inline
            .get(..usize::from(self.len))
            .is_some_and(|v| v.contains(&c.0))
            || self.more.contains(&c)
    }

    fn insert(&mut self, c: ConnId) {
        if self.contains(c) {
            return;
        }
        match self.inline.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = c.0;
                self.len += 1;
            }
            None => self.more.push(c),
        }
    }

    fn remove(&mut self, c: ConnId) {
        let len = usize::from(self.len);
        if let Some(pos) = self
            .inline
            .get(..len)
            .and_then(|v| v.iter().position(|&x| x == c.0))
        {
            self.inline[pos] = self.inline[len - 1];
            self.len -= 1;
            if let Some(m) = self.more.pop() {
                self.inline[len - 1] = m.0;
                self.len += 1;
            }
        } else {
            self.more.retain(|&x| x != c);
        }
    }
}

const SUMMARY_CHUNK_BYTES: usize = 64 * 1024;
const QUIET_WAIT_FACTOR: u32 = 4;
const COALESCE_FACTOR: u32 = 5;
const RECONNECT_HOLD_FACTOR: u32 = 10;
const UPDATE_CHUNK_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_mark_left_by_an_earlier_batch_names_no_entry() {
        use crate::peers::tests::{n, rec};
        #[allow(clippy::disallowed_methods)] // an arbitrary base instant for the test
        let now = Instant::now();
        let mut m = Mesh::new(Config::new(n(1), "me"), now, 1);
        m.peers.apply(rec(2, 1, &[1]));
        m.peers.apply(rec(3, 1, &[1]));
        let idx = |m: &Mesh, b: u8| m.peers.index_of(n(b)).unwrap_or(u32::MAX);
        let (a, b) = (idx(&m, 2), idx(&m, 3));
        m.mark_changed(now, a, None);
        assert_eq!(m.pending_mut(a).map(|p| p.idx), Some(a));
        // The batch announces a and leaves its mark, naming the first position.
        m.flush();
        assert!(m.pending.is_empty());
        assert_eq!(m.peers.pending_mark(a), 1);
        // b takes that position: a's mark is stale, and dropping a must not drop b.
        m.mark_changed(now, b, Some(ConnId(5)));
        assert!(m.pending_mut(a).is_none());
        m.unpend(a);
        assert_eq!(
            m.pending_mut(b)
                .map(|p| (p.idx, p.excl.contains(ConnId(5)))),
            Some((b, true))
        );
        // a is pending again (second position); dropping b moves a to the first, mark too.
        m.mark_changed(now, a, None);
        m.unpend(b);
        assert_eq!(m.pending.len(), 1);
        assert_eq!(m.pending_mut(a).map(|p| p.idx), Some(a));
        assert!(m.pending_mut(b).is_none());
    }

    #[test]
    fn a_remote_record_that_does_not_list_us_yet_still_decides_its_picks() {
        let n = |i: u32| {
            let b = i.to_be_bytes();
            PeerName::from_bytes([2, 0, b[0], b[1], b[2], b[3]])
        };
        let me = n(1);
        let addr = |i: u32| SocketAddr::from(([192, 0, 2, (i % 250) as u8 + 1], 6783));
        // Our connections: r, plus two with a lower edge hash than r's (so we do not pick r).
        let candidates: Vec<PeerName> = (2..400).map(n).collect();
        let r = candidates[0];
        let h = edge_hash(me, r);
        let ours: Vec<PeerName> = candidates[1..]
            .iter()
            .copied()
            .filter(|&p| edge_hash(me, p) < h)
            .take(2)
            .collect();
        let lower: Vec<PeerName> = candidates[1..]
            .iter()
            .copied()
            .filter(|&p| !ours.contains(&p) && edge_hash(r, p) < h)
            .take(2)
            .collect();
        let higher: Vec<PeerName> = candidates[1..]
            .iter()
            .copied()
            .filter(|&p| !ours.contains(&p) && edge_hash(r, p) > h)
            .take(3)
            .collect();
        assert_eq!((ours.len(), lower.len(), higher.len()), (2, 2, 3));
        #[allow(clippy::disallowed_methods)] // an arbitrary base instant for the test
        let now = Instant::now();
        let mut config = Config::new(me, "me");
        config.announce_degree = 2;
        let mut m = Mesh::new(config, now, 1);
        for (i, &p) in [r].iter().chain(&ours).enumerate() {
            m.handle_connection_up(
                now,
                ConnId(i as u64 + 1),
                p,
                PeerUid(9),
                "",
                addr(i as u32),
                true,
            );
        }
        let record = |version: u64, remotes: &[PeerName]| {
            let mut connections: Vec<ConnectionSummary> = remotes
                .iter()
                .enumerate()
                .map(|(i, &p)| ConnectionSummary {
                    remote: p,
                    addr: addr(i as u32 + 10),
                    outbound: true,
                    established: true,
                })
                .collect();
            connections.sort_unstable_by_key(|c| c.remote);
            Arc::new(PeerInfo::new(
                r,
                PeerUid(9),
                version,
                "r".into(),
                connections,
            ))
        };
        // Unknown record: yes.
        assert!(m.announces_to(r));
        // r's record lists two connections with a lower edge hash than ours, not us yet: r
        // picks those two, so nobody picks our connection.
        m.peers.apply(record(1, &[lower, higher.clone()].concat()));
        assert!(!m.announces_to(r));
        // r's record lists only connections with a higher edge hash: r picks ours.
        m.peers.apply(record(2, &higher));
        assert!(m.announces_to(r));
    }

    #[test]
    fn merged_lists_are_sorted_and_without_duplicates() {
        let n = |b: u8| PeerName::from_bytes([0, 0, 0, 0, 0, b]);
        let (a, b) = ([n(1), n(3), n(5), n(7)], [n(2), n(3), n(8)]);
        let want: Vec<PeerName> = [1, 2, 3, 5, 7, 8].into_iter().map(n).collect();
        assert_eq!(merge_sorted(&a, &b), want);
        assert_eq!(merge_sorted(&b, &a), want);
        assert_eq!(merge_sorted(&[], &b), b.to_vec());
        assert_eq!(merge_sorted(&a, &[]), a.to_vec());
    }

    #[test]
    fn conn_set_keeps_members_beyond_its_inline_part() {
        let mut s = ConnSet::default();
        for i in 1..=7 {
            s.insert(ConnId(i));
            s.insert(ConnId(i));
        }
        assert!((1..=7).all(|i| s.contains(ConnId(i))));
        assert!(!s.contains(ConnId(8)));
        for i in [2, 6, 1] {
            s.remove(ConnId(i));
            assert!(!s.contains(ConnId(i)));
        }
        assert!([3, 4, 5, 7].iter().all(|&i| s.contains(ConnId(i))));
        s.remove(ConnId(9));
        assert!([3, 4, 5, 7].iter().all(|&i| s.contains(ConnId(i))));
    }

    #[test]
    fn engines_may_move_between_threads_and_share_interners() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Mesh>();
        send_sync::<PeerNames>();
        send_sync::<PeerInfo>();
    }

    #[test]
    fn recycle_drops_large_buffers() {
        let v: Vec<u8> = Vec::with_capacity(RECYCLE_MAX + 1);
        assert_eq!(recycle(v).capacity(), 0);
        let mut v: Vec<u8> = Vec::with_capacity(8);
        v.push(1);
        let v = recycle(v);
        assert!(v.is_empty() && v.capacity() >= 8);
    }
}
