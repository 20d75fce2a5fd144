//! `weft-sim bench`: pod-to-pod TCP throughput and RTT over weft's data paths against a kernel
//! VXLAN baseline, in network namespaces on this machine (needs root, iperf3 and ping).
//!
//! Rows:
//! - `kernel-vxlan`: the baseline (below), always run.
//! - `fastdp`: the REAL router on the kernel VXLAN path: a two-node lab (`lab up --datapath
//!   fastdp`) with one pod per node; the routers only probe and manage the forwarding
//!   database, so `relay_cpu_pct_1` (both `weft router` processes) stays near zero.
//! - `sleeve`, `sleeve-encrypted`: the REAL router: a two-node lab (`lab up --datapath sleeve`
//!   [`--encrypt`]) with one pod per node, iperf3 between the pods; `relay_cpu_pct_1` is then
//!   the CPU of both `weft router` processes.
//! - `sleeve-relay`: the static two-host relay harness ([`relay::Relay`]),
//!   plain, no routing or crypto: the I/O floor the router builds on.
//!
//! All of them exist at once and runs interleave, so every row shares the machine's load.
//!
//! The baseline and relay harness:
//!
//! ```text
//!  B-h1-ps  B-h1-pv          B-h1                       B-u             B-h2
//!  eth0 ─── vs ─[weft]─ weft-tap ◀▶ relay ─┐                       ┌─ relay ◀▶ weft-tap ─[weft]─ ...
//!  eth0 ─── vv ─[vxbr]─ vx (VNI 42, 4789) ─┴─ eth0 ═══ [ubr] ═══ eth0 ─┴─ vx ─[vxbr]─ ...
//! ```
//!
//! Each host namespace has two bridges at the same pod MTU: `weft` with the sleeve's TAP,
//! served by an in-process [`relay::Relay`] (TAP offloads, UDP GSO/GRO, static
//! peer, plain), and `vxbr` with a kernel VXLAN device, the baseline. Each has its own pod
//! namespace per host, both pods numbered 10.32.0.I/12. The underlay (192.0.2.0/24, MTU 1500)
//! is a bridge in its own namespace; nothing is linked to the root namespace. Runs interleave
//! the configurations (baseline, then each config, repeated), each run bounded by iperf3's
//! `-t` and a wall-clock deadline; the report gives medians and ratios to the baseline. A
//! [`Namespaces`] guard deletes every namespace on drop, panics included.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use relay::{Relay, RelayConfig, RelayStats};
use serde::Serialize;
use weft_router::tap::{Tap, TapOptions};
use weft_router::udp::{UdpOptions, UdpSocket};

use crate::flood::{Flood, FloodSpec, FloodStats};
use crate::lab::{self, LabGuard, LabSpec, netns};

mod flood_row;
mod policy_row;
pub mod relay;
pub use flood_row::{FLOOD, FloodRatio};
pub use policy_row::{POLICY, PolicyFigures};

/// The baseline configuration's name.
pub const BASELINE: &str = "kernel-vxlan";
/// The relay harness's configuration name.
pub const RELAY: &str = "sleeve-relay";
/// The real routers on fastdp (`lab up --datapath fastdp`).
pub const FASTDP: &str = "fastdp";
/// A lab node itself to the lab's external host (the egress baseline).
pub const EGRESS_NODE: &str = "egress-node";
/// A lab pod to the external host, through its node's masquerade.
pub const EGRESS_POD: &str = "egress-pod";
/// Configurations this bench can run, baseline first.
pub const CONFIGS: [&str; 9] = [
    BASELINE,
    FASTDP,
    POLICY,
    "sleeve",
    "sleeve-encrypted",
    FLOOD,
    RELAY,
    EGRESS_NODE,
    EGRESS_POD,
];
/// Configurations run by default.
pub const DEFAULT_CONFIGS: [&str; 7] = [
    BASELINE,
    FASTDP,
    "sleeve",
    "sleeve-encrypted",
    FLOOD,
    EGRESS_NODE,
    EGRESS_POD,
];

