//! `weft-sim ipam`: N routers' IPAM engines (`topology::ipam::Ipam`, the code the router runs)
//! on a virtual clock, wired as the router wires them, and what their gossip costs.
//!
//! The model (docs/SIMULATOR.md, "weft-sim ipam"):
//!
//! - The mesh is taken as converged: each node dials `--degree` distinct random peers, as in
//!   `weft-sim mesh`, and every connection is up from time 0. Every node sees every other in
//!   the topology at time 0 (the router calls `handle_peer_seen` on the mesh's `PeerAdded`).
//! - As in `router/src/daemon/allocations.rs` (`drain_ipam`): `Destination::Broadcast` goes to
//!   every directly connected peer, `Destination::Peer(p)` only if `p` is one (otherwise the
//!   router skips it and the engine retries elsewhere). Engine settings are the router's:
//!   `propose_interval` 1 s, the rest `ipam::Config::new`'s defaults (30 s gossip interval).
//! - IPAM travels on the TCP control connections: ordered, no loss; each connection has a
//!   one-way latency drawn uniformly in `--latency-min-ms..--latency-max-ms`.
//! - Bytes: every byte `poll_transmit` hands out, plus the channel byte and
//!   `--frame-overhead` bytes per message (length prefix and AEAD tag), counted at the sender.
//! - Phases: start (every node allocates its gateway and `--pods` pods at time 0, the router's
//!   start plus a CNI burst) until converged; `--settle-s` of quiet; the steady window
//!   (`--steady-s`, nothing allocated); the churn window (`--churn-s`: every node replaces its
//!   oldest pod by a new one every `--churn-interval-s`, at a random phase); then until
//!   converged again.
//! - Converged: every node holds a ring, all rings are equal, nothing is pending, every node
//!   holds every node's record (at most `ipam::wire::MAX_PEERS` of them) at its owner's
//!   current sequence number, and no address is held twice (checked every
//!   `--check-interval-ms`).
//!
//! Deterministic: one seeded stream picks the graph, the latencies, each engine's seed and the
//! churn phases; events are ordered by (time, sequence number).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::io::Write;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use topology::PeerName;
use topology::ipam::{self, Allocation, Destination, Ipam};

/// `weft-sim ipam` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct IpamArgs {
    /// Number of simulated routers.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Random peers each node dials.
    #[arg(long, default_value_t = 8)]
    pub degree: usize,
    /// Smallest one-way link latency, ms.
    #[arg(long, default_value_t = 1.0)]
    pub latency_min_ms: f64,
    /// Largest one-way link latency, ms.
    #[arg(long, default_value_t = 5.0)]
    pub latency_max_ms: f64,
    /// How the ring is created: `consensus` (the router's default, quorum from `--degree`
    /// peers) or `seed` (`--ipalloc-init seed=` every node: the ring exists at once).
    #[arg(long, value_enum, default_value_t = InitMode::Consensus)]
    pub init: InitMode,
    /// Pods each node allocates at start (besides its gateway).
    #[arg(long, default_value_t = 10)]
    pub pods: usize,
    /// Skip simulating the start: with `--init seed`, every node allocates its gateway and
    /// pods, then hears one full state holding every node's record, all before time 0, and
    /// what those steps sent is not counted. Steady state and churn are then measured from a
    /// converged mesh whose start would cost too much to simulate.
    #[arg(long)]
    pub warm: bool,
    /// Quiet time after the start converged, before the steady window, s.
    #[arg(long, default_value_t = 10.0)]
    pub settle_s: f64,
    /// Length of the steady-state window, s (a multiple of the 30 s gossip interval measures
    /// its mean exactly).
    #[arg(long, default_value_t = 60.0)]
    pub steady_s: f64,
    /// Length of the churn window, s (0: no churn).
    #[arg(long, default_value_t = 60.0)]
    pub churn_s: f64,
    /// Each node replaces one pod (release its oldest, allocate a new one) this often, s.
    #[arg(long, default_value_t = 10.0)]
    pub churn_interval_s: f64,
    /// Longest a phase may take to converge, s.
    #[arg(long, default_value_t = 120.0)]
    pub max_phase_s: f64,
    /// Bytes of framing counted per message (length prefix and AEAD tag).
    #[arg(long, default_value_t = 20)]
    pub frame_overhead: u64,
    /// Period of the convergence check, ms of simulated time.
    #[arg(long, default_value_t = 100.0)]
    pub check_interval_ms: f64,
}

