//! NetworkPolicy enforcement through a router's life, in a 2-node `--kube` lab (routers with
//! `--network-policy on`): rules follow a policy; a router restarted while it cannot list
//! the cluster keeps the rules it found (no window of allow-all or deny-all); after a reboot
//! (weft's table gone) a router that cannot list the cluster holds its pods until the first
//! sync; `bridge-nf-call-iptables=0` is reported as not enforced; egress is judged on the
//! destination after a Service's DNAT.
//!
//! Pods: h1/p1 and h2/p1 are labelled pod=p1, h1/p2 and h2/p2 pod=p2. The policy isolates
//! pod=p1 for ingress and allows it from pod=p2 only: h2/p2 → h1/p1 passes, h2/p1 → h1/p1
//! is dropped. Connections are pings (a rule without ports allows every protocol).

#![allow(clippy::unwrap_used, clippy::print_stderr)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_sim::lab::{self, LabGuard, LabSpec, RouterAction};

mod common;
use common::{exec, metrics, ping_until, serial, unique_with};

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: p1-from-p2, namespace: default}\n\
spec:\n  podSelector: {matchLabels: {pod: p1}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: p2}}\n";

const EGRESS_POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: p1-to-p2, namespace: default}\n\
spec:\n  podSelector: {matchLabels: {pod: p1}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector: {matchLabels: {pod: p2}}\n";

/// Polls node `node`'s report until `f` holds of its policy status (`within` at most).
fn wait_policy(name: &str, node: &str, what: &str, within: Duration, f: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let policy = lab::report(name, node)
            .map(|r| r["netfilter"]["policy"].clone())
            .unwrap_or(Value::Null);
        if f(&policy) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{node}: {what}; its policy status: {policy:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |p| p["state"] == state
}

/// Whether 20 pings 50 ms apart all went unanswered.
fn blocked(name: &str, from: &str, ip: &str) -> bool {
    let (_, out, _) = exec(
        name,
        from,
        &["ping", "-c", "20", "-i", "0.05", "-W", "1", ip],
    );
    out.contains(" 0 received")
}

/// Whether 20 pings 50 ms apart were all answered.
fn open(name: &str, from: &str, ip: &str) -> bool {
    let (_, out, _) = exec(
        name,
        from,
        &["ping", "-c", "20", "-i", "0.05", "-W", "1", ip],
    );
    out.contains("20 received")
}

/// The pods' Pod requests fail for `seconds` (the other kinds work, so routers start).
fn pods_unlisted(name: &str, seconds: u64) {
    let fault = json!({"fault": "fail", "code": 500, "seconds": seconds, "kind": "Pod"});
    lab::objects::fault(name, &fault).unwrap();
}

#[test]
fn policy_holds_through_restarts_reboots_and_reports_a_bypass() {
    let _serial = serial();
    let name = unique_with("pl", "r");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 2;
    spec.kube = true;
    let info = lab::up(&spec).unwrap();
    let target = info.nodes[0].pods[0]
        .ip
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let target = target.as_str();
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();

    // Before any policy everything passes; with it, only pod=p2 reaches h1/p1.
    assert!(ping_until(&name, "h2/p1", target, Duration::from_secs(5)).is_some());
    wait_policy(
        &name,
        "h1",
        "enforcing, nothing isolated",
        Duration::from_secs(10),
        |p| p["state"] == "enforcing" && p["isolated_pods"] == 0,
    );
    lab::objects::apply(&name, &file).unwrap();
    wait_policy(
        &name,
        "h1",
        "h1/p1 isolated",
        Duration::from_secs(10),
        |p| p["state"] == "enforcing" && p["isolated_pods"] == 1,
    );
    assert!(blocked(&name, "h2/p1", target), "h2/p1 still reaches h1/p1");
    assert!(
        open(&name, "h2/p2", target),
        "h2/p2 no longer reaches h1/p1"
    );
    assert!(
        open(&name, "h1/p2", target),
        "h1/p2 no longer reaches h1/p1"
    );

    // A restart while the cluster cannot be listed: the rules found stay in force.
    lab::router_action(&name, "h1", RouterAction::Stop).unwrap();
    pods_unlisted(&name, 15);
    lab::router_action(&name, "h1", RouterAction::Start).unwrap();
    wait_policy(
        &name,
        "h1",
        "keeping the rules",
        Duration::from_secs(10),
        state_is("kept"),
    );
    assert!(blocked(&name, "h2/p1", target), "a restart opened h1/p1");
    assert!(
        open(&name, "h2/p2", target),
        "a restart closed h1/p1 to h2/p2"
    );
    wait_policy(
        &name,
        "h1",
        "enforcing again",
        Duration::from_secs(45),
        state_is("enforcing"),
    );

    // A reboot (no weft table) while the cluster cannot be listed: pods are held; their node
    // still reaches them.
    lab::router_action(&name, "h1", RouterAction::Stop).unwrap();
    let (ok, _, err) = exec(&name, "h1", &["nft", "delete", "table", "inet", "weft"]);
    assert!(ok, "nft delete table: {err}");
    pods_unlisted(&name, 15);
    lab::router_action(&name, "h1", RouterAction::Start).unwrap();
    wait_policy(
        &name,
        "h1",
        "holding the pods",
        Duration::from_secs(10),
        state_is("holding"),
    );
    assert!(
        blocked(&name, "h2/p2", target),
        "a held pod was reached from h2"
    );
    assert!(
        blocked(&name, "h1/p2", target),
        "a held pod was reached from its node's pod"
    );
    assert!(open(&name, "h1", target), "the node lost its held pod");
    wait_policy(
        &name,
        "h1",
        "enforcing after the hold",
        Duration::from_secs(45),
        |p| p["state"] == "enforcing" && p["isolated_pods"] == 1,
    );
    assert!(
        open(&name, "h2/p2", target),
        "the hold outlived the first sync"
    );
    assert!(
        blocked(&name, "h2/p1", target),
        "h2/p1 reaches h1/p1 after the hold"
    );

    // Bridged traffic that bypasses the rules is reported, loudly.
    let sysctl = "net.bridge.bridge-nf-call-iptables";
    assert!(exec(&name, "h1", &["sysctl", "-qw", &format!("{sysctl}=0")]).0);
    wait_policy(
        &name,
        "h1",
        "reported not enforced",
        Duration::from_secs(25),
        |p| {
            p["state"] == "not_enforced"
                && p["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("bridge-nf-call-iptables is 0"))
        },
    );
    assert!(metrics(&name, "h1").contains("weft_policy_enforced 0"));
    let (ok, status, _) = common::weft(&name, "h1", &["status", "policy"]);
    assert!(ok && status.contains("NOT ENFORCED"), "{status}");
    assert!(exec(&name, "h1", &["sysctl", "-qw", &format!("{sysctl}=1")]).0);
    wait_policy(
        &name,
        "h1",
        "enforcing once bridged traffic meets the rules",
        Duration::from_secs(25),
        state_is("enforcing"),
    );
    let dropped = metrics(&name, "h1");
    assert!(
        !dropped.contains("weft_policy_dropped_packets_total{direction=\"ingress\"} 0"),
        "drops of h2/p1's pings not counted:\n{dropped}"
    );
    lab::objects::delete(&name, &file).unwrap();
    wait_policy(
        &name,
        "h1",
        "nothing isolated",
        Duration::from_secs(10),
        |p| p["isolated_pods"] == 0,
    );
    assert!(
        open(&name, "h2/p1", target),
        "the deleted policy still blocks"
    );

    // Egress is judged on the destination after Service DNAT: kube-proxy's part is played by
    // two DNAT rules on h1 (10.96.0.10 to h2/p2, 10.96.0.11 to h2/p1), and h1/p1 may reach
    // pod=p2 only.
    let ip_of = |node: usize, pod: usize| {
        let ip = &info.nodes[node].pods[pod].ip;
        ip.split('/').next().unwrap().to_owned()
    };
    let (h2p1, h2p2) = (ip_of(1, 0), ip_of(1, 1));
    let rules = format!(
        "table ip kube-proxy-standin {{\n chain pre {{\n  type nat hook prerouting priority -100;\n  \
         ip daddr 10.96.0.10 dnat to {h2p2}\n  ip daddr 10.96.0.11 dnat to {h2p1}\n }}\n}}\n"
    );
    let rules_file = dir.path().join("kube-proxy.nft");
    std::fs::write(&rules_file, rules).unwrap();
    let rules_path = rules_file.display().to_string();
    let (ok, _, err) = exec(&name, "h1", &["nft", "-f", &rules_path]);
    assert!(ok, "kube-proxy's stand-in rules: {err}");
    assert!(
        open(&name, "h1/p1", "10.96.0.11"),
        "the Service does not carry pings"
    );
    std::fs::write(&file, EGRESS_POLICY).unwrap();
    lab::objects::apply(&name, &file).unwrap();
    wait_policy(
        &name,
        "h1",
        "h1/p1 isolated for egress",
        Duration::from_secs(10),
        |p| p["state"] == "enforcing" && p["isolated_pods"] == 1,
    );
    assert!(
        open(&name, "h1/p1", "10.96.0.10"),
        "the Service to pod=p2 is blocked"
    );
    assert!(
        blocked(&name, "h1/p1", "10.96.0.11"),
        "the Service to pod=p1 passes"
    );
    assert!(open(&name, "h1/p1", &h2p2), "pod=p2 itself is blocked");
}