/// `weft-sim bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Comma-separated configurations (kernel-vxlan, fastdp, fastdp-policy, sleeve,
    /// sleeve-encrypted, sleeve-encrypted-flood, sleeve-relay, egress-node, egress-pod); the
    /// baseline always runs, sleeve-encrypted with sleeve-encrypted-flood and fastdp with
    /// fastdp-policy. Default: all but sleeve-relay and fastdp-policy.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Runs per configuration and stream count (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Pod MTU (the underlay is 1500).
    #[arg(long, default_value_t = 1450)]
    pub mtu: u32,
    /// Nice value of the sleeve relay threads (0 = unchanged).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub relay_nice: i32,
    /// SCHED_FIFO priority of the sleeve relay threads (0 = ordinary scheduling).
    #[arg(long, default_value_t = 0)]
    pub relay_fifo: i32,
}

/// The bench's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// One row per configuration, baseline first.
    pub rows: Vec<BenchRow>,
    /// Runs per configuration and stream count.
    pub runs: usize,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Pod MTU.
    pub pod_mtu: u32,
    /// Counters of the two sleeve relays (h1, h2) at the end, when the sleeve ran.
    pub sleeve_relays: Vec<RelayStats>,
    /// `egress-pod` against `egress-node` (masquerade's cost), when both ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRatio>,
    /// `sleeve-encrypted-flood` against `sleeve-encrypted` (a forged flood's cost), when run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodRatio>,
    /// `fastdp-policy` against `fastdp` (NetworkPolicy's cost), when run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyFigures>,
}

/// A pod's egress through masquerade against its node's own, in the same run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EgressRatio {
    /// Median Gb/s ratio, 1 stream.
    pub ratio_gbps_1: f64,
    /// Median Gb/s ratio, 4 streams.
    pub ratio_gbps_4: f64,
    /// Median of run-by-run ratios (pod run / node run just before it), 1 stream.
    pub paired_ratio_gbps_1: f64,
    /// The same, 4 streams.
    pub paired_ratio_gbps_4: f64,
}

/// One configuration's medians and the ratios to the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `kernel-vxlan`, `sleeve`, ...
    pub config: String,
    /// Median Gb/s, 1 TCP stream.
    pub gbps_1: f64,
    /// Median Gb/s, 4 TCP streams.
    pub gbps_4: f64,
    /// Median idle ping RTT, µs.
    pub rtt_us: f64,
    /// `gbps_1` / baseline's.
    pub ratio_gbps_1: f64,
    /// `gbps_4` / baseline's.
    pub ratio_gbps_4: f64,
    /// `rtt_us` / baseline's.
    pub ratio_rtt: f64,
    /// RTT added over the baseline, µs.
    pub added_rtt_us: f64,
    /// Median over runs of (this run's Gb/s / the baseline's run just before it), 1 stream:
    /// pairs interleaved runs, so load that drifts during the bench cancels out.
    pub paired_ratio_gbps_1: f64,
    /// The same, 4 streams.
    pub paired_ratio_gbps_4: f64,
    /// Every run's Gb/s, 1 stream.
    pub runs_gbps_1: Vec<f64>,
    /// Every run's Gb/s, 4 streams.
    pub runs_gbps_4: Vec<f64>,
    /// TCP retransmits per 1-stream run.
    pub retransmits_1: Vec<u64>,
    /// Machine CPU busy during the 1-stream runs, % of all cores (median).
    pub cpu_busy_pct_1: f64,
    /// CPU of the data plane during the 1-stream runs, % of one core (median): both relay
    /// harness threads of both hosts for `sleeve-relay`, both `weft router` processes for
    /// the lab rows.
    pub relay_cpu_pct_1: Option<f64>,
}

