//! `weft-sim dataplane`: the data plane's forwarding over a whole simulated mesh, without a
//! kernel. N routers' topology engines (`topology::Mesh`) converge over a seeded underlay on a
//! virtual clock (control messages lost at `--loss`, retransmitted as TCP would); then each
//! router gets the sleeve's forwarding state from its engine (routes, links, a Noise handshake
//! per connection for its sessions) and one pod, and frames cross the mesh as the sleeve
//! carries them: the same `topology::dataplane::Forwarder`, chunker, sessions and reassembler
//! as the router, on lossless links. Checked: each pod's broadcast reaches every other router
//! exactly once; every pod pair exchanges unicast frames, whole, relayed where the underlay
//! is partial; a pod that moves to another router is found there after it announces itself.
//! Deterministic for a seed (all but `wall_s`).
//!
//! Underlays: `full` (every router reaches every other), `line` (router i reaches i ± 1) and
//! `random` (a ring in a seeded order, plus `--chords` random links per router: connected,
//! with most links missing). Each router dials the routers its underlay reaches (discovery
//! off: the mesh routes around the missing links). The sleeve's hop limit
//! (`topology::sleeve::packet::MAX_HOP_LIMIT`) bounds how far a frame travels: pairs farther
//! apart are expected to drop their frames (counted apart, not failures).

mod carry;
mod control;

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;

/// Flags of `weft-sim dataplane`.
#[derive(clap::Args, Debug, Clone)]
pub struct DataplaneArgs {
    /// Number of simulated routers, one pod each.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Which routers reach which: full, line or random.
    #[arg(long, value_enum, default_value_t = UnderlayKind::Random)]
    pub underlay: UnderlayKind,
    /// Random links per router on top of the ring (`--underlay random`).
    #[arg(long, default_value_t = 3)]
    pub chords: usize,
    /// Control messages lost while the mesh converges, percent (each arrives one TCP
    /// retransmission late).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pods moved to another router after the first checks.
    #[arg(long, default_value_t = 10)]
    pub moves: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl DataplaneArgs {
    /// The defaults for `nodes` routers.
    pub fn with_nodes(nodes: usize) -> Self {
        Self {
            nodes,
            underlay: UnderlayKind::Random,
            chords: 3,
            loss: 0.0,
            seed: 1,
            moves: 10,
            json: false,
        }
    }
}

/// Which routers reach which.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayKind {
    /// Everyone reaches everyone.
    Full,
    /// Router i reaches i − 1 and i + 1.
    Line,
    /// A ring in a seeded order plus random chords.
    Random,
}

/// What a run found. Keys are stable: scripts depend on them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataplaneReport {
    /// Routers (and pods).
    pub nodes: usize,
    /// The underlay.
    pub underlay: String,
    /// The seed.
    pub seed: u64,
    /// Control-message loss, percent.
    pub loss_percent: f64,
    /// Underlay links (router pairs that reach each other).
    pub underlay_links: usize,
    /// Established control connections once converged (each a sleeve link).
    pub connections: usize,
    /// Simulated seconds until every router's view agreed and reached every router.
    pub converged_s: Option<f64>,
    /// Control messages delivered, and how many of them were lost once first.
    pub control_messages: u64,
    /// See above.
    pub control_lost: u64,
    /// Broadcasts sent (one per pod).
    pub broadcasts: u64,
    /// Routers that got a broadcast exactly once / never though within the hop limit / more
    /// than once.
    pub broadcast_delivered: u64,
    /// See above.
    pub broadcast_missing: u64,
    /// See above.
    pub broadcast_duplicates: u64,
    /// Unicast frames sent (every ordered pod pair, then every router to each moved pod).
    pub unicast_sent: u64,
    /// Delivered whole to the right router exactly once.
    pub unicast_delivered: u64,
    /// Not delivered though within the hop limit, delivered elsewhere, or altered.
    pub unicast_failed: u64,
    /// Pairs farther apart than the hop limit (their frames do not arrive, as expected).
    pub beyond_hop_limit: u64,
    /// Copies of those pairs' frames delivered elsewhere: the destination pod's MAC was never
    /// learned (its broadcasts do not reach that far), so the frame was flooded.
    pub unicast_flooded: u64,
    /// Datagrams relayed by routers on the way.
    pub relayed: u64,
    /// Most hops a delivered frame took.
    pub max_hops: u32,
    /// Frames larger than one datagram (reassembled at the far end), of those sent.
    pub multi_chunk_frames: u64,
    /// Pods moved, and found at their new router by every other router.
    pub moves: u64,
    /// See above.
    pub moves_followed: u64,
    /// Datagrams the forwarder dropped, and ones that failed to open (both 0 when all is well,
    /// hop-limit drops beyond the limit apart).
    pub dropped: u64,
    /// See above.
    pub open_failures: u64,
    /// Every check passed.
    pub passed: bool,
    /// What failed, first few.
    pub failures: Vec<String>,
    /// Wall-clock seconds.
    pub wall_s: f64,
}

/// Runs the simulation.
///
/// # Errors
/// Fails on nonsensical flags.
pub fn run(args: &DataplaneArgs) -> Result<DataplaneReport> {
    if args.nodes < 2 || args.nodes >= 1 << 16 {
        bail!("--nodes must be 2..65535");
    }
    if !(0.0..100.0).contains(&args.loss) {
        bail!("--loss must be a percentage below 100");
    }
    let wall = Instant::now();
    let mut report = DataplaneReport {
        nodes: args.nodes,
        underlay: format!("{:?}", args.underlay).to_lowercase(),
        seed: args.seed,
        loss_percent: args.loss,
        ..DataplaneReport::default()
    };
    let underlay = control::Underlay::build(args);
    report.underlay_links = underlay.links();
    let mut control = control::Control::new(args, &underlay);
    match control.converge() {
        Some(t) => report.converged_s = Some((t as f64 / 1e9 * 1e3).round() / 1e3),
        None => {
            report.failures.push("the mesh did not converge".into());
        }
    }
    report.control_messages = control.delivered;
    report.control_lost = control.lost;
    if report.converged_s.is_some() {
        let mut mesh = carry::Mesh::from_control(&control, args.seed)?;
        report.connections = mesh.connections();
        mesh.check(args, &mut report);
    }
    report.passed = report.failures.is_empty();
    report.wall_s = (wall.elapsed().as_secs_f64() * 1e3).round() / 1e3;
    Ok(report)
}

/// Writes a report: one JSON object with `json`, else a table.
///
/// # Errors
/// Fails when `out` cannot be written.
pub fn print_report(out: &mut impl Write, report: &DataplaneReport, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    let v = serde_json::to_value(report)?;
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            writeln!(out, "{k:<22} {v}")?;
        }
    }
    Ok(())
}