impl IpamArgs {
    /// Returns the defaults for `nodes` routers.
    pub fn with_nodes(nodes: usize) -> Self {
        Self {
            nodes,
            seed: 1,
            json: false,
            degree: 8,
            latency_min_ms: 1.0,
            latency_max_ms: 5.0,
            init: InitMode::Consensus,
            pods: 10,
            warm: false,
            settle_s: 10.0,
            steady_s: 60.0,
            churn_s: 60.0,
            churn_interval_s: 10.0,
            max_phase_s: 120.0,
            frame_overhead: 20,
            check_interval_ms: 100.0,
        }
    }
}

/// How the simulated ring is created.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// Paxos among the nodes at their first allocation (the router's default).
    Consensus,
    /// Every node is a seed: the ring is split evenly among all at once.
    Seed,
}

/// What a run found.
#[derive(Clone, Debug, Serialize)]
pub struct IpamReport {
    /// Simulated routers.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// How the ring was created.
    pub init: InitMode,
    /// Whether every phase converged.
    pub converged: bool,
    /// Simulated time from the start to convergence, s.
    pub start_convergence_s: f64,
    /// Mean bytes each node sent from the start to convergence.
    pub start_bytes_per_node_mean: f64,
    /// Mean bytes each node sent per second over the steady window.
    pub steady_bytes_per_node_per_s_mean: f64,
    /// The most one node sent per second over the steady window.
    pub steady_bytes_per_node_per_s_max: f64,
    /// Mean bytes each node sent per second over the churn window.
    pub churn_bytes_per_node_per_s_mean: f64,
    /// The most one node sent per second over the churn window.
    pub churn_bytes_per_node_per_s_max: f64,
    /// Pods replaced (one release and one allocation each) in the churn window.
    pub churn_replacements: u64,
    /// Allocations still pending when the churn window closed.
    pub churn_pending_at_end: usize,
    /// Simulated time from the end of the churn window to convergence, s.
    pub churn_convergence_s: f64,
    /// Ring entries at the end.
    pub ring_entries: usize,
    /// The longest IPAM message any node sent in the run, bytes (without framing).
    pub largest_message_bytes: usize,
    /// Encoded length of node 0's whole state at the end, bytes (without framing).
    pub full_state_bytes: usize,
    /// What sending that whole state to every neighbour every gossip interval would cost
    /// each node (the periodic gossip before digests), bytes per second, framing included.
    pub full_state_gossip_bytes_per_node_per_s: f64,
    /// Mean direct connections per node.
    pub mean_connections_per_node: f64,
    /// IPAM messages delivered in the whole run.
    pub messages_delivered: u64,
    /// Simulated time, s.
    pub simulated_s: f64,
    /// Wall time, s.
    pub wall_s: f64,
    /// The model: degree, latency range, pods, windows.
    pub degree: usize,
    /// One-way latency range, ms.
    pub latency_ms: [f64; 2],
    /// Pods per node.
    pub pods: usize,
    /// Settle, steady and churn windows, s.
    pub windows_s: [f64; 3],
    /// Seconds between a node's pod replacements in the churn window.
    pub churn_interval_s: f64,
    /// Bytes of framing counted per message.
    pub frame_overhead_bytes: u64,
}

