//! The sleeve carrying pod traffic between real routers in the lab (`--datapath sleeve`).
//!
//! ```text
//!   full:  h1 ── h2 (── h3)            line:  h1 ── h2 ── h3   (h1 and h3 talk through h2)
//!   pods:  hI/p1 on bridge weft ── weft-tap ◀▶ router ◀▶ UDP 6783 ◀▶ underlay N-u
//! ```
//!
//! Each test builds its own lab (`lt<pid><tag>`) under a `LabGuard`, so failures clean up.
//! Every wait is bounded.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_sim::lab::{self, Datapath, LabGuard, LabInfo, LabSpec, Underlay};

mod common;
use common::{
    contains, exec, interrupt, metric_sum, metrics, pattern_bytes, ping_until, pod_ip, serial,
    start_tcpdump, unique, wait_listening,
};

fn spec(name: &str, nodes: usize, encrypt: bool) -> LabSpec {
    let mut spec = LabSpec::new(name);
    spec.nodes = nodes;
    spec.pods = 1;
    spec.datapath = Datapath::Sleeve;
    spec.encrypt = encrypt;
    spec
}

/// A background process in a lab target, killed on drop.
struct Background(Child);

impl Background {
    fn start(name: &str, target: &str, argv: &[&str]) -> Self {
        let (ns, _) = lab::target(name, target).unwrap();
        Self::start_in(&ns, argv)
    }

