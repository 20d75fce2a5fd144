//! `weft-sim mesh`: a deterministic discrete-event simulation of N routers running the real
//! topology core ([`topology::Mesh`]) over a modelled network.
//!
//! # Model
//!
//! - Virtual time: every instant is `base + Duration`; nothing reads the clock except the
//!   wall-clock measurement of the run itself. A seeded ChaCha RNG draws the topology, the
//!   crash victim, the partition halves and each node's seed; each node draws its own network
//!   events (the latency of its dials, the loss of what it sends) from its own ChaCha stream
//!   of the seed. The same seed gives the same result, whatever `--threads`.
//! - Each node dials `--degree` distinct random peers (explicit targets; discovery off).
//! - A control connection gets a one-way latency drawn from `[--latency-min-ms,
//!   --latency-max-ms]`; a dial takes 3 one-way latencies (TCP plus a Noise round trip) and
//!   completes for both ends at the same instant.
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
//! # Threads
//!
//! A conservative parallel discrete-event simulation. The nodes are split into contiguous
//! parts (4 per thread with more than one thread), each with its own event queue; all nodes
//! share one record cache (its lock is hardly contended; a cache per part cost more in memory
//! traffic than it saved). Time advances in windows of `--latency-min-ms` (the lookahead):
//! whatever a node sends inside a window arrives after it, so within a window the parts are
//! independent and the threads take them one at a time (whoever is free takes the next); the
//! events for other parts are handed over at the window's end (one barrier). Events are ordered by (time, scheduling node, that node's
//! sequence number), which no thread interleaving changes, and all state the parts read about
//! other nodes (alive, partition half, name, uid) changes only between windows, so every node
//! handles the same events in the same order whatever the thread count: the report (but
//! `wall_s` and `threads`) is the same. The thread count is chosen per slice of 10 ms of
//! simulated time: after a slice in which the threads did less than 1.2 cores' worth of work
//! per second of wall time (a busy machine, or workers waiting at barriers), the next 15
//! slices run on the driver thread alone.
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
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use topology::peers::entry_hash;
use topology::routes::Graph;
use topology::{ConnId, Event as MeshEvent, Mesh, PeerName, PeerNames, PeerUid, RecordCache};

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
    /// Worker threads (the nodes are split among them); the simulated figures are the same
    /// for every count. Default: the available parallelism.
    #[arg(long)]
    pub threads: Option<usize>,
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
            threads: None,
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
    /// Worker threads the run used (the simulated figures do not depend on it).
    pub threads: usize,
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
    if args.nodes >= 1 << 24 {
        bail!("--nodes must be below 16777216");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(args.nodes);
    keep_freed_memory();
    let wall = Instant::now();
    let mut sim = Sim::new(args, threads);
    sim.debug("set up");
    let check = ns(args.check_interval_ms / 1e3);
    let cap = ns(args.max_phase_s);

    // Phase 1: cold start.
    let cold = sim.run_until_converged(0, cap, check);
    let conns: usize = sim
        .live_nodes()
        .map(|(_, n)| n.mesh.connections().count())
        .sum();
    let mean_conns = conns as f64 / sim.live() as f64;

    sim.debug("cold start converged");
    let mut marks = vec![sim.totals()];
    // Phase 2: steady state.
    let settle_end = sim.now + ns(args.settle_s);
    sim.run_to(settle_end);
    let before: Vec<u64> = sim.nodes().map(|n| sim.sent_bytes(n)).collect();
    let steady_end = sim.now + ns(args.steady_s);
    sim.run_to(steady_end);
    let rates: Vec<f64> = sim
        .nodes()
        .zip(&before)
        .enumerate()
        .filter(|(i, _)| sim.world.alive[*i])
        .map(|(_, (n, b))| (sim.sent_bytes(n) - b) as f64 / args.steady_s)
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let max = rates.iter().copied().fold(0.0, f64::max);

    sim.debug("steady window measured");
    // Phase 3: one node crashes.
    let victim = sim.rng.gen_range(0..args.nodes);
    sim.world.alive[victim] = false;
    let t_leave = sim.now;
    let leave = sim.run_until_converged(t_leave, t_leave + cap, check);

    sim.debug("leave converged");
    marks.push(sim.totals());
    // Phase 4: partition, then heal.
    let mut live: Vec<usize> = (0..args.nodes).filter(|&i| sim.world.alive[i]).collect();
    live.shuffle(&mut sim.rng);
    for (k, &i) in live.iter().enumerate() {
        sim.world.half[i] = u8::from(k % 2 == 1);
    }
    sim.world.partitioned = true;
    let heal_at = sim.now + ns(args.partition_s);
    sim.run_to(heal_at);
    sim.world.partitioned = false;
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
    let total: u64 = sim.nodes().map(|n| sim.sent_bytes(n)).sum();
    let cfg = sim.node(0).mesh.config();
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
        messages_delivered: sim.delivered(),
        total_gossip_bytes: total,
        simulated_s: round3(sim.now as f64 / 1e9),
        versions_per_node,
        records_applied_per_n2,
        threads,
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

/// Bits of an event's tie-break key that hold the scheduling node's sequence number; the
/// node's index is above them.
const SEQ_BITS: u32 = 40;

/// Parts per worker thread when there is more than one: the threads take them one by one,
/// so the last part of a window is what one thread may wait for at its end. 3,000 nodes,
/// heal phase: with 4 per thread each thread waited 0.8–1.0 s at window ends and the window
/// maxima summed 9.7–9.9 % above an even split of the work; with 16, 0.4–0.5 s and 5–6 %.
const PARTS_PER_THREAD: usize = 16;

/// Simulated time each choice of thread count holds for (ns).
const SLICE: u64 = 10_000_000;

/// When the threads did less than this many cores' worth of work per second of wall time in a
/// slice, the next `SOLO_SLICES` slices run on one thread.
const SOLO_BELOW: f64 = 1.2;
const SOLO_SLICES: u32 = 15;

/// A slice run on one thread whose windows averaged at least this much work (CPU ns) ends the
/// run on one thread early: bursts (a cold start's records, a partition's collections) come
/// in a few hundred ms of simulated time, and waiting out `SOLO_SLICES` after a quiet slice
/// ran a 5,000-node partition's burst on one core.
const HEAVY_WINDOW_NS: u64 = 200_000;

/// Rounds a worker spins at a window's end before it sleeps: about 0.5 ms here, the order of a
/// window's work at 5,000 nodes (1.9 ms on average). Sleeping at once cost a wake-up per window
/// (200 rounds, 5 µs: 2,000 nodes spent 0.75–0.95 s per thread waiting at window ends where
/// they now spend 0.62–0.73 s). Not longer: on a shared machine the thread waited for may not
/// be running, and spinning holds a core.
const SPINS: usize = 20_000;

/// Read-only while the parts run a window: what any part may look up about any node, and the
/// network's state (who is alive, the partition). Only the driver changes it, between windows.
struct World<'a> {
    args: &'a MeshArgs,
    base: Instant,
    names: Vec<PeerName>,
    uids: Vec<PeerUid>,
    addrs: Vec<SocketAddr>,
    by_addr: HashMap<SocketAddr, usize>,
    alive: Vec<bool>,
    half: Vec<u8>,
    partitioned: bool,
    /// Nodes per part (the last part may hold fewer): node `i` belongs to part `i / chunk`.
    chunk: usize,
    loss: f64,
    retransmit: u64,
    dial_timeout: u64,
}