/// Runs the simulation.
///
/// # Errors
///
/// When the arguments make no sense (fewer than 2 nodes, a bad latency range).
pub fn run(args: &IpamArgs) -> Result<IpamReport> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if !(args.latency_min_ms > 0.0 && args.latency_max_ms >= args.latency_min_ms) {
        bail!("need 0 < --latency-min-ms <= --latency-max-ms");
    }
    if args.warm && args.init != InitMode::Seed {
        bail!("--warm needs --init seed");
    }
    if args.churn_s > 0.0 && args.churn_interval_s <= 0.0 {
        bail!("--churn-interval-s must be positive");
    }
    let wall = Instant::now();
    let mut sim = Sim::new(args);
    let mut converged = true;

    // Start.
    if args.warm {
        sim.warm_start();
    } else {
        sim.start();
    }
    let start = sim.run_until_converged(secs(args.max_phase_s));
    converged &= start.is_some();
    let start_convergence_s = start.map_or(f64::NAN, to_s);
    let start_bytes = sim.total_sent();
    let start_bytes_per_node_mean = start_bytes as f64 / args.nodes as f64;

    // Settle, then the steady window.
    sim.run_until(sim.now + secs(args.settle_s));
    let (steady_mean, steady_max) = sim.measure(secs(args.steady_s));

    // Churn.
    let (churn_mean, churn_max, churn_convergence_s) = if args.churn_s > 0.0 {
        sim.schedule_churn();
        let end = sim.now + secs(args.churn_s);
        let measured = sim.measure(secs(args.churn_s));
        sim.churning = false;
        debug_assert!(sim.now >= end);
        let after = sim.run_until_converged(secs(args.max_phase_s));
        converged &= after.is_some();
        (measured.0, measured.1, after.map_or(f64::NAN, to_s))
    } else {
        (0.0, 0.0, 0.0)
    };

    let connections: usize = sim.nodes.iter().map(|n| n.links.len()).sum();
    let full_state = sim.nodes[0].ipam.state_len();
    Ok(IpamReport {
        nodes: args.nodes,
        seed: args.seed,
        init: args.init,
        converged,
        start_convergence_s,
        start_bytes_per_node_mean: round3(start_bytes_per_node_mean),
        steady_bytes_per_node_per_s_mean: round3(steady_mean),
        steady_bytes_per_node_per_s_max: round3(steady_max),
        churn_bytes_per_node_per_s_mean: round3(churn_mean),
        churn_bytes_per_node_per_s_max: round3(churn_max),
        churn_replacements: sim.replacements,
        churn_pending_at_end: sim.pending_at_churn_end,
        churn_convergence_s,
        ring_entries: sim.nodes[0].ipam.ring().map_or(0, |r| r.entries().len()),
        largest_message_bytes: sim.largest,
        full_state_bytes: full_state,
        full_state_gossip_bytes_per_node_per_s: round3(
            (full_state as u64 + args.frame_overhead + 1) as f64 * connections as f64
                / args.nodes as f64
                / GOSSIP_INTERVAL_S,
        ),
        mean_connections_per_node: round3(connections as f64 / args.nodes as f64),
        messages_delivered: sim.delivered,
        simulated_s: round3(to_s(sim.now)),
        wall_s: round3(wall.elapsed().as_secs_f64()),
        degree: args.degree,
        latency_ms: [args.latency_min_ms, args.latency_max_ms],
        pods: args.pods,
        windows_s: [args.settle_s, args.steady_s, args.churn_s],
        churn_interval_s: args.churn_interval_s,
        frame_overhead_bytes: args.frame_overhead,
    })
}

/// Prints the report as a table or as one JSON line.
///
/// # Errors
///
/// When writing fails.
pub fn print_report(out: &mut impl Write, r: &IpamReport, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "weft-sim ipam: {} nodes, seed {}, init {:?}, {} pods each, degree {} ({:.1} connections)",
        r.nodes, r.seed, r.init, r.pods, r.degree, r.mean_connections_per_node
    )?;
    writeln!(
        out,
        "  converged: {}   start: {:.2} s, {:.0} B/node",
        r.converged, r.start_convergence_s, r.start_bytes_per_node_mean
    )?;
    writeln!(
        out,
        "  steady ({} s):  {:.1} B/node/s mean, {:.1} max",
        r.windows_s[1], r.steady_bytes_per_node_per_s_mean, r.steady_bytes_per_node_per_s_max
    )?;
    writeln!(
        out,
        "  churn ({} s, one pod per node every {} s, {} replaced): {:.1} B/node/s mean, {:.1} max; \
         converged {:.2} s after",
        r.windows_s[2],
        r.churn_interval_s,
        r.churn_replacements,
        r.churn_bytes_per_node_per_s_mean,
        r.churn_bytes_per_node_per_s_max,
        r.churn_convergence_s
    )?;
    writeln!(
        out,
        "  whole state {} B (sent to every neighbour every 30 s: {:.1} B/node/s)",
        r.full_state_bytes, r.full_state_gossip_bytes_per_node_per_s
    )?;
    writeln!(
        out,
        "  ring: {} entries, largest message {} B; {} messages; simulated {:.1} s, wall {:.2} s",
        r.ring_entries, r.largest_message_bytes, r.messages_delivered, r.simulated_s, r.wall_s
    )?;
    Ok(())
}

