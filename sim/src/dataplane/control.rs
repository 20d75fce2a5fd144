//! The control plane's convergence: every router's `topology::Mesh` on one virtual clock, its
//! connections dialled over the underlay, its messages delivered in order per connection with
//! a fixed latency each (a lost one arrives a TCP retransmission late).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use topology::{ConnId, Event, Mesh, PeerName, PeerNames, RecordCache};

use super::{DataplaneArgs, UnderlayKind};

/// Nanoseconds of virtual time.
type Ns = u64;

const MS: Ns = 1_000_000;
/// A lost control message arrives this much later.
const RETRANSMIT: Ns = 200 * MS;
/// How often convergence is checked.
const CHECK_EVERY: Ns = 100 * MS;
/// Longest the mesh may take to converge.
const CONVERGE_WITHIN: Ns = 120_000 * MS;

/// Which routers reach which.
pub(super) struct Underlay {
    reach: Vec<BTreeSet<usize>>,
}

impl Underlay {
    pub(super) fn build(args: &DataplaneArgs) -> Self {
        let n = args.nodes;
        let mut reach = vec![BTreeSet::new(); n];
        let mut link = |a: usize, b: usize| {
            if a != b {
                reach[a].insert(b);
                reach[b].insert(a);
            }
        };
        match args.underlay {
            UnderlayKind::Full => {
                for a in 0..n {
                    for b in a + 1..n {
                        link(a, b);
                    }
                }
            }
            UnderlayKind::Line => {
                for a in 1..n {
                    link(a - 1, a);
                }
            }
            UnderlayKind::Random => {
                let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut rng);
                for w in order.windows(2) {
                    link(w[0], w[1]);
                }
                if n > 2 {
                    link(order[n - 1], order[0]);
                }
                for a in 0..n {
                    for _ in 0..args.chords {
                        link(a, rng.gen_range(0..n));
                    }
                }
            }
        }
        Self { reach }
    }

    pub(super) fn links(&self) -> usize {
        self.reach.iter().map(BTreeSet::len).sum::<usize>() / 2
    }
}

/// An action due at `t`; `seq` keeps the order actions were scheduled in among equal times.
struct Scheduled {
    t: Ns,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.t, self.seq) == (other.t, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(other.t, other.seq))
    }
}

enum Action {
    Timer(usize),
    Deliver {
        to: usize,
        conn: u64,
        bytes: Vec<u8>,
    },
    Dialled {
        from: usize,
        to: usize,
        conn: u64,
    },
    Accept {
        to: usize,
        from: usize,
        conn: u64,
    },
    Down {
        to: usize,
        conn: u64,
    },
}

/// One connection end.
struct End {
    peer: usize,
    latency: Ns,
    /// When the last message on it arrives (messages keep their order).
    last: Ns,
}

/// The routers' engines and the network between them.
pub(super) struct Control {
    pub(super) meshes: Vec<Mesh>,
    pub(super) names: Vec<PeerName>,
    addrs: Vec<SocketAddr>,
    by_addr: HashMap<SocketAddr, usize>,
    reach: Vec<BTreeSet<usize>>,
    ends: Vec<HashMap<u64, End>>,
    timers: Vec<Option<Ns>>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    next_conn: u64,
    pub(super) now: Ns,
    pub(super) base: Instant,
    rng: ChaCha8Rng,
    loss: f64,
    pub(super) delivered: u64,
    pub(super) lost: u64,
}