impl World<'_> {
    fn part_of(&self, node: usize) -> usize {
        node / self.chunk
    }

    fn split(&self, a: usize, b: usize) -> bool {
        self.partitioned && self.half[a] != self.half[b]
    }

    /// Whether a dial from `a` to `b` completing now succeeds. Both ends decide it at the same
    /// instant from this state, which changes only between windows, so they agree.
    fn connectable(&self, a: usize, b: usize) -> bool {
        self.alive[a] && self.alive[b] && !self.split(a, b)
    }

    fn at(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn latency(&self, rng: &mut ChaCha8Rng) -> u64 {
        ns(rng.gen_range(self.args.latency_min_ms..=self.args.latency_max_ms) / 1e3)
    }
}

struct Node {
    mesh: Mesh,
    /// The node's own draws of the network model (latencies of its dials, loss of what it
    /// sends): no other node's events touch it, so thread scheduling cannot change it.
    rng: ChaCha8Rng,
    /// Events this node has scheduled: the tie-break key of the next one.
    seq: u64,
    /// Connections this node has dialled (the low bits of their ids).
    dialled: u32,
    timer: Option<u64>,
    /// This end of each open connection.
    links: Vec<Link>,
    /// The version of its own record the node had after its last event, and that record's
    /// entry hash (for the convergence check's target digest, kept up to date per part).
    version: u64,
    own_hash: u64,
}

impl Node {
    fn link(&mut self, conn: u64) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.conn == conn)
    }

    fn remove_link(&mut self, conn: u64) -> Option<Link> {
        let k = self.links.iter().position(|l| l.conn == conn)?;
        Some(self.links.swap_remove(k))
    }
}

/// One end of a control connection.
struct Link {
    conn: u64,
    peer: usize,
    latency: u64,
    /// Last scheduled arrival of what this end sent, for TCP ordering.
    last: u64,
}

enum Action {
    Deliver {
        conn: u64,
        to: usize,
        bytes: Vec<u8>,
    },
    /// The dialled end learns of a connection, at the instant the dialler does; both decide
    /// from the same state (see [`World::connectable`]).
    Accept {
        conn: u64,
        to: usize,
        from: usize,
        latency: u64,
    },
    /// The dialler learns whether its dial succeeded.
    DialDone {
        from: usize,
        addr: SocketAddr,
        to: Option<usize>,
        latency: u64,
        conn: u64,
    },
    Down {
        conn: u64,
        to: usize,
    },
    Timer {
        node: usize,
    },
}

