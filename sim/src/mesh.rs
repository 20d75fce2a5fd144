//! `weft-sim mesh`: a deterministic discrete-event simulation of N routers running the real
//! topology core ([`topology::Mesh`]) over a modelled network.
//!
//! # Model
//!
//! - Virtual time: every instant is `base + Duration`; nothing reads the clock except the
//!   wall-clock measurement of the run itself. One seeded ChaCha RNG drives the network and
//!   each node gets its own seed, so the same seed gives the same result.
//! - Each node dials `--degree` distinct random peers (explicit targets; discovery off).
//! - A control connection gets a one-way latency drawn from `[--latency-min-ms,
//!   --latency-max-ms]`; a dial takes 3 one-way latencies (TCP plus a Noise round trip).
//! - Connections are TCP-like: ordered per direction; a message is "lost" with probability
//!   `--loss-percent` and then arrives `--retransmit-ms` late (a retransmission), delaying the
//!   messages behind it too.
//! - A node that leaves crashes: it stops, sends nothing (no FIN/RST), and its peers notice only
//!   by heartbeat timeout. Dials to it fail after one round trip (refused).
//! - A partition splits the live nodes into two random halves for `--partition-s`; messages
//!   across are dropped and dials across fail after `--dial-timeout-s`.
//! - Gossip bytes are everything `poll_transmit` hands out (heartbeats included), plus
//!   `--frame-overhead` bytes per message for the router's length prefix and AEAD tag.
//!
//! # Convergence
//!
//! The mesh is converged when (1) every live node's view digest (record count and the sum of
//! per-record hashes of name, uid and version, see `topology::peers`) equals the digest of the
//! live nodes' own current records, i.e. every live node holds every live peer at its latest
//! version and no record of a dead peer (up to a 64-bit hash collision); and (2) routes are
//! loop-free: for each checked source `s` the engine's own route computation gives, for every
//! live destination `d`, a next hop that is a neighbour of `s` over a symmetric established
//! connection and strictly closer to `d` in the true graph (so following next hops always
//! reaches `d`). With `--nodes` ≤ `--route-check-all-max` every live node is a checked source;
//! above it, `--route-check-sample` sources drawn with the run's RNG (the report says which).
//! Because (1) holds, all live nodes hold the same records, so the engine's graph is built once
//! per check and each source's next hops come from the engine's `Graph::next_hops` on it.
//! Condition (1) is checked every `--check-interval-ms` of simulated time, (2) when (1) holds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use topology::peers::entry_hash;
use topology::routes::Graph;
use topology::{ConnId, Event as MeshEvent, Mesh, PeerName, PeerNames, RecordCache};

/// Flags of `weft-sim mesh`.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
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
    /// Per-message loss, percent (a lost message arrives one retransmission late).
    #[arg(long, default_value_t = 0.1)]
    pub loss_percent: f64,
    /// Delay a lost message suffers (TCP retransmission), ms.
    #[arg(long, default_value_t = 200.0)]
    pub retransmit_ms: f64,
    /// How long the mesh stays split in two halves, s.
    #[arg(long, default_value_t = 30.0)]
    pub partition_s: f64,
    /// Time allowed for a dial across the partition to fail, s.
    #[arg(long, default_value_t = 3.0)]
    pub dial_timeout_s: f64,
    /// Quiet time after cold-start convergence before the steady-state window, s.
    #[arg(long, default_value_t = 2.0)]
    pub settle_s: f64,
    /// Length of the steady-state window over which gossip bytes are measured, s.
    #[arg(long, default_value_t = 5.0)]
    pub steady_s: f64,
    /// Longest a phase may take to converge before the run counts as not converged, s.
    #[arg(long, default_value_t = 60.0)]
    pub max_phase_s: f64,
    /// Bytes of framing counted per control message (length prefix and AEAD tag).
    #[arg(long, default_value_t = 20)]
    pub frame_overhead: u64,
    /// Period of the convergence check, ms of simulated time.
    #[arg(long, default_value_t = 10.0)]
    pub check_interval_ms: f64,
    /// Up to this many nodes, routes are checked from every node.
    #[arg(long, default_value_t = 1000)]
    pub route_check_all_max: usize,
    /// Above it, routes are checked from this many sampled nodes.
    #[arg(long, default_value_t = 200)]
    pub route_check_sample: usize,
}

