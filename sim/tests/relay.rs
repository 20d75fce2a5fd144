//! The sleeve I/O layer end to end: two hosts in network namespaces, each with a bridge, a pod
//! and a TAP served by `weft_sim::bench::relay::Relay`, joined over a UDP underlay. Needs root.
//!
//! ```text
//!  T-h1-p              T-h1                       T-u                    T-h2             T-h2-p
//!  eth0 ── v ─[wbr]─ weft-tap ◀▶ Relay ◀▶ eth0 ══ [ubr] ══ eth0 ◀▶ Relay ◀▶ weft-tap ─[wbr]─ v ── eth0
//!  10.32.0.1/12             192.0.2.1:6783              192.0.2.2:6783                 10.32.0.2/12
//! ```
//!
//! Checks a ping both ways and a 1 MB TCP transfer that the pods' TSO turns into super-frames,
//! which the relay must chunk (UDP GSO) and reassemble (UDP GRO) byte-exactly.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_router::tap::{Tap, TapOptions};
use weft_router::udp::{UdpOptions, UdpSocket};
use weft_sim::bench::relay::{Relay, RelayConfig};

/// Runs `f` on a thread inside namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    weft_sim::lab::netns::in_netns(ns, move || Ok(f())).unwrap()
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Datagrams the kernel dropped in `ns`: no socket on the port, no receive buffer or another
/// error (`/proc/net/snmp` is per namespace).
fn udp_receive_drops(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| matches!(*name, "NoPorts" | "InErrors"))
        .map(|(_, value)| value.parse::<u64>().unwrap())
        .sum()
}

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn ping_and_tcp_super_frames_through_the_relay() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let p = format!("wsio{}", std::process::id());
    let (u, h1, h2, p1, p2) = (
        format!("{p}-u"),
        format!("{p}-h1"),
        format!("{p}-h2"),
        format!("{p}-h1-p"),
        format!("{p}-h2-p"),
    );
    let guard = Namespaces(vec![
        u.clone(),
        h1.clone(),
        h2.clone(),
        p1.clone(),
        p2.clone(),
    ]);
    for ns in &guard.0 {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&["-n", &u, "link", "add", "ubr", "type", "bridge"]);
    ip(&["-n", &u, "link", "set", "ubr", "up"]);
    let mut relays = Vec::new();
    for (i, h, pod) in [(1u8, &h1, &p1), (2, &h2, &p2)] {
        let port = format!("h{i}");
        ip(&[
            "-n", &u, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", h,
        ]);
        ip(&["-n", &u, "link", "set", &port, "master", "ubr", "up"]);
        ip(&[
            "-n",
            h,
            "addr",
            "add",
            &format!("192.0.2.{i}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", h, "link", "set", "eth0", "up"]);
        ip(&["-n", h, "link", "add", "wbr", "type", "bridge"]);
        ip(&["-n", h, "link", "set", "wbr", "up"]);
        ip(&[
            "-n", h, "link", "add", "v", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
            "mtu", "1450", "netns", pod,
        ]);
        ip(&["-n", h, "link", "set", "v", "master", "wbr", "up"]);
        ip(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("10.32.0.{i}/12"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", pod, "link", "set", "eth0", "up"]);
        let local = SocketAddr::from((Ipv4Addr::new(192, 0, 2, i), 6783));
        let peer = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 3 - i), 6783));
        let (tap, socket) = in_netns(h, move || {
            let tap = Tap::open("weft-tap", &TapOptions::default()).unwrap();
            let socket = UdpSocket::bind(local, &UdpOptions::default()).unwrap();
            socket.connect(peer).unwrap();
            (tap, socket)
        });
        assert!(socket.gro(), "UDP_GRO not available");
        ip(&[
            "-n", h, "link", "set", "weft-tap", "mtu", "1450", "master", "wbr", "up",
        ]);
        let name = |n: u8| [2, 0, 0, 0, 0, n];
        relays.push(Relay::start(tap, socket, RelayConfig::new(name(i), name(3 - i))).unwrap());
    }

    assert!(
        ping(&p1, "10.32.0.2"),
        "no ping reply h1 → h2 through the sleeve"
    );
    assert!(
        ping(&p2, "10.32.0.1"),
        "no ping reply h2 → h1 through the sleeve"
    );

    // 1 MB, patterned so a misplaced chunk shows.
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i * 7 + i / 1000) as u8)
        .collect();
    let listener = in_netns(&p2, || TcpListener::bind("10.32.0.2:5201").unwrap());
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let sent = data.clone();
    in_netns(&p1, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::new(10, 32, 0, 2), 5201)),
            Duration::from_secs(5),
        )
        .unwrap();
        s.write_all(&sent).unwrap();
    });
    let got = reader.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "transferred bytes differ");
    // One UDP flow keeps its order: once this ping's request is answered, every frame h1 sent
    // before it has reached h2's relay too (the last ACKs of the transfer included).
    assert!(ping(&p1, "10.32.0.2"), "no ping reply after the transfer");

    let stats: Vec<_> = relays.into_iter().map(Relay::stop).collect();
    let (tx, rx) = (stats[0].tx, stats[1].rx);
    assert!(
        tx.gso_frames > 0,
        "no TSO super-frames read from the TAP: {tx:?}"
    );
    assert!(
        tx.max_frame > 10_000,
        "largest frame {} bytes",
        tx.max_frame
    );
    assert!(
        tx.datagrams > tx.frames,
        "super-frames were not chunked: {tx:?}"
    );
    // A frame arrives whole unless one of its datagrams was lost, and each loss costs at most
    // one frame: sent before h2's relay had bound its port (the pods' interfaces come up
    // first), refused by the kernel on h1 for that reason, or dropped on h2 for want of
    // receive buffer on a loaded machine.
    let dropped = udp_receive_drops(&h2) + tx.refused;
    assert!(
        rx.codec.frames_complete + dropped >= tx.frames - tx.oversize,
        "{} frames whole and {dropped} datagrams lost for {} frames sent: {tx:?} {rx:?}",
        rx.codec.frames_complete,
        tx.frames - tx.oversize,
    );
    assert_eq!(rx.tap_write_errors, 0, "{rx:?}");
    assert_eq!(
        rx.codec.frames_bad_vnet_hdr + rx.codec.malformed,
        0,
        "{rx:?}"
    );
    drop(guard);
}
