//! Lab tests: real namespaces on this machine (run as root, as the README's test command does).
//!
//! ```text
//!   N-x eth0 (203.0.113.1) ── x (203.0.113.254)
//!                                  N-u: bridge ubr (192.0.2.0/24, gateway 192.0.2.254)
//!          /          |           \
//!   N-h1 eth0    N-h2 eth0    N-h3 eth0      (192.0.2.I, default via 192.0.2.254)
//!   bridge weft  bridge weft  bridge weft
//!    |     |      |     |      |     |
//!   p1    p2     p1    p2     p1    p2      (N-hI-pJ, 10.32.I.J/12)
//! ```
//!
//! Every test uses its own lab name (process id + tag) and a `LabGuard`, so a failing or
//! panicking test still removes what it built.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::process::Command;
use std::time::Duration;

use weft_sim::lab::{self, LabGuard, LabSpec, Underlay};

mod common;
use common::{exec, ping_until, settled_active, unique};

fn spec(name: &str, nodes: usize, pods: usize) -> LabSpec {
    let mut spec = LabSpec::new(name);
    spec.nodes = nodes;
    spec.pods = pods;
    spec.routers = false;
    spec
}

fn ping(name: &str, from: &str, ip: &str) -> bool {
    let ip = ip.split('/').next().unwrap_or(ip);
    lab::exec_output(name, from, &["ping", "-c", "1", "-W", "2", ip])
        .unwrap()
        .status
        .success()
}

/// The MTU of link `dev` in namespace `ns`, read over netlink (`/sys/class/net` inside a
/// namespace entered with setns still shows the root namespace's links).
fn link_mtu(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", dev])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["mtu"].as_u64().unwrap()
}

fn root_links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_owned()))
        .collect();
    names.sort();
    names.join(",")
}

#[test]
fn three_nodes_two_pods_ping_on_one_node_and_leave_nothing() {
    let name = unique("a");
    {
        let guard = LabGuard::new(&name);
        let mut with_routers = spec(&name, 3, 2);
        with_routers.routers = true;
        let info = lab::up(&with_routers).unwrap();
        assert!(info.ready_s.is_some());
        assert_eq!(info.nodes.len(), 3);
        for node in &info.nodes {
            assert_eq!(node.pods.len(), 2);
            let target = format!("{}/p1", node.name);
            assert!(
                ping(&name, &target, &node.pods[1].ip),
                "{target} -> {}",
                node.pods[1].ip
            );
        }
        assert_eq!(lab::lab_namespaces(&name).len(), 2 + 3 + 6);
        drop(guard);
    }
    assert!(lab::lab_namespaces(&name).is_empty());
    assert!(!std::path::Path::new(lab::RUN_DIR).join(&name).exists());
    let procs = Command::new("pgrep")
        .args(["-f", &format!("{}/{name}/", lab::RUN_DIR)])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "routers left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}

#[test]
fn a_panicking_test_leaves_no_namespace() {
    let name = unique("b");
    let result = std::panic::catch_unwind(|| {
        let _guard = LabGuard::new(&name);
        lab::up(&spec(&name, 2, 1)).unwrap();
        assert_eq!(lab::lab_namespaces(&name).len(), 2 + 2 + 2);
        panic!("test body fails on purpose");
    });
    assert!(result.is_err());
    assert!(
        lab::lab_namespaces(&name).is_empty(),
        "{:?}",
        lab::lab_namespaces(&name)
    );
    assert!(!std::path::Path::new(lab::RUN_DIR).join(&name).exists());
}

#[test]
fn cli_up_json_then_down_leaves_nothing_behind() {
    let name = unique("c");
    let _guard = LabGuard::new(&name);
    let links_before = root_links();
    let bin = env!("CARGO_BIN_EXE_weft-sim");
    let out = Command::new(bin)
        .args([
            "lab",
            "up",
            "--name",
            &name,
            "--nodes",
            "3",
            "--json",
            "--no-router",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], name.as_str());
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[1]["name"], "h2");
    assert_eq!(nodes[1]["netns"], format!("{name}-h2").as_str());
    assert_eq!(nodes[1]["underlay_ip"], "192.0.2.2");
    let pod = &nodes[2]["pods"][0];
    assert_eq!(pod["name"], "p1");
    assert_eq!(pod["netns"], format!("{name}-h3-p1").as_str());
    assert!(pod["ip"].as_str().unwrap().ends_with("/12"));
    assert_eq!(pod["mac"].as_str().unwrap().len(), 17);

    // exec returns the command's own exit code.
    let code = |args: &[&str]| {
        let mut argv = vec!["lab", "exec", &name, "h1", "--"];
        argv.extend_from_slice(args);
        Command::new(bin).args(&argv).status().unwrap().code()
    };
    assert_eq!(code(&["true"]), Some(0));
    assert_eq!(code(&["sh", "-c", "exit 7"]), Some(7));
    assert_eq!(code(&["ping", "-c", "1", "-W", "2", "192.0.2.3"]), Some(0));

    let down = Command::new(bin)
        .args(["lab", "down", "--name", &name])
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(lab::lab_namespaces(&name).is_empty());
    assert!(!std::path::Path::new(lab::RUN_DIR).join(&name).exists());
    assert_eq!(
        root_links(),
        links_before,
        "the lab touched the root namespace's links"
    );
    let procs = Command::new("pgrep")
        .args(["-f", &format!("{}/{name}/", lab::RUN_DIR)])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}

