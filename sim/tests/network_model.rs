//! The Kubernetes network model, cell by cell, over real traffic in a 2-node lab with two pods
//! per node, for each datapath (`fastdp`, `sleeve`, `sleeve --encrypt`):
//!
//! - pod ↔ pod on one node and across nodes, the pod address kept;
//! - node (a host-network process) ↔ pod across nodes; pod → its own node; pod → another
//!   node's address (masqueraded to its node's address, as Weave does);
//! - pod → the external host 203.0.113.1, which sees the node's address;
//! - Services through kube-proxy's iptables-mode rules (installed with Debian's iptables, as
//!   kube-proxy v1.30 writes them): ClusterIP across nodes over TCP and UDP, hairpin, node →
//!   ClusterIP, NodePort from the external host;
//! - hostPort through the reference `portmap` plugin that weft's conflist chains: from another
//!   node, from the external host, and hairpin;
//! - with `--underlay-mtu 1400`: the pod MTU is 1350 and a 1350-byte packet with DF passes.
//!
//! Each cell is a TCP exchange (UDP where noted) with an echo server that answers with its own
//! name and the client address it saw, plus a ping where ICMP applies. Every wait is bounded.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weft_sim::lab::{self, Datapath, LabGuard, LabInfo, LabSpec};

mod common;
use common::{exec, serial, unique_with};

const PORT: u16 = 8080;
const CLUSTER_IP: &str = "10.96.0.10";
const HAIRPIN_IP: &str = "10.96.0.11";
const NODE_PORT: u16 = 30080;
const HOST_PORT: u16 = 8081;

/// TCP and UDP echo servers on [`PORT`] in one namespace, answering `NAME CLIENT_IP`.
struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(ns: &str, tag: &str) -> Echo {
    let stop = Arc::new(AtomicBool::new(false));
    let bind = SocketAddr::from(([0, 0, 0, 0], PORT));
    let tcp = lab::netns::in_netns(ns, move || Ok(TcpListener::bind(bind)?)).unwrap();
    let udp = lab::netns::in_netns(ns, move || Ok(UdpSocket::bind(bind)?)).unwrap();
    tcp.set_nonblocking(true).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (s1, s2) = (stop.clone(), stop.clone());
    let (t1, t2) = (tag.to_owned(), tag.to_owned());
    let tcp_thread = std::thread::spawn(move || {
        while !s1.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut conn, peer)) => {
                    let _ = conn.write_all(format!("{t1} {}\n", peer.ip()).as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let udp_thread = std::thread::spawn(move || {
        let mut buf = [0_u8; 64];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{t2} {}\n", peer.ip()).as_bytes(), peer);
            }
        }
    });
    Echo {
        stop,
        threads: vec![tcp_thread, udp_thread],
    }
}

