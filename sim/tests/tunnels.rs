//! Only mesh peers reach the tunnel ports: a host on the underlay that is no peer (the lab's
//! gateway, 192.0.2.254, in `NAME-u`) crafts a VXLAN datagram with weft's VNI carrying an ICMP
//! echo to a pod, and a datagram to the sleeve port. Neither reaches the pod; both are counted.
//! As a control, the same datagram does reach the pod while weft's filter is flushed by hand,
//! and the router puts the filter back by itself.
//!
//! Floods: forged sleeve datagrams (wrong keys, replays of a captured genuine datagram,
//! truncations, random bytes, plain chunks) and VXLAN echoes, from a non-peer and from a spoofed
//! peer address. Nothing forged reaches a pod; every drop is counted, by reason.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use weft_sim::flood::{self, Flood, FloodSpec, Forgery, SleeveForge, Source, Stream};
use weft_sim::lab::{self, LabGuard, LabSpec};

mod common;
use common::{exec, metric_sum, metrics, serial, unique_with};

/// A VXLAN datagram (weft's VNI) holding an ICMP echo request from 10.32.99.99 to the pod.
fn vxlan_echo(pod_mac: [u8; 6], pod_ip: [u8; 4]) -> Vec<u8> {
    flood::vxlan_echo(pod_mac, pod_ip.into())
}

/// Sends `datagram` from the underlay namespace (192.0.2.254) to `to`.
fn send_from_underlay(name: &str, to: SocketAddr, datagram: Vec<u8>) {
    lab::netns::in_netns(&format!("{name}-u"), move || {
        let s = UdpSocket::bind("192.0.2.254:0")?;
        for _ in 0..3 {
            s.send_to(&datagram, to)?;
        }
        Ok(())
    })
    .unwrap();
}

