//! fastdp (the kernel VXLAN path) between real routers in the lab, per peer, with the sleeve
//! as the fallback (`--datapath auto`, the default).
//!
//! ```text
//!   pods:  hI/p1 ── bridge weft ──┬── weft-vxlan ◀▶ UDP 6784 ◀▶ underlay N-u   (fastdp)
//!                                 └── weft-tap ◀▶ router ◀▶ UDP 6783          (sleeve)
//! ```
//!
//! Each test builds its own lab (`ft<pid><tag>`) under a `LabGuard`, so failures clean up.
//! Blocking a pair uses nftables inside the two nodes' namespaces. Every wait is bounded.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weft_sim::lab::{self, Datapath, LabGuard, LabInfo, LabSpec, RouterAction, Underlay};

mod common;
use common::{exec, interrupt, pod_ip, serial, start_tcpdump, unique_with, wait_listening, weft};

fn up(name: &str, nodes: usize) -> LabInfo {
    let mut spec = LabSpec::new(name);
    spec.nodes = nodes;
    spec.pods = 1;
    spec.datapath = Datapath::Auto;
    lab::up(&spec).unwrap()
}

/// The path node `node` shows for its connection to `peer` (`fastdp`, `sleeve`, or `?`).
fn path(name: &str, node: &str, peer: &str) -> String {
    let out = status(name, node);
    out.lines()
        .find(|l| l.contains(&format!("({peer})")))
        .map_or("?", |l| {
            if l.contains(" fastdp ") {
                "fastdp"
            } else if l.contains(" sleeve ") {
                "sleeve"
            } else {
                "?"
            }
        })
        .to_owned()
}

/// `weft status connections` in node `node`.
fn status(name: &str, node: &str) -> String {
    weft(name, node, &["status", "connections"]).1
}