/// Connects from namespace `ns` to `addr` until an answer or 10 s; returns `(server, seen)`.
fn tcp(ns: &str, addr: &str) -> Option<(String, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let got = lab::netns::in_netns(ns, move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        if let Ok(text) = got
            && let Some((server, seen)) = text.trim().split_once(' ')
        {
            return Some((server.to_owned(), seen.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Like [`tcp`] over UDP.
fn udp(ns: &str, addr: &str) -> Option<(String, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let got = lab::netns::in_netns(ns, move || {
            let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.send_to(b"?", addr)?;
            let mut buf = [0_u8; 64];
            let (n, _) = s.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        if let Ok(text) = got
            && let Some((server, seen)) = text.trim().split_once(' ')
        {
            return Some((server.to_owned(), seen.to_owned()));
        }
    }
    None
}

fn ping(name: &str, from: &str, ip: &str, extra: &[&str]) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let mut argv = vec!["ping", "-c", "1", "-W", "1"];
        argv.extend_from_slice(extra);
        argv.push(ip);
        if exec(name, from, &argv).0 {
            return true;
        }
    }
    false
}

fn bare(ip: &str) -> String {
    ip.split('/').next().unwrap().to_owned()
}

/// The rules kube-proxy v1.30 writes in iptables mode for Service `a` (ClusterIP 10.96.0.10,
/// TCP 80 and UDP 53, NodePort 30080, two endpoints on h2) and Service `b` (10.96.0.11, TCP
/// 80, one endpoint: h1/p1, for hairpin), with `--cluster-cidr 10.32.0.0/12`.
fn kube_proxy_rules(a: &[String; 2], b: &str) -> String {
    let mut r = String::from(
        "*nat\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SVC-AU - [0:0]\n:KUBE-SVC-B - [0:0]\n\
         :KUBE-EXT-A - [0:0]\n:KUBE-SEP-A1 - [0:0]\n:KUBE-SEP-A2 - [0:0]\n:KUBE-SEP-AU1 - [0:0]\n\
         :KUBE-SEP-AU2 - [0:0]\n:KUBE-SEP-B1 - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    let svc = |r: &mut String,
               chain: &str,
               ip: &str,
               proto: &str,
               port: u16,
               seps: &[(&str, &str)]| {
        r.push_str(&format!(
            "-A KUBE-SERVICES -d {ip}/32 -p {proto} -m comment --comment \"default/svc cluster IP\" -m {proto} --dport {port} -j {chain}\n\
             -A {chain} ! -s 10.32.0.0/12 -d {ip}/32 -p {proto} -m {proto} --dport {port} -j KUBE-MARK-MASQ\n"
        ));
        for (i, (sep, _)) in seps.iter().enumerate() {
            let left = seps.len() - i;
            if left > 1 {
                r.push_str(&format!(
                    "-A {chain} -m statistic --mode random --probability {:.11} -j {sep}\n",
                    1.0 / left as f64
                ));
            } else {
                r.push_str(&format!("-A {chain} -j {sep}\n"));
            }
        }
        for (sep, ep) in seps {
            r.push_str(&format!(
                "-A {sep} -s {ep}/32 -j KUBE-MARK-MASQ\n\
                 -A {sep} -p {proto} -m {proto} -j DNAT --to-destination {ep}:{PORT}\n"
            ));
        }
    };
    svc(
        &mut r,
        "KUBE-SVC-A",
        CLUSTER_IP,
        "tcp",
        80,
        &[("KUBE-SEP-A1", &a[0]), ("KUBE-SEP-A2", &a[1])],
    );
    svc(
        &mut r,
        "KUBE-SVC-AU",
        CLUSTER_IP,
        "udp",
        53,
        &[("KUBE-SEP-AU1", &a[0]), ("KUBE-SEP-AU2", &a[1])],
    );
    svc(
        &mut r,
        "KUBE-SVC-B",
        HAIRPIN_IP,
        "tcp",
        80,
        &[("KUBE-SEP-B1", b)],
    );
    r.push_str(&format!(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-NODEPORTS -p tcp -m tcp --dport {NODE_PORT} -j KUBE-EXT-A\n\
         -A KUBE-EXT-A -j KUBE-MARK-MASQ\n\
         -A KUBE-EXT-A -j KUBE-SVC-A\n\
         COMMIT\n\
         *filter\n\
         :KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n"
    ));
    r
}

/// Feeds `input` to `program args` run in namespace `ns`, with `env`; fails on a non-zero exit.
fn run_with_stdin(
    ns: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    input: &str,
) -> String {
    let mut cmd = lab::netns::command_in(ns, program).unwrap();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Maps hostPort [`HOST_PORT`] of node `node` to [`PORT`] of its pod `pod` with the
/// reference portmap plugin, as a runtime does after weft's ADD in the conflist.
fn portmap(info: &LabInfo, node: usize, pod: usize) {
    let n = &info.nodes[node - 1];
    let p = &n.pods[pod - 1];
    let netns = lab::netns::netns_path(&p.netns).display().to_string();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "snat": true,
        "runtimeConfig": {"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": PORT, "protocol": "tcp"}
        ]},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": [{"address": p.ip, "interface": 0}],
        },
    });
    run_with_stdin(
        &n.netns,
        "/usr/lib/cni/portmap",
        &[],
        &[
            ("CNI_COMMAND", "ADD".to_owned()),
            ("CNI_CONTAINERID", p.netns.clone()),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", "/usr/lib/cni".to_owned()),
        ],
        &conf.to_string(),
    );
}

/// The IPv4 addresses of namespace `ns`.
fn addresses(ns: &str) -> Vec<String> {
    let o = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(bare))
        .collect()
}