impl Action {
    /// The node whose state the action changes.
    fn target(&self) -> usize {
        match *self {
            Self::Deliver { to, .. } | Self::Accept { to, .. } | Self::Down { to, .. } => to,
            Self::DialDone { from, .. } => from,
            Self::Timer { node } => node,
        }
    }
}

/// An event bound for another part.
struct Mail {
    time: u64,
    key: u64,
    action: Action,
}

/// A contiguous range of nodes with their own event queue, run by one thread.
///
/// Events are ordered by (time, scheduling node, that node's sequence number): a total order
/// that does not depend on which part or thread scheduled them or when they were queued, so
/// every node handles the same events in the same order whatever the number of parts.
struct Part {
    id: usize,
    first: usize,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// The actions by slot; freed slots are reused.
    actions: Vec<Option<Action>>,
    free: Vec<u32>,
    /// Events for other parts scheduled in the current window, by destination part.
    out: Vec<Vec<Mail>>,
    now: u64,
    /// End (exclusive) of the window being run: nothing may be sent to another part for
    /// earlier than this.
    window_end: u64,
    delivered: u64,
    /// Sum of the entry hashes of the part's nodes' own records (dead nodes included).
    own_digest: u64,
}

impl Part {
    fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - self.first]
    }

    fn push(&mut self, time: u64, key: u64, action: Action) {
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
        self.queue.push(Reverse((time, key, slot)));
    }

    /// Schedules `action` at `time` on behalf of node `origin` (one of ours).
    fn schedule(&mut self, w: &World<'_>, origin: usize, time: u64, action: Action) {
        let n = self.node(origin);
        n.seq += 1;
        let key = ((origin as u64) << SEQ_BITS) | n.seq;
        let part = w.part_of(action.target());
        if part == self.id {
            self.push(time, key, action);
        } else {
            // The lookahead: another part may be running up to our window's end.
            debug_assert!(
                time >= self.window_end,
                "event for another part inside the window"
            );
            self.out[part].push(Mail { time, key, action });
        }
    }

    fn receive(&mut self, mail: &mut Vec<Mail>) {
        for m in mail.drain(..) {
            self.push(m.time, m.key, m.action);
        }
    }

    /// Keeps `own_digest` up to date when node `i` has published a new version.
    fn note_version(&mut self, w: &World<'_>, i: usize) {
        let n = &mut self.nodes[i - self.first];
        let version = n.mesh.version();
        if version != n.version {
            let hash = entry_hash(w.names[i], n.mesh.uid().0, version);
            self.own_digest = self.own_digest.wrapping_sub(n.own_hash).wrapping_add(hash);
            n.version = version;
            n.own_hash = hash;
        }
    }

    /// Handles every queued event earlier than `end`.
    fn run_window(&mut self, w: &World<'_>, end: u64) {
        self.window_end = end;
        while let Some(&Reverse((time, _, slot))) = self.queue.peek() {
            if time >= end {
                break;
            }
            self.queue.pop();
            self.now = time;
            self.free.push(slot);
            if let Some(action) = self.actions[slot as usize].take() {
                let target = action.target();
                self.apply(w, action);
                self.note_version(w, target);
            }
        }
    }

    fn apply(&mut self, w: &World<'_>, action: Action) {
        let now = w.at(self.now);
        match action {
            Action::Timer { node } => {
                let t = self.now;
                let n = self.node(node);
                if !w.alive[node] || n.timer != Some(t) {
                    return;
                }
                n.timer = None;
                n.mesh.handle_timeout(now);
                self.drive(w, node);
            }
            Action::Deliver { conn, to, bytes } => {
                let n = self.node(to);
                // A message on a connection this end has closed is discarded, as TCP does.
                if !w.alive[to] || n.link(conn).is_none() {
                    return;
                }
                // A malformed message cannot happen here; the result only counts rejects.
                let _ = n.mesh.handle_control(now, ConnId(conn), &bytes);
                self.delivered += 1;
                self.drive(w, to);
            }
            Action::Accept {
                conn,
                to,
                from,
                latency,
            } => {
                if !w.connectable(from, to) {
                    return;
                }
                let n = self.node(to);
                n.links.push(Link {
                    conn,
                    peer: from,
                    latency,
                    last: 0,
                });
                let port = 32768 + (conn & 0xffff_ffff) % 28000;
                let ephemeral = SocketAddr::new(w.addrs[from].ip(), port as u16);
                n.mesh.handle_connection_up(
                    now,
                    ConnId(conn),
                    w.names[from],
                    w.uids[from],
                    "",
                    ephemeral,
                    false,
                );
                self.drive(w, to);
            }
            Action::Down { conn, to } => {
                let n = self.node(to);
                if !w.alive[to] || n.remove_link(conn).is_none() {
                    return;
                }
                n.mesh
                    .handle_connection_down(now, ConnId(conn), "closed by peer");
                self.drive(w, to);
            }
            Action::DialDone {
                from,
                addr,
                to,
                latency,
                conn,
            } => self.dial_done(w, from, addr, to, latency, conn),
        }
    }

    fn dial_done(
        &mut self,
        w: &World<'_>,
        from: usize,
        addr: SocketAddr,
        to: Option<usize>,
        latency: u64,
        conn: u64,
    ) {
        let now = w.at(self.now);
        if !w.alive[from] {
            return;
        }
        let Some(j) = to.filter(|&j| w.connectable(from, j)) else {
            self.node(from)
                .mesh
                .handle_dial_failed(now, addr, "connection failed");
            self.drive(w, from);
            return;
        };
        let n = self.node(from);
        n.links.push(Link {
            conn,
            peer: j,
            latency,
            last: 0,
        });
        n.mesh
            .handle_connection_up(now, ConnId(conn), w.names[j], w.uids[j], "", addr, true);
        self.drive(w, from);
    }

    /// Drains a node's outputs into the event queues.
    fn drive(&mut self, w: &World<'_>, i: usize) {
        let now = w.at(self.now);
        while let Some((conn, bytes)) = self.node(i).mesh.poll_transmit() {
            self.transmit(w, i, conn.0, bytes);
        }
        while let Some(e) = self.node(i).mesh.poll_event() {
            match e {
                MeshEvent::Dial(addr) => {
                    let n = self.node(i);
                    n.mesh.handle_dial_started(now, addr);
                    let latency = w.latency(&mut n.rng);
                    n.dialled += 1;
                    let conn = ((i as u64 + 1) << 32) | u64::from(n.dialled);
                    let to = w.by_addr.get(&addr).copied();
                    let delay = match to {
                        Some(j) if w.split(i, j) => w.dial_timeout,
                        Some(j) if !w.alive[j] => 2 * latency,
                        Some(_) | None => 3 * latency,
                    };
                    // Never less than the lookahead: the accept below goes to another node.
                    let done = self.now + delay.max(latency);
                    let action = Action::DialDone {
                        from: i,
                        addr,
                        to,
                        latency,
                        conn,
                    };
                    self.schedule(w, i, done, action);
                    if let Some(j) = to {
                        let accept = Action::Accept {
                            conn,
                            to: j,
                            from: i,
                            latency,
                        };
                        self.schedule(w, i, done, accept);
                    }
                }
                MeshEvent::CloseConnection { conn, .. } => {
                    if let Some(link) = self.node(i).remove_link(conn.0)
                        && !w.split(i, link.peer)
                    {
                        // After whatever this end sent before (TCP ordering).
                        let t = (self.now + link.latency).max(link.last);
                        let action = Action::Down {
                            conn: conn.0,
                            to: link.peer,
                        };
                        self.schedule(w, i, t, action);
                    }
                }
                MeshEvent::PeerAdded(_)
                | MeshEvent::PeerRemoved(_)
                | MeshEvent::PeerCutOff(_)
                | MeshEvent::PeerBack(_)
                | MeshEvent::RoutesChanged => {}
            }
        }
        // Event handling may have queued more to send.
        while let Some((conn, bytes)) = self.node(i).mesh.poll_transmit() {
            self.transmit(w, i, conn.0, bytes);
        }
        let base = w.base;
        let t_now = self.now;
        let n = self.node(i);
        if let Some((t, _)) = n.mesh.poll_timeout() {
            let t = t.saturating_duration_since(base).as_nanos() as u64;
            let t = t.max(t_now);
            if n.timer.is_none_or(|old| t < old || old < t_now) {
                n.timer = Some(t);
                self.schedule(w, i, t, Action::Timer { node: i });
            }
        }
    }

    fn transmit(&mut self, w: &World<'_>, from: usize, conn: u64, bytes: Vec<u8>) {
        let t_now = self.now;
        let n = self.node(from);
        let lost = n.rng.gen_bool(w.loss);
        let Some(link) = n.link(conn) else {
            return;
        };
        let to = link.peer;
        if w.split(from, to) {
            return;
        }
        let mut t = t_now + link.latency + if lost { w.retransmit } else { 0 };
        t = t.max(link.last);
        link.last = t;
        self.schedule(w, from, t, Action::Deliver { conn, to, bytes });
    }
}

