//! The reference evaluator on the upstream netpol e2e cluster: namespaces x, y, z (labelled
//! `ns=<name>`), each with pods a, b, c (labelled `pod=<name>`) serving TCP and UDP 80 and 81
//! on the named ports `serve-<port>-<tcp|udp>`. Pod `<ns>/<p>` has address `10.0.N.P` (x, a
//! = 1; y, b = 2; z, c = 3); pods a and b run on node-1 (192.168.0.1), pods c on node-2
//! (192.168.0.2).
//!
//! Expected reachability is a 9×9 matrix: rows are sources, columns destinations, both in the
//! order x/a x/b x/c y/a … z/c; written `1` allowed, `.` denied, one row a line.

use std::net::IpAddr;

use super::*;
use crate::cluster::{
    ClusterView, ContainerPort, Event, LabelSelector, Labels, NAMESPACE_NAME_LABEL, Namespace,
    NetworkPolicy, Operator, Peer, Pod, PolicyPort, PortSpec, Protocol, Requirement, Rule,
};

use Protocol::{Tcp, Udp};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const LABELS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];
const NODES: [(&str, [u8; 4]); 2] = [("node-1", [192, 168, 0, 1]), ("node-2", [192, 168, 0, 2])];
const FROM_Y: &[&str] = &["y/a", "y/b", "y/c"];

type Matrix = [[bool; 9]; 9];
type Rules = Option<Vec<Rule>>;

/// Every connection allowed.
const OPEN: Matrix = [[true; 9]; 9];

// --- builders ---

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let owned = |s: &str| s.to_owned();
    pairs.iter().map(|(k, v)| (owned(k), owned(v))).collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    let match_labels = labels(pairs);
    LabelSelector {
        match_labels,
        match_expressions: Vec::new(),
    }
}

fn pod_is(name: &str) -> LabelSelector {
    sel(&[("pod", name)])
}

fn ns_is(name: &str) -> LabelSelector {
    sel(&[("ns", name)])
}

fn all() -> LabelSelector {
    LabelSelector::everything()
}

fn expr(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
    let values = values.iter().map(|v| (*v).to_owned()).collect();
    let requirement = Requirement {
        key: key.to_owned(),
        operator,
        values,
    };
    LabelSelector {
        match_labels: Labels::new(),
        match_expressions: vec![requirement],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pod(namespace: &str, name: &str, addr: [u8; 4]) -> Pod {
    let port = |port, protocol: Protocol| ContainerPort {
        name: format!("serve-{port}-{}", protocol.as_str().to_lowercase()),
        protocol,
        port,
    };
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: labels(&[("pod", name)]),
        node: Some(if name == "c" { "node-2" } else { "node-1" }.to_owned()),
        ips: vec![IpAddr::from(addr)],
        host_network: false,
        ports: vec![port(80, Tcp), port(81, Tcp), port(80, Udp), port(81, Udp)],
    }
}

/// The nine-pod cluster with `policies`.
fn cluster(policies: Vec<NetworkPolicy>) -> ClusterView {
    let mut view = ClusterView::new();
    let namespaces = NAMESPACES.map(|name| Namespace {
        name: name.to_owned(),
        labels: labels(&[("ns", name), (NAMESPACE_NAME_LABEL, name)]),
    });
    view.handle_namespaces(Event::Restarted(namespaces.to_vec()));
    let mut pods = Vec::new();
    for (i, ns) in (1u8..).zip(NAMESPACES) {
        for (j, name) in (1u8..).zip(PODS) {
            pods.push(pod(ns, name, [10, 0, i, j]));
        }
    }
    view.handle_pods(Event::Restarted(pods));
    view.handle_policies(Event::Restarted(policies));
    view
}

fn np(ns: &str, name: &str, pods: LabelSelector, ingress: Rules, egress: Rules) -> NetworkPolicy {
    let (namespace, name) = (ns.to_owned(), name.to_owned());
    NetworkPolicy {
        namespace,
        name,
        pod_selector: pods,
        ingress,
        egress,
    }
}

/// An ingress-only policy.
fn ingress(namespace: &str, name: &str, pods: LabelSelector, rules: Vec<Rule>) -> NetworkPolicy {
    np(namespace, name, pods, Some(rules), None)
}

/// An egress-only policy.
fn egress(namespace: &str, name: &str, pods: LabelSelector, rules: Vec<Rule>) -> NetworkPolicy {
    np(namespace, name, pods, None, Some(rules))
}

/// Denies ingress and/or egress for every pod of `namespace`.
fn deny(namespace: &str, ingress: bool, egress: bool) -> NetworkPolicy {
    let none = |on: bool| on.then(Vec::new);
    np(namespace, "deny", all(), none(ingress), none(egress))
}

fn rule(peers: Vec<Peer>, ports: Vec<PolicyPort>) -> Rule {
    Rule { peers, ports }
}

fn pods(namespaces: Option<LabelSelector>, pods: LabelSelector) -> Peer {
    Peer::Pods { namespaces, pods }
}

fn block(cidr: &str, except: &[&str]) -> Peer {
    let except = except.iter().map(|e| e.parse().unwrap()).collect();
    Peer::IpBlock {
        cidr: cidr.parse().unwrap(),
        except,
    }
}

fn ports(protocol: Protocol, first: u16, last: u16) -> PolicyPort {
    let port = Some(PortSpec::Number { first, last });
    PolicyPort { protocol, port }
}

fn named(protocol: Protocol, name: &str) -> PolicyPort {
    let port = Some(PortSpec::Named(name.to_owned()));
    PolicyPort { protocol, port }
}

// --- endpoints and matrices ---

fn p<'a>(view: &'a ClusterView, label: &str) -> &'a Pod {
    let (ns, name) = label.split_once('/').unwrap();
    view.pod(ns, name).unwrap()
}

