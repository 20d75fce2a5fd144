//! `weft-sim scale`: N real routers in one lab at default settings, without pods, and what
//! the control plane costs them (issue 23; figures in docs/BENCHMARKS.md). The time from the
//! last router's start to a full mesh, then, over an idle window: the routers' CPU (from
//! `/proc`), their RSS, the packets the underlay carries (nft counters on the underlay
//! bridge, so what leaves each node, whatever the router believes it sent) and connection
//! flaps (a connection established at the window's start and gone at its end).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use weft_router::api::ApiAddr;
use weft_router::api::client::ApiClient;

use crate::lab::{self, LabGuard, LabSpec, netns};

/// `weft-sim scale` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Number of routers (one node each).
    #[arg(long)]
    pub nodes: usize,
    /// Seconds of idle measured once the mesh is whole and settled.
    #[arg(long, default_value_t = 60)]
    pub idle: u64,
    /// Seconds left to the routers after every one is ready and before the idle window:
    /// the start's one-off work (full-state exchanges, IPAM's consensus, fastdp
    /// announcements as peers join) is not idle.
    #[arg(long, default_value_t = 15)]
    pub settle: u64,
    /// How long the routers may take to form the mesh and be ready [default: lab up's,
    /// 20 s + 0.5 s per node].
    #[arg(long, value_name = "SECONDS")]
    pub ready_timeout: Option<u64>,
    /// The lab's name (its namespaces' prefix).
    #[arg(long, default_value = "scale")]
    pub name: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What one scale run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// Routers.
    pub nodes: usize,
    /// Seconds from the last router's start until every router held N−1 established
    /// connections and knew every peer.
    pub meshed_s: f64,
    /// Seconds from the first router's start until every router was ready.
    pub ready_s: f64,
    /// Seconds waited after readiness before the idle window.
    pub settle_s: f64,
    /// The idle window measured, in seconds.
    pub idle_s: f64,
    /// CPU of all routers together over the window, % of one core.
    pub cpu_all_pct: f64,
    /// Mean CPU per router, % of one core.
    pub cpu_mean_pct: f64,
    /// The busiest router's CPU, % of one core.
    pub cpu_max_pct: f64,
    /// The whole machine's busy time over the window (every process and the kernel's
    /// softirqs, which answer the fastdp probes), % of one core.
    pub machine_busy_pct: f64,
    /// Median RSS per router at the window's end, MB.
    pub rss_median_mb: f64,
    /// Largest RSS of a router at the window's end, MB.
    pub rss_max_mb: f64,
    /// TCP packets on the control port (both ways) per router per second.
    pub control_pps: f64,
    /// UDP packets to the VXLAN port (fastdp probes and their answers) per router per second.
    pub vxlan_pps: f64,
    /// UDP packets to the sleeve port per router per second.
    pub sleeve_pps: f64,
    /// The fewest established connections any router held at the window's start (N−1 when
    /// the mesh is whole).
    pub established_min: usize,
    /// Router pairs whose connection, established at the window's start, was not the same
    /// connection at its end (closed, or closed and made again).
    pub flaps: usize,
}

const CONTROL_PORT: u16 = 6783;
const VXLAN_PORT: u16 = 6784;
const COUNTERS: [&str; 3] = ["control", "vxlan", "sleeve"];