impl BenchReport {
    /// Renders the report as a text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<22} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>9}",
            "config",
            "gbps_1",
            "gbps_4",
            "rtt_us",
            "ratio_1",
            "ratio_4",
            "ratio_rtt",
            "paired_1",
            "paired_4",
            "cpu%",
            "dp_cpu%"
        );
        for r in &self.rows {
            let relay = r
                .relay_cpu_pct_1
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}"));
            let _ = writeln!(
                s,
                "{:<22} {:>8.2} {:>8.2} {:>8.0} {:>7.2} {:>7.2} {:>9.2} {:>8.2} {:>8.2} {:>6.0} {:>9}",
                r.config,
                r.gbps_1,
                r.gbps_4,
                r.rtt_us,
                r.ratio_gbps_1,
                r.ratio_gbps_4,
                r.ratio_rtt,
                r.paired_ratio_gbps_1,
                r.paired_ratio_gbps_4,
                r.cpu_busy_pct_1,
                relay
            );
        }
        let _ = writeln!(
            s,
            "(iperf3 TCP -t {} pod to pod, median of {} interleaved runs; pod MTU {}; RTT = median \
             idle ping; paired = median of run-by-run ratios to the baseline)",
            self.seconds, self.runs, self.pod_mtu
        );
        if let Some(f) = &self.flood {
            let _ = writeln!(
                s,
                "under a flood of forged datagrams from a non-peer ({:.0}/s or more to each \
                 tunnel port), over the same lab without: {:.2} (1 stream), {:.2} (4 streams); \
                 paired {:.2}, {:.2}",
                f.min_rate_per_port,
                f.ratio_gbps_1,
                f.ratio_gbps_4,
                f.paired_ratio_gbps_1,
                f.paired_ratio_gbps_4
            );
        }
        if let Some(p) = &self.policy {
            let _ = writeln!(
                s,
                "NetworkPolicy ({} pods, {} policies: {} rules, {} sets on the server node), over \
                 fastdp: {:.2} (1 stream), {:.2} (4 streams), paired {:.2}; new connections {:.0}/s \
                 vs {:.0}/s = {:.2} (paired {:.2}); a change in force after {:.0} ms p50, {:.0} ms \
                 p99, {:.0} ms max ({} changes; the router's own p99 {:.0} ms); load synced in \
                 {:.1} s; router RSS {:.1} -> {:.1} MB (+{:.1})",
                p.pods,
                p.policies,
                p.rules,
                p.sets,
                p.ratio_gbps_1,
                p.ratio_gbps_4,
                p.paired_ratio_gbps_1,
                p.conn_per_s,
                p.conn_per_s_without,
                p.ratio_conn,
                p.paired_ratio_conn,
                p.sync_p50_ms,
                p.sync_p99_ms,
                p.sync_max_ms,
                p.changes,
                p.router_sync_p99_ms,
                p.load_sync_s,
                p.rss_before_mb,
                p.rss_after_mb,
                p.rss_growth_mb
            );
        }
        if let Some(e) = self.egress {
            let _ = writeln!(
                s,
                "egress to the external host, pod (masqueraded) / node: {:.2} (1 stream), {:.2} \
                 (4 streams); paired {:.2}, {:.2}",
                e.ratio_gbps_1, e.ratio_gbps_4, e.paired_ratio_gbps_1, e.paired_ratio_gbps_4
            );
        }
        s
    }
}