fn ep(pod: &Pod) -> Endpoint<'_> {
    Endpoint::of_pod(pod).next().unwrap()
}

fn node(name: &'static str) -> Endpoint<'static> {
    let (_, addr) = NODES.iter().find(|(n, _)| *n == name).unwrap();
    let ip = IpAddr::from(*addr);
    Endpoint::Node { name, ip }
}

fn host(s: &str) -> Endpoint<'static> {
    Endpoint::Host(ip(s))
}

fn index(label: &str) -> usize {
    LABELS.iter().position(|l| *l == label).unwrap()
}

/// One row's cells, e.g. `"1.. 111 111"`.
fn cells(row: &str) -> [bool; 9] {
    let cell = |c| match c {
        '1' => true,
        '.' => false,
        other => panic!("bad cell {other:?} in {row:?}"),
    };
    let cells = row.chars().filter(|c| !c.is_whitespace()).map(cell);
    cells.collect::<Vec<bool>>().try_into().unwrap()
}

/// A matrix written row by row, each row labelled: `"x/a 1.. 111 111"`.
fn m(rows: [&str; 9]) -> Matrix {
    let mut m = [[false; 9]; 9];
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(&row[..3], LABELS[i], "row {i} of the expected matrix");
        m[i] = cells(&row[3..]);
    }
    m
}

/// `m` with the row that `row` is labelled with replaced.
fn with_row(mut m: Matrix, row: &str) -> Matrix {
    m[index(&row[..3])] = cells(&row[3..]);
    m
}

/// Every connection allowed but those to `dst`, which only `dst` itself and `from` reach.
fn only_into(dst: &str, from: &[&str]) -> Matrix {
    let mut m = OPEN;
    for (i, src) in LABELS.iter().enumerate() {
        m[i][index(dst)] = *src == dst || from.contains(src);
    }
    m
}

fn render(m: &Matrix) -> String {
    let mut s = String::from("    xxx yyy zzz\n    abc abc abc\n");
    for (label, row) in LABELS.iter().zip(m) {
        s.push_str(label);
        for (j, &cell) in row.iter().enumerate() {
            s.push_str(if j % 3 == 0 { " " } else { "" });
            s.push(if cell { '1' } else { '.' });
        }
        s.push('\n');
    }
    s
}

/// Compares `allowed` between every pair of the nine pods with `expected`.
#[track_caller]
fn check(view: &ClusterView, protocol: Protocol, port: u16, expected: Matrix) {
    let pods: Vec<&Pod> = view.pods().collect();
    let names = pods.iter().map(|p| format!("{}/{}", p.namespace, p.name));
    assert!(names.eq(LABELS), "the matrix needs the nine-pod cluster");
    let mut got = [[false; 9]; 9];
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            got[i][j] = allowed(view, ep(src), ep(dst), protocol, port);
        }
    }
    let diffs: Vec<String> = (0..81)
        .filter(|k| got[k / 9][k % 9] != expected[k / 9][k % 9])
        .map(|k| format!("{} -> {}", LABELS[k / 9], LABELS[k % 9]))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} {port}: reachability (rows: source, columns: destination)\nexpected:\n{}got:\n{}\
         differing: {}",
        protocol.as_str(),
        render(&expected),
        render(&got),
        diffs.join(", ")
    );
}

