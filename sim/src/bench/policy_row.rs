//! The `fastdp-policy` row: the `fastdp` lab's shape (two nodes, one pod each, kernel VXLAN)
//! as a `--kube` lab enforcing NetworkPolicy, with 1,000 Pods in 20 namespaces and 200
//! policies loaded into the stand-in API besides one policy that allows the bench's traffic
//! (pod=p1 to and from pod=p1, every port). Compared with `fastdp`, run by run: TCP
//! throughput, and new TCP connections per second (connect, then reset, from the client pod to
//! a listener in the server pod, both sides weft's own threads in the pods' namespaces).
//!
//! Once, after loading: the server node's router RSS before and after the load, and how long
//! each of [`SYNC_CHANGES`] changes (a Pod on the server node relabelled, in and out of the
//! policies' selectors) takes from the API request to the router's status showing the new
//! revision in force, measured from outside, one change at a time (never coalesced), beside
//! the router's own measure (view published to batch acknowledged).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Target, lab_target, median, round};
use crate::lab::{self, LabGuard, LabSpec, netns};

/// The row's name.
pub const POLICY: &str = "fastdp-policy";
/// Pods loaded (besides the lab's two).
pub(super) const PODS: usize = 1_000;
/// Policies loaded (besides the one allowing the bench's traffic).
pub(super) const POLICIES: usize = 200;
/// Namespaces the loaded pods and policies live in.
const NAMESPACES: usize = 20;
/// Changes timed after the load.
pub(super) const SYNC_CHANGES: usize = 100;
/// The port of the connection-rate listener.
const CONN_PORT: u16 = 7100;
/// Seconds per connection-rate run.
pub(super) const CONN_SECONDS: u64 = 3;

/// What the load and the changes cost.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigures {
    /// Pods and policies loaded.
    pub pods: usize,
    /// See `pods`.
    pub policies: usize,
    /// Rules and sets the server node's router programmed for them.
    pub rules: u64,
    /// See `rules`.
    pub sets: u64,
    /// The server node's router RSS before and after the load, MB.
    pub rss_before_mb: f64,
    /// See `rss_before_mb`.
    pub rss_after_mb: f64,
    /// `rss_after_mb - rss_before_mb`.
    pub rss_growth_mb: f64,
    /// Seconds from the first loaded object's request until the router enforced all of them.
    pub load_sync_s: f64,
    /// API request to rules in force, per change, ms: p50, p99, max (measured from outside).
    pub sync_p50_ms: f64,
    /// See `sync_p50_ms`.
    pub sync_p99_ms: f64,
    /// See `sync_p50_ms`.
    pub sync_max_ms: f64,
    /// The router's own measure (view published to batch acknowledged), p99, ms.
    pub router_sync_p99_ms: f64,
    /// Changes timed.
    pub changes: usize,
    /// Throughput over `fastdp`'s, 1 and 4 streams (medians), and run by run.
    pub ratio_gbps_1: f64,
    /// See `ratio_gbps_1`.
    pub ratio_gbps_4: f64,
    /// See `ratio_gbps_1`.
    pub paired_ratio_gbps_1: f64,
    /// New TCP connections per second, median, this row and `fastdp`.
    pub conn_per_s: f64,
    /// See `conn_per_s`.
    pub conn_per_s_without: f64,
    /// `conn_per_s / conn_per_s_without`, and the median of run-by-run ratios.
    pub ratio_conn: f64,
    /// See `ratio_conn`.
    pub paired_ratio_conn: f64,
}

/// The load and change figures; the ratios are filled in after the runs.
pub(super) struct Loaded {
    figures: PolicyFigures,
}

impl Loaded {
    /// The figures with the runs' ratios.
    pub(super) fn finish(
        mut self,
        (gbps_1, gbps_4, paired_1): (f64, f64, f64),
        conn: &[f64],
        conn_without: &[f64],
    ) -> PolicyFigures {
        let f = &mut self.figures;
        f.ratio_gbps_1 = round(gbps_1, 2);
        f.ratio_gbps_4 = round(gbps_4, 2);
        f.paired_ratio_gbps_1 = round(paired_1, 2);
        f.conn_per_s = round(median(conn), 0);
        f.conn_per_s_without = round(median(conn_without), 0);
        f.ratio_conn = round(median(conn) / median(conn_without), 2);
        f.paired_ratio_conn = round(super::paired_ratio(conn, conn_without), 2);
        self.figures
    }
}