/// Virtual time, ns since the start.
type Ns = u64;

/// The engine's gossip interval (`ipam::Config::new`; the router keeps it).
const GOSSIP_INTERVAL_S: f64 = 30.0;

struct Node {
    ipam: Ipam,
    name: PeerName,
    /// Neighbours and the one-way latency to each, ns.
    links: BTreeMap<usize, Ns>,
    /// The pending timer's deadline, if one is scheduled.
    timer: Option<Ns>,
    /// This node's pods, oldest first (container IDs).
    pods: VecDeque<String>,
    next_pod: u64,
    /// Bytes sent.
    sent: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Deliver {
        to: usize,
        from: usize,
        bytes: Rc<Vec<u8>>,
    },
    Timer {
        node: usize,
    },
    Churn {
        node: usize,
    },
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: Ns,
    seq: u64,
    kind: Kind,
}

struct Sim {
    base: Instant,
    now: Ns,
    seq: u64,
    queue: BinaryHeap<std::cmp::Reverse<Event>>,
    nodes: Vec<Node>,
    by_name: BTreeMap<PeerName, usize>,
    rng: ChaCha8Rng,
    frame: u64,
    check_every: Ns,
    pods: usize,
    churn_interval: Ns,
    churning: bool,
    largest: usize,
    replacements: u64,
    pending_at_churn_end: usize,
    delivered: u64,
}

impl Sim {
    fn new(args: &IpamArgs) -> Self {
        let n = args.nodes;
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let base = Instant::now();
        let names: Vec<PeerName> = (0..n)
            .map(|i| {
                let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
                PeerName::from_bytes([0x02, 0x00, b[0], b[1], b[2], b[3]])
            })
            .collect();
        let init = match args.init {
            InitMode::Consensus => ipam::Init::default_for_targets(args.degree.min(n - 1)),
            InitMode::Seed => ipam::Init::Seed(names.clone()),
        };
        let mut nodes: Vec<Node> = names
            .iter()
            .map(|&name| {
                let mut config = ipam::Config::new(name);
                config.init = init.clone();
                // As the router sets it (router/src/daemon/allocations.rs, `start_ipam`).
                config.propose_interval = Duration::from_secs(1);
                Node {
                    ipam: Ipam::new(config, base, rng.r#gen()),
                    name,
                    links: BTreeMap::new(),
                    timer: None,
                    pods: VecDeque::new(),
                    next_pod: 0,
                    sent: 0,
                }
            })
            .collect();
        let degree = args.degree.min(n - 1);
        let lat = |rng: &mut ChaCha8Rng| {
            let ms = rng.gen_range(args.latency_min_ms..=args.latency_max_ms);
            (ms * 1e6) as Ns
        };
        for i in 0..n {
            let mut picked: Vec<usize> = Vec::with_capacity(degree);
            while picked.len() < degree {
                let j = rng.gen_range(0..n);
                if j != i && !picked.contains(&j) {
                    picked.push(j);
                }
            }
            for j in picked {
                if nodes[i].links.contains_key(&j) {
                    continue;
                }
                let l = lat(&mut rng);
                nodes[i].links.insert(j, l);
                nodes[j].links.insert(i, l);
            }
        }
        let by_name = names.iter().enumerate().map(|(i, &p)| (p, i)).collect();
        Self {
            base,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            by_name,
            rng,
            frame: args.frame_overhead + 1,
            check_every: (args.check_interval_ms * 1e6) as Ns,
            pods: args.pods,
            churn_interval: secs(args.churn_interval_s),
            churning: false,
            largest: 0,
            replacements: 0,
            pending_at_churn_end: 0,
            delivered: 0,
        }
    }

    fn at(&self, t: Ns) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn push(&mut self, at: Ns, kind: Kind) {
        self.seq += 1;
        self.queue.push(std::cmp::Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// Time 0: every node sees every other, then allocates its gateway and its pods.
    fn start(&mut self) {
        let now = self.at(0);
        let names: Vec<PeerName> = self.nodes.iter().map(|n| n.name).collect();
        for i in 0..self.nodes.len() {
            self.nodes[i]
                .ipam
                .handle_peers_seen(now, names.iter().copied());
            self.drain(i);
        }
        for i in 0..self.nodes.len() {
            let _ = self.nodes[i].ipam.gateway(now);
            for _ in 0..self.pods {
                self.add_pod(i, now);
            }
            self.drain(i);
        }
    }

    /// The converged state without simulating its start (`--warm`): nothing sent counts.
    fn warm_start(&mut self) {
        let now = self.at(0);
        let names: Vec<PeerName> = self.nodes.iter().map(|n| n.name).collect();
        for i in 0..self.nodes.len() {
            let ipam = &mut self.nodes[i].ipam;
            ipam.handle_peers_seen(now, names.iter().copied());
            let _ = ipam.gateway(now);
            for _ in 0..self.pods {
                self.add_pod(i, now);
            }
            // Nothing is sent: discard what the start asked for.
            let ipam = &mut self.nodes[i].ipam;
            while ipam.poll_transmit().is_some() {}
            let _ = ipam.poll_snapshot();
            while ipam.poll_event().is_some() {}
        }
        self.queue.clear();
        for n in &mut self.nodes {
            n.sent = 0;
            n.timer = None;
        }
        self.largest = 0;
        let now = self.at(0);
        let ring = self.nodes[0].ipam.ring().map(|r| ipam::RingState {
            seeds: self.nodes.iter().map(|n| n.name).collect(),
            entries: r.entries().clone(),
        });
        let peers = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.name, n.ipam.records().get(&n.name)?.clone())))
            .collect();
        let whole = ipam::Message::State {
            range: self.nodes[0].ipam.range(),
            ring,
            peers,
            paxos: None,
            answer: false,
            delta: false,
        }
        .to_bytes();
        for i in 0..self.nodes.len() {
            let Some(&from) = self.nodes[i].links.keys().next() else {
                continue;
            };
            let from = self.nodes[from].name;
            let _ = self.nodes[i].ipam.handle_gossip(now, from, &whole);
            while self.nodes[i].ipam.poll_transmit().is_some() {}
            let _ = self.nodes[i].ipam.poll_snapshot();
            while self.nodes[i].ipam.poll_event().is_some() {}
        }
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
    }