/// Nothing reaches a pod of x but itself.
fn x_closed() -> Matrix {
    m([
        "x/a 1.. 111 111",
        "x/b .1. 111 111",
        "x/c ..1 111 111",
        "y/a ... 111 111",
        "y/b ... 111 111",
        "y/c ... 111 111",
        "z/a ... 111 111",
        "z/b ... 111 111",
        "z/c ... 111 111",
    ])
}

// --- the upstream cases ---

#[test]
fn default_deny_ingress() {
    let view = cluster(vec![deny("x", true, false)]);
    let expected = x_closed();
    check(&view, Tcp, 80, expected);
    check(&view, Tcp, 81, expected);
    check(&view, Udp, 80, expected);
    let xa = p(&view, "x/a");
    assert!(!allowed(&view, host("8.8.8.8"), ep(xa), Tcp, 80));
    assert!(allowed(&view, ep(xa), host("8.8.8.8"), Tcp, 443));
    assert!(isolated(&view, xa, Direction::Ingress));
    assert!(!isolated(&view, xa, Direction::Egress));
    assert!(!isolated(&view, p(&view, "y/a"), Direction::Ingress));
}

#[test]
fn default_deny_egress() {
    let view = cluster(vec![deny("x", false, true)]);
    let expected = m([
        "x/a 1.. ... ...",
        "x/b .1. ... ...",
        "x/c ..1 ... ...",
        "y/a 111 111 111",
        "y/b 111 111 111",
        "y/c 111 111 111",
        "z/a 111 111 111",
        "z/b 111 111 111",
        "z/c 111 111 111",
    ]);
    check(&view, Tcp, 80, expected);
    check(&view, Udp, 81, expected);
    let xa = p(&view, "x/a");
    assert!(!allowed(&view, ep(xa), host("8.8.8.8"), Tcp, 443));
    assert!(allowed(&view, host("8.8.8.8"), ep(xa), Tcp, 80));
}

#[test]
fn allow_all_ingress() {
    let allow_all = ingress("x", "allow-all", all(), vec![Rule::default()]);
    let view = cluster(vec![allow_all.clone()]);
    check(&view, Tcp, 80, OPEN);
    assert!(isolated(&view, p(&view, "x/a"), Direction::Ingress));
    // Policies add up: allow-all beside a default deny opens everything again.
    let view = cluster(vec![deny("x", true, false), allow_all]);
    check(&view, Tcp, 80, OPEN);
    check(&view, Udp, 81, OPEN);
    let xa = p(&view, "x/a");
    assert!(allowed(&view, host("8.8.8.8"), ep(xa), Tcp, 80));
}

#[test]
fn allow_from_namespace() {
    for namespaces in [ns_is("y"), sel(&[(NAMESPACE_NAME_LABEL, "y")])] {
        let from_y = rule(vec![pods(Some(namespaces), all())], vec![]);
        let view = cluster(vec![ingress("x", "from-y", pod_is("a"), vec![from_y])]);
        let expected = m([
            "x/a 111 111 111",
            "x/b .11 111 111",
            "x/c .11 111 111",
            "y/a 111 111 111",
            "y/b 111 111 111",
            "y/c 111 111 111",
            "z/a .11 111 111",
            "z/b .11 111 111",
            "z/c .11 111 111",
        ]);
        check(&view, Tcp, 80, expected);
        assert_eq!(expected, only_into("x/a", FROM_Y));
        // Peers are pods only: a host is not in namespace y.
        let xa = p(&view, "x/a");
        assert!(!allowed(&view, host("10.0.2.9"), ep(xa), Tcp, 80));
    }
}

#[test]
fn allow_from_pod_b() {
    let policy = |namespaces| {
        let from_b = rule(vec![pods(namespaces, pod_is("b"))], vec![]);
        cluster(vec![ingress("x", "from-b", pod_is("a"), vec![from_b])])
    };
    // namespaceSelector {}: pod b of every namespace.
    let expected = only_into("x/a", &["x/b", "y/b", "z/b"]);
    check(&policy(Some(all())), Tcp, 80, expected);
    // No namespaceSelector: the policy's own namespace only.
    check(&policy(None), Tcp, 80, only_into("x/a", &["x/b"]));
}