/// Builds the namespaces, runs the configurations interleaved, tears everything down.
///
/// # Errors
/// Fails when not root, a tool is missing, the topology cannot be built, a path does not
/// carry pings, or a run fails.
pub fn run(args: &BenchArgs) -> Result<BenchReport> {
    ensure!(args.runs > 0 && args.runs <= 20, "--runs must be 1..=20");
    ensure!(
        args.seconds > 0 && args.seconds <= 60,
        "--seconds must be 1..=60"
    );
    ensure!((576..=1500).contains(&args.mtu), "--mtu must be 576..=1500");
    let mut configs = vec![BASELINE.to_owned()];
    for c in &args.only {
        ensure!(
            CONFIGS.contains(&c.as_str()),
            "unknown config {c} (known: {CONFIGS:?})"
        );
        if !configs.contains(c) {
            configs.push(c.clone());
        }
    }
    if args.only.is_empty() {
        configs = DEFAULT_CONFIGS.iter().map(|c| (*c).to_owned()).collect();
    }
    // The flooded row reuses the unflooded row's lab and is compared with it.
    if let Some(at) = configs.iter().position(|c| c == FLOOD) {
        let flood = configs.remove(at);
        let base = match configs.iter().position(|c| c == flood_row::FLOOD_BASE) {
            Some(base) => base,
            None => {
                configs.insert(at, flood_row::FLOOD_BASE.to_owned());
                at
            }
        };
        configs.insert(base + 1, flood);
    }
    // The policy row is compared with fastdp's, run by run.
    if let Some(at) = configs.iter().position(|c| c == POLICY)
        && !configs.iter().any(|c| c == FASTDP)
    {
        configs.insert(at, FASTDP.to_owned());
    }
    let prefix = format!("wbench{}", std::process::id());
    let ns = Namespaces::new(&prefix);
    build(&ns, args.mtu)?;
    let mut relays = Vec::new();
    if configs.iter().any(|c| c == RELAY) {
        for i in 1..=2 {
            relays.push(start_relay(&ns, i, args)?);
        }
    }
    let relay_stats: Vec<String> = relays
        .iter()
        .flat_map(|r| r.thread_ids())
        .map(|tid| format!("/proc/self/task/{tid}/stat"))
        .collect();
    // The lab rows: one two-node lab each, removed on drop (panics included).
    let mut labs: Vec<LabGuard> = Vec::new();
    let mut targets = Vec::new();
    let mut egress: Option<(Target, Target)> = None;
    let mut encrypted_lab: Option<(String, Target)> = None;
    let mut policy_load = None;
    for c in &configs {
        let target = match c.as_str() {
            POLICY => {
                let (guard, target, loaded) = policy_row::start(&prefix)?;
                labs.push(guard);
                policy_load = Some(loaded);
                target
            }
            FLOOD => {
                let (lab, base) = encrypted_lab.as_ref().context("no sleeve-encrypted lab")?;
                warm_up(&base.client, &base.server_ip)?;
                let most = Duration::from_secs(u64::from(args.seconds) * 2 + 60);
                Target {
                    flood: Some(flood_row::spec(lab, most)?),
                    ..base.clone()
                }
            }
            BASELINE => Target::harness(ns.pod(1, c), ns.pod(2, c), PEER_POD, Vec::new()),
            RELAY => Target::harness(ns.pod(1, c), ns.pod(2, c), PEER_POD, relay_stats.clone()),
            EGRESS_NODE | EGRESS_POD => {
                if egress.is_none() {
                    let (guard, node, pod) = start_egress_lab(&prefix)?;
                    labs.push(guard);
                    egress = Some((node, pod));
                }
                let (node, pod) = egress.as_ref().context("egress lab")?;
                if c == EGRESS_NODE {
                    node.clone()
                } else {
                    pod.clone()
                }
            }
            _ => {
                let datapath = if c == FASTDP {
                    lab::Datapath::Fastdp
                } else {
                    lab::Datapath::Sleeve
                };
                let encrypted = c == flood_row::FLOOD_BASE;
                let (guard, target) = start_lab(&prefix, datapath, encrypted)?;
                if encrypted {
                    encrypted_lab = Some((guard.name().to_owned(), target.clone()));
                }
                labs.push(guard);
                target
            }
        };
        targets.push(target);
    }
    let mut servers = Vec::new();
    let mut serving = std::collections::BTreeSet::new();
    for t in &targets {
        // The egress rows share the external host's server.
        if serving.insert(t.server.clone()) {
            servers.push(Server::start(&t.server)?);
        }
    }
    for (c, t) in configs.iter().zip(&targets) {
        warm_up(&t.client, &t.server_ip)
            .with_context(|| format!("{c}: pods do not reach each other"))?;
    }
    // New connections per second are measured on the policy row and the row it is compared to.
    let conn_rows = |c: &str| policy_load.is_some() && (c == POLICY || c == FASTDP);
    let mut conn_servers = Vec::new();
    for (c, t) in configs.iter().zip(&targets) {
        if conn_rows(c) {
            conn_servers.push(policy_row::ConnServer::start(&t.server)?);
        }
    }
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    for _ in 0..args.runs {
        for ((c, sample), t) in configs.iter().zip(&mut samples).zip(&targets) {
            let pod = &t.client;
            let flood = t.flood.clone().map(Flood::start).transpose()?;
            sample.rtt_us.push(ping_median_us(pod, &t.server_ip)?);
            for streams in [1, 4] {
                let cpu0 = CpuSnapshot::take(&t.stat_files);
                let r = iperf(pod, &t.server_ip, streams, args.seconds)?;
                let cpu = CpuSnapshot::take(&t.stat_files).since(&cpu0);
                if streams == 1 {
                    sample.gbps_1.push(r.gbps);
                    sample.retransmits_1.push(r.retransmits);
                    sample.busy_1.push(cpu.busy_pct);
                    if c != BASELINE {
                        sample.relay_1.push(cpu.threads_pct);
                    }
                } else {
                    sample.gbps_4.push(r.gbps);
                }
            }
            if let Some(flood) = flood {
                sample
                    .flood
                    .push(flood.stop().with_context(|| format!("{c}: the flood"))?);
            }
            if conn_rows(c) {
                sample.conn.push(
                    policy_row::conn_rate(pod, &t.server_ip)
                        .with_context(|| format!("{c}: new connections"))?,
                );
            }
        }
    }
    drop(conn_servers);
    drop(servers);
    let sleeve_relays = relays.into_iter().map(Relay::stop).collect();
    drop(labs);
    drop(ns);
    let base = samples[0].medians();
    let rows = configs
        .iter()
        .zip(&samples)
        .map(|(c, s)| {
            let m = s.medians();
            BenchRow {
                config: c.clone(),
                gbps_1: round(m.0, 2),
                gbps_4: round(m.1, 2),
                rtt_us: round(m.2, 0),
                ratio_gbps_1: round(m.0 / base.0, 2),
                ratio_gbps_4: round(m.1 / base.1, 2),
                ratio_rtt: round(m.2 / base.2, 2),
                added_rtt_us: round(m.2 - base.2, 0),
                paired_ratio_gbps_1: round(paired_ratio(&s.gbps_1, &samples[0].gbps_1), 2),
                paired_ratio_gbps_4: round(paired_ratio(&s.gbps_4, &samples[0].gbps_4), 2),
                runs_gbps_1: s.gbps_1.iter().map(|g| round(*g, 2)).collect(),
                runs_gbps_4: s.gbps_4.iter().map(|g| round(*g, 2)).collect(),
                retransmits_1: s.retransmits_1.clone(),
                cpu_busy_pct_1: round(median(&s.busy_1), 0),
                relay_cpu_pct_1: (!s.relay_1.is_empty()).then(|| round(median(&s.relay_1), 0)),
            }
        })
        .collect();
    let at = |name: &str| configs.iter().position(|c| c == name);
    let egress = at(EGRESS_NODE).zip(at(EGRESS_POD)).map(|(n, p)| {
        let (node, pod) = (&samples[n], &samples[p]);
        let (mn, mp) = (node.medians(), pod.medians());
        EgressRatio {
            ratio_gbps_1: round(mp.0 / mn.0, 2),
            ratio_gbps_4: round(mp.1 / mn.1, 2),
            paired_ratio_gbps_1: round(paired_ratio(&pod.gbps_1, &node.gbps_1), 2),
            paired_ratio_gbps_4: round(paired_ratio(&pod.gbps_4, &node.gbps_4), 2),
        }
    });
    let flood = at(flood_row::FLOOD_BASE).zip(at(FLOOD)).map(|(b, f)| {
        let (base, flooded) = (&samples[b], &samples[f]);
        let (mb, mf) = (base.medians(), flooded.medians());
        let (min_rate_per_port, sent_by_kind) = flood_row::totals(&flooded.flood);
        FloodRatio {
            ratio_gbps_1: round(mf.0 / mb.0, 2),
            ratio_gbps_4: round(mf.1 / mb.1, 2),
            paired_ratio_gbps_1: round(paired_ratio(&flooded.gbps_1, &base.gbps_1), 2),
            paired_ratio_gbps_4: round(paired_ratio(&flooded.gbps_4, &base.gbps_4), 2),
            min_rate_per_port: round(min_rate_per_port, 0),
            sent_by_kind,
        }
    });
    let policy = at(FASTDP)
        .zip(at(POLICY))
        .zip(policy_load)
        .map(|((b, p), loaded)| {
            let (base, with) = (&samples[b], &samples[p]);
            let (mb, mp) = (base.medians(), with.medians());
            loaded.finish(
                (
                    mp.0 / mb.0,
                    mp.1 / mb.1,
                    paired_ratio(&with.gbps_1, &base.gbps_1),
                ),
                &with.conn,
                &base.conn,
            )
        });
    Ok(BenchReport {
        rows,
        runs: args.runs,
        seconds: args.seconds,
        pod_mtu: args.mtu,
        sleeve_relays,
        egress,
        flood,
        policy,
    })
}

