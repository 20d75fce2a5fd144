//! Random clusters and NetworkPolicies for the policy property tests: a few namespaces, nodes
//! and pods over a small label alphabet, so that selectors often match.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use topology::cluster::{
    ClusterView, ContainerPort, Event, LabelSelector, Labels, NAMESPACE_NAME_LABEL, Namespace,
    NetworkPolicy, Operator, Peer, Pod, PolicyPort, PortSpec, Protocol, Requirement, Rule,
};
use topology::policy::Endpoint;

pub(crate) const NAMESPACES: [&str; 3] = ["a", "b", "c"];
pub(crate) const NODES: [&str; 3] = ["n0", "n1", "n2"];
/// The port numbers policies and container ports use (the first of a policy's ranges).
pub(crate) const PORTS: [u16; 4] = [53, 80, 81, 8080];
/// How far a policy's port range reaches past its first port.
pub(crate) const SPANS: [u16; 4] = [0, 0, 1, 8000];
pub(crate) const PORT_NAMES: [&str; 3] = ["http", "dns", "nope"];

/// What the generated clusters may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// A pod's second address is IPv6, nodes but the last have an IPv6 address, and
    /// `ipBlock`s may be IPv6.
    pub(crate) dual_stack: bool,
    /// The protocols of policies' and containers' ports.
    pub(crate) protocols: &'static [Protocol],
}

/// IPv4 only, TCP and UDP.
pub(crate) const V4: Shape = Shape {
    dual_stack: false,
    protocols: &[Protocol::Tcp, Protocol::Udp],
};

/// Dual-stack, TCP, UDP and SCTP.
pub(crate) const DUAL_STACK: Shape = Shape {
    dual_stack: true,
    protocols: &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
};

/// Node `n`'s IPv4 address.
pub(crate) fn node_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 0, n as u8 + 1))
}

/// Node `n`'s addresses: IPv4, plus IPv6 in a dual-stack shape but for the last node.
pub(crate) fn node_ips(n: usize, shape: Shape) -> Vec<IpAddr> {
    let mut ips = vec![node_ip(n)];
    if shape.dual_stack && n + 1 < NODES.len() {
        ips.push(IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0xffff,
            0,
            0,
            0,
            0,
            0,
            n as u16 + 1,
        )));
    }
    ips
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Labels over a small alphabet: `keys` × `values`.
pub(crate) fn arb_labels(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        prop::sample::select(owned(keys)),
        prop::sample::select(owned(values)),
        0..3,
    )
}

fn arb_selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        prop::sample::select(owned(keys)),
        prop::sample::select(vec![
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]),
        proptest::collection::btree_set(prop::sample::select(owned(values)), 1..3),
    )
        .prop_map(|(key, operator, values)| Requirement {
            key,
            values: match operator {
                Operator::In | Operator::NotIn => values,
                Operator::Exists | Operator::DoesNotExist => Default::default(),
            },
            operator,
        });
    (
        proptest::collection::btree_map(
            prop::sample::select(owned(keys)),
            prop::sample::select(owned(values)),
            0..2,
        ),
        proptest::collection::vec(requirement, 0..2),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// A selector, empty (everything) half of the time so that policies select often.
fn arb_loose_selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::everything()),
        arb_selector(keys, values)
    ]
}

pub(crate) const POD_KEYS: &[&str] = &["app", "tier"];
pub(crate) const POD_VALUES: &[&str] = &["web", "db"];
const NS_KEYS: &[&str] = &["env", NAMESPACE_NAME_LABEL];
const NS_VALUES: &[&str] = &["prod", "dev", "a", "b"];

/// A pod's shape before addresses are assigned.
#[derive(Clone, Debug)]
pub(crate) struct PodSpec {
    namespace: usize,
    labels: Labels,
    node: Option<usize>,
    addresses: u8,
    host_network: bool,
    ports: Vec<ContainerPort>,
}