#[test]
fn namespace_and_pod_selectors() {
    let policy = |peers| {
        let rules = vec![rule(peers, vec![])];
        cluster(vec![ingress("x", "p", pod_is("a"), rules)])
    };
    // One peer with both selectors: pods b of namespace y.
    let view = policy(vec![pods(Some(ns_is("y")), pod_is("b"))]);
    check(&view, Tcp, 80, only_into("x/a", &["y/b"]));
    // Two peers: namespace y, or pod b of x.
    let view = policy(vec![pods(Some(ns_is("y")), all()), pods(None, pod_is("b"))]);
    let from = ["x/b", "y/a", "y/b", "y/c"];
    check(&view, Tcp, 80, only_into("x/a", &from));
}

#[test]
fn ip_block_with_except() {
    // Egress from x/a to 10.0.0.0/16 but y/b.
    let to = rule(vec![block("10.0.0.0/16", &["10.0.2.2/32"])], vec![]);
    let view = cluster(vec![egress("x", "to-cidr", pod_is("a"), vec![to])]);
    check(&view, Tcp, 80, with_row(OPEN, "x/a 111 1.1 111"));
    let xa = p(&view, "x/a");
    assert!(allowed(&view, ep(xa), host("10.0.9.9"), Tcp, 80));
    assert!(!allowed(&view, ep(xa), host("8.8.8.8"), Tcp, 80));

    // Ingress to x/a from 10.0.2.0/24 (namespace y) but y/b.
    let from = rule(vec![block("10.0.2.0/24", &["10.0.2.2/32"])], vec![]);
    let view = cluster(vec![ingress("x", "from-cidr", pod_is("a"), vec![from])]);
    check(&view, Tcp, 80, only_into("x/a", &["y/a", "y/c"]));

    // The usual "from outside the cluster" block: hosts in, pods out.
    let outside = rule(vec![block("0.0.0.0/0", &["10.0.0.0/8"])], vec![]);
    let view = cluster(vec![ingress("y", "outside", all(), vec![outside])]);
    let (xa, ya) = (p(&view, "x/a"), p(&view, "y/a"));
    assert!(allowed(&view, host("8.8.8.8"), ep(ya), Tcp, 80));
    assert!(!allowed(&view, host("10.9.9.9"), ep(ya), Tcp, 80));
    assert!(!allowed(&view, ep(xa), ep(ya), Tcp, 80));
    assert!(!allowed(&view, host("fd00::1"), ep(ya), Tcp, 80));
}

#[test]
fn ip_block_judges_the_connections_address() {
    let from = rule(vec![block("10.0.1.0/24", &[])], vec![]);
    let mut view = cluster(vec![ingress("y", "from-x", all(), vec![from])]);
    let mut xa = p(&view, "x/a").clone();
    xa.ips.push(ip("fd00::1:1"));
    view.handle_pods(Event::Applied(xa));
    let (xa, yb) = (p(&view, "x/a"), p(&view, "y/b"));
    let ends: Vec<Endpoint<'_>> = Endpoint::of_pod(xa).collect();
    assert_eq!(ends.len(), 2);
    assert!(allowed(&view, ends[0], ep(yb), Tcp, 80)); // IPv4: in the block
    assert!(!allowed(&view, ends[1], ep(yb), Tcp, 80)); // IPv6: not
}

#[test]
fn named_port_ingress() {
    let policy = |pods, port| ingress("x", "named", pods, vec![rule(vec![], vec![port])]);
    let view = cluster(vec![policy(pod_is("a"), named(Tcp, "serve-81-tcp"))]);
    check(&view, Tcp, 81, OPEN);
    check(&view, Tcp, 80, only_into("x/a", &[]));
    check(&view, Udp, 81, only_into("x/a", &[]));
    // The protocol must match the container port's too: UDP "serve-81-tcp" resolves nowhere.
    let view = cluster(vec![policy(pod_is("a"), named(Udp, "serve-81-tcp"))]);
    check(&view, Udp, 81, only_into("x/a", &[]));
    check(&view, Tcp, 81, only_into("x/a", &[]));
    // Resolved on each destination pod: x/b without named ports is closed on 81.
    let mut view = cluster(vec![policy(all(), named(Tcp, "serve-81-tcp"))]);
    let mut xb = p(&view, "x/b").clone();
    xb.ports.clear();
    view.handle_pods(Event::Applied(xb));
    check(&view, Tcp, 81, only_into("x/b", &[]));
    check(&view, Tcp, 80, x_closed());
}