/// A barrier for the worker threads that spins briefly before sleeping: windows are short (a
/// millisecond of simulated time), so the other threads are usually about to arrive. The last
/// thread to arrive runs a closure before releasing the others.
struct SpinBarrier {
    parties: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cond: Condvar::new(),
        }
    }

    fn wait(&self, last: impl FnOnce()) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            last();
            self.count.store(0, Ordering::Relaxed);
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.cond.notify_all();
            return;
        }
        for _ in 0..SPINS {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while self.generation.load(Ordering::Acquire) == generation {
            guard = self
                .cond
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What the worker threads share while running: the parts, the index of the next part to
/// run in the current window, and the mail bound for each part, double-buffered by window
/// parity (a window's mail is written while the previous window's is being read).
struct Exchange<'p> {
    parts: Vec<Mutex<&'p mut Part>>,
    next: AtomicUsize,
    barrier: SpinBarrier,
    mail: [Vec<Mutex<Vec<Mail>>>; 2],
    /// CPU time of each worker in the current window, and over all windows the sum of the
    /// largest and the sum of all (ns; `WEFT_SIM_DEBUG`): their ratio is the balance.
    busy: Vec<AtomicU64>,
    critical: AtomicU64,
    total: AtomicU64,
}

/// Tells glibc's allocator to keep freed memory instead of returning it to the kernel. The
/// engines allocate and free millions of messages and announcement lists of up to a few
/// hundred KB; by default the allocator gave such blocks back (trimming the heap top, or
/// `mmap` for large ones) and the next allocation faulted in freshly zeroed pages: at 5,000
/// nodes the kernel's page zeroing was 11 % of the cold start's samples. (The `weft-sim`
/// binary allocates with mimalloc, which this does not touch; it serves a program that calls
/// [`run`] on glibc's allocator, as the tests do.)
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; any value is accepted or ignored.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs windows in lockstep with the other workers until every event up to `t` is handled;
/// returns the time spent waiting for them.
///
/// Conservative parallel simulation: windows of the smallest one-way latency (`lookahead`)
/// from `start`, so nothing sent inside a window can arrive inside it. In each window the
/// workers take the parts one at a time (whoever is free takes the next), each part first
/// taking the mail sent to it in the previous window; one barrier ends the window.
fn work(
    ex: &Exchange<'_>,
    w: &World<'_>,
    me: usize,
    start: u64,
    t: u64,
    lookahead: u64,
) -> Duration {
    let mut waited = Duration::ZERO;
    let mut inbox = Vec::new();
    let mut window_start = start;
    let mut parity = 0;
    while window_start <= t {
        let end = window_start.saturating_add(lookahead).min(t + 1);
        let cpu = thread_cpu_ns();
        loop {
            let k = ex.next.fetch_add(1, Ordering::Relaxed);
            let Some(cell) = ex.parts.get(k) else { break };
            let mut part = cell.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(
                &mut inbox,
                &mut *ex.mail[1 - parity][k]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            part.receive(&mut inbox);
            part.run_window(w, end);
            for (p, out) in part.out.iter_mut().enumerate() {
                if !out.is_empty() {
                    ex.mail[parity][p]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .append(out);
                }
            }
        }
        ex.busy[me].store(thread_cpu_ns() - cpu, Ordering::Relaxed);
        let waiting = Instant::now();
        ex.barrier.wait(|| {
            ex.next.store(0, Ordering::Relaxed);
            let busy = ex.busy.iter().map(|b| b.load(Ordering::Relaxed));
            ex.critical
                .fetch_add(busy.clone().max().unwrap_or(0), Ordering::Relaxed);
            ex.total.fetch_add(busy.sum(), Ordering::Relaxed);
        });
        waited += waiting.elapsed();
        parity ^= 1;
        window_start = end;
    }
    waited
}

struct Sim<'a> {
    world: World<'a>,
    parts: Vec<Part>,
    now: u64,
    /// The smallest one-way latency: the parallel windows' length.
    lookahead: u64,
    /// The driver's draws (victim, partition halves, route-check sample); the network's draws
    /// are each node's own.
    rng: ChaCha8Rng,
    sample: Option<Vec<usize>>,
    /// Worker threads (parts are more: whoever is free takes the next part).
    threads: usize,
    /// Wall time each worker spent waiting for the others at window ends, and the windows
    /// run (for `WEFT_SIM_DEBUG`).
    waited: Vec<Duration>,
    windows: u64,
    cpu_critical: u64,
    cpu_total: u64,
    /// Wall time of the convergence checks (one thread).
    checking: Duration,
    /// Slices still to run on one thread, and slices so run (for `WEFT_SIM_DEBUG`).
    solo_left: u32,
    solo_slices: u64,
}

impl<'a> Sim<'a> {
    fn new(args: &'a MeshArgs, threads: usize) -> Self {
        let base = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let n = args.nodes;
        let threads = threads.clamp(1, n);
        // Several parts per thread, so that a thread that finishes its part early (or runs
        // alone for a while on a busy machine) takes the next one.
        let parts_n = if threads == 1 {
            1
        } else {
            (threads * PARTS_PER_THREAD).min(n)
        };
        let chunk = n.div_ceil(parts_n);
        // One interner for all nodes; every name interned here, in node order, before
        // anything runs, so the indices never depend on the threads' scheduling.
        let names = PeerNames::new();
        let cache = RecordCache::indexed(names.clone());
        let mut nodes = Vec::with_capacity(n);
        let mut world = World {
            args,
            base,
            names: Vec::with_capacity(n),
            uids: Vec::with_capacity(n),
            addrs: Vec::with_capacity(n),
            by_addr: HashMap::with_capacity(n),
            alive: vec![true; n],
            half: vec![0; n],
            partitioned: false,
            chunk,
            loss: (args.loss_percent / 100.0).clamp(0.0, 1.0),
            retransmit: ns(args.retransmit_ms / 1e3),
            dial_timeout: ns(args.dial_timeout_s),
        };
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
            names.intern(name);
            let mesh = Mesh::new(config, base, rng.r#gen());
            let mut net = ChaCha8Rng::seed_from_u64(args.seed);
            net.set_stream(i as u64 + 1);
            world.names.push(name);
            world.uids.push(mesh.uid());
            world.addrs.push(addr);
            world.by_addr.insert(addr, i);
            nodes.push(Node {
                mesh,
                rng: net,
                seq: 0,
                dialled: 0,
                timer: None,
                links: Vec::new(),
                version: 0,
                own_hash: 0,
            });
        }
        // Every name is known: from now on the nodes read the interner without its lock.
        names.freeze();
        let degree = args.degree.min(n - 1);
        for (i, node) in nodes.iter_mut().enumerate() {
            let mut picked: Vec<usize> = Vec::with_capacity(degree);
            while picked.len() < degree {
                let j = rng.gen_range(0..n);
                if j != i && !picked.contains(&j) {
                    picked.push(j);
                }
            }
            for j in picked {
                node.mesh.add_target(world.addrs[j]);
            }
        }
        let sample = (n > args.route_check_all_max).then(|| {
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(&mut rng);
            all.truncate(args.route_check_sample);
            all
        });
        let mut parts = Vec::with_capacity(parts_n);
        let mut rest = nodes.into_iter();
        for id in 0..parts_n {
            parts.push(Part {
                id,
                first: id * chunk,
                nodes: rest.by_ref().take(chunk).collect(),
                queue: BinaryHeap::new(),
                actions: Vec::new(),
                free: Vec::new(),
                out: (0..parts_n).map(|_| Vec::new()).collect(),
                now: 0,
                window_end: 0,
                delivered: 0,
                own_digest: 0,
            });
        }
        let mut sim = Self {
            world,
            parts,
            now: 0,
            lookahead: ns(args.latency_min_ms / 1e3).max(1),
            rng,
            sample,
            threads,
            waited: vec![Duration::ZERO; threads],
            windows: 0,
            cpu_critical: 0,
            cpu_total: 0,
            checking: Duration::ZERO,
            solo_left: 0,
            solo_slices: 0,
        };
        for part in &mut sim.parts {
            for i in part.first..part.first + part.nodes.len() {
                part.drive(&sim.world, i);
                part.note_version(&sim.world, i);
            }
        }
        sim.post();
        sim
    }

    /// Moves every part's outgoing events into their destinations' queues.
    fn post(&mut self) {
        for p in 0..self.parts.len() {
            for q in 0..self.parts.len() {
                let mut mail = std::mem::take(&mut self.parts[p].out[q]);
                self.parts[q].receive(&mut mail);
                self.parts[p].out[q] = mail;
            }
        }
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.parts.iter().flat_map(|p| p.nodes.iter())
    }

    fn node(&self, i: usize) -> &Node {
        let p = &self.parts[self.world.part_of(i)];
        &p.nodes[i - p.first]
    }

    fn live_nodes(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes()
            .enumerate()
            .filter(|(i, _)| self.world.alive[*i])
    }

    fn delivered(&self) -> u64 {
        self.parts.iter().map(|p| p.delivered).sum()
    }

    /// Returns the sum of every node's own version and the records applied by all nodes.
    fn totals(&self) -> (u64, u64) {
        self.nodes().fold((0, 0), |(v, a), n| {
            (v + n.mesh.version(), a + n.mesh.stats().records_applied)
        })
    }

    fn live(&self) -> usize {
        self.world.alive.iter().filter(|a| **a).count()
    }

    fn sent_bytes(&self, n: &Node) -> u64 {
        let s = n.mesh.stats();
        s.sent_bytes + s.sent_messages * self.world.args.frame_overhead
    }

    #[allow(clippy::print_stderr)]
    fn debug(&self, what: &str) {
        if std::env::var_os("WEFT_SIM_DEBUG").is_none() {
            return;
        }
        let mut t = topology::api::GossipStats::default();
        for n in self.nodes() {
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
        let versions: u64 = self.nodes().map(|n| n.mesh.version()).sum();
        let waited: Vec<String> = self
            .waited
            .iter()
            .map(|w| format!("{:.3}", w.as_secs_f64()))
            .collect();
        eprintln!(
            "[{:.3}s sim, {:.3}s wall] {what}: own versions {versions}, windows {}, waited at \
             window ends (s, per thread) {}, worker CPU {:.3} s, largest per window summed \
             {:.3} s, convergence checks {:.3} s, slices on one thread {}, {t:?}",
            self.now as f64 / 1e9,
            self.world.base.elapsed().as_secs_f64(),
            self.windows,
            waited.join("/"),
            self.cpu_total as f64 / 1e9,
            self.cpu_critical as f64 / 1e9,
            self.checking.as_secs_f64(),
            self.solo_slices,
        );
    }

    /// Processes events up to and including time `t`, then sets the clock to `t`.
    fn run_to(&mut self, t: u64) {
        if self.parts.len() == 1 {
            // One part: one window up to `t` (nothing to exchange).
            let (world, part) = (&self.world, &mut self.parts[0]);
            part.run_window(world, t + 1);
        } else {
            // In slices, each of which decides how many threads to run.
            let mut from = self.now;
            loop {
                let to = (from + SLICE).min(t);
                self.run_slice(from, to);
                if to >= t {
                    break;
                }
                from = to;
            }
        }
        for part in &mut self.parts {
            part.now = t;
        }
        self.now = t;
    }

    /// Runs the parts' windows from `start` to `t` on the worker threads, or on this thread
    /// alone after the threads have just run no faster than one would (`solo_left`).
    fn run_slice(&mut self, start: u64, t: u64) {
        let (world, lookahead) = (&self.world, self.lookahead);
        let threads = if self.solo_left > 0 {
            self.solo_left -= 1;
            1
        } else {
            self.threads
        };
        {
            let wall = Instant::now();
            let n = self.parts.len();
            let mailboxes = || (0..n).map(|_| Mutex::new(Vec::new())).collect();
            let ex = Exchange {
                parts: self.parts.iter_mut().map(Mutex::new).collect(),
                next: AtomicUsize::new(0),
                barrier: SpinBarrier::new(threads),
                mail: [mailboxes(), mailboxes()],
                busy: (0..threads).map(|_| AtomicU64::new(0)).collect(),
                critical: AtomicU64::new(0),
                total: AtomicU64::new(0),
            };
            let waited = std::thread::scope(|s| {
                let ex = &ex;
                let others: Vec<_> = (1..threads)
                    .map(|me| s.spawn(move || work(ex, world, me, start, t, lookahead)))
                    .collect();
                let mut waited = vec![work(ex, world, 0, start, t, lookahead)];
                waited.extend(others.into_iter().map(|h| h.join().unwrap_or_default()));
                waited
            });
            let Exchange {
                parts,
                mail,
                critical,
                total,
                ..
            } = ex;
            drop(parts);
            let (critical, total) = (critical.into_inner(), total.into_inner());
            // Less than SOLO_BELOW cores' worth of work per second of wall time (other
            // processes hold the cores, or the workers wait at the barriers): alone for a
            // while, then try again.
            let windows = (t + 1 - start).div_ceil(lookahead);
            if threads > 1 && (total as f64) < SOLO_BELOW * wall.elapsed().as_nanos() as f64 {
                self.solo_left = SOLO_SLICES;
            } else if threads == 1 && self.solo_left > 0 && total >= HEAVY_WINDOW_NS * windows {
                self.solo_left = 0;
            }
            if threads == 1 && self.threads > 1 {
                self.solo_slices += 1;
            }
            self.cpu_critical += critical;
            self.cpu_total += total;
            for (total, w) in self.waited.iter_mut().zip(waited) {
                *total += w;
            }
            self.windows += windows;
            // The last window's mail (the other parity was emptied in the last window).
            for boxes in mail {
                for (part, inbox) in self.parts.iter_mut().zip(boxes) {
                    part.receive(&mut inbox.into_inner().unwrap_or_else(PoisonError::into_inner));
                }
            }
        }
    }

    /// Runs from `start` until converged (returning the time) or until `deadline`.
    fn run_until_converged(&mut self, start: u64, deadline: u64, step: u64) -> Option<u64> {
        let mut t = start;
        let mut next_route_check = 0;
        loop {
            self.run_to(t);
            let checking = Instant::now();
            let agree = t >= next_route_check && self.views_agree();
            let loop_free = agree && self.routes_loop_free();
            self.checking += checking.elapsed();
            if loop_free {
                return Some(t);
            }
            if agree {
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
        // The digest of the live nodes' own records: the parts keep the sum over all nodes.
        let mut count = 0u32;
        let mut digest = self
            .parts
            .iter()
            .fold(0u64, |d, p| d.wrapping_add(p.own_digest));
        for (i, &alive) in self.world.alive.iter().enumerate() {
            if alive {
                count += 1;
            } else {
                digest = digest.wrapping_sub(self.node(i).own_hash);
            }
        }
        debug_assert_eq!(
            digest,
            self.live_nodes()
                .fold(0u64, |d, (i, n)| d.wrapping_add(entry_hash(
                    self.world.names[i],
                    n.mesh.uid().0,
                    n.mesh.version()
                )))
        );
        self.live_nodes()
            .all(|(_, n)| n.mesh.view_digest() == (count, digest))
    }

    fn routes_loop_free(&self) -> bool {
        let names = &self.world.names;
        // The true graph: symmetric connections between live nodes, from their own records.
        let live: Vec<usize> = (0..names.len()).filter(|&i| self.world.alive[i]).collect();
        let index: HashMap<PeerName, usize> = live
            .iter()
            .enumerate()
            .map(|(k, &i)| (names[i], k))
            .collect();
        let own = |i: usize| self.node(i).mesh.peers().get(names[i]).cloned();
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
                .filter_map(|i| index.get(&names[*i]).copied())
                .collect(),
            None => (0..live.len()).collect(),
        };
        // Condition (1) holds, so every live node holds the same records: the engine's graph
        // is built once, from one node's table, and each source's next hops come from the
        // engine's own computation on it (`Graph::next_hops`, what `Routes::calculate` uses).
        let graph = Graph::build(self.node(live[0]).mesh.peers());
        let to_graph: Vec<Option<u32>> = live.iter().map(|&i| graph.index(names[i])).collect();
        let to_live: Vec<Option<usize>> = graph
            .names()
            .iter()
            .map(|n| index.get(n).copied())
            .collect();
        for s in sources {
            let Some(me) = to_graph[s] else {
                return false;
            };
            let next_hops = graph.next_hops(me);
            let hops = FirstHops::new(&adj, s);
            for (d, (&dist, &g)) in hops.dist.iter().zip(&to_graph).enumerate() {
                if d == s {
                    continue;
                }
                if dist == u32::MAX {
                    return false; // the live mesh itself is split
                }
                let hop = g
                    .and_then(|g| next_hops.get(g as usize))
                    .and_then(|&h| to_live.get(h as usize).copied().flatten());
                let Some(h) = hop else {
                    return false;
                };
                // A symmetric neighbour of s that begins a shortest path to d, i.e. strictly
                // closer to d than s.
                let Some(k) = adj[s].iter().position(|&v| v as usize == h) else {
                    return false;
                };
                if !hops.contains(d, k) {
                    return false;
                }
            }
        }
        true
    }
}

/// Distances from a source in the true graph, and for every node the set of the source's
/// neighbours (as indices into its adjacency list) that begin a shortest path to it: one
/// breadth-first pass, instead of one per neighbour.
struct FirstHops {
    dist: Vec<u32>,
    sets: Vec<u64>,
    words: usize,
}

impl FirstHops {
    fn new(adj: &[Vec<u32>], s: usize) -> Self {
        let words = adj[s].len().div_ceil(64).max(1);
        let mut dist = vec![u32::MAX; adj.len()];
        let mut sets = vec![0u64; adj.len() * words];
        let mut order: Vec<u32> = Vec::with_capacity(adj.len());
        dist[s] = 0;
        for (k, &v) in adj[s].iter().enumerate() {
            dist[v as usize] = 1;
            sets[v as usize * words + k / 64] |= 1 << (k % 64);
            order.push(v);
        }
        let mut head = 0;
        while let Some(&u) = order.get(head) {
            head += 1;
            let (u, du) = (u as usize, dist[u as usize]);
            for &v in &adj[u] {
                let v = v as usize;
                if dist[v] == u32::MAX {
                    dist[v] = du + 1;
                    order.push(v as u32);
                }
                if dist[v] == du + 1 {
                    for w in 0..words {
                        sets[v * words + w] |= sets[u * words + w];
                    }
                }
            }
        }
        Self { dist, sets, words }
    }

    fn contains(&self, node: usize, k: usize) -> bool {
        self.sets[node * self.words + k / 64] >> (k % 64) & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;

    use super::*;

    fn bfs(adj: &[Vec<u32>], root: usize) -> Vec<u32> {
        let mut dist = vec![u32::MAX; adj.len()];
        dist[root] = 0;
        let mut q = VecDeque::from([root]);
        while let Some(u) = q.pop_front() {
            for &v in &adj[u] {
                if dist[v as usize] == u32::MAX {
                    dist[v as usize] = dist[u] + 1;
                    q.push_back(v as usize);
                }
            }
        }
        dist
    }

    /// The first-hop sets agree with the definition: neighbour k of s is in the set of d
    /// exactly when it is one step closer to d than s (checked by a search from each
    /// neighbour), on random sparse graphs, some of them split, some with a node of degree
    /// above 64.
    #[test]
    fn first_hops_match_distances_from_each_neighbour() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut widest = 0;
        for round in 0..40 {
            let n = rng.gen_range(2..120);
            let mut adj = vec![Vec::<u32>::new(); n];
            let edges = rng.gen_range(0..n * 3);
            for e in 0..edges {
                let a = if round % 4 == 0 && e % 2 == 0 {
                    0
                } else {
                    rng.gen_range(0..n)
                };
                let b = rng.gen_range(0..n);
                if a != b && !adj[a].contains(&(b as u32)) {
                    adj[a].push(b as u32);
                    adj[b].push(a as u32);
                }
            }
            widest = adj.iter().map(Vec::len).max().unwrap().max(widest);
            for s in 0..n {
                let hops = FirstHops::new(&adj, s);
                let from_s = bfs(&adj, s);
                assert_eq!(hops.dist, from_s);
                for (k, &h) in adj[s].iter().enumerate() {
                    let from_h = bfs(&adj, h as usize);
                    for d in 0..n {
                        let closer = d != s && from_s[d] != u32::MAX && from_h[d] + 1 == from_s[d];
                        assert_eq!(
                            hops.contains(d, k),
                            closer,
                            "round {round} s {s} d {d} k {k}"
                        );
                    }
                }
            }
        }
        assert!(widest > 64, "{widest}");
    }
}