pub(crate) fn arb_pod(shape: Shape) -> impl Strategy<Value = PodSpec> {
    let port = (
        prop::sample::select(owned(&PORT_NAMES[..2])),
        prop::sample::select(shape.protocols.to_vec()),
        prop::sample::select(PORTS.to_vec()),
    )
        .prop_map(|(name, protocol, port)| ContainerPort {
            name,
            protocol,
            port,
        });
    (
        0usize..3,
        arb_labels(POD_KEYS, POD_VALUES),
        prop::option::weighted(0.9, 0usize..3),
        prop::sample::select(vec![0u8, 1, 1, 1, 2]),
        prop::bool::weighted(0.2),
        proptest::collection::vec(port, 0..4),
    )
        .prop_map(
            |(namespace, labels, node, addresses, host_network, ports)| PodSpec {
                namespace,
                labels,
                node,
                addresses,
                host_network,
                ports,
            },
        )
}

/// Pod number `i` (`p<i>`) of shape `spec`, with unique addresses: 10.0.0.i+1 (and 10.0.1.i+1,
/// or fd00::i+1 when dual-stack); a scheduled host-network pod uses its node's; an
/// unscheduled pod has none (unless on the host network: then it is a plain host).
pub(crate) fn make_pod(i: u8, spec: PodSpec, shape: Shape) -> Pod {
    let ips = match (spec.host_network, spec.node) {
        (true, Some(n)) => vec![node_ip(n)],
        (true, None) => vec![IpAddr::V4(Ipv4Addr::new(10, 9, 0, i + 1))],
        (false, None) => Vec::new(),
        (false, Some(_)) => (0..spec.addresses)
            .map(|k| match (k, shape.dual_stack) {
                (1, true) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i) + 1)),
                _ => IpAddr::V4(Ipv4Addr::new(10, 0, k, i + 1)),
            })
            .collect(),
    };
    Pod {
        namespace: NAMESPACES[spec.namespace].to_owned(),
        name: format!("p{i}"),
        labels: spec.labels,
        node: spec.node.map(|n| NODES[n].to_owned()),
        ips,
        host_network: spec.host_network,
        ports: spec.ports,
    }
}