#[test]
fn named_port_egress_needs_a_destination_pod() {
    let to_80 = rule(vec![], vec![named(Tcp, "serve-80-tcp")]);
    let view = cluster(vec![egress("x", "to-80", pod_is("a"), vec![to_80])]);
    check(&view, Tcp, 80, OPEN);
    check(&view, Tcp, 81, with_row(OPEN, "x/a 1.. ... ..."));
    let xa = p(&view, "x/a");
    assert!(!allowed(&view, ep(xa), host("8.8.8.8"), Tcp, 80));
    assert!(!allowed(&view, ep(xa), node("node-2"), Tcp, 80));
}

#[test]
fn end_port_range() {
    let policy = |first, last| {
        let from_y = rule(
            vec![pods(Some(ns_is("y")), all())],
            vec![ports(Tcp, first, last)],
        );
        cluster(vec![ingress("x", "range", pod_is("a"), vec![from_y])])
    };
    let (from_y, closed) = (only_into("x/a", FROM_Y), only_into("x/a", &[]));
    let view = policy(80, 81);
    check(&view, Tcp, 80, from_y);
    check(&view, Tcp, 81, from_y);
    check(&view, Tcp, 79, closed);
    check(&view, Tcp, 82, closed);
    check(&view, Udp, 80, closed);
    let view = policy(81, 81);
    check(&view, Tcp, 80, closed);
    check(&view, Tcp, 81, from_y);
}

#[test]
fn egress_to_namespace() {
    let to_y = rule(vec![pods(Some(ns_is("y")), all())], vec![]);
    let view = cluster(vec![egress("x", "to-y", all(), vec![to_y])]);
    let expected = m([
        "x/a 1.. 111 ...",
        "x/b .1. 111 ...",
        "x/c ..1 111 ...",
        "y/a 111 111 111",
        "y/b 111 111 111",
        "y/c 111 111 111",
        "z/a 111 111 111",
        "z/b 111 111 111",
        "z/c 111 111 111",
    ]);
    check(&view, Tcp, 80, expected);
    check(&view, Udp, 81, expected);
    let xb = p(&view, "x/b");
    assert!(!allowed(&view, ep(xb), host("8.8.8.8"), Udp, 53));
}

#[test]
fn policies_add_up() {
    let from = |name, peer| ingress("x", name, pod_is("a"), vec![rule(vec![peer], vec![])]);
    let from_xb = from("from-xb", pods(None, pod_is("b")));
    let from_y = from("from-y", pods(Some(ns_is("y")), all()));
    let (only_xb, only_y) = (only_into("x/a", &["x/b"]), only_into("x/a", FROM_Y));
    check(&cluster(vec![from_xb.clone()]), Tcp, 80, only_xb);
    check(&cluster(vec![from_y.clone()]), Tcp, 80, only_y);
    let both = vec![from_xb, from_y];
    let union = only_into("x/a", &["x/b", "y/a", "y/b", "y/c"]);
    check(&cluster(both.clone()), Tcp, 80, union);
    // An egress-only policy isolates x/a's egress and leaves its ingress to the others.
    let mut with_egress = both;
    with_egress.push(egress("x", "no-egress", pod_is("a"), vec![]));
    let expected = with_row(union, "x/a 1.. ... ...");
    check(&cluster(with_egress), Tcp, 80, expected);
}

#[test]
fn match_expressions() {
    // x/b and x/c (pod NotIn a) accept pods a and b (NotIn c) of namespaces but y (NotIn y).
    let not_y = expr("ns", Operator::NotIn, &["y"]);
    let not_c = pods(Some(not_y), expr("pod", Operator::NotIn, &["c"]));
    let not_a = expr("pod", Operator::NotIn, &["a"]);
    let x_policy = ingress("x", "not-in", not_a, vec![rule(vec![not_c], vec![])]);
    // z/c accepts pods without a `pod` label, of any labelled namespace: none.
    let labelled = expr("ns", Operator::Exists, &[]);
    let unlabelled = pods(Some(labelled), expr("pod", Operator::DoesNotExist, &[]));
    let in_c = expr("pod", Operator::In, &["c"]);
    let z_policy = ingress("z", "none", in_c, vec![rule(vec![unlabelled], vec![])]);
    let view = cluster(vec![x_policy, z_policy]);
    let expected = m([
        "x/a 111 111 11.",
        "x/b 111 111 11.",
        "x/c 1.1 111 11.",
        "y/a 1.. 111 11.",
        "y/b 1.. 111 11.",
        "y/c 1.. 111 11.",
        "z/a 111 111 11.",
        "z/b 111 111 11.",
        "z/c 1.. 111 111",
    ]);
    check(&view, Tcp, 80, expected);
}