/// The namespaces of one bench, deleted on drop (also while a panic unwinds).
#[derive(Debug)]
pub struct Namespaces {
    prefix: String,
}

impl Namespaces {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn underlay(&self) -> String {
        format!("{}-u", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn pod(&self, i: usize, config: &str) -> String {
        let kind = if config == BASELINE { "pv" } else { "ps" };
        format!("{}-h{i}-{kind}", self.prefix)
    }

    fn all(&self) -> Vec<String> {
        let mut v = vec![self.underlay()];
        for i in 1..=2 {
            v.push(self.host(i));
            v.push(self.pod(i, BASELINE));
            v.push(self.pod(i, RELAY));
        }
        v
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Pods first, so their veths go before the hosts'; `delete` ignores missing ones.
        for ns in self.all().iter().rev() {
            let _ = netns::delete(ns);
        }
    }
}

fn build(ns: &Namespaces, mtu: u32) -> Result<()> {
    for n in ns.all() {
        ensure!(
            !netns::netns_path(&n).exists(),
            "network namespace {n} exists already"
        );
        netns::ip(&["netns", "add", &n])?;
        netns::ip(&["-n", &n, "link", "set", "lo", "up"])?;
    }
    let u = ns.underlay();
    netns::ip(&["-n", &u, "link", "add", "ubr", "type", "bridge"])?;
    netns::ip(&["-n", &u, "link", "set", "ubr", "up"])?;
    let mtu_s = mtu.to_string();
    for i in 1..=2 {
        let h = ns.host(i);
        let peer = 3 - i;
        let port = format!("h{i}");
        netns::ip(&[
            "-n", &u, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &h,
        ])?;
        netns::ip(&["-n", &u, "link", "set", &port, "master", "ubr", "up"])?;
        netns::ip(&[
            "-n",
            &h,
            "addr",
            "add",
            &format!("192.0.2.{i}/24"),
            "dev",
            "eth0",
        ])?;
        netns::ip(&["-n", &h, "link", "set", "eth0", "up"])?;
        // br_netfilter is per namespace and on (1) in a fresh one, as on a Kubernetes node;
        // weft's rows and the baseline share these hosts, so both pay for it alike.
        for (bridge, port, config) in [("weft", "vs", "sleeve"), ("vxbr", "vv", BASELINE)] {
            let pod = ns.pod(i, config);
            netns::ip(&["-n", &h, "link", "add", bridge, "type", "bridge"])?;
            netns::ip(&["-n", &h, "link", "set", bridge, "up"])?;
            netns::ip(&[
                "-n", &h, "link", "add", port, "mtu", &mtu_s, "type", "veth", "peer", "name",
                "eth0", "mtu", &mtu_s, "netns", &pod,
            ])?;
            netns::ip(&["-n", &h, "link", "set", port, "master", bridge, "up"])?;
            netns::ip(&[
                "-n",
                &pod,
                "addr",
                "add",
                &format!("10.32.0.{i}/12"),
                "dev",
                "eth0",
            ])?;
            netns::ip(&["-n", &pod, "link", "set", "eth0", "up"])?;
        }
        netns::ip(&[
            "-n",
            &h,
            "link",
            "add",
            "vx",
            "mtu",
            &mtu_s,
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            &format!("192.0.2.{i}"),
            "remote",
            &format!("192.0.2.{peer}"),
            "dstport",
            "4789",
            "dev",
            "eth0",
        ])?;
        netns::ip(&["-n", &h, "link", "set", "vx", "master", "vxbr", "up"])?;
    }
    Ok(())
}

fn start_relay(ns: &Namespaces, i: usize, args: &BenchArgs) -> Result<Relay> {
    let h = ns.host(i);
    let local = SocketAddr::from((Ipv4Addr::new(192, 0, 2, i as u8), SLEEVE_PORT));
    let peer = SocketAddr::from((Ipv4Addr::new(192, 0, 2, (3 - i) as u8), SLEEVE_PORT));
    let (tap, socket) = netns::in_netns(&h, move || {
        let tap = Tap::open("weft-tap", &TapOptions::default()).context("opening weft-tap")?;
        let socket = UdpSocket::bind(local, &UdpOptions::default()).context("binding UDP")?;
        socket.connect(peer)?;
        Ok((tap, socket))
    })?;
    netns::ip(&[
        "-n",
        &h,
        "link",
        "set",
        "weft-tap",
        "mtu",
        &args.mtu.to_string(),
        "master",
        "weft",
        "up",
    ])?;
    let name = |n: usize| [0x02, 0, 0, 0, 0, n as u8];
    let mut config = RelayConfig::new(name(i), name(3 - i));
    config.first_frame_id = (std::process::id() << 8) ^ i as u32;
    config.nice = (args.relay_nice != 0).then_some(args.relay_nice);
    config.fifo_priority = (args.relay_fifo != 0).then_some(args.relay_fifo);
    Ok(Relay::start(tap, socket, config)?)
}

/// Where one configuration's traffic runs.
#[derive(Clone)]
struct Target {
    /// The client pod's namespace.
    client: String,
    /// The server pod's namespace.
    server: String,
    /// The server pod's bare IP.
    server_ip: String,
    /// `/proc/…/stat` files whose CPU time is the data plane's.
    stat_files: Vec<String>,
    /// A flood running while this row is measured.
    flood: Option<FloodSpec>,
}

impl Target {
    fn harness(client: String, server: String, ip: &str, stat_files: Vec<String>) -> Self {
        Self {
            client,
            server,
            server_ip: ip.to_owned(),
            stat_files,
            flood: None,
        }
    }
}

/// Brings up a two-node lab with real routers on the sleeve (`--encrypt` if asked) and one
/// pod per node.
fn start_lab(prefix: &str, datapath: lab::Datapath, encrypt: bool) -> Result<(LabGuard, Target)> {
    let tag = match (datapath, encrypt) {
        (lab::Datapath::Fastdp, _) => "f",
        (_, true) => "e",
        (_, false) => "p",
    };
    let name = format!("{prefix}{tag}");
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    spec.datapath = datapath;
    spec.encrypt = encrypt;
    lab_target(&name, &spec)
}

/// Brings up lab `spec` (two nodes, a pod on each); the target is h1's pod to h2's.
fn lab_target(name: &str, spec: &LabSpec) -> Result<(LabGuard, Target)> {
    let guard = LabGuard::new(name);
    let info = lab::up(spec).with_context(|| format!("lab {name}"))?;
    let pod = |i: usize| -> Result<&lab::PodInfo> {
        info.nodes
            .get(i)
            .and_then(|n| n.pods.first())
            .with_context(|| format!("lab {name} has no pod on node {}", i + 1))
    };
    let (client, server) = (pod(0)?, pod(1)?);
    let server_ip = server.ip.split('/').next().unwrap_or_default().to_owned();
    let stat_files = (1..=2)
        .filter_map(|i| {
            let pid = std::fs::read_to_string(
                PathBuf::from(lab::RUN_DIR)
                    .join(name)
                    .join(format!("h{i}"))
                    .join("router.pid"),
            )
            .ok()?;
            Some(format!("/proc/{}/stat", pid.trim()))
        })
        .collect();
    let target = Target {
        client: client.netns.clone(),
        server: server.netns.clone(),
        server_ip,
        stat_files,
        flood: None,
    };
    Ok((guard, target))
}

/// Brings up a one-node lab (fastdp, one pod) whose node and pod send to the lab's external
/// host: the node's own egress, and the pod's through the node's masquerade.
fn start_egress_lab(prefix: &str) -> Result<(LabGuard, Target, Target)> {
    let name = format!("{prefix}x");
    let guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 1;
    spec.pods = 1;
    spec.datapath = lab::Datapath::Fastdp;
    let info = lab::up(&spec).with_context(|| format!("lab {name}"))?;
    let node = info.nodes.first().context("egress lab has no node")?;
    let pod = node.pods.first().context("egress lab has no pod")?;
    let stat_files: Vec<String> = std::fs::read_to_string(
        PathBuf::from(lab::RUN_DIR)
            .join(&name)
            .join("h1")
            .join("router.pid"),
    )
    .ok()
    .map(|pid| format!("/proc/{}/stat", pid.trim()))
    .into_iter()
    .collect();
    let server = info.external.netns.clone();
    let ip = info.external.ip.clone();
    let node = Target::harness(node.netns.clone(), server.clone(), &ip, stat_files.clone());
    let pod = Target::harness(pod.netns.clone(), server, &ip, stat_files);
    Ok((guard, node, pod))
}

/// An `iperf3 -s` in a pod namespace, killed on drop.
struct Server(Child);

impl Server {
    fn start(pod: &str) -> Result<Self> {
        let child = netns::command_in(pod, "iperf3")?
            .args(["-s", "-B", "0.0.0.0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (is iperf3 installed?)")?;
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn warm_up(pod: &str, peer: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run_bounded(
            netns::command_in(pod, "ping")?.args(["-c", "1", "-W", "1", peer]),
            Duration::from_secs(3),
        )?;
        if out.0 {
            // Let iperf3 -s come up too.
            std::thread::sleep(Duration::from_millis(200));
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no ping reply from {peer} in {pod}");
        }
    }
}

fn ping_median_us(pod: &str, peer: &str) -> Result<f64> {
    let (ok, out) = run_bounded(
        netns::command_in(pod, "ping")?.args(["-c", "20", "-i", "0.05", "-W", "1", peer]),
        Duration::from_secs(10),
    )?;
    ensure!(ok, "ping in {pod} failed: {out}");
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    ensure!(!times.is_empty(), "no RTTs in ping output: {out}");
    // The first reply may include neighbour resolution; the median shrugs it off anyway.
    times.sort_by(f64::total_cmp);
    Ok(median(&times))
}

struct IperfResult {
    gbps: f64,
    retransmits: u64,
}

fn iperf(pod: &str, peer: &str, streams: u32, seconds: u32) -> Result<IperfResult> {
    let (ok, out) = run_bounded(
        netns::command_in(pod, "iperf3")?.args([
            "-c",
            peer,
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ]),
        Duration::from_secs(u64::from(seconds) + 20),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("iperf3 in {pod} printed no JSON (ok={ok})"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3 in {pod}: {e}");
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(IperfResult {
        gbps: bps / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// Runs a command to completion or kills it at `limit`; returns (success, stdout).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<(bool, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("output reader panicked"))?;
    Ok((status.success(), out))
}

#[derive(Default)]
struct Samples {
    gbps_1: Vec<f64>,
    gbps_4: Vec<f64>,
    rtt_us: Vec<f64>,
    retransmits_1: Vec<u64>,
    busy_1: Vec<f64>,
    relay_1: Vec<f64>,
    flood: Vec<FloodStats>,
    conn: Vec<f64>,
}

impl Samples {
    fn medians(&self) -> (f64, f64, f64) {
        (
            median(&self.gbps_1),
            median(&self.gbps_4),
            median(&self.rtt_us),
        )
    }
}

/// CPU counters: the machine's busy and total jiffies, and the listed threads' jiffies.
struct CpuSnapshot {
    at: Instant,
    busy: u64,
    total: u64,
    threads: u64,
}

struct CpuUse {
    busy_pct: f64,
    threads_pct: f64,
}

impl CpuSnapshot {
    fn take(stat_files: &[String]) -> Self {
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().sum();
                // idle and iowait are fields 4 and 5.
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                Some((total - idle, total))
            })
            .unwrap_or((0, 0));
        let threads = stat_files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|s| {
                // Fields after the parenthesised name: utime and stime are the 12th and 13th.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum();
        Self {
            at: Instant::now(),
            busy,
            total,
            threads,
        }
    }

    fn since(&self, before: &Self) -> CpuUse {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let busy = self.busy.saturating_sub(before.busy) as f64;
        // Jiffies are 1/100 s (USER_HZ) for per-thread times.
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let threads = self.threads.saturating_sub(before.threads) as f64 / 100.0;
        CpuUse {
            busy_pct: 100.0 * busy / total,
            threads_pct: 100.0 * threads / secs,
        }
    }
}

/// The median of run-by-run ratios `runs[i] / base[i]` (runs of one round are interleaved).
fn paired_ratio(runs: &[f64], base: &[f64]) -> f64 {
    let ratios: Vec<f64> = runs.iter().zip(base).map(|(r, b)| r / b).collect();
    median(&ratios)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// The sleeve's UDP port (DESIGN.md).
const SLEEVE_PORT: u16 = 6783;
/// The far pod of the baseline and relay harness.
const PEER_POD: &str = "10.32.0.2";

#[cfg(test)]
mod tests {
    use super::{median, paired_ratio};

    #[test]
    fn paired_ratio_is_the_median_of_run_by_run_ratios() {
        // Load drifts: run 2 is slow for both; the per-run ratios are 1.0, 0.9, 1.1.
        let base = [10.0, 5.0, 8.0];
        let runs = [10.0, 4.5, 8.8];
        assert!((paired_ratio(&runs, &base) - 1.0).abs() < 1e-9);
        assert!((median(&runs) / median(&base) - 1.1).abs() < 1e-9);
    }
}