impl MeshArgs {
    /// Returns the defaults for `nodes` routers.
    pub fn with_nodes(nodes: usize) -> Self {
        Self {
            nodes,
            seed: 1,
            json: false,
            degree: 8,
            latency_min_ms: 1.0,
            latency_max_ms: 5.0,
            loss_percent: 0.1,
            retransmit_ms: 200.0,
            partition_s: 30.0,
            dial_timeout_s: 3.0,
            settle_s: 2.0,
            steady_s: 5.0,
            max_phase_s: 60.0,
            frame_overhead: 20,
            check_interval_ms: 10.0,
            route_check_all_max: 1000,
            route_check_sample: 200,
        }
    }
}

/// What a run measured. Keys are stable: scripts depend on them.
#[derive(Debug, Clone, Serialize)]
pub struct MeshReport {
    /// Routers simulated.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// True when all three phases converged.
    pub converged: bool,
    /// Simulated seconds from the cold start until converged.
    pub cold_start_convergence_s: Option<f64>,
    /// Simulated seconds from a node's crash until converged (heartbeat timeout included).
    pub leave_convergence_s: Option<f64>,
    /// Simulated seconds from the end of the partition until converged.
    pub partition_heal_convergence_s: Option<f64>,
    /// Mean over live nodes of control bytes sent per second in the steady-state window.
    pub gossip_bytes_per_node_per_s_mean: f64,
    /// Max over live nodes of the same.
    pub gossip_bytes_per_node_per_s_max: f64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
    /// Random peers each node dialled.
    pub degree: usize,
    /// One-way latency range, ms.
    pub latency_ms: [f64; 2],
    /// Per-message loss, percent.
    pub loss_percent: f64,
    /// Partition length, s.
    pub partition_s: f64,
    /// Heartbeat period and timeout of the core, s.
    pub heartbeat_interval_s: f64,
    /// See above.
    pub heartbeat_timeout_s: f64,
    /// Steady-state window, s.
    pub steady_window_s: f64,
    /// Framing bytes counted per message.
    pub frame_overhead_bytes: u64,
    /// Mean control connections per live node at the end of the cold start.
    pub mean_connections_per_node: f64,
    /// Which sources the route check covered ("all" or "sample of K").
    pub route_check: String,
    /// Control messages delivered over the whole run.
    pub messages_delivered: u64,
    /// Control bytes sent over the whole run (framing included), all nodes.
    pub total_gossip_bytes: u64,
    /// Simulated seconds covered by the run.
    pub simulated_s: f64,
    /// Versions of their own record all nodes published per phase, per live node at the end
    /// (the initial version excluded): `[cold start, settle + steady window + leave,
    /// partition, heal]`. Every version is a record every other node applies, so this is what
    /// the N² cost of a phase scales with.
    pub versions_per_node: [f64; 4],
    /// Records applied by all nodes per phase (the same phases), divided by N².
    pub records_applied_per_n2: [f64; 4],
}