/// Builds the lab, measures, and takes the lab down (also on failure).
///
/// # Errors
/// Fails when the lab cannot be built, its routers do not form the mesh in time, or a
/// measurement cannot be read.
pub fn run(args: &ScaleArgs) -> Result<ScaleReport> {
    if args.nodes < 2 || args.nodes > 250 {
        bail!(
            "--nodes must be between 2 and 250 (underlay addresses 192.0.2.1–250), got {}",
            args.nodes
        );
    }
    if args.idle == 0 {
        bail!("--idle must be at least 1 second");
    }
    let guard = LabGuard::new(&args.name);
    let mut spec = LabSpec::new(&args.name);
    spec.nodes = args.nodes;
    spec.pods = 0;
    spec.ready_timeout = args.ready_timeout.map(Duration::from_secs);
    let info = lab::up(&spec)?;
    install_counters(&args.name)?;
    let n = args.nodes;
    let pids: Vec<i32> = (1..=n)
        .map(|i| lab::router_pid(&args.name, i).with_context(|| format!("router h{i} is gone")))
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    std::thread::sleep(Duration::from_secs(args.settle));
    let conns_before = connections(&runtime, &args.name, n)?;
    let established_min = conns_before.values().map(BTreeSet::len).min().unwrap_or(0);
    let packets_before = read_counters(&args.name)?;
    let cpu_before = pids
        .iter()
        .map(|&p| cpu_ticks(p))
        .collect::<Result<Vec<_>>>()?;
    let machine_before = machine_ticks()?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle));
    let cpu_after = pids
        .iter()
        .map(|&p| cpu_ticks(p))
        .collect::<Result<Vec<_>>>()?;
    let machine_after = machine_ticks()?;
    let packets_after = read_counters(&args.name)?;
    let idle_s = started.elapsed().as_secs_f64();
    let conns_after = connections(&runtime, &args.name, n)?;
    let mut rss: Vec<f64> = pids.iter().map(|&p| rss_mb(p)).collect::<Result<_>>()?;
    drop(guard);

    let tick = clock_ticks_per_second();
    let cpu_pct: Vec<f64> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / tick / idle_s * 100.0)
        .collect();
    let cpu_all_pct: f64 = cpu_pct.iter().sum();
    let (busy, total) = (
        machine_after.0.saturating_sub(machine_before.0) as f64,
        machine_after.1.saturating_sub(machine_before.1) as f64,
    );
    let machine_busy_pct = if total > 0.0 {
        busy / total * online_cpus() as f64 * 100.0
    } else {
        0.0
    };
    rss.sort_by(f64::total_cmp);
    let per_router = |name: &str| {
        let delta = packets_after[name].saturating_sub(packets_before[name]);
        delta as f64 / idle_s / n as f64
    };
    Ok(ScaleReport {
        nodes: n,
        meshed_s: info.meshed_s.unwrap_or(f64::NAN),
        ready_s: info.ready_s.unwrap_or(f64::NAN),
        settle_s: args.settle as f64,
        idle_s,
        cpu_all_pct,
        cpu_mean_pct: cpu_all_pct / n as f64,
        cpu_max_pct: cpu_pct.iter().copied().fold(0.0, f64::max),
        machine_busy_pct,
        rss_median_mb: rss[rss.len() / 2],
        rss_max_mb: rss.last().copied().unwrap_or(0.0),
        control_pps: per_router("control"),
        vxlan_pps: per_router("vxlan"),
        sleeve_pps: per_router("sleeve"),
        established_min,
        flaps: flaps(&conns_before, &conns_after),
    })
}

/// Prints the report as text or JSON.
///
/// # Errors
/// Fails when `out` cannot be written.
pub fn print_report(out: &mut impl Write, r: &ScaleReport, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "weft-sim scale: {} routers (default settings, no pods, full underlay)",
        r.nodes
    )?;
    writeln!(
        out,
        "  full mesh:      {:.1} s after the last router started (all ready {:.1} s after the first)",
        r.meshed_s, r.ready_s
    )?;
    writeln!(
        out,
        "  idle, {:.0} s (from {:.0} s after all were ready):",
        r.idle_s, r.settle_s
    )?;
    writeln!(
        out,
        "    CPU:          all routers {:.1} % of one core; per router mean {:.2} %, max {:.2} %; whole machine {:.1} %",
        r.cpu_all_pct, r.cpu_mean_pct, r.cpu_max_pct, r.machine_busy_pct
    )?;
    writeln!(
        out,
        "    RSS:          median {:.1} MB, max {:.1} MB per router",
        r.rss_median_mb, r.rss_max_mb
    )?;
    writeln!(
        out,
        "    underlay:     per router per second: control {:.1}, VXLAN probes and answers {:.1}, sleeve {:.1} packets",
        r.control_pps, r.vxlan_pps, r.sleeve_pps
    )?;
    writeln!(
        out,
        "    connections:  fewest established {} of {}; flaps {}",
        r.established_min,
        r.nodes - 1,
        r.flaps
    )?;
    Ok(())
}

/// Counters in the underlay namespace's bridge: every packet between two nodes crosses
/// `ubr`'s forward hook once.
fn install_counters(name: &str) -> Result<()> {
    let rules = format!(
        "table bridge weft_scale {{\n\
         counter control {{}}\n counter vxlan {{}}\n counter sleeve {{}}\n\
         chain forward {{\n type filter hook forward priority 0; policy accept;\n\
         tcp dport {CONTROL_PORT} counter name \"control\"\n\
         tcp sport {CONTROL_PORT} counter name \"control\"\n\
         udp dport {VXLAN_PORT} counter name \"vxlan\"\n\
         udp dport {CONTROL_PORT} counter name \"sleeve\"\n }}\n}}\n"
    );
    let mut child = netns::command_in(&format!("{name}-u"), "nft")?
        .arg("-f")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (is nftables installed?)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "installing the underlay counters: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn read_counters(name: &str) -> Result<BTreeMap<&'static str, u64>> {
    let out = netns::command_in(&format!("{name}-u"), "nft")?
        .args(["-j", "list", "table", "bridge", "weft_scale"])
        .output()?;
    if !out.status.success() {
        bail!(
            "reading the underlay counters: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_counters(&out.stdout)
}

/// The named counters' packet counts from `nft -j list table` output.
fn parse_counters(json: &[u8]) -> Result<BTreeMap<&'static str, u64>> {
    let value: serde_json::Value = serde_json::from_slice(json).context("nft -j output")?;
    let objects = value["nftables"].as_array().context("no nftables array")?;
    let mut found = BTreeMap::new();
    for o in objects {
        let c = &o["counter"];
        if let Some(name) = COUNTERS.iter().find(|n| c["name"] == **n) {
            found.insert(*name, c["packets"].as_u64().context("counter packets")?);
        }
    }
    for n in COUNTERS {
        if !found.contains_key(n) {
            bail!("counter {n} missing from the underlay table");
        }
    }
    Ok(found)
}

/// Each router's established connections, as (direction, remote address) pairs of its
/// `weft status connections` lines.
fn connections(
    runtime: &tokio::runtime::Runtime,
    name: &str,
    n: usize,
) -> Result<BTreeMap<usize, BTreeSet<(String, String)>>> {
    let mut all = BTreeMap::new();
    for i in 1..=n {
        let client = ApiClient::new(ApiAddr::Unix(lab::node_socket(name, i)));
        let text = runtime
            .block_on(client.text("/status/connections"))
            .with_context(|| format!("h{i}: weft status connections"))?;
        all.insert(i, established(&text));
    }
    Ok(all)
}

fn established(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (dir, addr, state) = (words.next()?, words.next()?, words.next()?);
            (state == "established").then(|| (dir.to_owned(), addr.to_owned()))
        })
        .collect()
}