    fn add_pod(&mut self, i: usize, now: Instant) {
        let node = &mut self.nodes[i];
        let cid = format!("pod-{}", node.next_pod);
        node.next_pod += 1;
        // Pending allocations complete later (`Event::Allocated`); the pod waits meanwhile.
        if let Ok(Allocation::Allocated(_) | Allocation::Pending(_)) =
            node.ipam.allocate(now, &cid, "eth0")
        {
            node.pods.push_back(cid);
        }
    }

    fn schedule_churn(&mut self) {
        self.churning = true;
        for i in 0..self.nodes.len() {
            let phase = self.rng.gen_range(0..self.churn_interval.max(1));
            self.push(self.now + phase, Kind::Churn { node: i });
        }
    }

    /// Carries out what node `i`'s engine asked for, as the router's `drain_ipam` does.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        // Persisting is the router's business; the simulation only drops the snapshot.
        let _ = self.nodes[i].ipam.poll_snapshot();
        while let Some((dest, body)) = self.nodes[i].ipam.poll_transmit() {
            self.largest = self.largest.max(body.len());
            let bytes = Rc::new(body);
            let size = bytes.len() as u64 + self.frame;
            let to: Vec<(usize, Ns)> = match dest {
                Destination::Broadcast => {
                    self.nodes[i].links.iter().map(|(&j, &l)| (j, l)).collect()
                }
                Destination::Peer(p) => self
                    .by_name
                    .get(&p)
                    .and_then(|j| self.nodes[i].links.get(j).map(|&l| (*j, l)))
                    .into_iter()
                    .collect(),
            };
            for (j, l) in to {
                self.nodes[i].sent += size;
                self.push(
                    now + l,
                    Kind::Deliver {
                        to: j,
                        from: i,
                        bytes: Rc::clone(&bytes),
                    },
                );
            }
        }
        while self.nodes[i].ipam.poll_event().is_some() {}
        let deadline = self.nodes[i]
            .ipam
            .poll_timeout()
            .map(|(t, _)| t.saturating_duration_since(self.base).as_nanos() as Ns);
        if let Some(t) = deadline
            && self.nodes[i].timer != Some(t)
        {
            self.nodes[i].timer = Some(t);
            self.push(t.max(now), Kind::Timer { node: i });
        }
    }

    fn step(&mut self, limit: Ns) -> bool {
        let Some(std::cmp::Reverse(head)) = self.queue.peek() else {
            self.now = limit;
            return false;
        };
        if head.at > limit {
            self.now = limit;
            return false;
        }
        let Some(std::cmp::Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        self.now = ev.at;
        let now = self.at(ev.at);
        match ev.kind {
            Kind::Deliver { to, from, bytes } => {
                self.delivered += 1;
                let name = self.nodes[from].name;
                let _ = self.nodes[to].ipam.handle_gossip(now, name, &bytes);
                self.drain(to);
            }
            Kind::Timer { node } => {
                if self.nodes[node].timer == Some(ev.at) {
                    self.nodes[node].timer = None;
                    self.nodes[node].ipam.handle_timeout(now);
                    self.drain(node);
                }
            }
            Kind::Churn { node } => {
                if self.churning {
                    if let Some(old) = self.nodes[node].pods.pop_front() {
                        let _ = self.nodes[node].ipam.release(&old, "eth0");
                    }
                    self.add_pod(node, now);
                    self.replacements += 1;
                    self.drain(node);
                    let next = ev.at + self.churn_interval;
                    self.push(next, Kind::Churn { node });
                }
            }
        }
        true
    }

    fn run_until(&mut self, t: Ns) {
        while self.step(t) {}
        self.now = t;
    }

    /// Runs for `window` and returns the mean and the largest bytes per node per second sent.
    fn measure(&mut self, window: Ns) -> (f64, f64) {
        let before: Vec<u64> = self.nodes.iter().map(|n| n.sent).collect();
        self.run_until(self.now + window);
        if self.churning {
            self.pending_at_churn_end = self.nodes.iter().map(|n| n.ipam.pending()).sum();
        }
        let s = to_s(window).max(1e-9);
        let per: Vec<f64> = self
            .nodes
            .iter()
            .zip(&before)
            .map(|(n, b)| (n.sent - b) as f64 / s)
            .collect();
        let mean = per.iter().sum::<f64>() / per.len() as f64;
        let max = per.iter().copied().fold(0.0, f64::max);
        (mean, max)
    }

    fn total_sent(&self) -> u64 {
        self.nodes.iter().map(|n| n.sent).sum()
    }

    /// Runs until converged (checked every `check_interval`); returns the time it took.
    fn run_until_converged(&mut self, limit: Ns) -> Option<Ns> {
        let start = self.now;
        loop {
            if self.converged() {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            let next = self.now + self.check_every;
            self.run_until(next);
        }
    }

    fn converged(&self) -> bool {
        let Some(first) = self.nodes[0].ipam.ring() else {
            return false;
        };
        let seqs: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| n.ipam.records().get(&n.name).map_or(0, |r| r.seq))
            .collect();
        // A node keeps at most `MAX_PEERS` records (the first it hears of).
        let want = self.nodes.len().min(ipam::wire::MAX_PEERS);
        let mut held: BTreeSet<IpAddr> = BTreeSet::new();
        for n in &self.nodes {
            let Some(ring) = n.ipam.ring() else {
                return false;
            };
            if ring.entries() != first.entries() || n.ipam.pending() > 0 {
                return false;
            }
            let records = n.ipam.records();
            if records.len() != want
                || records
                    .iter()
                    .any(|(p, r)| self.by_name.get(p).is_none_or(|&j| seqs[j] != r.seq))
            {
                return false;
            }
            for (a, _) in n.ipam.allocations() {
                assert!(held.insert(a), "{a} allocated twice");
            }
        }
        true
    }
}

fn secs(s: f64) -> Ns {
    (s * 1e9) as Ns
}

fn to_s(t: Ns) -> f64 {
    t as f64 / 1e9
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