impl Control {
    pub(super) fn new(args: &DataplaneArgs, underlay: &Underlay) -> Self {
        let n = args.nodes;
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed);
        let base = Instant::now();
        let names = PeerNames::new();
        let cache = RecordCache::indexed(names.clone());
        let mut meshes = Vec::with_capacity(n);
        let (mut all, mut addrs, mut by_addr) = (Vec::new(), Vec::new(), HashMap::new());
        for i in 0..n {
            let name = node_name(i);
            let b = (i as u32 + 1).to_be_bytes();
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, b[1], b[2], b[3])), 6783);
            let mut config = topology::Config::new(name, format!("n{}", i + 1));
            config.discovery = false;
            // Routes are recalculated once the views agree (`converged`), not on every change.
            config.route_recalc_delay = None;
            config.peer_events = false;
            config.record_cache = Some(cache.clone());
            config.peer_names = Some(names.clone());
            names.intern(name);
            meshes.push(Mesh::new(config, base, rng.r#gen()));
            all.push(name);
            addrs.push(addr);
            by_addr.insert(addr, i);
        }
        names.freeze();
        for (i, mesh) in meshes.iter_mut().enumerate() {
            // Dial only upward: one connection per pair, as the mesh settles on anyway.
            for &j in underlay.reach[i].iter().filter(|&&j| j > i) {
                mesh.add_target(addrs[j]);
            }
        }
        let mut control = Self {
            meshes,
            names: all,
            addrs,
            by_addr,
            reach: underlay.reach.clone(),
            ends: (0..n).map(|_| HashMap::new()).collect(),
            timers: vec![None; n],
            queue: BinaryHeap::new(),
            seq: 0,
            next_conn: 1,
            now: 0,
            base,
            rng,
            loss: args.loss / 100.0,
            delivered: 0,
            lost: 0,
        };
        for i in 0..n {
            control.drive(i);
        }
        control
    }

    /// Runs until every router's view agrees and reaches every router; returns when.
    pub(super) fn converge(&mut self) -> Option<Ns> {
        let mut check = CHECK_EVERY;
        while check <= CONVERGE_WITHIN {
            self.run_to(check);
            if self.converged() {
                return Some(self.now);
            }
            check += CHECK_EVERY;
        }
        None
    }

    /// Every view agrees, and every router's routes (recalculated then, as the router does
    /// on a change) reach every router.
    fn converged(&mut self) -> bool {
        let n = self.meshes.len();
        let first = self.meshes[0].view_digest();
        if self.meshes.iter().any(|m| m.view_digest() != first) {
            return false;
        }
        self.meshes.iter_mut().all(|m| {
            m.recalculate_routes();
            m.routes().reachable() == n - 1
        })
    }

    fn at(&self, t: Ns) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn schedule(&mut self, t: Ns, action: Action) {
        self.seq += 1;
        let seq = self.seq;
        self.queue.push(Reverse(Scheduled { t, seq, action }));
    }

    fn run_to(&mut self, until: Ns) {
        while self.queue.peek().is_some_and(|s| s.0.t <= until) {
            let Some(Reverse(next)) = self.queue.pop() else {
                break;
            };
            self.now = next.t;
            self.apply(next.action);
        }
        self.now = until;
    }

    fn apply(&mut self, action: Action) {
        let now = self.at(self.now);
        match action {
            Action::Timer(i) => {
                if self.timers[i] != Some(self.now) {
                    return;
                }
                self.timers[i] = None;
                self.meshes[i].handle_timeout(now);
                self.drive(i);
            }
            Action::Deliver { to, conn, bytes } => {
                if !self.ends[to].contains_key(&conn) {
                    return;
                }
                // Engines' own messages: a reject would be a bug the checks catch later.
                let _ = self.meshes[to].handle_control(now, ConnId(conn), &bytes);
                self.delivered += 1;
                self.drive(to);
            }
            Action::Dialled { from, to, conn } => {
                if !self.ends[from].contains_key(&conn) {
                    return;
                }
                let (name, uid) = (self.names[to], self.meshes[to].uid());
                let addr = self.addrs[to];
                self.meshes[from].handle_connection_up(
                    now,
                    ConnId(conn),
                    name,
                    uid,
                    "",
                    addr,
                    true,
                );
                self.drive(from);
            }
            Action::Accept { to, from, conn } => {
                let (name, uid) = (self.names[from], self.meshes[from].uid());
                let ephemeral = SocketAddr::new(self.addrs[from].ip(), 40_000);
                self.meshes[to].handle_connection_up(
                    now,
                    ConnId(conn),
                    name,
                    uid,
                    "",
                    ephemeral,
                    false,
                );
                self.drive(to);
            }
            Action::Down { to, conn } => {
                if self.ends[to].remove(&conn).is_some() {
                    self.meshes[to].handle_connection_down(now, ConnId(conn), "closed by peer");
                    self.drive(to);
                }
            }
        }
    }

    /// Carries out a router's outputs.
    fn drive(&mut self, i: usize) {
        let now = self.at(self.now);
        while let Some((conn, bytes)) = self.meshes[i].poll_transmit() {
            let Some(end) = self.ends[i].get_mut(&conn.0) else {
                continue;
            };
            let mut at = self.now + end.latency;
            if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
                self.lost += 1;
                at += RETRANSMIT;
            }
            let at = at.max(end.last);
            end.last = at;
            let to = end.peer;
            self.schedule(
                at,
                Action::Deliver {
                    to,
                    conn: conn.0,
                    bytes,
                },
            );
        }
        while let Some(event) = self.meshes[i].poll_event() {
            match event {
                Event::Dial(addr) => {
                    self.meshes[i].handle_dial_started(now, addr);
                    let latency = MS * self.rng.gen_range(1..=5);
                    match self.by_addr.get(&addr).copied() {
                        Some(j) if self.reach[i].contains(&j) => {
                            let conn = self.next_conn;
                            self.next_conn += 1;
                            let done = self.now + 2 * latency;
                            for (me, peer) in [(i, j), (j, i)] {
                                self.ends[me].insert(
                                    conn,
                                    End {
                                        peer,
                                        latency,
                                        last: done,
                                    },
                                );
                            }
                            self.schedule(
                                done,
                                Action::Accept {
                                    to: j,
                                    from: i,
                                    conn,
                                },
                            );
                            self.schedule(
                                done,
                                Action::Dialled {
                                    from: i,
                                    to: j,
                                    conn,
                                },
                            );
                        }
                        _ => {
                            // Unreachable: the dial times out.
                            self.meshes[i].handle_dial_failed(now, addr, "unreachable");
                        }
                    }
                }
                Event::CloseConnection { conn, .. } => {
                    if let Some(end) = self.ends[i].remove(&conn.0) {
                        let at = self.now + end.latency;
                        self.schedule(
                            at,
                            Action::Down {
                                to: end.peer,
                                conn: conn.0,
                            },
                        );
                    }
                }
                Event::PeerAdded(_)
                | Event::PeerRemoved(_)
                | Event::PeerCutOff(_)
                | Event::PeerBack(_)
                | Event::RoutesChanged => {}
            }
        }
        if let Some((t, _)) = self.meshes[i].poll_timeout() {
            let t = u64::try_from(t.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX)
                .max(self.now);
            if self.timers[i].is_none_or(|old| t < old) {
                self.timers[i] = Some(t);
                self.schedule(t, Action::Timer(i));
            }
        }
    }
}

/// Router `i`'s name.
pub(super) fn node_name(i: usize) -> PeerName {
    let b = (i as u32 + 1).to_be_bytes();
    PeerName::from_bytes([0x02, 0x00, b[0], b[1], b[2], b[3]])
}
