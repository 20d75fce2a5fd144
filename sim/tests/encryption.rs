//! Mesh-wide encryption switched at run time while traffic flows (issue 9's acceptance), on the
//! sleeve (`--datapath sleeve`) and in the default `--datapath auto`, where peers start on
//! fastdp (kernel VXLAN, in clear), move to the sealed sleeve when encryption turns on (this
//! kernel has no ESP) and back to fastdp when it turns off.
//!
//! ```text
//!   h1 ── h2 ── h3 (full underlay, N-u)   pods hI/p1; pings at 10 ms on every pair with a
//!   recognisable payload; one iperf3 TCP stream h1/p1 → h2/p1 at 500 Mb/s; tcpdump on the
//!   underlay bridge; enable (h1) → disable (h2, with the password proof) → enable (h3)
//! ```
//!
//! Each test builds its own lab (`lt<pid><tag>`) under a `LabGuard`; every wait is bounded.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use weft_sim::lab::{self, Datapath, LabGuard, LabInfo, LabSpec};

mod common;
use common::{
    contains, exec, interrupt, pattern_bytes, ping_until, pod_ip, serial, start_tcpdump, unique,
    wait_listening, weft,
};

const PASSWORD: &str = "lab mesh password for the encryption test";
/// Ping payload pattern (16 bytes) searched for in underlay captures.
const PATTERN: &str = "77656674656e63727970746f6666210a";
/// Pings per pair at 10 ms: about 16 s of traffic.
const PINGS: u32 = 1600;
const TRAFFIC_SECONDS: u64 = 16;
/// How long after learning of an enable a router may still send in clear: moving its fastdp
/// peers' forwarding entries to the sleeve (a few netlink requests) on a loaded 2-core host.
const MOVE_ALLOWANCE_S: f64 = 0.05;

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A process in a lab target with its stdout collected (by a thread, so a full pipe never
/// blocks it); killed on drop.
struct Proc(Option<Child>, Option<std::thread::JoinHandle<String>>);

impl Proc {
    fn start(name: &str, target: &str, argv: &[&str]) -> Self {
        let (ns, _) = lab::target(name, target).unwrap();
        let mut child = lab::netns::command_in(&ns, argv[0])
            .unwrap()
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        Self(Some(child), Some(reader))
    }

    /// Waits for the process to end (bounded) and returns its stdout.
    fn finish(mut self, timeout: Duration) -> String {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.1.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// tcpdump on the underlay bridge: sleeve (UDP 6783) datagrams shorter than full-size chunks
/// (the pings, not the bulk of the iperf3 stream) and every fastdp (VXLAN, UDP 6784)
/// datagram, first 256 bytes of each.
struct Capture {
    child: Option<Child>,
    file: String,
}

impl Capture {
    fn start(name: &str, tag: &str) -> Self {
        let file = format!("{}/{name}/{tag}.pcap", lab::RUN_DIR);
        let (child, ready) = start_tcpdump(
            &format!("{name}-u"),
            &[
                "-Z",
                "root",
                "--immediate-mode",
                "-i",
                "ubr",
                "-U",
                "-s",
                "256",
                "-w",
                &file,
                "udp",
                "and",
                "(port",
                "6783",
                "or",
                "port",
                "6784)",
                "and",
                "(port",
                "6784",
                "or",
                "less",
                "1200)",
            ],
        );
        assert!(ready, "tcpdump did not start");
        std::thread::sleep(Duration::from_millis(200));
        Self {
            child: Some(child),
            file,
        }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns each packet's (wall time, bytes).
    fn stop(mut self) -> Vec<(f64, Vec<u8>)> {
        let mut child = self.child.take().unwrap();
        interrupt(&mut child, Duration::from_secs(5));
        let _ = child.kill();
        let _ = child.wait();
        keep(&self.file);
        parse_pcap(&std::fs::read(&self.file).unwrap())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Unix seconds of an RFC 3339 UTC timestamp as the router logs it
/// (`2026-11-22T12:24:26.136041Z`).
fn rfc3339_unix(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (civil-from-days, inverted).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3_600.0 + min * 60.0 + sec)
}

/// When router `node` learned that encryption is on at `version`: its log's line saying so.
fn learned_at(name: &str, node: &str, version: u64) -> Option<f64> {
    let log = std::fs::read_to_string(format!("{}/{name}/{node}/router.log", lab::RUN_DIR)).ok()?;
    let said = format!("enabled=true version={version}");
    log.lines()
        .find(|l| l.contains("mesh encryption changed") && l.contains(&said))
        .and_then(|l| rfc3339_unix(l.split_whitespace().next()?))
}

/// The latest of `packets` sent by each node (outer source address) relative to when that
/// node learned of the change, in seconds (negative: before it knew).
fn latest_after_learning(
    info: &LabInfo,
    learned: &[f64],
    packets: &[(f64, &[u8])],
) -> Option<(String, f64)> {
    packets
        .iter()
        .filter_map(|(t, p)| {
            let src = std::net::Ipv4Addr::new(*p.get(26)?, p[27], p[28], p[29]).to_string();
            let i = info.nodes.iter().position(|n| n.underlay_ip == src)?;
            Some((info.nodes[i].name.clone(), t - learned[i]))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// With `WEFT_TEST_KEEP=DIR`, copies `file` (a capture or a router log) to DIR for a look
/// after the test (the lab's files go with the lab).
fn keep(file: &str) {
    let Ok(dir) = std::env::var("WEFT_TEST_KEEP") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let to = file.trim_start_matches(lab::RUN_DIR).replace('/', "_");
    let _ = std::fs::copy(file, format!("{dir}/{to}"));
}

/// Parses a classic little-endian microsecond pcap file.
fn parse_pcap(b: &[u8]) -> Vec<(f64, Vec<u8>)> {
    assert!(b.len() >= 24, "pcap too short");
    assert_eq!(&b[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "not a LE µs pcap");
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let ts = f64::from(u32_at(i)) + f64::from(u32_at(i + 4)) / 1e6;
        let len = u32_at(i + 8) as usize;
        let end = (i + 16 + len).min(b.len());
        out.push((ts, b[i + 16..end].to_vec()));
        i += 16 + len;
    }
    out
}

/// Whether every router reports `enabled` and, with `mode`, every one of its `conns`
/// connections in that mode.
fn all_in(name: &str, nodes: &[&str], enabled: bool, mode: Option<&str>, conns: usize) -> bool {
    nodes.iter().all(|node| {
        let Ok(r) = lab::report(name, node) else {
            return false;
        };
        let enc = &r["encryption"];
        if enc["enabled"] != enabled {
            return false;
        }
        let Some(mode) = mode else { return true };
        let list = enc["connections"].as_array().cloned().unwrap_or_default();
        list.len() == conns && list.iter().all(|c| c["mode"] == mode)
    })
}

/// Polls until [`all_in`] holds; returns (wall time every router reported `enabled`, time
/// from `start` until every connection was in `mode`), or `None` past `timeout`.
fn wait_mode(
    name: &str,
    nodes: &[&str],
    enabled: bool,
    mode: &str,
    start: Instant,
    timeout: Duration,
) -> Option<(f64, Duration)> {
    let mut known = None;
    while start.elapsed() < timeout {
        if known.is_none() && all_in(name, nodes, enabled, None, 0) {
            known = Some(wall());
        }
        if all_in(name, nodes, enabled, Some(mode), nodes.len() - 1) {
            return Some((known.unwrap_or_else(wall), start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The runs of ping sequence numbers with no reply, each with the wall time of the reply
/// before it (from `ping -D`'s `[seconds] ... icmp_seq=N` lines).
fn ping_gaps(out: &str) -> Vec<(u64, u64, f64)> {
    let mut seen: Vec<(u64, f64)> = out
        .lines()
        .filter_map(|l| {
            let t = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((seq, t))
        })
        .collect();
    seen.sort_by_key(|&(seq, _)| seq);
    seen.dedup_by_key(|&mut (seq, _)| seq);
    seen.windows(2)
        .filter(|w| w[1].0 > w[0].0 + 1)
        .map(|w| (w[0].0 + 1, w[1].0 - 1, w[0].1))
        .collect()
}

/// VXLAN datagrams (UDP 6784) carrying anything but ARP (the fastdp probes): pod traffic
/// on fastdp, in clear.
fn vxlan_data(packet: &[u8]) -> bool {
    // Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet's type at 12.
    packet.len() >= 64
        && packet[12..14] == [0x08, 0x00]
        && packet[36..38] == 6784u16.to_be_bytes()
        && packet[62..64] != [0x08, 0x06]
}

/// `N packets transmitted, M received` from ping's summary.
fn ping_counts(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {out}"));
    let nums: Vec<u64> = line
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// The longest run of consecutive iperf3 intervals that moved no bytes, in seconds, and the
/// number of intervals.
fn longest_stall(report: &Value) -> (f64, usize) {
    let intervals = report["intervals"].as_array().cloned().unwrap_or_default();
    let (mut longest, mut run) = (0.0f64, 0.0f64);
    for i in &intervals {
        let sum = &i["sum"];
        if sum["bytes"].as_f64().unwrap_or(0.0) == 0.0 {
            run += sum["seconds"].as_f64().unwrap_or(0.0);
            longest = longest.max(run);
        } else {
            run = 0.0;
        }
    }
    (longest, intervals.len())
}

fn write_password(name: &str, file: &str, text: &str) -> String {
    let path = format!("{}/{name}/{file}", lab::RUN_DIR);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The data path (`fastdp`, `sleeve`) of every established connection of every router.
fn datapaths(name: &str, nodes: &[&str]) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|node| {
            let r = lab::report(name, node).unwrap_or(Value::Null);
            let list = r["connections"].as_array().cloned().unwrap_or_default();
            list.into_iter()
                .filter(|c| c["state"] == "established")
                .map(|c| format!("{node}: {}", c["datapath"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether every router has its `nodes.len() - 1` connections on data path `want`.
fn all_on(name: &str, nodes: &[&str], want: &str) -> bool {
    let paths = datapaths(name, nodes);
    paths.len() == nodes.len() * (nodes.len() - 1)
        && paths.iter().all(|p| p.ends_with(&format!(": {want}")))
}

#[test]
fn mesh_encryption_switches_while_traffic_flows() {
    switches_while_traffic_flows(Datapath::Sleeve, "es");
}

/// The default data path: fastdp ⇄ sealed sleeve with every switch.
#[test]
fn mesh_encryption_switches_while_traffic_flows_auto() {
    switches_while_traffic_flows(Datapath::Auto, "ea");
}

// The figures this prints are the acceptance's report (clippy allows prints in `#[test]`
// functions only, and this is their shared body).
#[allow(clippy::print_stdout)]
fn switches_while_traffic_flows(datapath: Datapath, tag: &str) {
    let _serial = serial();
    let name = unique(tag);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 1;
    spec.datapath = datapath;
    let auto = datapath == Datapath::Auto;
    spec.encrypt = false;
    spec.password = Some(PASSWORD.to_owned());
    let info = lab::up(&spec).unwrap();
    let nodes = ["h1", "h2", "h3"];
    let ips: Vec<String> = (1..=3).map(|i| pod_ip(&info, i)).collect();
    let pairs = [(1, 2), (2, 3), (3, 1)];
    for &(a, b) in &pairs {
        assert!(
            ping_until(
                &name,
                &format!("h{a}/p1"),
                &ips[b - 1],
                Duration::from_secs(10)
            )
            .is_some(),
            "h{a}/p1 cannot reach h{b}/p1"
        );
    }
    assert!(
        wait_mode(
            &name,
            &nodes,
            false,
            "plain",
            Instant::now(),
            Duration::from_secs(5)
        )
        .is_some(),
        "connections not plain at start"
    );
    if auto {
        let start = Instant::now();
        while !all_on(&name, &nodes, "fastdp") && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            all_on(&name, &nodes, "fastdp"),
            "not every connection on fastdp at start: {:?}",
            datapaths(&name, &nodes)
        );
    }
    let good = write_password(&name, "admin-password", PASSWORD);
    let wrong = write_password(&name, "wrong-password", "not the mesh password");

    let capture = Capture::start(&name, "switch");
    let t0 = Instant::now();
    let iperf_server = Proc::start(&name, "h2/p1", &["iperf3", "-s", "-1", "-J", "-i", "0.2"]);
    wait_listening(&name, "h2/p1", 5201);
    let seconds = TRAFFIC_SECONDS.to_string();
    let iperf_client = Proc::start(
        &name,
        "h1/p1",
        &[
            "iperf3", "-c", &ips[1], "-t", &seconds, "-b", "500M", "-i", "0.2", "-J",
        ],
    );
    let count = PINGS.to_string();
    let pings: Vec<(String, Proc)> = pairs
        .iter()
        .map(|&(a, b)| {
            let label = format!("h{a}/p1 -> h{b}/p1");
            let p = Proc::start(
                &name,
                &format!("h{a}/p1"),
                &[
                    "ping",
                    "-D",
                    "-i",
                    "0.01",
                    "-c",
                    &count,
                    "-s",
                    "64",
                    "-W",
                    "2",
                    "-p",
                    PATTERN,
                    &ips[b - 1],
                ],
            );
            (label, p)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // enable on h1.
    let t_enable1 = wall();
    let start = Instant::now();
    let (ok, out, err) = weft(&name, "h1", &["encryption", "enable"]);
    assert!(ok, "enable failed: {out}{err}");
    let t_returned1 = wall();
    print!("h1: weft encryption enable: {out}");
    let (known1, settle1) = wait_mode(&name, &nodes, true, "sealed", start, Duration::from_secs(3))
        .expect("not every connection sealed within 3 s of enable");
    if auto {
        assert!(
            all_on(&name, &nodes, "sleeve"),
            "sealed but not every connection on the sleeve: {:?}",
            datapaths(&name, &nodes)
        );
        let (ok, status, _) = weft(&name, "h2", &["encryption", "status"]);
        assert!(ok);
        assert!(
            status.contains(
                "sealed    mesh encryption on; the kernel has no ESP, so this fastdp peer's traffic goes through the encrypted sleeve"
            ),
            "{status}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    // disable on h2: refused without proof and with a wrong password, done with the right one.
    let (ok, _, err) = weft(&name, "h2", &["encryption", "disable"]);
    assert!(!ok, "disable without a password proof was accepted");
    assert!(err.contains("--password-file"), "{err}");
    let (ok, _, err) = weft(
        &name,
        "h2",
        &["encryption", "disable", "--password-file", &wrong],
    );
    assert!(!ok, "disable with a wrong password was accepted");
    assert!(err.contains("does not verify"), "{err}");
    assert!(
        all_in(&name, &nodes, true, None, 0),
        "a refused disable changed the setting"
    );
    let t_disable = wall();
    let start = Instant::now();
    let (ok, out, err) = weft(
        &name,
        "h2",
        &["encryption", "disable", "--password-file", &good],
    );
    assert!(ok, "disable failed: {out}{err}");
    print!("h2: weft encryption disable --password-file F: {out}");
    let (_, settle2) = wait_mode(&name, &nodes, false, "plain", start, Duration::from_secs(3))
        .expect("not every connection plain within 3 s of disable");
    let mut back = None;
    if auto {
        while start.elapsed() < Duration::from_secs(3) {
            if all_on(&name, &nodes, "fastdp") {
                back = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            back.is_some(),
            "not every connection back on fastdp within 3 s of disable: {:?}",
            datapaths(&name, &nodes)
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    // enable again, on h3.
    let t_enable2 = wall();
    let start = Instant::now();
    let (ok, out, err) = weft(&name, "h3", &["encryption", "enable"]);
    assert!(ok, "second enable failed: {out}{err}");
    let t_returned2 = wall();
    print!("h3: weft encryption enable: {out}");
    let (known3, settle3) = wait_mode(&name, &nodes, true, "sealed", start, Duration::from_secs(3))
        .expect("not every connection sealed within 3 s of the second enable");
    if auto {
        assert!(
            all_on(&name, &nodes, "sleeve"),
            "sealed but not every connection on the sleeve: {:?}",
            datapaths(&name, &nodes)
        );
    }
    let switched_by = t0.elapsed();

    let ping_outs: Vec<(String, String)> = pings
        .into_iter()
        .map(|(label, p)| (label, p.finish(Duration::from_secs(40))))
        .collect();
    let client_out = iperf_client.finish(Duration::from_secs(40));
    let server_out = iperf_server.finish(Duration::from_secs(10));
    let packets = capture.stop();
    let t_end = wall();
    for node in nodes {
        keep(&format!("{}/{name}/{node}/router.log", lab::RUN_DIR));
    }
    // Where frames were dropped on the nodes, if anywhere: the TAP's queue (the sleeve did not
    // read fast enough) and the UDP sockets' receive buffers.
    for node in nodes {
        let (_, dev, _) = exec(&name, node, &["cat", "/proc/net/dev"]);
        // `weft-tap: rx_bytes rx_packets rx_errs rx_drop … tx_bytes tx_packets tx_errs tx_drop`
        let tap = dev
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("weft-tap:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .and_then(|f| Some(format!("rx_drop {} tx_drop {}", f.get(3)?, f.get(11)?)))
            .unwrap_or_default();
        let (_, metrics, _) = exec(
            &name,
            node,
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:6782/metrics",
            ],
        );
        let drops: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("weft_dropped") && !l.ends_with(" 0"))
            .collect();
        let sleeve = lab::report(&name, node)
            .ok()
            .and_then(|r| r.get("sleeve").cloned())
            .unwrap_or_default();
        let errors: Vec<String> = [
            "dropped",
            "send_errors",
            "tap_write_errors",
            "late_for_fastdp",
        ]
        .iter()
        .map(|k| format!("{k} {}", sleeve[k]))
        .collect();
        println!(
            "{node}: router drops {drops:?}; sleeve {}",
            errors.join(", ")
        );
        let (_, snmp, _) = exec(&name, node, &["cat", "/proc/net/snmp"]);
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        let rcvbuf = udp.first().zip(udp.get(1)).and_then(|(h, v)| {
            h.split_whitespace()
                .zip(v.split_whitespace())
                .find(|(k, _)| *k == "RcvbufErrors")
                .map(|(_, v)| v.to_owned())
        });
        println!(
            "{node}: weft-tap {tap}, UDP RcvbufErrors {}",
            rcvbuf.unwrap_or_default()
        );
    }

    println!(
        "datapath {}: settle (command to every connection in the new mode): enable {:.2} s, disable {:.2} s{}, enable {:.2} s; all switches done {:.1} s into {TRAFFIC_SECONDS} s of traffic",
        if auto { "auto" } else { "sleeve" },
        settle1.as_secs_f64(),
        settle2.as_secs_f64(),
        back.map_or_else(String::new, |d| format!(
            " (every connection back on fastdp {:.2} s)",
            d.as_secs_f64()
        )),
        settle3.as_secs_f64(),
        switched_by.as_secs_f64()
    );
    assert!(
        switched_by < Duration::from_secs(TRAFFIC_SECONDS),
        "the switches ended after the traffic: {switched_by:?}"
    );
    for (label, out) in &ping_outs {
        let (sent, received) = ping_counts(out);
        let gaps: Vec<String> = ping_gaps(out)
            .iter()
            .map(|&(a, b, t)| format!("seq {a}..={b} after {:+.2} s from enable 1", t - t_enable1))
            .collect();
        println!("ping {label}: {sent} sent, {received} received; gaps: {gaps:?}");
        assert!(
            sent >= u64::from(PINGS) * 9 / 10,
            "{label}: only {sent} sent"
        );
        assert_eq!(sent, received, "{label} lost pings: {out}");
    }
    let server: Value = serde_json::from_str(&server_out)
        .unwrap_or_else(|e| panic!("iperf3 server JSON ({e}): {server_out}"));
    let client: Value = serde_json::from_str(&client_out)
        .unwrap_or_else(|e| panic!("iperf3 client JSON ({e}): {client_out}"));
    let (stall, intervals) = longest_stall(&server);
    let received = client["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    println!(
        "iperf3: {intervals} receiver intervals, longest stall {stall:.1} s, {:.0} Mb/s received",
        received / 1e6
    );
    assert!(intervals >= 50, "too few iperf3 intervals: {server_out}");
    assert!(stall <= 1.0, "the TCP stream stalled {stall} s");
    assert!(received > 100e6, "TCP moved only {received} b/s");

    let pattern = pattern_bytes(PATTERN);
    let clear: Vec<f64> = packets
        .iter()
        .filter(|(_, p)| contains(p, &pattern))
        .map(|(t, _)| *t)
        .collect();
    let within = |a: f64, b: f64| clear.iter().filter(|&&t| t >= a && t < b).count();
    let vxlan: Vec<f64> = packets
        .iter()
        .filter(|(_, p)| vxlan_data(p))
        .map(|(t, _)| *t)
        .collect();
    let vx_within = |a: f64, b: f64| vxlan.iter().filter(|&&t| t >= a && t < b).count();
    println!(
        "capture: {} VXLAN datagrams with pod traffic (not probes); enable 1: {} while the command ran, {} from its return until every router reported on, {} after; plain phase: {}; enable 2: {}, {}, {} after",
        vxlan.len(),
        vx_within(t_enable1, t_returned1),
        vx_within(t_returned1, known1),
        vx_within(known1, t_disable),
        vx_within(t_disable, t_enable2),
        vx_within(t_enable2, t_returned2),
        vx_within(t_returned2, known3),
        vx_within(known3, t_end)
    );
    println!(
        "capture: {} packets, {} with the pattern in clear; enable 1: {} while the command ran, {} from its return until every router reported on ({:.0} ms); enable 2: {} and {} ({:.0} ms); plain phase: {}",
        packets.len(),
        clear.len(),
        within(t_enable1, t_returned1),
        within(t_returned1, known1),
        (known1 - t_returned1) * 1e3,
        within(t_enable2, t_returned2),
        within(t_returned2, known3),
        (known3 - t_returned2) * 1e3,
        within(t_disable, t_enable2)
    );
    // The positive control: in the plain phase the payload is visible.
    assert!(
        within(t_disable, t_enable2) > 10,
        "the capture does not see the plain phase's payload"
    );
    assert_eq!(
        within(known1, t_disable),
        0,
        "pod payload in clear after the first enable"
    );
    assert_eq!(
        within(known3, t_end),
        0,
        "pod payload in clear after the second enable"
    );
    // During the change-over, each router sends in the old mode until it learns of the
    // change (one control-message hop): every pod datagram in clear (the pattern, or any pod
    // traffic over VXLAN, the iperf3 stream's included) must come from a router that did not
    // know yet, or was still moving its fastdp peers to the sleeve (netlink, milliseconds).
    for (label, version, from, to) in [
        ("enable 1", 1, t_enable1, t_disable),
        ("enable 2", 3, t_enable2, t_end),
    ] {
        let learned: Vec<f64> = nodes
            .iter()
            .map(|n| {
                learned_at(&name, n, version).unwrap_or_else(|| {
                    panic!("{n}'s log does not say when it learned version {version}")
                })
            })
            .collect();
        let in_clear: Vec<(f64, &[u8])> = packets
            .iter()
            .filter(|(t, p)| *t >= from && *t < to && (contains(p, &pattern) || vxlan_data(p)))
            .map(|(t, p)| (*t, p.as_slice()))
            .collect();
        let late = latest_after_learning(&info, &learned, &in_clear);
        println!(
            "{label}: routers learned the setting {} ms after the command started; {} pod datagrams in clear, the last {}",
            learned
                .iter()
                .map(|t| format!("{:+.1}", (t - from) * 1e3))
                .collect::<Vec<_>>()
                .join("/"),
            in_clear.len(),
            late.as_ref().map_or_else(
                || "-".to_owned(),
                |(n, d)| format!("sent by {n} {:+.1} ms after it learned", d * 1e3)
            )
        );
        if let Some((n, d)) = late {
            assert!(
                d <= MOVE_ALLOWANCE_S,
                "{label}: {n} sent pod payload in clear {:.1} ms after it learned of the change",
                d * 1e3
            );
        }
    }
    if auto {
        assert!(
            vx_within(t_disable, t_enable2) > 100,
            "the capture does not see fastdp's traffic in the plain phase"
        );
    }

    // A node that joins while encryption is on comes up encrypted: h3 restarts with
    // `--encryption off` and learns the mesh's setting from its first connection.
    lab::router_action(&name, "h3", lab::RouterAction::Restart).unwrap();
    let start = Instant::now();
    let (_, joined) = wait_mode(
        &name,
        &nodes,
        true,
        "sealed",
        start,
        Duration::from_secs(20),
    )
    .expect("the restarted h3 did not come up encrypted");
    let h3 = lab::report(&name, "h3").unwrap();
    assert_eq!(h3["encryption"]["version"], 3, "{h3:#}");
    println!(
        "rejoin: h3 sealed with every peer {:.1} s after its restart",
        joined.as_secs_f64()
    );
    // Pods reach a restarted router's pods after 1 to 12 s in this lab, with encryption on or
    // off alike (a restart-convergence matter outside this test): wait for that first.
    for (from, to) in [(3, 1), (1, 3), (2, 3)] {
        assert!(
            ping_until(
                &name,
                &format!("h{from}/p1"),
                &ips[to - 1],
                Duration::from_secs(25)
            )
            .is_some(),
            "h{from}/p1 cannot reach h{to}/p1 after the rejoin"
        );
    }
    let capture = Capture::start(&name, "join");
    let t_join = wall();
    for (from, to) in [(3, 1), (1, 3), (2, 3)] {
        let (ok, out, _) = exec(
            &name,
            &format!("h{from}/p1"),
            &[
                "ping",
                "-c",
                "5",
                "-i",
                "0.1",
                "-W",
                "2",
                "-s",
                "64",
                "-p",
                PATTERN,
                &ips[to - 1],
            ],
        );
        assert!(ok, "h{from}/p1 -> h{to}/p1 after the rejoin: {out}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let packets = capture.stop();
    let after: Vec<&(f64, Vec<u8>)> = packets.iter().filter(|(t, _)| *t >= t_join).collect();
    assert!(after.len() >= 30, "capture too small: {}", after.len());
    assert!(
        !after
            .iter()
            .any(|(_, p)| contains(p, &pattern) || vxlan_data(p)),
        "the rejoined node's traffic crossed the underlay in clear"
    );
}

#[test]
fn trusted_subnets_carry_traffic_unencrypted() {
    let _serial = serial();
    let name = unique("et");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    spec.datapath = Datapath::Sleeve;
    spec.encrypt = true;
    // The lab's underlay is 192.0.2.0/24: both ends inside.
    spec.trusted_subnets = vec!["192.0.2.0/24".to_owned()];
    let info = lab::up(&spec).unwrap();
    let ip2 = pod_ip(&info, 2);
    assert!(ping_until(&name, "h1/p1", &ip2, Duration::from_secs(10)).is_some());
    let r = lab::report(&name, "h1").unwrap();
    assert_eq!(r["encryption"]["enabled"], true, "{r:#}");
    let conn = &r["encryption"]["connections"][0];
    assert_eq!(conn["reason"], "trusted subnet 192.0.2.0/24", "{r:#}");
    assert!(
        all_in(&name, &["h1", "h2"], true, Some("plain"), 1),
        "{r:#}"
    );
    let (ok, status, _) = weft(&name, "h1", &["encryption", "status"]);
    assert!(ok);
    assert!(
        status.contains("plain     trusted subnet 192.0.2.0/24"),
        "{status}"
    );
    let capture = Capture::start(&name, "trusted");
    let t = wall();
    let (ok, out, _) = exec(
        &name,
        "h1/p1",
        &[
            "ping", "-c", "5", "-i", "0.1", "-W", "2", "-s", "64", "-p", PATTERN, &ip2,
        ],
    );
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let packets = capture.stop();
    println!(
        "trusted capture: {} packets since the pings started: {:?}",
        packets.iter().filter(|(ts, _)| *ts >= t).count(),
        packets
            .iter()
            .map(|(ts, p)| (*ts - t, p.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        packets
            .iter()
            .any(|(ts, p)| *ts >= t && contains(p, &pattern_bytes(PATTERN))),
        "traffic between trusted subnets was sealed"
    );
}