pub(crate) fn cidr(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn arb_peer(shape: Shape) -> impl Strategy<Value = Peer> {
    let mut cidrs = vec![
        "10.0.0.0/24",
        "10.0.0.0/29",
        "0.0.0.0/0",
        "192.168.0.0/24",
        "10.0.0.4/31",
    ];
    let mut excepts = vec![
        "10.0.0.0/30",
        "10.0.0.2/31",
        "10.0.0.5/32",
        "192.168.0.2/32",
        "10.0.0.0/25",
    ];
    if shape.dual_stack {
        cidrs.extend(["fd00::/112", "fd00::/120", "fd00::4/127", "fd00:ffff::/64"]);
        excepts.extend(["fd00::/126", "fd00::2/127", "fd00::5/128", "fd00::/121"]);
    }
    let pods = (
        prop::option::of(arb_loose_selector(NS_KEYS, NS_VALUES)),
        arb_loose_selector(POD_KEYS, POD_VALUES),
    )
        .prop_map(|(namespaces, pods)| Peer::Pods { namespaces, pods });
    let block = (
        prop::sample::select(owned(&cidrs)),
        proptest::collection::btree_set(prop::sample::select(owned(&excepts)), 0..3),
    )
        .prop_map(|(c, except)| {
            let c = cidr(&c);
            let except = except
                .iter()
                .map(|e| cidr(e))
                .filter(|e| c.contains(e) && e.prefix_len() > c.prefix_len())
                .collect();
            Peer::IpBlock { cidr: c, except }
        });
    prop_oneof![3 => pods, 2 => block]
}

fn arb_port(shape: Shape) -> impl Strategy<Value = PolicyPort> {
    let spec = prop_oneof![
        1 => Just(None),
        3 => (prop::sample::select(PORTS.to_vec()), prop::sample::select(SPANS.to_vec()))
            .prop_map(|(first, span)| Some(PortSpec::Number { first, last: first.saturating_add(span) })),
        3 => prop::sample::select(owned(&PORT_NAMES)).prop_map(|n| Some(PortSpec::Named(n))),
    ];
    (prop::sample::select(shape.protocols.to_vec()), spec)
        .prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn arb_rules(shape: Shape) -> impl Strategy<Value = Option<Vec<Rule>>> {
    let rule = (
        proptest::collection::vec(arb_peer(shape), 0..3),
        proptest::collection::vec(arb_port(shape), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports });
    prop::option::of(proptest::collection::vec(rule, 0..3))
}

type PolicySpec = (usize, LabelSelector, Option<Vec<Rule>>, Option<Vec<Rule>>);

fn arb_policy(shape: Shape) -> impl Strategy<Value = PolicySpec> {
    (
        0usize..3,
        arb_loose_selector(POD_KEYS, POD_VALUES),
        arb_rules(shape),
        arb_rules(shape),
    )
}

/// A random IPv4 cluster (TCP and UDP): the view and its nodes with their addresses.
pub(crate) fn arb_cluster() -> impl Strategy<Value = (ClusterView, BTreeMap<String, Vec<IpAddr>>)> {
    arb_cluster_with(V4)
}

/// A random cluster of `shape`: the view and its nodes with their addresses.
pub(crate) fn arb_cluster_with(
    shape: Shape,
) -> impl Strategy<Value = (ClusterView, BTreeMap<String, Vec<IpAddr>>)> {
    (
        2usize..=3,
        proptest::collection::vec(arb_labels(&["env"], &["prod", "dev"]), 3),
        proptest::collection::vec(arb_pod(shape), 3..=8),
        proptest::collection::vec(arb_policy(shape), 0..6),
    )
        .prop_map(move |(n_ns, ns_labels, pods, policies)| {
            let mut view = ClusterView::new();
            let namespaces = (0..n_ns)
                .map(|i| {
                    let mut labels = ns_labels[i].clone();
                    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), NAMESPACES[i].to_owned());
                    Namespace {
                        name: NAMESPACES[i].to_owned(),
                        labels,
                    }
                })
                .collect();
            view.handle_namespaces(Event::Restarted(namespaces));
            let pods = pods
                .into_iter()
                .enumerate()
                .map(|(i, spec)| make_pod(i as u8, spec, shape))
                .collect();
            view.handle_pods(Event::Restarted(pods));
            let policies = policies
                .into_iter()
                .enumerate()
                .map(|(i, (ns, pod_selector, ingress, egress))| NetworkPolicy {
                    namespace: NAMESPACES[ns].to_owned(),
                    name: format!("np{i}"),
                    pod_selector,
                    ingress,
                    egress,
                })
                .collect();
            view.handle_policies(Event::Restarted(policies));
            let nodes = NODES
                .iter()
                .enumerate()
                .map(|(i, n)| ((*n).to_owned(), node_ips(i, shape)))
                .collect();
            (view, nodes)
        })
}

/// Every endpoint: each address of each pod, each node's, and external hosts inside and
/// outside the generated `ipBlock`s (two per family).
pub(crate) fn endpoints<'a>(
    view: &'a ClusterView,
    nodes: &'a BTreeMap<String, Vec<IpAddr>>,
    shape: Shape,
) -> Vec<Endpoint<'a>> {
    let mut out: Vec<Endpoint<'a>> = view.pods().flat_map(Endpoint::of_pod).collect();
    for (name, ips) in nodes {
        out.extend(ips.iter().map(|&ip| Endpoint::Node { name, ip }));
    }
    let mut hosts = vec!["203.0.113.7", "10.0.0.200"];
    if shape.dual_stack {
        hosts.extend(["2001:db8::7", "fd00::c8"]);
    }
    out.extend(hosts.iter().map(|h| Endpoint::Host(h.parse().unwrap())));
    out
}
