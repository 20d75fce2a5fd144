//! Routers partitioned and healed while allocating: no address is ever given twice.
//!
//! ```text
//!   h1 ── h2        h3 cut off from both by a bridge filter in the underlay namespace
//!     ╲  ╱          while pods are added on every node, then the cut heals
//!      h3
//! ```

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeSet;

use weft_sim::lab::{self, LabGuard, LabSpec, netns};

fn nft(ns: &str, rules: &str) {
    let mut cmd = netns::command_in(ns, "nft").unwrap();
    cmd.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {rules}");
}

/// Waits up to 10 s for `node` to have exactly `n` established connections.
fn wait_established(name: &str, node: &str, n: usize) -> bool {
    (0..100).any(|_| {
        let r = lab::report(name, node).unwrap();
        let established = r["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "established")
            .count();
        if established != n {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        established == n
    })
}

#[test]
fn a_partition_that_heals_never_gives_an_address_twice() {
    let name = format!("lt{}p", std::process::id() % 100_000);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 1;
    lab::up(&spec).unwrap();
    let underlay = format!("{name}-u");
    nft(
        &underlay,
        "table bridge cut {\n chain forward {\n  type filter hook forward priority 0;\n  \
         iifname \"h3\" drop\n  oifname \"h3\" drop\n }\n}\n",
    );
    assert!(wait_established(&name, "h3", 0), "h3 never noticed the cut");
    // Allocate on both sides of the cut.
    for j in 2..=4 {
        for node in ["h1", "h2", "h3"] {
            lab::pod_add(&name, node, &format!("p{j}"), None).unwrap();
        }
    }
    nft(&underlay, "delete table bridge cut");
    assert!(wait_established(&name, "h3", 2), "h3 never reconnected");
    for j in 5..=6 {
        for node in ["h1", "h2", "h3"] {
            lab::pod_add(&name, node, &format!("p{j}"), None).unwrap();
        }
    }
    let info = lab::info(&name).unwrap();
    let ips: Vec<String> = info
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.ip.clone()))
        .collect();
    let unique: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(ips.len(), 3 * 6);
    assert_eq!(
        unique.len(),
        ips.len(),
        "an address was given twice: {ips:?}"
    );
}