fn conformance(tag: &str, datapath: Datapath, encrypt: bool) {
    let _serial = serial();
    let name = unique_with("nm", tag);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 2;
    spec.datapath = datapath;
    spec.encrypt = encrypt;
    let info = lab::up(&spec).unwrap();
    let pod = |i: usize, j: usize| bare(&info.nodes[i - 1].pods[j - 1].ip);
    let ns = |t: &str| lab::target(&name, t).unwrap().0;
    let (h1, h2) = ("192.0.2.1".to_owned(), "192.0.2.2".to_owned());

    let mut servers = Vec::new();
    for t in ["h1/p1", "h1/p2", "h2/p1", "h2/p2", "h1", "h2", "x"] {
        servers.push(serve(&ns(t), t));
    }
    let at = |ip: &str, port: u16| format!("{ip}:{port}");
    let failures = std::cell::RefCell::new(Vec::new());
    let check = |cell: &str, got: Option<(String, String)>, server: &[&str], seen: Option<&str>| {
        let ok = got.as_ref().is_some_and(|(s, c)| {
            server.contains(&s.as_str()) && seen.is_none_or(|want| want == c)
        });
        if !ok {
            failures.borrow_mut().push(format!(
                "{cell}: got {got:?}, want server {server:?} seeing {seen:?}"
            ));
        }
    };

    // Pods and nodes.
    check(
        "pod→pod same node",
        tcp(&ns("h1/p1"), &at(&pod(1, 2), PORT)),
        &["h1/p2"],
        Some(&pod(1, 1)),
    );
    check(
        "pod→pod across nodes",
        tcp(&ns("h1/p1"), &at(&pod(2, 1), PORT)),
        &["h2/p1"],
        Some(&pod(1, 1)),
    );
    check(
        "pod→pod across nodes, back",
        tcp(&ns("h2/p2"), &at(&pod(1, 2), PORT)),
        &["h1/p2"],
        Some(&pod(2, 2)),
    );
    check(
        "pod→pod across nodes, UDP",
        udp(&ns("h2/p1"), &at(&pod(1, 1), PORT)),
        &["h1/p1"],
        Some(&pod(2, 1)),
    );
    let node_to_pod = tcp(&ns("h1"), &at(&pod(2, 1), PORT));
    let h1_addrs = addresses(&ns("h1"));
    let seen_h1 = node_to_pod
        .as_ref()
        .is_some_and(|(_, c)| h1_addrs.contains(c));
    check("node→pod across nodes", node_to_pod, &["h2/p1"], None);
    if !seen_h1 {
        failures.borrow_mut().push(format!(
            "node→pod: the pod did not see one of h1's addresses {h1_addrs:?}"
        ));
    }
    check(
        "pod→own node",
        tcp(&ns("h1/p1"), &at(&h1, PORT)),
        &["h1"],
        None,
    );
    check(
        "pod→other node (host network)",
        tcp(&ns("h2/p1"), &at(&h1, PORT)),
        &["h1"],
        Some(&h2),
    );
    check(
        "pod→external",
        tcp(&ns("h1/p2"), &at(lab::EXTERNAL_IP, PORT)),
        &["x"],
        Some(&h1),
    );
    check(
        "pod→external, UDP",
        udp(&ns("h2/p2"), &at(lab::EXTERNAL_IP, PORT)),
        &["x"],
        Some(&h2),
    );
    for (from, to) in [
        ("h1/p1", pod(2, 1)),
        ("h1", pod(2, 2)),
        ("h2/p1", h1.clone()),
        ("h1/p1", lab::EXTERNAL_IP.to_owned()),
    ] {
        if !ping(&name, from, &to, &[]) {
            failures.borrow_mut().push(format!("ping {from} → {to}"));
        }
    }

    // Services, as kube-proxy programs them on every node.
    let rules = kube_proxy_rules(&[pod(2, 1), pod(2, 2)], &pod(1, 1));
    for node in ["h1", "h2"] {
        run_with_stdin(&ns(node), "iptables-restore", &["--noflush"], &[], &rules);
    }
    let endpoints = ["h2/p1", "h2/p2"];
    check(
        "ClusterIP across nodes",
        tcp(&ns("h1/p1"), &at(CLUSTER_IP, 80)),
        &endpoints,
        Some(&pod(1, 1)),
    );
    check(
        "ClusterIP across nodes, UDP",
        udp(&ns("h1/p2"), &at(CLUSTER_IP, 53)),
        &endpoints,
        Some(&pod(1, 2)),
    );
    let hairpin = tcp(&ns("h1/p1"), &at(HAIRPIN_IP, 80));
    let masqueraded = hairpin.as_ref().is_some_and(|(_, c)| *c != pod(1, 1));
    check("ClusterIP hairpin", hairpin, &["h1/p1"], None);
    if !masqueraded {
        failures
            .borrow_mut()
            .push("ClusterIP hairpin: not masqueraded (kube-proxy's KUBE-MARK-MASQ)".to_owned());
    }
    check(
        "node→ClusterIP",
        tcp(&ns("h1"), &at(CLUSTER_IP, 80)),
        &endpoints,
        None,
    );
    check(
        "NodePort from outside",
        tcp(&ns("x"), &at(&h1, NODE_PORT)),
        &endpoints,
        None,
    );

    // hostPort on h2/p1 through portmap.
    portmap(&info, 2, 1);
    check(
        "hostPort from another node",
        tcp(&ns("h1"), &at(&h2, HOST_PORT)),
        &["h2/p1"],
        None,
    );
    check(
        "hostPort from another node's pod",
        tcp(&ns("h1/p2"), &at(&h2, HOST_PORT)),
        &["h2/p1"],
        None,
    );
    check(
        "hostPort from outside",
        tcp(&ns("x"), &at(&h2, HOST_PORT)),
        &["h2/p1"],
        None,
    );
    check(
        "hostPort hairpin",
        tcp(&ns("h2/p1"), &at(&h2, HOST_PORT)),
        &["h2/p1"],
        None,
    );

    drop(servers);
    let failures = failures.into_inner();
    assert!(
        failures.is_empty(),
        "{datapath:?} encrypt={encrypt}:\n{}",
        failures.join("\n")
    );
}