/// Brings the row's lab up, loads it, times the changes.
pub(super) fn start(prefix: &str) -> Result<(LabGuard, Target, Loaded)> {
    let name = format!("{prefix}k");
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    spec.datapath = lab::Datapath::Fastdp;
    spec.kube = true;
    let (guard, target) = lab_target(&name, &spec)?;
    apply(&name, &list(vec![allow_bench()]))?;
    let mut status = wait_policy(&name, 1, Duration::from_secs(30))?;
    let rss_before = rss_mb(&name, "h2")?;
    let start = Instant::now();
    apply(&name, &load())?;
    status = wait_policy(&name, POLICIES + 1, Duration::from_secs(120))
        .with_context(|| format!("after loading; last status {status}"))?;
    let load_sync = start.elapsed();
    let rss_after = rss_mb(&name, "h2")?;
    let (outside, inside) = time_changes(&name)?;
    let p = |v: &[f64], q: f64| round(percentile(v, q), 1);
    let figures = PolicyFigures {
        pods: PODS,
        policies: POLICIES,
        rules: status["rules"].as_u64().unwrap_or(0),
        sets: status["sets"].as_u64().unwrap_or(0),
        rss_before_mb: round(rss_before, 1),
        rss_after_mb: round(rss_after, 1),
        rss_growth_mb: round(rss_after - rss_before, 1),
        load_sync_s: round(load_sync.as_secs_f64(), 2),
        sync_p50_ms: p(&outside, 0.5),
        sync_p99_ms: p(&outside, 0.99),
        sync_max_ms: p(&outside, 1.0),
        router_sync_p99_ms: p(&inside, 0.99),
        changes: outside.len(),
        ratio_gbps_1: f64::NAN,
        ratio_gbps_4: f64::NAN,
        paired_ratio_gbps_1: f64::NAN,
        conn_per_s: f64::NAN,
        conn_per_s_without: f64::NAN,
        ratio_conn: f64::NAN,
        paired_ratio_conn: f64::NAN,
    };
    Ok((guard, target, Loaded { figures }))
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn apply(lab: &str, objects: &Value) -> Result<()> {
    // In the lab's directory: removed with the lab.
    let file = PathBuf::from(lab::RUN_DIR)
        .join(lab)
        .join("bench-objects.json");
    std::fs::write(&file, objects.to_string()).context("writing objects")?;
    lab::objects::apply(lab, &file)?;
    Ok(())
}

/// The policy that lets the bench's pods (pod=p1 on both nodes) talk, both ways, every port.
fn allow_bench() -> Value {
    let p1 = json!({"podSelector": {"matchLabels": {"pod": "p1"}}});
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "default", "name": "bench-p1"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "p1"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [p1]}],
            "egress": [{"to": [p1]}],
        },
    })
}

/// The `i`th loaded pod: on h1, h2 or a node that does not exist, in turn.
fn pod(i: usize, app: usize) -> Value {
    let node = ["h1", "h2", "far"][i % 3];
    let ip = Ipv4Addr::new(10, 33, (i / 250) as u8, (i % 250 + 1) as u8).to_string();
    let tier = ["front", "back"][i % 2];
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "namespace": format!("bench-{}", i % NAMESPACES),
            "name": format!("load-{i}"),
            "labels": {"app": format!("a{app}"), "tier": tier},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "bench",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

/// 20 namespaces, 1,000 pods, 200 policies of the shapes clusters use: selectors on both
/// sides, namespace selectors, ports, a port range, named ports, ipBlocks with excepts.
fn load() -> Value {
    let mut items = Vec::new();
    for n in 0..NAMESPACES {
        let name = format!("bench-{n}");
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"team": format!("t{}", n % 5),
                "kubernetes.io/metadata.name": name}},
        }));
    }
    items.extend((0..PODS).map(|i| pod(i, i % 50)));
    for j in 0..POLICIES {
        let sel = |app: usize| json!({"matchLabels": {"app": format!("a{app}")}});
        let mut spec = json!({
            "podSelector": sel(j % 50),
            "ingress": [
                {"from": [{"podSelector": sel((j + 7) % 50)},
                          {"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 5)}},
                           "podSelector": {"matchLabels": {"tier": "front"}}}],
                 "ports": [{"port": 8080}, {"protocol": "UDP", "port": 53}]},
                {"from": [{"ipBlock": {"cidr": "10.40.0.0/16", "except": ["10.40.1.0/24"]}}],
                 "ports": [{"port": 9000, "endPort": 9100}]},
            ],
        });
        if j % 4 == 0 {
            spec["policyTypes"] = json!(["Ingress", "Egress"]);
            spec["egress"] =
                json!([{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}]);
        }
        items.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": format!("bench-{}", j % NAMESPACES), "name": format!("p{j}")},
            "spec": spec,
        }));
    }
    list(items)
}