/// Runs the simulation.
///
/// # Errors
///
/// Fails on nonsensical flags (fewer than 2 nodes, an empty latency range).
pub fn run(args: &MeshArgs) -> Result<MeshReport> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if !(args.latency_min_ms > 0.0 && args.latency_min_ms <= args.latency_max_ms) {
        bail!("need 0 < --latency-min-ms <= --latency-max-ms");
    }
    let wall = Instant::now();
    let mut sim = Sim::new(args);
    let check = ns(args.check_interval_ms / 1e3);
    let cap = ns(args.max_phase_s);

    // Phase 1: cold start.
    let cold = sim.run_until_converged(0, cap, check);
    let conns: usize = sim
        .nodes
        .iter()
        .filter(|n| n.alive)
        .map(|n| n.mesh.connections().count())
        .sum();
    let mean_conns = conns as f64 / sim.live() as f64;

    sim.debug("cold start converged");
    let mut marks = vec![sim.totals()];
    // Phase 2: steady state.
    let settle_end = sim.now + ns(args.settle_s);
    sim.run_to(settle_end);
    let before: Vec<u64> = sim.nodes.iter().map(|n| sim.sent_bytes(n)).collect();
    let steady_end = sim.now + ns(args.steady_s);
    sim.run_to(steady_end);
    let rates: Vec<f64> = sim
        .nodes
        .iter()
        .zip(&before)
        .filter(|(n, _)| n.alive)
        .map(|(n, b)| (sim.sent_bytes(n) - b) as f64 / args.steady_s)
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let max = rates.iter().copied().fold(0.0, f64::max);

    sim.debug("steady window measured");
    // Phase 3: one node crashes.
    let victim = sim.rng.gen_range(0..sim.nodes.len());
    sim.nodes[victim].alive = false;
    let t_leave = sim.now;
    let leave = sim.run_until_converged(t_leave, t_leave + cap, check);

    sim.debug("leave converged");
    marks.push(sim.totals());
    // Phase 4: partition, then heal.
    let mut live: Vec<usize> = (0..sim.nodes.len())
        .filter(|&i| sim.nodes[i].alive)
        .collect();
    live.shuffle(&mut sim.rng);
    for (k, &i) in live.iter().enumerate() {
        sim.nodes[i].half = u8::from(k % 2 == 1);
    }
    sim.partitioned = true;
    let heal_at = sim.now + ns(args.partition_s);
    sim.run_to(heal_at);
    sim.partitioned = false;
    sim.debug("partition over");
    marks.push(sim.totals());
    let heal = sim.run_until_converged(heal_at, heal_at + cap, check);

    sim.debug("heal converged");
    marks.push(sim.totals());
    let (live, n2) = (sim.live() as f64, (args.nodes * args.nodes) as f64);
    let mut versions_per_node = [0.0; 4];
    let mut records_applied_per_n2 = [0.0; 4];
    let mut prev = (args.nodes as u64, 0);
    for (k, &(v, a)) in marks.iter().enumerate() {
        versions_per_node[k] = round3((v - prev.0) as f64 / live);
        records_applied_per_n2[k] = round3((a - prev.1) as f64 / n2);
        prev = (v, a);
    }
    let secs = |t: Option<u64>| t.map(|t| round3(t as f64 / 1e9));
    let route_check = if args.nodes <= args.route_check_all_max {
        "all".to_owned()
    } else {
        format!("sample of {}", args.route_check_sample)
    };
    let total: u64 = sim.nodes.iter().map(|n| sim.sent_bytes(n)).sum();
    let cfg = sim.nodes[0].mesh.config();
    Ok(MeshReport {
        nodes: args.nodes,
        seed: args.seed,
        converged: cold.is_some() && leave.is_some() && heal.is_some(),
        cold_start_convergence_s: secs(cold),
        leave_convergence_s: secs(leave.map(|t| t - t_leave)),
        partition_heal_convergence_s: secs(heal.map(|t| t - heal_at)),
        gossip_bytes_per_node_per_s_mean: round3(mean),
        gossip_bytes_per_node_per_s_max: round3(max),
        wall_s: round3(wall.elapsed().as_secs_f64()),
        degree: args.degree,
        latency_ms: [args.latency_min_ms, args.latency_max_ms],
        loss_percent: args.loss_percent,
        partition_s: args.partition_s,
        heartbeat_interval_s: cfg.heartbeat_interval.as_secs_f64(),
        heartbeat_timeout_s: cfg.heartbeat_timeout.as_secs_f64(),
        steady_window_s: args.steady_s,
        frame_overhead_bytes: args.frame_overhead,
        mean_connections_per_node: round3(mean_conns),
        route_check,
        messages_delivered: sim.delivered,
        total_gossip_bytes: total,
        simulated_s: round3(sim.now as f64 / 1e9),
        versions_per_node,
        records_applied_per_n2,
    })
}

