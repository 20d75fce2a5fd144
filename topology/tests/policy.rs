//! The compiled per-node rules against the reference evaluator: on random small clusters and
//! random policies, every node compiles its [`RuleSet`], and the combined verdict of the
//! compiled state agrees with [`reference::allowed`] for every ordered pair of endpoints
//! (pods, nodes, external hosts), a few ports and both TCP and UDP.

#![allow(clippy::unwrap_used)] // test helpers

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use topology::cluster::{
    ClusterView, ContainerPort, Event, LabelSelector, Labels, NAMESPACE_NAME_LABEL, Namespace,
    NetworkPolicy, Operator, Peer, Pod, PolicyPort, PortSpec, Protocol, Requirement, Rule,
};
use topology::policy::compile::subtract;
use topology::policy::{Change, ClusterRules, Endpoint, RuleSet, reference};

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const NODES: [&str; 3] = ["n0", "n1", "n2"];
const PORTS: [u16; 4] = [53, 80, 81, 8080];
const PORT_NAMES: [&str; 3] = ["http", "dns", "nope"];
const PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

fn node_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 0, n as u8 + 1))
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Labels over a small alphabet: `keys` × `values`.
fn arb_labels(
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

const POD_KEYS: &[&str] = &["app", "tier"];
const POD_VALUES: &[&str] = &["web", "db"];
const NS_KEYS: &[&str] = &["env", NAMESPACE_NAME_LABEL];
const NS_VALUES: &[&str] = &["prod", "dev", "a", "b"];

/// A pod's shape before addresses are assigned.
#[derive(Clone, Debug)]
struct PodSpec {
    namespace: usize,
    labels: Labels,
    node: Option<usize>,
    addresses: u8,
    host_network: bool,
    ports: Vec<ContainerPort>,
}

fn arb_pod() -> impl Strategy<Value = PodSpec> {
    let port = (
        prop::sample::select(owned(&PORT_NAMES[..2])),
        prop::sample::select(PROTOCOLS.to_vec()),
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

fn cidr(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    const CIDRS: &[&str] = &[
        "10.0.0.0/24",
        "10.0.0.0/29",
        "0.0.0.0/0",
        "192.168.0.0/24",
        "10.0.0.4/31",
    ];
    const EXCEPTS: &[&str] = &[
        "10.0.0.0/30",
        "10.0.0.2/31",
        "10.0.0.5/32",
        "192.168.0.2/32",
        "10.0.0.0/25",
    ];
    let pods = (
        prop::option::of(arb_loose_selector(NS_KEYS, NS_VALUES)),
        arb_loose_selector(POD_KEYS, POD_VALUES),
    )
        .prop_map(|(namespaces, pods)| Peer::Pods { namespaces, pods });
    let block = (
        prop::sample::select(owned(CIDRS)),
        proptest::collection::btree_set(prop::sample::select(owned(EXCEPTS)), 0..3),
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

fn arb_port() -> impl Strategy<Value = PolicyPort> {
    let spec = prop_oneof![
        1 => Just(None),
        3 => (prop::sample::select(PORTS.to_vec()), prop::sample::select(vec![0u16, 0, 1, 8000]))
            .prop_map(|(first, span)| Some(PortSpec::Number { first, last: first.saturating_add(span) })),
        3 => prop::sample::select(owned(&PORT_NAMES)).prop_map(|n| Some(PortSpec::Named(n))),
    ];
    (prop::sample::select(PROTOCOLS.to_vec()), spec)
        .prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn arb_rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    let rule = (
        proptest::collection::vec(arb_peer(), 0..3),
        proptest::collection::vec(arb_port(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports });
    prop::option::of(proptest::collection::vec(rule, 0..3))
}

fn arb_policy()
-> impl Strategy<Value = (usize, LabelSelector, Option<Vec<Rule>>, Option<Vec<Rule>>)> {
    (
        0usize..3,
        arb_loose_selector(POD_KEYS, POD_VALUES),
        arb_rules(),
        arb_rules(),
    )
}

/// A random cluster: the view and its nodes with their addresses.
fn arb_cluster() -> impl Strategy<Value = (ClusterView, BTreeMap<String, Vec<IpAddr>>)> {
    (
        2usize..=3,
        proptest::collection::vec(arb_labels(&["env"], &["prod", "dev"]), 3),
        proptest::collection::vec(arb_pod(), 3..=8),
        proptest::collection::vec(arb_policy(), 0..6),
    )
        .prop_map(|(n_ns, ns_labels, pods, policies)| {
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
                .map(|(i, spec)| {
                    let i = i as u8;
                    // Unique addresses: 10.0.0.i+1 (and 10.0.1.i+1); a scheduled
                    // host-network pod uses its node's; an unscheduled pod has none (unless
                    // on the host network: then it is a plain host).
                    let ips = match (spec.host_network, spec.node) {
                        (true, Some(n)) => vec![node_ip(n)],
                        (true, None) => vec![IpAddr::V4(Ipv4Addr::new(10, 9, 0, i + 1))],
                        (false, None) => Vec::new(),
                        (false, Some(_)) => (0..spec.addresses)
                            .map(|k| IpAddr::V4(Ipv4Addr::new(10, 0, k, i + 1)))
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
                })
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
                .map(|(i, n)| ((*n).to_owned(), vec![node_ip(i)]))
                .collect();
            (view, nodes)
        })
}

/// Every endpoint: each address of each pod, each node, two external hosts.
fn endpoints<'a>(
    view: &'a ClusterView,
    nodes: &'a BTreeMap<String, Vec<IpAddr>>,
) -> Vec<Endpoint<'a>> {
    let mut out: Vec<Endpoint<'a>> = view.pods().flat_map(Endpoint::of_pod).collect();
    for (name, ips) in nodes {
        out.extend(ips.iter().map(|&ip| Endpoint::Node { name, ip }));
    }
    out.push(Endpoint::Host("203.0.113.7".parse().unwrap()));
    out.push(Endpoint::Host("10.0.0.200".parse().unwrap()));
    out
}

/// The first disagreement between the compiled rules and the reference, described.
fn disagreement(view: &ClusterView, nodes: &BTreeMap<String, Vec<IpAddr>>) -> Option<String> {
    let rules = ClusterRules::compile(view, nodes);
    let ends = endpoints(view, nodes);
    for &src in &ends {
        for &dst in &ends {
            for protocol in PROTOCOLS {
                for port in PORTS {
                    let want = reference::allowed(view, src, dst, protocol, port);
                    let got = rules.allows(src.ip(), dst.ip(), protocol, port);
                    if want != got {
                        return Some(format!(
                            "{src:?} -> {dst:?} {} {port}: reference {want}, compiled {got}\n\
                             rules: {rules:#?}",
                            protocol.as_str()
                        ));
                    }
                }
            }
        }
    }
    None
}

/// An `ipBlock` becomes disjoint prefixes covering the block minus its exceptions.
#[test]
fn ip_block_minus_except_is_disjoint_prefixes() {
    let mut out = Default::default();
    subtract(
        cidr("10.0.0.0/24"),
        &[cidr("10.0.0.0/25"), cidr("10.0.0.130/31")],
        &mut out,
    );
    let want: std::collections::BTreeSet<IpNet> = [
        "10.0.0.128/31",
        "10.0.0.132/30",
        "10.0.0.136/29",
        "10.0.0.144/28",
        "10.0.0.160/27",
        "10.0.0.192/26",
    ]
    .iter()
    .map(|s| cidr(s))
    .collect();
    assert_eq!(out, want);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The compiled rules of all nodes, combined, judge every connection as the reference
    /// does. On failure proptest shrinks to a minimal cluster and prints it with the first
    /// disagreeing connection and the compiled state.
    #[test]
    fn compiled_rules_agree_with_the_reference((view, nodes) in arb_cluster()) {
        if let Some(why) = disagreement(&view, &nodes) {
            prop_assert!(false, "{why}\nview: {view:#?}");
        }
    }

    /// Applying `old.diff(&new)` to `old` yields `new`, for every node, between two
    /// unrelated clusters.
    #[test]
    fn diff_applied_to_old_yields_new(
        (old_view, nodes) in arb_cluster(),
        (new_view, _) in arb_cluster(),
    ) {
        for (node, ips) in &nodes {
            let old = RuleSet::compile(&old_view, node, ips);
            let new = RuleSet::compile(&new_view, node, ips);
            let mut patched = old.clone();
            patched.apply(&old.diff(&new));
            prop_assert_eq!(&patched, &new);
            prop_assert!(new.diff(&new).is_empty());
        }
    }

    /// Changing one pod's labels changes set elements only by that pod's addresses, and on
    /// a node other than the pod's, nothing but set elements changes.
    #[test]
    fn label_change_touches_only_the_sets_containing_the_pod(
        (view, nodes) in arb_cluster(),
        which in any::<prop::sample::Index>(),
        labels in arb_labels(POD_KEYS, POD_VALUES),
    ) {
        let mut pod = (*which.get(&view.pods().collect::<Vec<_>>())).clone();
        pod.labels = labels;
        let mut changed = view.clone();
        changed.handle_pods(Event::Applied(pod.clone()));
        let own: std::collections::BTreeSet<IpNet> =
            pod.ips.iter().map(|&ip| IpNet::from(ip)).collect();
        for (node, ips) in &nodes {
            let old = RuleSet::compile(&view, node, ips);
            let new = RuleSet::compile(&changed, node, ips);
            let changes = old.diff(&new);
            let local = pod.node.as_deref() == Some(node.as_str());
            for change in &changes {
                match change {
                    Change::SetElements { name, added, removed } => prop_assert!(
                        added.union(removed).all(|e| own.contains(e)),
                        "{}: set {} changed beyond the pod's addresses: {:?}", node, name, change
                    ),
                    other @ (Change::SetAdded { .. }
                    | Change::SetRemoved { .. }
                    | Change::NodeAddresses { .. }
                    | Change::PodSet { .. }
                    | Change::PodRemoved { .. }) => prop_assert!(
                        local,
                        "{}: {:?} for a remote pod's label change", node, other
                    ),
                }
            }
            let mut patched = old.clone();
            patched.apply(&changes);
            prop_assert_eq!(&patched, &new);
        }
    }
}