/// Polls until every listed (node, peer) pair shows `want`; returns the time it took.
fn wait_paths(name: &str, pairs: &[(&str, &str)], want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if pairs.iter().all(|(n, p)| path(name, n, p) == want) {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let seen: Vec<String> = pairs
                .iter()
                .map(|(n, p)| format!("{n}→{p}: {}", path(name, n, p)))
                .collect();
            panic!("not all {want} within {limit:?}: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn all_pairs(nodes: usize) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for a in 1..=nodes {
        for b in 1..=nodes {
            if a != b {
                v.push((format!("h{a}"), format!("h{b}")));
            }
        }
    }
    v
}

fn wait_all_fastdp(name: &str, nodes: usize, limit: Duration) {
    let pairs = all_pairs(nodes);
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    wait_paths(name, &refs, "fastdp", limit);
}

/// Packets through `dev` in node `node`: (rx, tx) from the kernel's counters.
fn link_packets(name: &str, node: &str, dev: &str) -> (u64, u64) {
    let (_, out, _) = exec(name, node, &["ip", "-s", "-j", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &v[0]["stats64"];
    (
        s["rx"]["packets"].as_u64().unwrap(),
        s["tx"]["packets"].as_u64().unwrap(),
    )
}

/// Blocks (or unblocks) UDP to and from port 6784 between nodes `a` and `b` with nftables in
/// both namespaces.
fn block_vxlan(name: &str, info: &LabInfo, a: usize, b: usize, on: bool) {
    for (me, other) in [(a, b), (b, a)] {
        let node = format!("h{me}");
        let peer = &info.nodes[other - 1].underlay_ip;
        if on {
            let rules = format!(
                "table inet fastdp_test {{\n\
                 chain in {{ type filter hook input priority 0; ip saddr {peer} udp dport 6784 drop; }}\n\
                 chain out {{ type filter hook output priority 0; ip daddr {peer} udp dport 6784 drop; }}\n\
                 }}\n"
            );
            let file = format!("{}/{name}/block-{me}-{other}.nft", lab::RUN_DIR);
            std::fs::write(&file, rules).unwrap();
            let (ok, out, _) = exec(name, &node, &["nft", "-f", &file]);
            assert!(ok, "nft in {node}: {out}");
        } else {
            let (ok, out, _) = exec(
                name,
                &node,
                &["nft", "delete", "table", "inet", "fastdp_test"],
            );
            assert!(ok, "nft in {node}: {out}");
        }
    }
}

/// A ping at 10 ms intervals run in a thread; `finish` returns (sent, received).
struct FastPing(std::thread::JoinHandle<(u64, u64)>);

impl FastPing {
    fn start(name: &str, from: &str, ip: &str, count: u32) -> Self {
        let (name, from, ip) = (name.to_owned(), from.to_owned(), ip.to_owned());
        Self(std::thread::spawn(move || {
            let count = count.to_string();
            let (_, out, _) = exec(
                &name,
                &from,
                &["ping", "-q", "-i", "0.01", "-W", "1", "-c", &count, &ip],
            );
            let line = out
                .lines()
                .find(|l| l.contains("packets transmitted"))
                .unwrap_or_else(|| panic!("no ping summary: {out}"))
                .to_owned();
            let num = |word: &str| -> u64 {
                line.split(',')
                    .find(|p| p.contains(word))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            (num("transmitted"), num("received"))
        }))
    }

    fn finish(self) -> (u64, u64) {
        self.0.join().unwrap()
    }
}

/// A tcpdump writing to a file in a lab target, stopped with SIGINT.
struct Capture {
    child: Child,
    file: String,
}

impl Capture {
    fn start(name: &str, target: &str, tag: &str, filter: &[&str]) -> Self {
        let (ns, _) = lab::target(name, target).unwrap();
        let file = format!("{}/{name}/{tag}.pcap", lab::RUN_DIR);
        let mut args = vec!["-Z", "root", "-i", "eth0", "-U", "-w", &file];
        args.extend_from_slice(filter);
        let (child, _) = start_tcpdump(&ns, &args);
        Self { child, file }
    }

    /// Stops the capture and returns the number of packets in it.
    fn count(mut self) -> usize {
        interrupt(&mut self.child, Duration::from_secs(3));
        let out = std::process::Command::new("tcpdump")
            .args(["-n", "-r", &self.file])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn auto_puts_every_connection_on_fastdp_and_unicast_never_crosses_userspace() {
    let _serial = serial();
    let name = unique_with("ft", "a");
    let _guard = LabGuard::new(&name);
    let info = up(&name, 3);
    wait_all_fastdp(&name, 3, Duration::from_secs(10));
    let (ip2, ip3) = (pod_ip(&info, 2), pod_ip(&info, 3));
    for ip in [&ip2, &ip3] {
        let (ok, out, _) = exec(
            &name,
            "h1/p1",
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", ip],
        );
        assert!(ok, "h1/p1 cannot ping {ip} over fastdp: {out}");
    }
    let before: Vec<(u64, u64)> = ["h1", "h2", "h3"]
        .iter()
        .map(|n| link_packets(&name, n, "weft-tap"))
        .collect();
    let vx_before = link_packets(&name, "h2", "weft-vxlan");
    // Unicast pod traffic: TCP h1 → h2 for a second, pings h1 → h3.
    let (ns2, _) = lab::target(&name, "h2/p1").unwrap();
    let mut server = lab::netns::command_in(&ns2, "iperf3")
        .unwrap()
        .args(["-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&name, "h2/p1", 5201);
    let (ok, out, _) = exec(
        &name,
        "h1/p1",
        &["timeout", "15", "iperf3", "-c", &ip2, "-t", "1", "-J"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok, "iperf3 over fastdp failed: {out}");
    let (ok, out, _) = exec(&name, "h1/p1", &["ping", "-c", "20", "-i", "0.05", &ip3]);
    assert!(ok, "{out}");
    let vx_after = link_packets(&name, "h2", "weft-vxlan");
    let vx_frames = vx_after.0 - vx_before.0;
    assert!(
        vx_frames > 1000,
        "the TCP transfer should have crossed weft-vxlan, saw {vx_frames} frames"
    );
    for (i, n) in ["h1", "h2", "h3"].iter().enumerate() {
        let after = link_packets(&name, n, "weft-tap");
        let (rx, tx) = (after.0 - before[i].0, after.1 - before[i].1);
        // The bridge hands the TAP only what it floods (pods' multicast chatter), never the
        // thousands of unicast frames of the transfer; the router writes nothing back.
        assert!(
            tx < 20 && rx < 20,
            "{n}: weft-tap moved rx={rx} tx={tx} frames while {vx_frames} crossed weft-vxlan"
        );
    }
}

#[test]
fn blocking_the_vxlan_port_moves_the_pair_to_the_sleeve_within_a_second_and_back() {
    let _serial = serial();
    let name = unique_with("ft", "b");
    let _guard = LabGuard::new(&name);
    let info = up(&name, 3);
    wait_all_fastdp(&name, 3, Duration::from_secs(10));
    let ip2 = pod_ip(&info, 2);
    let (ok, out, _) = exec(
        &name,
        "h1/p1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip2],
    );
    assert!(ok, "{out}");
    // 6 s of pings at 10 ms; the block starts 1 s in.
    let ping = FastPing::start(&name, "h1/p1", &ip2, 600);
    std::thread::sleep(Duration::from_secs(1));
    block_vxlan(&name, &info, 1, 2, true);
    let took = wait_paths(
        &name,
        &[("h1", "h2"), ("h2", "h1")],
        "sleeve",
        Duration::from_secs(3),
    );
    let (sent, received) = ping.finish();
    assert!(
        took <= Duration::from_secs(1),
        "h1 and h2 took {took:?} to move to the sleeve"
    );
    let lost = sent - received;
    assert!(
        lost <= 100,
        "{lost} of {sent} pings lost (at most 1 s worth allowed)"
    );
    // The other pairs stay on fastdp, and status says why h1–h2 is on the sleeve.
    assert_eq!(path(&name, "h1", "h3"), "fastdp");
    assert_eq!(path(&name, "h3", "h2"), "fastdp");
    let status = status(&name, "h1");
    assert!(
        status.contains("no answer to VXLAN probes on UDP 6784"),
        "{status}"
    );
    block_vxlan(&name, &info, 1, 2, false);
    let took = wait_paths(
        &name,
        &[("h1", "h2"), ("h2", "h1")],
        "fastdp",
        Duration::from_secs(10),
    );
    assert!(
        took <= Duration::from_secs(5),
        "h1 and h2 took {took:?} to come back to fastdp"
    );
    let ping = FastPing::start(&name, "h1/p1", &ip2, 100);
    let (sent, received) = ping.finish();
    assert!(sent - received <= 2, "after unblocking: {received}/{sent}");
}

#[test]
fn in_a_mixed_mesh_broadcast_and_arp_reach_every_pod_exactly_once() {
    let _serial = serial();
    let name = unique_with("ft", "m");
    let _guard = LabGuard::new(&name);
    let info = up(&name, 3);
    wait_all_fastdp(&name, 3, Duration::from_secs(10));
    // h1–h2 on the sleeve, h1–h3 and h2–h3 on fastdp.
    block_vxlan(&name, &info, 1, 2, true);
    wait_paths(
        &name,
        &[("h1", "h2"), ("h2", "h1")],
        "sleeve",
        Duration::from_secs(3),
    );
    // Let the announcements of the new fastdp sets settle.
    std::thread::sleep(Duration::from_millis(500));
    for (sender, receivers) in [(1, [2, 3]), (2, [1, 3]), (3, [1, 2])] {
        let from = format!("h{sender}/p1");
        // Broadcast pings: 20 frames to ff:ff:ff:ff:ff:ff.
        let caps: Vec<Capture> = receivers
            .iter()
            .map(|r| {
                Capture::start(
                    &name,
                    &format!("h{r}/p1"),
                    &format!("b{sender}{r}"),
                    &["icmp", "and", "dst", "host", "10.47.255.255"],
                )
            })
            .collect();
        let own = Capture::start(
            &name,
            &from,
            &format!("b{sender}"),
            // Outgoing only: the CNI's hairpin mode reflects a pod's own broadcasts to it.
            &["-Q", "out", "icmp", "and", "dst", "host", "10.47.255.255"],
        );
        exec(
            &name,
            &from,
            &[
                "ping",
                "-b",
                "-c",
                "20",
                "-i",
                "0.05",
                "-W",
                "1",
                "10.47.255.255",
            ],
        );
        std::thread::sleep(Duration::from_millis(300));
        let sent = own.count();
        assert_eq!(sent, 20, "h{sender}/p1 should have sent 20 broadcast pings");
        for (cap, r) in caps.into_iter().zip(receivers) {
            let got = cap.count();
            assert_eq!(
                got, 20,
                "h{r}/p1 got {got} of h{sender}/p1's 20 broadcasts (duplicates or losses)"
            );
        }
        // ARP: requests for an address nobody has, broadcast by the kernel.
        let target = format!("10.47.1.{sender}");
        let caps: Vec<Capture> = receivers
            .iter()
            .map(|r| {
                Capture::start(
                    &name,
                    &format!("h{r}/p1"),
                    &format!("a{sender}{r}"),
                    &["arp", "and", "host", &target],
                )
            })
            .collect();
        let own = Capture::start(
            &name,
            &from,
            &format!("a{sender}"),
            &["-Q", "out", "arp", "and", "host", &target],
        );
        exec(&name, &from, &["ping", "-c", "2", "-W", "3", &target]);
        std::thread::sleep(Duration::from_millis(300));
        let sent = own.count();
        assert!(sent >= 1, "h{sender}/p1 sent no ARP request");
        for (cap, r) in caps.into_iter().zip(receivers) {
            let got = cap.count();
            assert_eq!(
                got, sent,
                "h{r}/p1 saw {got} of h{sender}/p1's {sent} ARP requests"
            );
        }
    }
    // Unicast still works both ways across the mixed mesh.
    for (from, to) in [("h1/p1", 2), ("h2/p1", 3), ("h3/p1", 1)] {
        let ip = pod_ip(&info, to);
        let (ok, out, _) = exec(
            &name,
            from,
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip],
        );
        assert!(ok, "{from} → {ip}: {out}");
    }
}

#[test]
fn a_killed_router_leaves_fastdp_traffic_flowing_and_its_restart_does_not_break_it() {
    let _serial = serial();
    let name = unique_with("ft", "k");
    let _guard = LabGuard::new(&name);
    let info = up(&name, 2);
    wait_all_fastdp(&name, 2, Duration::from_secs(10));
    let ip2 = pod_ip(&info, 2);
    let (ok, out, _) = exec(
        &name,
        "h1/p1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip2],
    );
    assert!(ok, "{out}");
    // 8 s of pings: kill h2's router at 1 s, start it again at 4 s.
    let ping = FastPing::start(&name, "h1/p1", &ip2, 800);
    std::thread::sleep(Duration::from_secs(1));
    lab::router_action(&name, "h2", RouterAction::Kill).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // h2's kernel still answers h1's probes: h1 keeps it on fastdp.
    assert!(
        lab::exec_output(&name, "h2", &["ip", "link", "show", "weft-vxlan"])
            .unwrap()
            .status
            .success(),
        "killing the router removed weft-vxlan"
    );
    std::thread::sleep(Duration::from_secs(2));
    lab::router_action(&name, "h2", RouterAction::Start).unwrap();
    let (sent, received) = ping.finish();
    assert!(
        sent - received <= 5,
        "pings lost while h2's router was down and restarting: {}/{sent}",
        sent - received
    );
    wait_all_fastdp(&name, 2, Duration::from_secs(10));
    let ping = FastPing::start(&name, "h1/p1", &ip2, 100);
    let (sent, received) = ping.finish();
    assert!(sent - received <= 2, "after the restart: {received}/{sent}");
}

#[test]
fn with_encryption_on_peers_take_the_encrypted_sleeve_and_status_says_why() {
    let _serial = serial();
    let name = unique_with("ft", "e");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    spec.datapath = Datapath::Auto;
    spec.encrypt = true;
    let info = lab::up(&spec).unwrap();
    let out = status(&name, "h1");
    let line = out.lines().find(|l| l.contains("(h2)")).unwrap_or_default();
    assert!(
        line.contains(" encrypted ") && line.contains(" sleeve ") && line.contains("no ESP"),
        "{out}"
    );
    let ip2 = pod_ip(&info, 2);
    let (ok, out, _) = exec(
        &name,
        "h1/p1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip2],
    );
    assert!(ok, "{out}");
    // Nothing went to the VXLAN device.
    let (_, fdb, _) = exec(&name, "h1", &["bridge", "fdb", "show", "dev", "weft-vxlan"]);
    assert!(!fdb.contains("00:00:00:00:00:00"), "flood entries: {fdb}");
}

#[test]
fn on_a_line_a_relayed_broadcast_reaches_the_far_end_exactly_once() {
    // h1 – h2 – h3: h1 and h3 cannot reach each other; h1–h2 and h2–h3 are fastdp, so h1's
    // broadcasts reach h2 by VXLAN and h3 through the sleeve relayed by h2 (which must not
    // deliver its sleeve copy a second time).
    let _serial = serial();
    let name = unique_with("ft", "l");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 1;
    spec.datapath = Datapath::Auto;
    spec.underlay = Underlay::Line;
    let info = lab::up(&spec).unwrap();
    wait_paths(
        &name,
        &[("h1", "h2"), ("h2", "h1"), ("h2", "h3"), ("h3", "h2")],
        "fastdp",
        Duration::from_secs(10),
    );
    // Let the announcements settle.
    std::thread::sleep(Duration::from_millis(500));
    let caps: Vec<Capture> = [2, 3]
        .iter()
        .map(|r| {
            Capture::start(
                &name,
                &format!("h{r}/p1"),
                &format!("l{r}"),
                &["icmp", "and", "dst", "host", "10.47.255.255"],
            )
        })
        .collect();
    exec(
        &name,
        "h1/p1",
        &[
            "ping",
            "-b",
            "-c",
            "20",
            "-i",
            "0.05",
            "-W",
            "1",
            "10.47.255.255",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    for (cap, r) in caps.into_iter().zip([2, 3]) {
        let got = cap.count();
        assert_eq!(got, 20, "h{r}/p1 got {got} of h1/p1's 20 broadcasts");
    }
    let ip3 = pod_ip(&info, 3);
    let (ok, out, _) = exec(
        &name,
        "h1/p1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip3],
    );
    assert!(ok, "h1/p1 → h3/p1 through h2: {out}");
}