/// Writes a report to `out` (stdout in `weft-sim mesh`): one JSON object with `json`, else a
/// table.
///
/// # Errors
///
/// Fails when stdout cannot be written.
pub fn print_report(out: &mut impl Write, report: &MeshReport, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
        return Ok(());
    }
    let opt =
        |v: Option<f64>| v.map_or_else(|| "not converged".to_owned(), |s| format!("{s:.3} s"));
    writeln!(
        out,
        "weft-sim mesh: {} nodes, seed {}",
        report.nodes, report.seed
    )?;
    writeln!(
        out,
        "  model: degree {}, latency {}-{} ms, loss {} %, partition {} s, heartbeat {}/{} s",
        report.degree,
        report.latency_ms[0],
        report.latency_ms[1],
        report.loss_percent,
        report.partition_s,
        report.heartbeat_interval_s,
        report.heartbeat_timeout_s
    )?;
    writeln!(out, "  converged:                 {}", report.converged)?;
    writeln!(
        out,
        "  cold start convergence:    {}",
        opt(report.cold_start_convergence_s)
    )?;
    writeln!(
        out,
        "  leave convergence:         {}",
        opt(report.leave_convergence_s)
    )?;
    writeln!(
        out,
        "  partition heal convergence:{}",
        opt(report.partition_heal_convergence_s)
    )?;
    writeln!(
        out,
        "  steady gossip per node:    mean {:.0} B/s, max {:.0} B/s (window {} s)",
        report.gossip_bytes_per_node_per_s_mean,
        report.gossip_bytes_per_node_per_s_max,
        report.steady_window_s
    )?;
    writeln!(
        out,
        "  connections per node:      {:.2}",
        report.mean_connections_per_node
    )?;
    writeln!(out, "  route check:               {}", report.route_check)?;
    writeln!(
        out,
        "  versions per node:         {:?} (cold, leave, partition, heal)",
        report.versions_per_node
    )?;
    writeln!(
        out,
        "  records applied / N²:      {:?}",
        report.records_applied_per_n2
    )?;
    writeln!(
        out,
        "  simulated:                 {:.3} s",
        report.simulated_s
    )?;
    writeln!(out, "  wall clock:                {:.3} s", report.wall_s)?;
    Ok(())
}

fn ns(secs: f64) -> u64 {
    (secs * 1e9).round() as u64
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Node {
    mesh: Mesh,
    name: PeerName,
    addr: SocketAddr,
    alive: bool,
    half: u8,
    timer: Option<u64>,
}

struct Link {
    ends: [usize; 2],
    latency: u64,
    /// Last scheduled arrival per direction (index = sending end), for TCP ordering.
    last: [u64; 2],
}

enum Action {
    Deliver {
        conn: u64,
        to: usize,
        bytes: Vec<u8>,
    },
    DialDone {
        from: usize,
        addr: SocketAddr,
        to: Option<usize>,
    },
    Down {
        conn: u64,
        to: usize,
    },
    Timer {
        node: usize,
    },
}

struct Sim<'a> {
    args: &'a MeshArgs,
    base: Instant,
    now: u64,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    links: HashMap<u64, Link>,
    next_conn: u64,
    /// Pending actions as (time, scheduling order, slot in `actions`), earliest first; ties
    /// in scheduling order, so the run is deterministic.
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// The actions by slot; freed slots are reused.
    actions: Vec<Option<Action>>,
    free: Vec<u32>,
    seq: u64,
    partitioned: bool,
    delivered: u64,
    sample: Option<Vec<usize>>,
}