/// With a 1400-byte underlay the pod MTU is 1350, and a 1350-byte packet with DF set crosses.
fn mtu(tag: &str, datapath: Datapath, encrypt: bool) {
    let _serial = serial();
    let name = unique_with("nm", tag);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    spec.datapath = datapath;
    spec.encrypt = encrypt;
    spec.underlay_mtu = 1400;
    let info = lab::up(&spec).unwrap();
    // /sys would show the caller's namespace after setns: read the MTU with ip.
    let ns = lab::target(&name, "h1/p1").unwrap().0;
    let o = std::process::Command::new("ip")
        .args(["-n", &ns, "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(link.contains("mtu 1350 "), "{link}");
    let peer = bare(&info.nodes[1].pods[0].ip);
    assert!(
        ping(&name, "h1/p1", &peer, &["-M", "do", "-s", "1322"]),
        "a 1350-byte packet with DF from h1/p1 to {peer} on {datapath:?}"
    );
    // One byte more does not fit the pod's interface.
    assert!(
        !exec(
            &name,
            "h1/p1",
            &[
                "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1323", &peer
            ]
        )
        .0
    );
}

#[test]
fn the_network_model_holds_on_fastdp() {
    conformance("f", Datapath::Fastdp, false);
}

#[test]
fn the_network_model_holds_on_the_sleeve() {
    conformance("s", Datapath::Sleeve, false);
}

#[test]
fn the_network_model_holds_on_the_encrypted_sleeve() {
    conformance("e", Datapath::Sleeve, true);
}

#[test]
fn full_size_packets_fit_a_smaller_underlay_on_every_datapath() {
    mtu("mf", Datapath::Fastdp, false);
    mtu("ms", Datapath::Sleeve, false);
    mtu("me", Datapath::Sleeve, true);
}

/// Sends `bytes` from namespace `from` to `to` (a sink in namespace `sink_ns` counts them) over
/// TCP; returns the count the sink read.
fn bulk(from: &str, sink_ns: &str, to: &str, bytes: usize) -> usize {
    let addr: SocketAddr = to.parse().unwrap();
    let bind = SocketAddr::from(([0, 0, 0, 0], addr.port()));
    let listener = lab::netns::in_netns(sink_ns, move || Ok(TcpListener::bind(bind)?)).unwrap();
    let sink = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = vec![0_u8; 64 * 1024];
        let mut total = 0;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    lab::netns::in_netns(from, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(&vec![0x5a_u8; bytes])?;
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })
    .unwrap();
    sink.join().unwrap()
}

/// A 1400-byte link in the middle of the underlay between h1 and h2 only (1500 elsewhere),
/// which drops larger packets without a word: the pair leaves fastdp (full-size probes go
/// unanswered), status says why with the path's size, the sleeve sizes its datagrams to the
/// path, and full-size pod traffic passes; h1–h3 stays on fastdp.
///
/// The link is a bridge filter in the underlay namespace; the two nodes segment their UDP
/// bursts in software (`gso_max_segs 1` on eth0), as a NIC would, so the filter judges each
/// packet on the wire rather than a veth's unsegmented burst.
#[test]
fn a_smaller_link_between_one_pair_moves_it_to_the_sleeve_and_full_size_traffic_passes() {
    let _serial = serial();
    let name = unique_with("nm", "p");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 1;
    let info = lab::up(&spec).unwrap();
    // The pair starts on fastdp, over a full-size path.
    let on_fastdp = |node: &str, peer: &str| {
        lab::report(&name, node).unwrap()["connections"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["remote_nickname"] == peer && c["datapath"] == "fastdp")
            })
    };
    let start = Instant::now();
    while !(on_fastdp("h1", "h2") && on_fastdp("h2", "h1")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "h1–h2 never on fastdp"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in ["h1", "h2"] {
        let ns = lab::target(&name, node).unwrap().0;
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns, "link", "set", "dev", "eth0", "gso_max_segs", "1"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "gso_max_segs on {node}");
    }
    let filter = "table bridge weftmtu {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  iifname \"h1\" oifname \"h2\" meta length > 1400 counter drop\n  iifname \"h2\" oifname \"h1\" meta length > 1400 counter drop\n }\n}\n";
    run_with_stdin(&format!("{name}-u"), "nft", &["-f", "-"], &[], filter);

    // h1 shows h2 on the sleeve, with the path's size, and h3 on fastdp.
    let start = Instant::now();
    let (mut h2_conn, mut h3_conn) = (serde_json::Value::Null, serde_json::Value::Null);
    while start.elapsed() < Duration::from_secs(30) {
        let report = lab::report(&name, "h1").unwrap();
        let conns = report["connections"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let find = |nick: &str| {
            conns
                .iter()
                .find(|c| c["remote_nickname"] == nick)
                .cloned()
                .unwrap_or_default()
        };
        (h2_conn, h3_conn) = (find("h2"), find("h3"));
        let sized = h2_conn["path_mtu"].as_u64().is_some_and(|m| m <= 1400)
            && h2_conn["datapath_reason"]
                .as_str()
                .is_some_and(|r| r.contains("full-size VXLAN needs 1500"));
        if sized && h3_conn["datapath"] == "fastdp" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(h2_conn["datapath"], "sleeve", "{h2_conn}");
    let path = h2_conn["path_mtu"].as_u64().unwrap_or(0);
    // Within the search's granularity, or a little below it when a probe was lost on the way.
    assert!((1300..=1400).contains(&path), "{h2_conn}");
    assert!(
        h2_conn["datapath_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("carries {path}-byte packets"))),
        "{h2_conn}"
    );
    assert_eq!(h3_conn["datapath"], "fastdp", "{h3_conn}");

    // Full-size traffic between the pair's pods: a 1450-byte packet with DF, and a TCP stream.
    let p2 = bare(&info.nodes[1].pods[0].ip);
    assert!(ping(&name, "h1/p1", &p2, &["-M", "do", "-s", "1422"]));
    let (from, sink) = (
        lab::target(&name, "h1/p1").unwrap().0,
        lab::target(&name, "h2/p1").unwrap().0,
    );
    let sent = 4 << 20;
    assert_eq!(bulk(&from, &sink, &format!("{p2}:{PORT}"), sent), sent);

    // A router that starts behind the small link finds it at once (the search runs when the
    // connection comes up), and full-size traffic passes again.
    lab::router_action(&name, "h1", lab::RouterAction::Restart).unwrap();
    let start = Instant::now();
    loop {
        let sized = lab::report(&name, "h1").ok().is_some_and(|r| {
            r["connections"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["remote_nickname"] == "h2"
                        && c["path_mtu"].as_u64().is_some_and(|m| m <= 1400)
                })
            })
        });
        if sized {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no path MTU after the restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A restarted router's sleeve peers lose their pods' traffic for about 11 s today (the
    // restart issue's subject), so this waits up to 30 s.
    let start = Instant::now();
    let mut crossed = false;
    while !crossed && start.elapsed() < Duration::from_secs(30) {
        crossed = ping(&name, "h1/p1", &p2, &["-M", "do", "-s", "1422"]);
    }
    assert!(
        crossed,
        "full-size ping after the restart; h1: {}\nh2: {}",
        lab::report(&name, "h1").map_or_else(|e| e.to_string(), |r| r["connections"].to_string()),
        lab::report(&name, "h2").map_or_else(|e| e.to_string(), |r| r["connections"].to_string())
    );
}

/// weft's rules stay in place while its router is down (pods keep reaching the outside world
/// through the node), and the router that comes back finds them in place: one masquerade rule.
#[test]
fn the_rules_outlive_a_stopped_router_and_are_not_doubled_by_the_next() {
    let _serial = serial();
    let name = unique_with("nm", "r");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 1;
    spec.pods = 1;
    lab::up(&spec).unwrap();
    let x = lab::target(&name, "x").unwrap().0;
    let _server = serve(&x, "x");
    let table = || exec(&name, "h1", &["nft", "list", "table", "inet", "weft"]).1;
    let start = Instant::now();
    while !table().contains("masquerade") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no rules: {}",
            table()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab::router_action(&name, "h1", lab::RouterAction::Stop).unwrap();
    assert_eq!(table().matches("masquerade").count(), 1, "{}", table());
    let pod = lab::target(&name, "h1/p1").unwrap().0;
    let seen = tcp(&pod, &format!("{}:{PORT}", lab::EXTERNAL_IP));
    assert_eq!(seen.map(|(_, c)| c), Some("192.0.2.1".to_owned()));
    lab::router_action(&name, "h1", lab::RouterAction::Start).unwrap();
    let start = Instant::now();
    loop {
        let report = lab::report(&name, "h1").ok();
        if report.is_some_and(|r| r["netfilter"]["in_place"] == true) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not reconciled");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(table().matches("masquerade").count(), 1, "{}", table());
}