/// Waits until h2's router enforces `policies` policies; returns its policy status.
fn wait_policy(lab: &str, policies: usize, within: Duration) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let report = lab::report(lab, "h2")?;
        let p = report["netfilter"]["policy"].clone();
        let cluster = &report["kubernetes"]["cluster"]["revision"];
        if p["state"] == "enforcing"
            && p["policies"].as_u64() == Some(policies as u64)
            && p["revision"] == *cluster
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("h2 does not enforce {policies} policies: {p}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Relabels pods on h2 one at a time; per change, the time from the request to the status
/// showing a newer revision in force (outside), and the router's own measure (inside).
fn time_changes(lab: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    let revision = |r: &Value| r["netfilter"]["policy"]["revision"].as_u64();
    for k in 0..SYNC_CHANGES {
        // Pods 1, 4, 7, ... are on h2; each moves to the next app's selectors, then back.
        let i = 1 + 3 * (k / 2);
        let app = if k % 2 == 0 { (i + 1) % 50 } else { i % 50 };
        let before = revision(&lab::report(lab, "h2")?).context("no policy revision")?;
        let start = Instant::now();
        apply(lab, &list(vec![pod(i, app)]))?;
        let report = loop {
            let r = lab::report(lab, "h2")?;
            if revision(&r).is_some_and(|v| v > before) {
                break r;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "change {k} not in force after 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        outside.push(start.elapsed().as_secs_f64() * 1000.0);
        if let Some(ms) = report["netfilter"]["policy"]["last_sync_lag_ms"].as_f64() {
            inside.push(ms);
        }
    }
    Ok((outside, inside))
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len());
    s[at - 1]
}

fn rss_mb(lab: &str, node: &str) -> Result<f64> {
    let pid_file = PathBuf::from(lab::RUN_DIR)
        .join(lab)
        .join(node)
        .join("router.pid");
    let pid = std::fs::read_to_string(&pid_file).context("router pid")?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// A listener in a pod's namespace that accepts and drops connections until dropped.
pub(super) struct ConnServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ConnServer {
    pub(super) fn start(ns: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (flag, ns) = (stop.clone(), ns.to_owned());
        let thread = std::thread::spawn(move || {
            netns::in_netns(&ns, move || {
                let listener = TcpListener::bind(("0.0.0.0", CONN_PORT))?;
                listener.set_nonblocking(true)?;
                let _ = ready_tx.send(());
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            })
        });
        ready
            .recv_timeout(Duration::from_secs(5))
            .context("the connection listener did not start")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// New TCP connections per second from pod namespace `client` to `server_ip`, for
/// [`CONN_SECONDS`]: connect, then close with a reset (no TIME_WAIT piles up).
pub(super) fn conn_rate(client: &str, server_ip: &str) -> Result<f64> {
    let addr = SocketAddr::new(server_ip.parse()?, CONN_PORT);
    netns::in_netns(client, move || {
        let start = Instant::now();
        let mut n = 0_u64;
        while start.elapsed() < Duration::from_secs(CONN_SECONDS) {
            let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .with_context(|| format!("connecting to {addr}"))?;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a socket this function owns, with a valid linger struct.
            unsafe {
                libc::setsockopt(
                    conn.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::from_ref(&linger).cast(),
                    size_of::<libc::linger>() as u32,
                );
            }
            drop(conn);
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}
