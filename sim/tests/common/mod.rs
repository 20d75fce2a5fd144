//! Helpers shared by the lab integration tests (`sleeve`, `fastdp`, `encryption`,
//! `control_plane`, `lab`, `cni_churn`, `containerd`, `faults`). Each test file is its own crate and includes this module with
//! `mod common;`; not every file uses every helper, hence the `dead_code` allowances.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weft_sim::lab::{self, LabInfo};

/// Labs in one test binary run one at a time: iperf3 and timing-sensitive checks in parallel
/// labs on two cores starve the routers' control planes and make timings meaningless.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the process-wide lab lock (a panicked holder does not poison it for the others).
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A lab name unique to this process: `lt<pid><tag>`.
pub(crate) fn unique(tag: &str) -> String {
    unique_with("lt", tag)
}

/// A lab name unique to this process with its own prefix: `<prefix><pid><tag>`.
pub(crate) fn unique_with(prefix: &str, tag: &str) -> String {
    format!("{prefix}{}{tag}", std::process::id() % 100_000)
}

/// The bare IP (no prefix length) of the first pod on node `node` (1-based).
pub(crate) fn pod_ip(info: &LabInfo, node: usize) -> String {
    let ip = &info.nodes[node - 1].pods[0].ip;
    ip.split('/').next().unwrap().to_owned()
}

/// Runs a command in a lab target; returns (success, stdout, stderr).
pub(crate) fn exec(name: &str, target: &str, argv: &[&str]) -> (bool, String, String) {
    let out = lab::exec_output(name, target, argv).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `weft ARGS` in node `node` (its `WEFT_API` is set by the lab).
pub(crate) fn weft(name: &str, node: &str, args: &[&str]) -> (bool, String, String) {
    let bin = lab::weft_binary().unwrap();
    let bin = bin.display().to_string();
    let argv: Vec<&str> = std::iter::once(bin.as_str())
        .chain(args.iter().copied())
        .collect();
    exec(name, node, &argv)
}

/// Pings until one reply or `timeout`; returns the time to the first reply.
pub(crate) fn ping_until(name: &str, from: &str, ip: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if exec(name, from, &["ping", "-c", "1", "-W", "1", ip]).0 {
            return Some(start.elapsed());
        }
    }
    None
}

/// The router's Prometheus metrics page (`GET /metrics` on 127.0.0.1:6782 in node `node`).
pub(crate) fn metrics(name: &str, node: &str) -> String {
    let (ns, _) = lab::target(name, node).unwrap();
    lab::netns::in_netns(&ns, || {
        let mut s = TcpStream::connect("127.0.0.1:6782")?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .unwrap()
}

/// The sum of every sample in `text` whose line starts with `series` (comments excluded).
pub(crate) fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bytes of a hex ping payload pattern (`ping -p`).
pub(crate) fn pattern_bytes(pattern: &str) -> Vec<u8> {
    (0..pattern.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&pattern[i..i + 2], 16).unwrap())
        .collect()
}

/// Whether `needle` occurs anywhere in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Starts `tcpdump ARGS` in namespace `ns` (stderr piped, the rest null) and waits up to 5 s
/// for it to say "listening on"; returns the child and whether it said so in time.
pub(crate) fn start_tcpdump(ns: &str, args: &[&str]) -> (Child, bool) {
    let mut child = lab::netns::command_in(ns, "tcpdump")
        .unwrap()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while let Ok(1) = stderr.read(&mut byte) {
            seen.push(byte[0]);
            if seen.ends_with(b"listening on") {
                let _ = ready_tx.send(());
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(5)).is_ok();
    (child, ready)
}

/// Sends SIGINT to `child` (tcpdump flushes its file) and waits for it to exit, at most
/// `timeout`, polling every 20 ms.
pub(crate) fn interrupt(child: &mut Child, timeout: Duration) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The count of addresses `node`'s router holds in its own IPAM share (its pods and its
/// gateway), once it reports one.
pub(crate) fn active(name: &str, node: &str) -> u64 {
    for _ in 0..30 {
        let report = lab::report(name, node).unwrap();
        // This router's own share comes first.
        if let Some(n) = report["ipam"]["owners"][0]["active"].as_u64() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{node} reports no active IPAM count");
}

/// Waits (3 s at most) until `node` reports `want` active addresses, and returns the last
/// count seen. The status snapshot may trail a change by 100 ms, and right after `lab up` a
/// router's first snapshot may predate its pods: a count read once is not a baseline.
pub(crate) fn settled_active(name: &str, node: &str, want: u64) -> u64 {
    let mut seen = active(name, node);
    for _ in 0..30 {
        if seen == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        seen = active(name, node);
    }
    seen
}

/// Polls (5 s at most) until a TCP socket listens on `port` in lab target `target`: a client
/// started before its server listens is refused.
pub(crate) fn wait_listening(name: &str, target: &str, port: u16) {
    let filter = format!("sport = :{port}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let (ok, out, _) = exec(name, target, &["ss", "-Hltn", &filter]);
        if ok && !out.trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on TCP port {port} in {target} after 5 s");
}