#[test]
fn two_labs_run_side_by_side() {
    let (a, b) = (unique("d"), unique("e"));
    let (_ga, _gb) = (LabGuard::new(&a), LabGuard::new(&b));
    let (sa, sb) = (spec(&a, 2, 1), spec(&b, 2, 1));
    let ta = std::thread::spawn(move || lab::up(&sa).map(drop));
    let tb = std::thread::spawn(move || lab::up(&sb).map(drop));
    ta.join().unwrap().unwrap();
    tb.join().unwrap().unwrap();
    // Same addresses in both labs, no interference.
    assert!(ping(&a, "h1", "192.0.2.2"));
    assert!(ping(&b, "h1", "192.0.2.2"));
    lab::down(&a).unwrap();
    assert!(lab::lab_namespaces(&a).is_empty());
    assert_eq!(lab::lab_namespaces(&b).len(), 2 + 2 + 2);
    assert!(ping(&b, "h2", "192.0.2.1"));
}

#[test]
fn line_underlay_reaches_only_neighbours() {
    let name = unique("f");
    let _guard = LabGuard::new(&name);
    let mut s = spec(&name, 3, 0);
    s.underlay = Underlay::Line;
    lab::up(&s).unwrap();
    assert!(ping(&name, "h1", "192.0.2.2"));
    assert!(ping(&name, "h2", "192.0.2.3"));
    assert!(!ping(&name, "h1", "192.0.2.3"));
    // Every node still reaches the gateway (the underlay bridge's own address) and, through
    // it, the external host.
    for node in ["h1", "h2", "h3"] {
        assert!(
            ping_until(&name, node, lab::EXTERNAL_IP, Duration::from_secs(10)).is_some(),
            "{node} -> external host"
        );
    }
    // The gateway is no way around the cut: routed through it, h1 and h3 still do not meet.
    for (node, other) in [("h1", "192.0.2.3/32"), ("h3", "192.0.2.1/32")] {
        let (ok, _, err) = exec(
            &name,
            node,
            &["ip", "route", "add", other, "via", lab::GATEWAY_IP],
        );
        assert!(ok, "{err}");
    }
    assert!(!ping(&name, "h1", "192.0.2.3"));
}

#[test]
fn pods_can_be_added_and_removed() {
    let name = unique("g");
    let _guard = LabGuard::new(&name);
    lab::up(&spec(&name, 1, 1)).unwrap();
    let pod = lab::pod_add(&name, "h1", "p2", Some("02:00:00:00:00:42")).unwrap();
    assert_eq!(pod.mac, "02:00:00:00:00:42");
    assert!(ping(&name, "h1/p1", &pod.ip));
    assert!(
        lab::pod_add(&name, "h1", "p2", None).is_err(),
        "a pod added twice"
    );
    lab::pod_del(&name, "h1", "p2").unwrap();
    assert!(lab::pod_del(&name, "h1", "p2").is_err());
    assert_eq!(lab::lab_namespaces(&name).len(), 2 + 1 + 1);
    assert!(lab::up(&spec(&name, 1, 1)).is_err(), "a lab built twice");
}