impl<'a> Sim<'a> {
    fn new(args: &'a MeshArgs) -> Self {
        let base = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let cache = RecordCache::new();
        let names = PeerNames::new();
        let n = args.nodes;
        let mut nodes = Vec::with_capacity(n);
        let mut by_addr = HashMap::with_capacity(n);
        for i in 0..n {
            let b = (i as u32 + 1).to_be_bytes();
            let name = PeerName::from_bytes([0x02, 0x00, b[0], b[1], b[2], b[3]]);
            let ip = Ipv4Addr::new(10, b[1], b[2], b[3]);
            let addr = SocketAddr::new(IpAddr::V4(ip), 6783);
            let mut config = topology::Config::new(name, format!("n{}", i + 1));
            config.discovery = false;
            config.route_recalc_delay = None;
            config.peer_events = false;
            config.record_cache = Some(cache.clone());
            config.peer_names = Some(names.clone());
            let mesh = Mesh::new(config, base, rng.r#gen());
            by_addr.insert(addr, i);
            nodes.push(Node {
                mesh,
                name,
                addr,
                alive: true,
                half: 0,
                timer: None,
            });
        }
        let degree = args.degree.min(n - 1);
        for i in 0..n {
            let mut picked: Vec<usize> = Vec::with_capacity(degree);
            while picked.len() < degree {
                let j = rng.gen_range(0..n);
                if j != i && !picked.contains(&j) {
                    picked.push(j);
                }
            }
            for j in picked {
                let addr = nodes[j].addr;
                nodes[i].mesh.add_target(addr);
            }
        }
        let sample = (n > args.route_check_all_max).then(|| {
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(&mut rng);
            all.truncate(args.route_check_sample);
            all
        });
        let mut sim = Self {
            args,
            base,
            now: 0,
            rng,
            nodes,
            by_addr,
            links: HashMap::new(),
            next_conn: 1,
            queue: BinaryHeap::new(),
            actions: Vec::new(),
            free: Vec::new(),
            seq: 0,
            partitioned: false,
            delivered: 0,
            sample,
        };
        for i in 0..n {
            sim.drive(i);
        }
        sim
    }

    /// Returns the sum of every node's own version and the records applied by all nodes.
    fn totals(&self) -> (u64, u64) {
        self.nodes.iter().fold((0, 0), |(v, a), n| {
            (v + n.mesh.version(), a + n.mesh.stats().records_applied)
        })
    }

    fn live(&self) -> usize {
        self.nodes.iter().filter(|n| n.alive).count()
    }

    fn sent_bytes(&self, n: &Node) -> u64 {
        let s = n.mesh.stats();
        s.sent_bytes + s.sent_messages * self.args.frame_overhead
    }

    fn at(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn schedule(&mut self, t: u64, action: Action) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.actions[s as usize] = Some(action);
                s
            }
            None => {
                self.actions.push(Some(action));
                (self.actions.len() - 1) as u32
            }
        };
        self.queue.push(Reverse((t, self.seq, slot)));
    }

    #[allow(clippy::print_stderr)]
    fn debug(&self, what: &str) {
        if std::env::var_os("WEFT_SIM_DEBUG").is_none() {
            return;
        }
        let mut t = topology::api::GossipStats::default();
        for n in &self.nodes {
            let s = n.mesh.stats();
            t.sent_bytes += s.sent_bytes;
            t.sent_heartbeats += s.sent_heartbeats;
            t.sent_bucket_digest_bytes += s.sent_bucket_digest_bytes;
            t.sent_summary_bytes += s.sent_summary_bytes;
            t.sent_request_bytes += s.sent_request_bytes;
            t.sent_update_bytes += s.sent_update_bytes;
            t.dropped_messages += s.dropped_messages;
            t.records_applied += s.records_applied;
        }
        let versions: u64 = self.nodes.iter().map(|n| n.mesh.version()).sum();
        eprintln!(
            "[{:.3}s sim, {:.3}s wall] {what}: own versions {versions}, {t:?}",
            self.now as f64 / 1e9,
            self.base.elapsed().as_secs_f64()
        );
    }

    /// Processes events up to and including time `t`, then sets the clock to `t`.
    fn run_to(&mut self, t: u64) {
        while let Some(&Reverse((when, _, slot))) = self.queue.peek() {
            if when > t {
                break;
            }
            self.queue.pop();
            self.now = when;
            self.free.push(slot);
            if let Some(action) = self.actions[slot as usize].take() {
                self.apply(action);
            }
        }
        self.now = t;
    }

    /// Runs from `start` until converged (returning the time) or until `deadline`.
    fn run_until_converged(&mut self, start: u64, deadline: u64, step: u64) -> Option<u64> {
        let mut t = start;
        let mut next_route_check = 0;
        loop {
            self.run_to(t);
            if t >= next_route_check && self.views_agree() {
                if self.routes_loop_free() {
                    return Some(t);
                }
                // Route checks are costly; after a failure wait a little longer.
                next_route_check = t + 10 * step;
            }
            if t >= deadline {
                return None;
            }
            t += step;
        }
    }

    fn views_agree(&self) -> bool {
        let mut count = 0u32;
        let mut digest = 0u64;
        for n in self.nodes.iter().filter(|n| n.alive) {
            count += 1;
            digest = digest.wrapping_add(entry_hash(n.name, n.mesh.uid().0, n.mesh.version()));
        }
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .all(|n| n.mesh.view_digest() == (count, digest))
    }

    fn routes_loop_free(&self) -> bool {
        // The true graph: symmetric connections between live nodes, from their own records.
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect();
        let index: HashMap<PeerName, usize> = live
            .iter()
            .enumerate()
            .map(|(k, &i)| (self.nodes[i].name, k))
            .collect();
        let own = |i: usize| self.nodes[i].mesh.peers().get(self.nodes[i].name).cloned();
        let records: Vec<_> = live.iter().map(|&i| own(i)).collect();
        let mut adj: Vec<Vec<u32>> = vec![Vec::new(); live.len()];
        for (k, rec) in records.iter().enumerate() {
            let Some(rec) = rec else { return false };
            for c in rec.connections.iter().filter(|c| c.established) {
                let Some(&j) = index.get(&c.remote) else {
                    continue;
                };
                let back = records[j]
                    .as_ref()
                    .and_then(|r| r.connection_to(rec.name))
                    .is_some_and(|b| b.established);
                if back {
                    adj[k].push(j as u32);
                }
            }
        }
        let sources: Vec<usize> = match &self.sample {
            Some(s) => s
                .iter()
                .filter_map(|i| index.get(&self.nodes[*i].name).copied())
                .collect(),
            None => (0..live.len()).collect(),
        };
        // Condition (1) holds, so every live node holds the same records: the engine's graph
        // is built once, from one node's table, and each source's next hops come from the
        // engine's own computation on it (`Graph::next_hops`, what `Routes::calculate` uses).
        let graph = Graph::build(self.nodes[live[0]].mesh.peers());
        // Distances from a node, computed on demand (the graph is undirected).
        let mut memo: HashMap<usize, Vec<u32>> = HashMap::new();
        for s in sources {
            let Some(me) = graph.index(self.nodes[live[s]].name) else {
                return false;
            };
            let next_hops = graph.next_hops(me);
            let from_s = memo.entry(s).or_insert_with(|| bfs(&adj, s)).clone();
            for (d, &want) in from_s.iter().enumerate() {
                if d == s {
                    continue;
                }
                if want == u32::MAX {
                    return false; // the live mesh itself is split
                }
                let hop = graph
                    .index(self.nodes[live[d]].name)
                    .and_then(|i| next_hops.get(i as usize))
                    .and_then(|&h| graph.names().get(h as usize));
                let Some(&hop) = hop else {
                    return false;
                };
                let Some(&h) = index.get(&hop) else {
                    return false;
                };
                if !adj[s].contains(&(h as u32)) {
                    return false;
                }
                let from_h = memo.entry(h).or_insert_with(|| bfs(&adj, h));
                if from_h[d] != want - 1 {
                    return false;
                }
            }
        }
        true
    }

    fn apply(&mut self, action: Action) {
        let now = self.at(self.now);
        match action {
            Action::Timer { node } => {
                let n = &mut self.nodes[node];
                if !n.alive || n.timer != Some(self.now) {
                    return;
                }
                n.timer = None;
                n.mesh.handle_timeout(now);
                self.drive(node);
            }
            Action::Deliver { conn, to, bytes } => {
                if !self.nodes[to].alive {
                    return;
                }
                self.delivered += 1;
                // A malformed message cannot happen here; the result only counts rejects.
                let _ = self.nodes[to]
                    .mesh
                    .handle_control(now, ConnId(conn), &bytes);
                self.drive(to);
            }
            Action::Down { conn, to } => {
                if !self.nodes[to].alive {
                    return;
                }
                self.nodes[to]
                    .mesh
                    .handle_connection_down(now, ConnId(conn), "closed by peer");
                self.drive(to);
            }
            Action::DialDone { from, addr, to } => self.dial_done(from, addr, to),
        }
    }

    fn dial_done(&mut self, from: usize, addr: SocketAddr, to: Option<usize>) {
        let now = self.at(self.now);
        if !self.nodes[from].alive {
            return;
        }
        let ok = to.filter(|&j| self.nodes[j].alive && !self.split(from, j));
        let Some(j) = ok else {
            self.nodes[from]
                .mesh
                .handle_dial_failed(now, addr, "connection failed");
            self.drive(from);
            return;
        };
        let id = self.next_conn;
        self.next_conn += 1;
        let lat = self.latency();
        self.links.insert(
            id,
            Link {
                ends: [from, j],
                latency: lat,
                last: [0, 0],
            },
        );
        let (a_name, a_uid, a_ip) = (
            self.nodes[from].name,
            self.nodes[from].mesh.uid(),
            self.nodes[from].addr.ip(),
        );
        let (b_name, b_uid) = (self.nodes[j].name, self.nodes[j].mesh.uid());
        let ephemeral = SocketAddr::new(a_ip, 32768 + (id % 28000) as u16);
        self.nodes[from]
            .mesh
            .handle_connection_up(now, ConnId(id), b_name, b_uid, "", addr, true);
        self.nodes[j].mesh.handle_connection_up(
            now,
            ConnId(id),
            a_name,
            a_uid,
            "",
            ephemeral,
            false,
        );
        self.drive(from);
        self.drive(j);
    }

    fn latency(&mut self) -> u64 {
        let ms = self
            .rng
            .gen_range(self.args.latency_min_ms..=self.args.latency_max_ms);
        ns(ms / 1e3)
    }

    fn split(&self, a: usize, b: usize) -> bool {
        self.partitioned && self.nodes[a].half != self.nodes[b].half
    }

    /// Drains a node's outputs into the event queue.
    fn drive(&mut self, i: usize) {
        let now = self.at(self.now);
        while let Some((conn, bytes)) = self.nodes[i].mesh.poll_transmit() {
            self.transmit(i, conn.0, bytes);
        }
        let mut events = VecDeque::new();
        while let Some(e) = self.nodes[i].mesh.poll_event() {
            events.push_back(e);
        }
        for e in events {
            match e {
                MeshEvent::Dial(addr) => {
                    self.nodes[i].mesh.handle_dial_started(now, addr);
                    let to = self.by_addr.get(&addr).copied();
                    let lat = self.latency();
                    let delay = match to {
                        Some(j) if self.split(i, j) => ns(self.args.dial_timeout_s),
                        Some(j) if !self.nodes[j].alive => 2 * lat,
                        Some(_) | None => 3 * lat,
                    };
                    self.schedule(self.now + delay, Action::DialDone { from: i, addr, to });
                }
                MeshEvent::CloseConnection { conn, .. } => {
                    if let Some(link) = self.links.remove(&conn.0) {
                        let other = if link.ends[0] == i {
                            link.ends[1]
                        } else {
                            link.ends[0]
                        };
                        if !self.split(i, other) {
                            self.schedule(
                                self.now + link.latency,
                                Action::Down {
                                    conn: conn.0,
                                    to: other,
                                },
                            );
                        }
                    }
                }
                MeshEvent::PeerAdded(_) | MeshEvent::PeerRemoved(_) | MeshEvent::RoutesChanged => {}
            }
        }
        // The transmit loop above may have been refilled by event handling; drain again.
        while let Some((conn, bytes)) = self.nodes[i].mesh.poll_transmit() {
            self.transmit(i, conn.0, bytes);
        }
        if let Some((t, _)) = self.nodes[i].mesh.poll_timeout() {
            let t = t.saturating_duration_since(self.base).as_nanos() as u64;
            let t = t.max(self.now);
            if self.nodes[i]
                .timer
                .is_none_or(|old| t < old || old < self.now)
            {
                self.nodes[i].timer = Some(t);
                self.schedule(t, Action::Timer { node: i });
            }
        }
    }

    fn transmit(&mut self, from: usize, conn: u64, bytes: Vec<u8>) {
        let lost = self
            .rng
            .gen_bool((self.args.loss_percent / 100.0).clamp(0.0, 1.0));
        let retransmit = ns(self.args.retransmit_ms / 1e3);
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let dir = usize::from(link.ends[0] != from);
        let to = link.ends[1 - dir];
        if self.partitioned && self.nodes[from].half != self.nodes[to].half {
            return;
        }
        let mut t = self.now + link.latency + if lost { retransmit } else { 0 };
        t = t.max(link.last[dir]);
        link.last[dir] = t;
        self.schedule(t, Action::Deliver { conn, to, bytes });
    }
}

fn bfs(adj: &[Vec<u32>], root: usize) -> Vec<u32> {
    let mut dist = vec![u32::MAX; adj.len()];
    dist[root] = 0;
    let mut q = VecDeque::from([root as u32]);
    while let Some(u) = q.pop_front() {
        let du = dist[u as usize];
        for &v in &adj[u as usize] {
            if dist[v as usize] == u32::MAX {
                dist[v as usize] = du + 1;
                q.push_back(v);
            }
        }
    }
    dist
}
