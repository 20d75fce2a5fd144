//! CNI churn through real routers: 200 ADD/DEL cycles spread over 3 nodes leave no address,
//! veth or forwarding entry behind.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::process::Command;

use weft_sim::lab::{self, LabGuard, LabSpec};

mod common;
use common::settled_active;

/// Lines of `ip`/`bridge` output (run in `ns`) that mention a weft host veth (`vw…`).
fn veth_lines(ns: &str, tool: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(tool)
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" vw") || l.contains("dev vw"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_hundred_add_del_cycles_leak_nothing() {
    let name = format!("lt{}c", std::process::id() % 100_000);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 1;
    lab::up(&spec).unwrap();
    let nodes = ["h1", "h2", "h3"];
    // Each node holds its pod's address and its gateway's.
    let held = spec.pods as u64 + 1;
    let before: Vec<u64> = nodes
        .iter()
        .map(|n| settled_active(&name, n, held))
        .collect();
    assert_eq!(before, [held; 3], "before the churn");
    for cycle in 0..200 {
        let node = nodes[cycle % 3];
        lab::pod_add(&name, node, "p9", None).unwrap();
        lab::pod_del(&name, node, "p9").unwrap();
    }
    let after: Vec<u64> = nodes
        .iter()
        .map(|n| settled_active(&name, n, held))
        .collect();
    assert_eq!(after, before, "addresses leaked");
    for node in nodes {
        let ns = format!("{name}-{node}");
        // Only the first pod's veth remains on each node, and only it has FDB entries.
        let links = veth_lines(&ns, "ip", &["-o", "link", "show"]);
        assert_eq!(links.len(), 1, "{node}: veths leaked: {links:?}");
        let kept = links[0].split(':').nth(1).unwrap().trim();
        let kept = kept.split('@').next().unwrap().to_owned();
        let fdb = veth_lines(&ns, "bridge", &["fdb", "show", "br", "weft"]);
        assert!(
            fdb.iter().all(|l| l.contains(&format!("dev {kept} "))),
            "{node}: FDB entries of deleted veths: {fdb:?}"
        );
    }
}