#[test]
fn policy_selecting_no_pod() {
    let unlabelled = expr("pod", Operator::DoesNotExist, &[]);
    let view = cluster(vec![
        np("x", "pod-d", pod_is("d"), Some(vec![]), Some(vec![])),
        ingress("y", "unlabelled", unlabelled, vec![]),
        // A policy in a namespace without pods selects nobody elsewhere.
        deny("w", true, true),
    ]);
    check(&view, Tcp, 80, OPEN);
    for pod in view.pods() {
        assert!(!isolated(&view, pod, Direction::Ingress));
        assert!(!isolated(&view, pod, Direction::Egress));
    }
}

#[test]
fn a_pod_reaches_itself() {
    let view = cluster(NAMESPACES.iter().map(|ns| deny(ns, true, true)).collect());
    let expected = m([
        "x/a 1.. ... ...",
        "x/b .1. ... ...",
        "x/c ..1 ... ...",
        "y/a ... 1.. ...",
        "y/b ... .1. ...",
        "y/c ... ..1 ...",
        "z/a ... ... 1..",
        "z/b ... ... .1.",
        "z/c ... ... ..1",
    ]);
    check(&view, Tcp, 80, expected);
    check(&view, Udp, 81, expected);
}

#[test]
fn a_pod_and_its_node() {
    let mut view = cluster(NAMESPACES.iter().map(|ns| deny(ns, true, true)).collect());
    for pod in view.pods() {
        for (name, _) in NODES {
            let own = pod.node.as_deref() == Some(name);
            let at = format!("{}/{} and {name}", pod.namespace, pod.name);
            assert_eq!(allowed(&view, node(name), ep(pod), Tcp, 80), own, "{at}");
            assert_eq!(allowed(&view, ep(pod), node(name), Tcp, 10250), own, "{at}");
        }
        assert!(!allowed(&view, host("8.8.8.8"), ep(pod), Tcp, 80));
        assert!(!allowed(&view, ep(pod), host("8.8.8.8"), Tcp, 80));
    }
    // A host-network pod on node-1 is node-1: never isolated, and its node's pods' peer.
    let mut h = pod("x", "h", [192, 168, 0, 1]);
    h.host_network = true;
    view.handle_pods(Event::Applied(h));
    let (h, xa, xc) = (p(&view, "x/h"), p(&view, "x/a"), p(&view, "x/c"));
    assert!(!isolated(&view, h, Direction::Ingress));
    assert!(!isolated(&view, h, Direction::Egress));
    assert!(allowed(&view, ep(h), ep(xa), Tcp, 80));
    assert!(allowed(&view, ep(xa), ep(h), Tcp, 80));
    assert!(!allowed(&view, ep(h), ep(xc), Tcp, 80), "x/c is on node-2");
    assert!(
        !allowed(&view, ep(xc), ep(h), Tcp, 80),
        "x/c's egress is denied"
    );
    assert!(allowed(&view, host("8.8.8.8"), ep(h), Tcp, 22));
    assert!(allowed(&view, ep(h), ep(h), Tcp, 22));
    assert!(allowed(&view, node("node-2"), ep(h), Tcp, 22));
}

#[test]
fn a_namespace_the_view_lacks_matches_no_namespace_selector() {
    let from_any = rule(vec![pods(Some(all()), all())], vec![]);
    let mut view = cluster(vec![ingress("x", "any", pod_is("a"), vec![from_any])]);
    check(&view, Tcp, 80, OPEN);
    let name = "z".to_owned();
    view.handle_namespaces(Event::Deleted {
        namespace: String::new(),
        name,
    });
    let from = ["x/b", "x/c", "y/a", "y/b", "y/c"];
    check(&view, Tcp, 80, only_into("x/a", &from));
}