    fn start_in(ns: &str, argv: &[&str]) -> Self {
        let child = lab::netns::command_in(ns, argv[0])
            .unwrap()
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    /// Stops the process with SIGINT (tcpdump flushes its file) and waits, bounded.
    fn interrupt(mut self) {
        interrupt(&mut self.0, Duration::from_secs(3));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 client run against a one-off server in `server`; returns the JSON report.
fn iperf(name: &str, client: &str, server: &str, ip: &str, extra: &[&str]) -> Value {
    let _server = Background::start(name, server, &["iperf3", "-s", "-1"]);
    wait_listening(name, server, 5201);
    let mut argv = vec!["timeout", "15", "iperf3", "-c", ip, "-t", "1", "-J"];
    argv.extend_from_slice(extra);
    let (_, out, _) = exec(name, client, &argv);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("iperf3 output ({e}): {out}"))
}

/// Ping, ARP, TCP (TSO super-frames) and UDP between pods on h1 and h2.
fn check_pod_traffic(name: &str, info: &LabInfo) {
    let ip2 = pod_ip(info, 2);
    let t = ping_until(name, "h1/p1", &ip2, Duration::from_secs(5));
    assert!(t.is_some(), "h1/p1 cannot ping {ip2}");
    // ARP crossed the sleeve: h1/p1 holds h2/p1's MAC.
    let (_, neigh, _) = exec(name, "h1/p1", &["ip", "neigh", "show", &ip2]);
    let mac2 = &info.nodes[1].pods[0].mac;
    assert!(neigh.contains(mac2.as_str()), "{neigh} lacks {mac2}");
    // A large ping: one frame at the pod MTU.
    let (ok, out, _) = exec(
        name,
        "h1/p1",
        &["ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", &ip2],
    );
    assert!(ok, "MTU-sized ping failed: {out}");
    let tcp = iperf(name, "h1/p1", "h2/p1", &ip2, &[]);
    let bytes = tcp["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(bytes > 1e6, "TCP moved only {bytes} bytes: {tcp:#}");
    // 20 Mb/s: at 100 Mb/s on a loaded two-core machine the receiving iperf3 itself falls
    // behind (RcvbufErrors in the pod) although the sleeve delivers every frame.
    let udp = iperf(
        name,
        "h1/p1",
        "h2/p1",
        &ip2,
        &["-u", "-b", "20M", "-l", "1400"],
    );
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_percent"].as_f64().unwrap_or(100.0);
    assert!(packets > 100.0 && lost < 10.0, "UDP: {sum:#}");
}

#[test]
fn plain_sleeve_carries_ping_arp_tcp_udp() {
    let _serial = serial();
    let name = unique("sp");
    let _guard = LabGuard::new(&name);
    let info = lab::up(&spec(&name, 2, false)).unwrap();
    check_pod_traffic(&name, &info);
    let report = lab::report(&name, "h1").unwrap();
    let conn = &report["connections"][0];
    assert_eq!(conn["datapath"], "sleeve", "{report:#}");
    assert_eq!(conn["encrypted"], false, "{report:#}");
    let m = metrics(&name, "h1");
    assert!(metric_sum(&m, "weft_forwarded_frames_total{datapath=\"sleeve\"}") > 0.0);
    // The positive control of the encrypted capture test: without encryption the pod's
    // payload is visible on the underlay.
    let pcap = capture_pattern_pings(&name, &info, "plain");
    assert!(
        contains(&pcap, &pattern_bytes(PATTERN)),
        "capture misses the pattern"
    );
}

/// Ping payload pattern (16 bytes) searched for in underlay captures.
const PATTERN: &str = "77656674736c65657665636c65617221";

/// Captures the underlay's sleeve traffic while h1/p1 pings h2/p1 with the pattern; returns
/// the capture file's bytes.
fn capture_pattern_pings(name: &str, info: &LabInfo, tag: &str) -> Vec<u8> {
    let file = format!("{}/{name}/{tag}.pcap", lab::RUN_DIR);
    // tcpdump says "listening on ubr" on stderr once it captures.
    let (child, _) = start_tcpdump(
        &format!("{name}-u"),
        &[
            "-Z", "root", "-i", "ubr", "-U", "-s", "0", "-w", &file, "udp", "port", "6783",
        ],
    );
    let capture = Background(child);
    std::thread::sleep(Duration::from_millis(200));
    let ip2 = pod_ip(info, 2);
    let (ok, out, _) = exec(
        name,
        "h1/p1",
        &[
            "ping", "-c", "5", "-i", "0.2", "-W", "1", "-s", "512", "-p", PATTERN, &ip2,
        ],
    );
    assert!(ok, "pattern ping failed: {out}");
    std::thread::sleep(Duration::from_millis(300));
    capture.interrupt();
    std::fs::read(&file).unwrap()
}

#[test]
fn encrypted_sleeve_carries_traffic_and_hides_payload() {
    let _serial = serial();
    let name = unique("se");
    let _guard = LabGuard::new(&name);
    let info = lab::up(&spec(&name, 2, true)).unwrap();
    check_pod_traffic(&name, &info);
    let report = lab::report(&name, "h1").unwrap();
    assert_eq!(report["connections"][0]["encrypted"], true, "{report:#}");
    let pcap = capture_pattern_pings(&name, &info, "enc");
    assert!(
        pcap.len() > 24 + 4 * 500,
        "capture too small: {}",
        pcap.len()
    );
    assert!(
        !contains(&pcap, &pattern_bytes(PATTERN)),
        "the pod payload crossed the underlay in clear"
    );
}

#[test]
fn line_underlay_relays_through_h2() {
    let _serial = serial();
    let name = unique("sl");
    let _guard = LabGuard::new(&name);
    let mut s = spec(&name, 3, true);
    s.underlay = Underlay::Line;
    let info = lab::up(&s).unwrap();
    let ip3 = pod_ip(&info, 3);
    let t = ping_until(&name, "h1/p1", &ip3, Duration::from_secs(10));
    assert!(t.is_some(), "h1/p1 cannot reach h3/p1 through h2");
    let tcp = iperf(&name, "h1/p1", "h3/p1", &ip3, &[]);
    let bytes = tcp["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(bytes > 1e6, "TCP through h2 moved only {bytes} bytes");
    let m = metrics(&name, "h2");
    assert!(
        metric_sum(&m, "weft_forwarded_frames_total{datapath=\"sleeve\"}") > 100.0,
        "h2 relayed nothing"
    );
}

#[test]
fn moved_pod_is_reachable_within_one_second() {
    let _serial = serial();
    let name = unique("sm");
    let _guard = LabGuard::new(&name);
    let info = lab::up(&spec(&name, 3, false)).unwrap();
    let ip1 = pod_ip(&info, 1);
    let ip2 = pod_ip(&info, 2);
    // h2 learns h1/p1's MAC behind h1.
    assert!(ping_until(&name, "h2/p1", &ip1, Duration::from_secs(5)).is_some());
    // And h3, where the pod moves to, has its routes to h2: the lab is up when the routers
    // are, not when their connections are (a CI run lost the moved pod's first ping to that).
    assert!(ping_until(&name, "h3/p1", &ip2, Duration::from_secs(5)).is_some());
    let mac = info.nodes[0].pods[0].mac.clone();
    lab::pod_del(&name, "h1", "p1").unwrap();
    let moved = lab::pod_add(&name, "h3", "p2", Some(&mac)).unwrap();
    let moved_ip = moved.ip.split('/').next().unwrap().to_owned();
    // The moved pod's first packet, then traffic both ways, all within a second.
    let start = Instant::now();
    let (ok, out, _) = exec(&name, "h3/p2", &["ping", "-c", "1", "-W", "1", &ip2]);
    assert!(ok, "moved pod's first ping failed: {out}");
    let back = ping_until(&name, "h2/p1", &moved_ip, Duration::from_secs(1));
    assert!(back.is_some(), "h2/p1 cannot reach the moved pod");
    let took = start.elapsed();
    assert!(took <= Duration::from_secs(1), "took {took:?}");
}

/// Peer name bytes from the `aa:bb:cc:dd:ee:ff` form.
fn name_bytes(s: &str) -> [u8; 6] {
    let mut b = [0u8; 6];
    for (d, p) in b.iter_mut().zip(s.split(':')) {
        *d = u8::from_str_radix(p, 16).unwrap();
    }
    b
}

/// Sends `payloads` as UDP 192.0.2.1:6783 → 192.0.2.2:6783 through a raw socket in `ns`
/// (so they claim to come from h1's sleeve).
fn spoof(ns: &str, payloads: Vec<Vec<u8>>) {
    lab::netns::in_netns(ns, move || {
        // SAFETY: plain socket(2) call; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let src = Ipv4Addr::new(192, 0, 2, 1).octets();
        let dst = Ipv4Addr::new(192, 0, 2, 2).octets();
        for p in &payloads {
            let total = 20 + 8 + p.len();
            let mut pkt = vec![0u8; total];
            pkt[0] = 0x45;
            pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            pkt[8] = 64;
            pkt[9] = 17;
            pkt[12..16].copy_from_slice(&src);
            pkt[16..20].copy_from_slice(&dst);
            pkt[20..22].copy_from_slice(&6783u16.to_be_bytes());
            pkt[22..24].copy_from_slice(&6783u16.to_be_bytes());
            pkt[24..26].copy_from_slice(&((8 + p.len()) as u16).to_be_bytes());
            pkt[28..].copy_from_slice(p);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sends `pkt` to a valid sockaddr_in that lives for the call.
            unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
            }
        }
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
        Ok(())
    })
    .unwrap();
}

/// UDP payloads to 192.0.2.2:6783 in a pcap file (Ethernet link type).
fn sleeve_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        if frame.len() < 14 + 28 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip[16..20] != [192, 0, 2, 2] || ip.len() < ihl + 8 {
            continue;
        }
        out.push(ip[ihl + 8..].to_vec());
    }
    out
}

/// A sleeve datagram from `src` to `dst` sealed with keys of a handshake between two fresh
/// node keys: well formed, but sealed with a key no router holds.
fn wrong_key_datagram(src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    use crypto::{Handshake, HandshakeConfig, Mode, NodeKey, PacketBuf, Session, SessionConfig};
    let mut rng = rand::rngs::OsRng;
    let a = HandshakeConfig::new(NodeKey::generate(&mut rng), None);
    let b = HandshakeConfig::new(NodeKey::generate(&mut rng), None);
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    let mut ha = Handshake::initiate(&a, &mut rng, &mut out_a);
    let mut hb = Handshake::respond(&b, &mut rng, &mut out_b);
    let mut est = None;
    for _ in 0..10 {
        if !out_a.is_empty() {
            let input = std::mem::take(&mut out_a);
            let _ = hb.handle_input(&input, &mut out_b).unwrap();
        }
        if !out_b.is_empty() {
            let input = std::mem::take(&mut out_b);
            if let Some(e) = ha.handle_input(&input, &mut out_a).unwrap() {
                est = Some(e);
                break;
            }
        }
    }
    let (_, keys) = est.unwrap().into_parts();
    let mut session = Session::new(keys, SessionConfig::default(), Mode::Sealed, Instant::now());
    // Outer header, crypto headroom, a one-chunk frame body, tailroom.
    let body = 12 + 64;
    let mut d = vec![0u8; 16 + 9 + body + 16];
    d[0] = 1;
    d[1] = 2;
    d[2..8].copy_from_slice(&src);
    d[8..14].copy_from_slice(&dst);
    d[14] = 16;
    d[16 + 9 + 8..16 + 9 + 12].copy_from_slice(&64u32.to_be_bytes());
    // Move the counter past anything h1 has sent, so the replay window (checked before the
    // tag) lets it through to the tag check.
    let mut pad = [0u8; 9 + 16 + 16];
    for _ in 0..5_000 {
        session
            .seal(Instant::now(), &mut PacketBuf::new(&mut pad[..], 9, 16))
            .unwrap();
    }
    let mut p = PacketBuf::new(&mut d[..], 16 + 9, body);
    session.seal(Instant::now(), &mut p).unwrap();
    d
}

fn rx_packets(name: &str, target: &str) -> u64 {
    let (_, out, _) = exec(
        name,
        target,
        &["cat", "/sys/class/net/eth0/statistics/rx_packets"],
    );
    out.trim().parse().unwrap()
}

#[test]
fn hostile_datagrams_deliver_nothing() {
    let _serial = serial();
    let name = unique("sh");
    let _guard = LabGuard::new(&name);
    let info = lab::up(&spec(&name, 2, true)).unwrap();
    let ip2 = pod_ip(&info, 2);
    assert!(ping_until(&name, "h1/p1", &ip2, Duration::from_secs(5)).is_some());
    // Capture real datagrams h1 → h2 (pings to h2/p1) for the replay.
    let pcap = capture_pattern_pings(&name, &info, "replay");
    let captured = sleeve_payloads(&pcap);
    assert!(!captured.is_empty(), "no sleeve datagram captured");
    let report = lab::report(&name, "h1").unwrap();
    let h1 = name_bytes(report["name"].as_str().unwrap());
    let h2 = name_bytes(lab::report(&name, "h2").unwrap()["name"].as_str().unwrap());
    let mut hostile: Vec<Vec<u8>> = Vec::new();
    // Garbage: random bytes, a bad version, a truncated header, a bad hop limit.
    hostile.push((0..200).map(|i| (i * 37 % 251) as u8).collect());
    let mut v = captured[0].clone();
    v[0] = 9;
    hostile.push(v);
    hostile.push(captured[0][..10].to_vec());
    let mut v = captured[0].clone();
    v[14] = 0;
    hostile.push(v);
    // Replays of every captured datagram.
    hostile.extend(captured.iter().cloned());
    // Sealed with a key no router holds.
    hostile.push(wrong_key_datagram(h1, h2));
    hostile.push(wrong_key_datagram(h1, [0xff; 6]));
    let before = metrics(&name, "h2");
    let rx_before = rx_packets(&name, "h2/p1");
    spoof(&format!("{name}-h1"), hostile);
    std::thread::sleep(Duration::from_millis(300));
    let after = metrics(&name, "h2");
    let rx_after = rx_packets(&name, "h2/p1");
    assert_eq!(rx_before, rx_after, "a hostile datagram reached the pod");
    let delta = |reason: &str| {
        let s = format!("weft_dropped_frames_total{{reason=\"{reason}\"}}");
        metric_sum(&after, &s) - metric_sum(&before, &s)
    };
    assert!(
        delta("malformed") >= 3.0,
        "malformed: {}",
        delta("malformed")
    );
    assert!(
        delta("replay") >= captured.len() as f64,
        "replay: {}",
        delta("replay")
    );
    assert!(delta("decrypt") >= 2.0, "decrypt: {}", delta("decrypt"));
    // Traffic carries on.
    let (ok, out, _) = exec(
        &name,
        "h1/p1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip2],
    );
    assert!(ok, "traffic stopped after hostile datagrams: {out}");
}