/// Echo requests the pod's kernel received (`Icmp: InEchos` of its namespace).
fn in_echos(name: &str, pod: &str) -> u64 {
    let snmp = exec(name, pod, &["cat", "/proc/net/snmp"]).1;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn tunnel_counter(name: &str) -> u64 {
    tunnel_counter_of(name, "h1")
}

fn tunnel_counter_of(name: &str, node: &str) -> u64 {
    let chain = exec(
        name,
        node,
        &["nft", "list", "chain", "inet", "weft", "tunnels"],
    )
    .1;
    chain
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_non_peer_reaches_no_pod_through_the_tunnel_ports_and_is_counted() {
    let _serial = serial();
    let name = unique_with("tn", "a");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    let info = lab::up(&spec).unwrap();
    let pod = &info.nodes[0].pods[0];
    let pod_ip: std::net::Ipv4Addr = pod.ip.split('/').next().unwrap().parse().unwrap();
    let datagram = vxlan_echo(mac(&pod.mac), pod_ip.octets());
    let (vxlan, sleeve) = (
        SocketAddr::from(([192, 0, 2, 1], 6784)),
        SocketAddr::from(([192, 0, 2, 1], 6783)),
    );
    let in_place = || {
        exec(
            &name,
            "h1",
            &["nft", "list", "chain", "inet", "weft", "tunnels"],
        )
        .1
        .contains("@peers4")
    };
    let start = Instant::now();
    while !in_place() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no tunnel filter"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Blocked and counted: VXLAN and sleeve alike.
    let (echos, counted) = (in_echos(&name, "h1/p1"), tunnel_counter(&name));
    send_from_underlay(&name, vxlan, datagram.clone());
    send_from_underlay(&name, sleeve, b"not a sleeve datagram".to_vec());
    let start = Instant::now();
    while tunnel_counter(&name) < counted + 6 {
        assert!(start.elapsed() < Duration::from_secs(5), "not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        in_echos(&name, "h1/p1"),
        echos,
        "the injected echo reached the pod"
    );
    // The router's report carries the count after its next reconcile.
    let start = Instant::now();
    loop {
        let drops = lab::report(&name, "h1").unwrap()["netfilter"]["tunnel_drops"]
            .as_u64()
            .unwrap_or(0);
        if drops >= counted + 6 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "report: {drops}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Control: with the filter flushed by hand the same datagram reaches the pod ...
    assert!(
        exec(
            &name,
            "h1",
            &["nft", "flush", "chain", "inet", "weft", "tunnels"]
        )
        .0
    );
    let echos = in_echos(&name, "h1/p1");
    send_from_underlay(&name, vxlan, datagram.clone());
    let start = Instant::now();
    while in_echos(&name, "h1/p1") == echos {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the control echo never arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... and the router puts the filter back by itself.
    let start = Instant::now();
    while !in_place() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "filter not restored"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (echos, counted) = (in_echos(&name, "h1/p1"), tunnel_counter(&name));
    send_from_underlay(&name, vxlan, datagram);
    let start = Instant::now();
    while tunnel_counter(&name) < counted + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not counted after the repair"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        in_echos(&name, "h1/p1"),
        echos,
        "reached the pod after the repair"
    );
    // Peers still reach each other's pods.
    let peer_pod = info.nodes[1].pods[0]
        .ip
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(exec(&name, "h1/p1", &["ping", "-c", "1", "-W", "2", &peer_pod]).0);
}

fn peer_bytes(name: &str) -> [u8; 6] {
    mac(name)
}

/// Counts, in the pod, packets from the forged source 10.32.99.99 (unlike the pod's echo
/// counters, which a late genuine ping would move too).
fn count_injected(name: &str, pod: &str) {
    let script = "add table inet probe\n\
        add chain inet probe input { type filter hook input priority 0; }\n\
        add rule inet probe input ip saddr 10.32.99.99 counter\n";
    let (ns, _) = lab::target(name, pod).unwrap();
    let mut child = lab::netns::command_in(&ns, "nft")
        .unwrap()
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

fn injected(name: &str, pod: &str) -> u64 {
    let out = exec(
        name,
        pod,
        &["nft", "list", "chain", "inet", "probe", "input"],
    )
    .1;
    out.split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn dropped(metrics: &str, reason: &str) -> u64 {
    metric_sum(
        metrics,
        &format!("weft_dropped_frames_total{{reason=\"{reason}\"}}"),
    ) as u64
}

#[test]
fn floods_of_forged_datagrams_deliver_nothing_and_are_counted_by_reason() {
    let _serial = serial();
    let name = unique_with("tn", "f");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    spec.datapath = lab::Datapath::Sleeve;
    spec.encrypt = true;
    let info = lab::up(&spec).unwrap();
    let h2 = &info.nodes[1];
    let pod = &h2.pods[0];
    let pod_ip: std::net::Ipv4Addr = pod.ip.split('/').next().unwrap().parse().unwrap();
    let peer = |node: &str| peer_bytes(lab::report(&name, node).unwrap()["name"].as_str().unwrap());
    let (h1_ip, h2_ip) = ([192, 0, 2, 1].into(), std::net::Ipv4Addr::new(192, 0, 2, 2));
    let start = Instant::now();
    while !exec(
        &name,
        "h2",
        &["nft", "list", "chain", "inet", "weft", "tunnels"],
    )
    .1
    .contains("@peers4")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no tunnel filter"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A genuine sealed datagram from h1 to h2, captured on h2 while h1's pod pings h2's pod.
    let capture = {
        let ns = h2.netns.clone();
        std::thread::spawn(move || flood::capture_udp(&ns, h1_ip, 6783, Duration::from_secs(10)))
    };
    let start = Instant::now();
    while !capture.is_finished() && start.elapsed() < Duration::from_secs(12) {
        exec(
            &name,
            "h1/p1",
            &["ping", "-c", "1", "-W", "1", &pod_ip.to_string()],
        );
    }
    let genuine = capture.join().unwrap().unwrap();
    // A sealed chunk, or a sealed path MTU probe or answer.
    assert!(
        genuine[0] == 1 && (2..=4).contains(&genuine[1]),
        "{:?}",
        &genuine[..2]
    );
    let forge = SleeveForge {
        src: peer("h1"),
        dst: peer("h2"),
        genuine: Some(genuine),
    };
    let sleeve = flood::sleeve_forgeries(&forge, 500, 1);
    let vxlan = vec![(Forgery::VxlanEcho, flood::vxlan_echo(mac(&pod.mac), pod_ip))];
    let streams = |vx: bool| {
        let mut s = vec![Stream {
            to: std::net::SocketAddrV4::new(h2_ip, 6783),
            datagrams: sleeve.clone(),
        }];
        if vx {
            s.push(Stream {
                to: std::net::SocketAddrV4::new(h2_ip, 6784),
                datagrams: vxlan.clone(),
            });
        }
        s
    };

    // 1. From a non-peer (the underlay's gateway), 20,000 a second to each port for a second:
    // the tunnel filter drops all of it; nothing reaches the sleeve or a pod.
    count_injected(&name, "h2/p1");
    let (filtered, before) = (tunnel_counter_of(&name, "h2"), metrics(&name, "h2"));
    let sent = Flood::start(FloodSpec {
        netns: format!("{name}-u"),
        source: Source::Bound([192, 0, 2, 254].into()),
        streams: streams(true),
        rate: 20_000,
        limit: 20_000,
        max_time: Duration::from_secs(20),
    })
    .unwrap()
    .wait()
    .unwrap();
    assert_eq!(sent.sent, [20_000, 20_000]);
    let start = Instant::now();
    while tunnel_counter_of(&name, "h2") < filtered + 40_000 {
        assert!(start.elapsed() < Duration::from_secs(10), "not all counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = metrics(&name, "h2");
    for reason in ["decrypt", "replay", "malformed", "unknown_peer"] {
        assert_eq!(
            dropped(&after, reason),
            dropped(&before, reason),
            "{reason}"
        );
    }
    assert_eq!(
        injected(&name, "h2/p1"),
        0,
        "an injected echo reached the pod"
    );

    // 2. From h1's own address, spoofed: past the filter, into the sleeve, which drops every
    // datagram and counts it by reason.
    let before = metrics(&name, "h2");
    let sent = Flood::start(FloodSpec {
        netns: format!("{name}-u"),
        source: Source::Spoofed(std::net::SocketAddrV4::new(h1_ip, 6783)),
        streams: streams(false),
        rate: 5_000,
        limit: 2_500,
        max_time: Duration::from_secs(20),
    })
    .unwrap()
    .wait()
    .unwrap();
    assert_eq!(sent.sent, [2_500]);
    let want = [
        ("decrypt", sent.of(Forgery::WrongKey)),
        ("replay", sent.of(Forgery::Replay)),
        (
            "malformed",
            sent.of(Forgery::Truncated) + sent.of(Forgery::Random) + sent.of(Forgery::Plain),
        ),
    ];
    let grown = |m: &str| want.map(|(reason, _)| dropped(m, reason) - dropped(&before, reason));
    let start = Instant::now();
    loop {
        let m = metrics(&name, "h2");
        let got = grown(&m);
        if got == want.map(|(_, n)| n) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "drops by reason {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(injected(&name, "h2/p1"), 0);
    // The pods still reach each other.
    assert!(
        exec(
            &name,
            "h1/p1",
            &["ping", "-c", "1", "-W", "2", &pod_ip.to_string()]
        )
        .0
    );
}
