//! NetworkPolicy as nftables, run: [`policy::program`] turns each node's compiled
//! [`RuleSet`] into chains and sets, and an interpreter of those ([`common::nft_eval`]) runs
//! packets through the forward hook as the kernel would. On random dual-stack clusters and
//! policies, a connection initiation passes the hooks of its ends' nodes iff
//! [`reference::allowed`] says so, and replies always pass. Then the incremental side: from
//! one cluster's table to the next one's, one planned batch reaches exactly the new state, and
//! a remote pod's label change only touches set elements.

#![allow(clippy::unwrap_used)] // test helpers

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use common::nft_eval::{CT_ESTABLISHED, CT_NEW, CT_RELATED, Packet, Table, apply};
use common::policy_gen::{
    DUAL_STACK, POD_KEYS, POD_VALUES, PORTS, PodSpec, SPANS, Shape, arb_cluster_with, arb_labels,
    arb_pod, endpoints, make_pod,
};
use proptest::prelude::*;
use topology::cluster::{ClusterView, Event, Labels, Protocol};
use topology::netfilter::policy::{self, FORWARD, Programmed};
use topology::netfilter::reconcile::{HeldChain, Present, plan_table};
use topology::netfilter::wire::Op;
use topology::netfilter::{Chain, Expr, Hook};
use topology::policy::{Endpoint, RuleSet, reference};

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The ports worth probing: the named ports' numbers, every edge of the generated ranges (and
/// one past), and the extremes.
fn probe_ports() -> BTreeSet<u16> {
    let mut out = BTreeSet::from([0, u16::MAX]);
    for p in PORTS {
        for span in SPANS {
            let last = p.saturating_add(span);
            out.extend([p - 1, p, last, last.saturating_add(1)]);
        }
    }
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The structural rules of a program: names within nftables' limits and unique, lookups
/// into its sets, jumps to chains made before the jumping one, verdicts last in their rule,
/// one base chain.
fn check_structure(p: &Programmed) -> Result<(), String> {
    let set_names: BTreeSet<&str> = p.sets.iter().map(|s| s.name.as_str()).collect();
    if set_names.len() != p.sets.len() {
        return Err("two sets share a name".to_owned());
    }
    let chain_names: BTreeSet<&str> = p.chains.iter().map(|c| c.name.as_str()).collect();
    if chain_names.len() != p.chains.len() {
        return Err("two chains share a name".to_owned());
    }
    for name in set_names.iter().chain(&chain_names) {
        if name.is_empty() || name.len() >= 256 {
            return Err(format!("name {name:?} beyond nftables' limits"));
        }
    }
    let bases: Vec<&Chain> = p.chains.iter().filter(|c| c.base.is_some()).collect();
    match bases.as_slice() {
        [c] if c.name == FORWARD && c.base.map(|b| b.hook) == Some(Hook::Forward) => {}
        _ => return Err(format!("base chains: {bases:?}")),
    }
    for (i, chain) in p.chains.iter().enumerate() {
        for rule in &chain.rules {
            let key = rule.key();
            if key.len() >= 256 {
                return Err(format!("{}: key {key} too long", chain.name));
            }
            for (j, expr) in rule.exprs.iter().enumerate() {
                let at = format!("{}/{} expression {j}", chain.name, rule.name);
                if let Expr::Lookup { set, .. } = expr
                    && !set_names.contains(set.as_str())
                {
                    return Err(format!("{at}: lookup in unknown set {set}"));
                }
                if let Expr::Jump(target) = expr {
                    match p.chains.iter().position(|c| &c.name == target) {
                        Some(k) if k < i => {}
                        other => return Err(format!("{at}: jump to {target} at {other:?}")),
                    }
                }
                let ends = matches!(expr, Expr::Jump(_) | Expr::Verdict(_));
                if ends && j + 1 != rule.exprs.len() {
                    return Err(format!("{at}: expressions after a verdict"));
                }
            }
        }
    }
    for chain in p.pod_chains.keys() {
        if !chain_names.contains(chain.as_str()) {
            return Err(format!("pod chain {chain} not programmed"));
        }
    }
    Ok(())
}

/// The node whose forward hook judges `end` (a pod policies can select, on a node).
fn judging_node<'a>(end: &Endpoint<'a>) -> Option<&'a str> {
    match end {
        Endpoint::Pod { pod, .. } if !pod.host_network => pod.node.as_deref(),
        Endpoint::Pod { .. } | Endpoint::Node { .. } | Endpoint::Host(_) => None,
    }
}