/// Pairs of routers (by node index, from the 192.0.2.J addresses) with a connection
/// established before and not after, counted once per pair whichever end saw it.
fn flaps(
    before: &BTreeMap<usize, BTreeSet<(String, String)>>,
    after: &BTreeMap<usize, BTreeSet<(String, String)>>,
) -> usize {
    let empty = BTreeSet::new();
    let mut pairs = BTreeSet::new();
    for (&i, conns) in before {
        let now = after.get(&i).unwrap_or(&empty);
        for (_, addr) in conns.difference(now) {
            let peer = addr
                .rsplit_once(':')
                .and_then(|(ip, _)| ip.rsplit('.').next()?.parse::<usize>().ok())
                .unwrap_or(0);
            pairs.insert((i.min(peer), i.max(peer)));
        }
    }
    pairs.len()
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did a router exit?)"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command's closing parenthesis start at field 3 (state); utime and
    // stime are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's (busy, total) ticks over every CPU, from `/proc/stat`'s `cpu` line.
fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_machine_ticks(&stat).context("parsing /proc/stat")
}

fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

fn rss_mb(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_come_from_fields_14_and_15() {
        let stat = "1234 (weft router) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 500";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        // A command name with a parenthesis and spaces.
        let odd = "7 (a) b (c) S 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_cpu_ticks(odd), Some(10));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn machine_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((150, 1000)));
        assert_eq!(parse_machine_ticks("intr 1 2"), None);
    }

    #[test]
    fn counters_are_read_by_name() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.9"}},
            {"table": {"family": "bridge", "name": "weft_scale", "handle": 1}},
            {"counter": {"family": "bridge", "name": "control", "table": "weft_scale", "handle": 2, "packets": 10, "bytes": 900}},
            {"counter": {"family": "bridge", "name": "vxlan", "table": "weft_scale", "handle": 3, "packets": 4, "bytes": 400}},
            {"counter": {"family": "bridge", "name": "sleeve", "table": "weft_scale", "handle": 4, "packets": 0, "bytes": 0}}]}"#;
        let c = parse_counters(json).unwrap();
        assert_eq!((c["control"], c["vxlan"], c["sleeve"]), (10, 4, 0));
        let missing = br#"{"nftables": [{"counter": {"name": "control", "packets": 1}}]}"#;
        assert!(
            parse_counters(missing)
                .unwrap_err()
                .to_string()
                .contains("vxlan")
        );
    }

    #[test]
    fn a_connection_made_again_is_one_flap_per_pair() {
        let text = "-> 192.0.2.2:6783       established unencrypted fastdp 0a:00:00:00:00:02(h2) mtu=1450\n\
                    <- 192.0.2.3:40000      established unencrypted fastdp 0a:00:00:00:00:03(h3) mtu=1450\n\
                    -> 192.0.2.4:6783       connecting\n";
        let before1 = established(text);
        assert_eq!(before1.len(), 2);
        let mut before = BTreeMap::new();
        before.insert(1, before1);
        before.insert(
            3,
            established("-> 192.0.2.1:6783 established unencrypted fastdp x(h1)\n"),
        );
        let mut after = before.clone();
        assert_eq!(flaps(&before, &after), 0);
        // h3 dialled h1 again: h1 sees a new inbound port, h3 the same address.
        after.insert(
            1,
            established(
                "-> 192.0.2.2:6783 established unencrypted fastdp x(h2)\n\
                 <- 192.0.2.3:40001 established unencrypted fastdp x(h3)\n",
            ),
        );
        assert_eq!(flaps(&before, &after), 1);
        after.insert(3, BTreeSet::new());
        assert_eq!(flaps(&before, &after), 1);
    }
}