#[test]
fn pods_attach_through_the_cni_plugin_and_give_their_address_back() {
    let name = unique("h");
    let _guard = LabGuard::new(&name);
    let mut s = spec(&name, 2, 1);
    s.routers = true;
    let info = lab::up(&s).unwrap();
    let p1 = &info.nodes[0].pods[0];
    assert!(p1.ip.starts_with("10.") && p1.ip.ends_with("/12"), "{p1:?}");
    // `active` counts h1's pods and its gateway; the snapshot may trail a change, so
    // expectations are polled.
    let becomes = |want: u64| settled_active(&name, "h1", want) == want;
    // h1's pod and gateway: right after `lab up` its first snapshot may predate its pod.
    let before = s.pods as u64 + 1;
    assert!(becomes(before), "h1's pod and gateway are not counted");
    let pod = lab::pod_add(&name, "h1", "p2", Some("02:00:00:00:00:42")).unwrap();
    assert_eq!(pod.mac, "02:00:00:00:00:42");
    assert!(becomes(before + 1), "the new pod's address is not counted");
    assert!(ping(&name, "h1/p1", &pod.ip));
    lab::pod_del(&name, "h1", "p2").unwrap();
    assert!(becomes(before), "CNI DEL did not release the address");
}

#[test]
fn nodes_reach_the_external_host_over_an_underlay_of_the_chosen_mtu() {
    let name = unique("x");
    let _guard = LabGuard::new(&name);
    let bin = env!("CARGO_BIN_EXE_weft-sim");
    let lab_cmd = |args: &[&str]| Command::new(bin).arg("lab").args(args).output().unwrap();

    // A bad MTU is refused by name before anything is built.
    let out = lab_cmd(&[
        "up",
        "--name",
        &name,
        "--no-router",
        "--underlay-mtu",
        "1000",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--underlay-mtu"), "{err}");
    assert!(lab::lab_namespaces(&name).is_empty());

    let out = lab_cmd(&[
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--no-router",
        "--underlay-mtu",
        "1400",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let x_ns = format!("{name}-x");
    assert_eq!(
        v["external"],
        serde_json::json!({"netns": x_ns, "ip": "203.0.113.1"})
    );
    assert_eq!(lab::lab_namespaces(&name).len(), 2 + 2 + 2);

    // The underlay cables have the MTU asked for, the bridge follows its ports, and pods the
    // lab attaches itself get the underlay's less the VXLAN overhead.
    for i in 1..=2 {
        assert_eq!(link_mtu(&format!("{name}-h{i}"), "eth0"), 1400, "h{i}");
        assert_eq!(link_mtu(&format!("{name}-u"), &format!("h{i}")), 1400);
        assert_eq!(link_mtu(&format!("{name}-h{i}-p1"), "eth0"), 1350);
    }
    assert_eq!(link_mtu(&format!("{name}-u"), "ubr"), 1400);
    assert_eq!(link_mtu(&x_ns, "eth0"), 1400);

    for node in ["h1", "h2"] {
        assert!(
            ping_until(&name, node, lab::EXTERNAL_IP, Duration::from_secs(10)).is_some(),
            "{node} -> external host"
        );
        // A full-size packet crosses unfragmented (1400 = 1372 + 8 ICMP + 20 IP).
        let (ok, out, _) = exec(
            &name,
            node,
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1372",
                lab::EXTERNAL_IP,
            ],
        );
        assert!(ok, "{node}: {out}");
        let (ok, route, _) = exec(&name, node, &["ip", "route", "show", "default"]);
        assert!(ok && route.contains("via 192.0.2.254 dev eth0"), "{route}");
    }

    // `lab exec N x` runs in the external host: it answers from its own address, reaches the
    // nodes' underlay addresses and has no route to any pod.
    let x = |args: &[&str]| {
        let mut argv = vec!["exec", &name, "x", "--"];
        argv.extend_from_slice(args);
        lab_cmd(&argv)
    };
    let out = x(&["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("203.0.113.1/24"));
    assert!(
        x(&["ping", "-c", "1", "-W", "2", "192.0.2.2"])
            .status
            .success()
    );
    assert!(!x(&["ip", "route", "get", "10.32.1.1"]).status.success());
    assert_eq!(x(&["sh", "-c", "exit 3"]).status.code(), Some(3));

    // `lab down` removes the external host with the rest.
    let out = lab_cmd(&["down", "--name", &name]);
    assert!(out.status.success());
    assert!(lab::lab_namespaces(&name).is_empty());
    assert!(!lab::netns::list().contains(&x_ns));
}