/// The first connection whose fate in the programmed hooks is not the reference's, described
/// (or an error of the program or the interpreter).
fn disagreement(
    view: &ClusterView,
    nodes: &BTreeMap<String, Vec<IpAddr>>,
    shape: Shape,
) -> Result<Option<String>, String> {
    let programs: BTreeMap<&str, (RuleSet, Programmed)> = nodes
        .iter()
        .map(|(name, ips)| {
            let rules = RuleSet::compile(view, name, ips);
            let programmed = policy::program(&rules);
            (name.as_str(), (rules, programmed))
        })
        .collect();
    for (node, (_, p)) in &programs {
        check_structure(p).map_err(|e| format!("{node}: {e}"))?;
    }
    let tables: BTreeMap<&str, Table<'_>> = programs
        .iter()
        .map(|(n, (_, p))| (*n, Table::new(&p.chains, &p.sets)))
        .collect();
    let ends = endpoints(view, nodes, shape);
    let ports = probe_ports();
    for src in &ends {
        for dst in &ends {
            if src.ip().is_ipv4() != dst.ip().is_ipv4() {
                continue;
            }
            let judges: BTreeSet<&str> = [src, dst].into_iter().filter_map(judging_node).collect();
            for protocol in PROTOCOLS {
                for &port in &ports {
                    let want = reference::allowed(view, *src, *dst, protocol, port);
                    let new = Packet {
                        saddr: src.ip(),
                        daddr: dst.ip(),
                        l4proto: protocol_number(protocol),
                        dport: port,
                        ct_state: CT_NEW,
                    };
                    let mut got = true;
                    let mut runs = Vec::new();
                    for (node, table) in &tables {
                        let run = table.run(FORWARD, &new)?;
                        if judges.contains(node) {
                            got &= run.accepted;
                            runs.push((*node, run));
                        } else if !run.accepted {
                            return Err(format!("{node} drops {new:?}, not its pods': {run:?}"));
                        }
                    }
                    if got != want {
                        let rules: Vec<&RuleSet> =
                            runs.iter().map(|(n, _)| &programs[n].0).collect();
                        return Ok(Some(format!(
                            "{src:?} -> {dst:?} {} {port}: reference {want}, nftables {got}\n\
                             runs: {runs:?}\nrules: {rules:#?}",
                            protocol.as_str()
                        )));
                    }
                    // The reply, and what else the connection brings, pass everywhere.
                    for ct_state in [CT_ESTABLISHED, CT_RELATED] {
                        let reply = Packet {
                            saddr: dst.ip(),
                            daddr: src.ip(),
                            dport: 40000,
                            ct_state,
                            ..new
                        };
                        for (node, table) in &tables {
                            let run = table.run(FORWARD, &reply)?;
                            if !run.accepted {
                                return Err(format!("{node} drops reply {reply:?}: {run:?}"));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(None)
}

type State = (
    BTreeMap<String, HeldChain>,
    BTreeMap<String, BTreeSet<Vec<u8>>>,
);

/// What the kernel holds, handles left out.
fn held(present: &Present) -> State {
    let chains = present
        .chains
        .iter()
        .map(|(n, (base, rules))| {
            let keys = rules.iter().map(|(_, k)| (0, k.clone())).collect();
            (n.clone(), (*base, keys))
        })
        .collect();
    (chains, present.sets.clone())
}

/// What `p` wants the kernel to hold, in [`held`]'s terms.
fn wanted(p: &Programmed) -> State {
    let chains = p
        .chains
        .iter()
        .map(|c| {
            let keys = c.rules.iter().map(|r| (0, Some(r.key()))).collect();
            (c.name.clone(), (c.base, keys))
        })
        .collect();
    let sets = p.sets.iter().map(|s| (s.name.clone(), s.keys())).collect();
    (chains, sets)
}

/// One change to a cluster.
#[derive(Clone, Debug)]
enum Mutation {
    Relabel(prop::sample::Index, Labels),
    Add(PodSpec),
    Remove(prop::sample::Index),
}

fn arb_mutation(shape: Shape) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<prop::sample::Index>(), arb_labels(POD_KEYS, POD_VALUES))
            .prop_map(|(i, l)| Mutation::Relabel(i, l)),
        1 => arb_pod(shape).prop_map(Mutation::Add),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
    ]
}

/// `view` changed by `m`, and the relabelled pod's node (`Some(None)`: not scheduled), if
/// the change is a relabelling.
fn mutate(view: &ClusterView, m: Mutation, shape: Shape) -> (ClusterView, Option<Option<String>>) {
    let mut changed = view.clone();
    let pods: Vec<_> = view.pods().collect();
    match m {
        Mutation::Relabel(which, labels) => {
            let mut pod = (*which.get(&pods)).clone();
            pod.labels = labels;
            let node = pod.node.clone();
            changed.handle_pods(Event::Applied(pod));
            (changed, Some(node))
        }
        Mutation::Add(spec) => {
            changed.handle_pods(Event::Applied(make_pod(pods.len() as u8, spec, shape)));
            (changed, None)
        }
        Mutation::Remove(which) => {
            let pod = which.get(&pods);
            changed.handle_pods(Event::Deleted {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            });
            (changed, None)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every node's programmed forward hook, run by the interpreter, lets a connection
    /// initiation through iff the reference allows it, and every reply through.
    #[test]
    fn programmed_hooks_agree_with_the_reference((view, nodes) in arb_cluster_with(DUAL_STACK)) {
        match disagreement(&view, &nodes, DUAL_STACK) {
            Ok(None) => {}
            Ok(Some(why)) => prop_assert!(false, "{why}\nview: {view:#?}"),
            Err(e) => prop_assert!(false, "broken program: {e}\nview: {view:#?}"),
        }
    }

    /// From the old cluster's table, one batch reaches exactly the new cluster's, and a second
    /// plan is empty; relabelling a pod of another node changes only set elements.
    #[test]
    fn one_batch_moves_the_table_to_the_next_cluster(
        (view, nodes) in arb_cluster_with(DUAL_STACK),
        m in arb_mutation(DUAL_STACK),
    ) {
        let (changed, relabelled) = mutate(&view, m, DUAL_STACK);
        for (node, ips) in &nodes {
            let old = policy::program(&RuleSet::compile(&view, node, ips));
            let new = policy::program(&RuleSet::compile(&changed, node, ips));
            let mut present = Present::default();
            let mut handle = 1;
            let ops = plan_table(&old.chains, &old.sets, &present);
            apply(&mut present, &ops, &mut handle);
            prop_assert_eq!(held(&present), wanted(&old));
            let ops = plan_table(&new.chains, &new.sets, &present);
            let remote = relabelled.as_ref().is_some_and(|n| n.as_deref() != Some(node.as_str()));
            if remote {
                let elements_only = ops
                    .iter()
                    .all(|o| matches!(o, Op::AddElements { .. } | Op::DelElements { .. }));
                prop_assert!(elements_only, "{}: a remote pod's relabelling plans {:?}", node, ops);
            }
            apply(&mut present, &ops, &mut handle);
            prop_assert_eq!(held(&present), wanted(&new));
            prop_assert!(plan_table(&new.chains, &new.sets, &present).is_empty());
        }
    }
}

/// A dual-stack pod of another node entering a set changes only that set's elements, even on
/// a node where nothing else is IPv6.
#[test]
fn a_remote_dual_stack_pod_entering_a_set_changes_only_elements() {
    use topology::cluster::{
        LabelSelector, Namespace, NetworkPolicy, Peer, Pod, Rule as PolicyRule,
    };
    let pod = |name: &str, node: &str, ips: &[&str]| Pod {
        namespace: "a".to_owned(),
        name: name.to_owned(),
        labels: Labels::new(),
        node: Some(node.to_owned()),
        ips: ips.iter().map(|s| ip(s)).collect(),
        host_network: false,
        ports: Vec::new(),
    };
    let web = LabelSelector {
        match_labels: [("app".to_owned(), "web".to_owned())].into(),
        match_expressions: Vec::new(),
    };
    let mut view = ClusterView::new();
    view.handle_namespaces(Event::Restarted(vec![Namespace {
        name: "a".to_owned(),
        labels: Labels::new(),
    }]));
    view.handle_pods(Event::Restarted(vec![
        pod("local", "n2", &["10.0.0.1"]),
        pod("remote", "n0", &["10.0.0.2", "fd00::2"]),
    ]));
    view.handle_policies(Event::Restarted(vec![NetworkPolicy {
        namespace: "a".to_owned(),
        name: "np".to_owned(),
        pod_selector: LabelSelector::everything(),
        ingress: Some(vec![PolicyRule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: web,
            }],
            ports: Vec::new(),
        }]),
        egress: None,
    }]));
    let mut changed = view.clone();
    let mut remote = view.pod("a", "remote").unwrap().clone();
    remote.labels.insert("app".to_owned(), "web".to_owned());
    changed.handle_pods(Event::Applied(remote));
    let node_ips = [ip("192.168.0.3")];
    let old = policy::program(&RuleSet::compile(&view, "n2", &node_ips));
    let new = policy::program(&RuleSet::compile(&changed, "n2", &node_ips));
    let mut present = Present::default();
    let mut handle = 1;
    let ops = plan_table(&old.chains, &old.sets, &present);
    apply(&mut present, &ops, &mut handle);
    let ops = plan_table(&new.chains, &new.sets, &present);
    assert!(
        ops.iter()
            .all(|o| matches!(o, Op::AddElements { .. } | Op::DelElements { .. })),
        "{ops:#?}"
    );
}
