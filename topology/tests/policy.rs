//! The compiled per-node rules against the reference evaluator: on random small clusters and
//! random policies, every node compiles its [`RuleSet`], and the combined verdict of the
//! compiled state agrees with [`reference::allowed`] for every ordered pair of endpoints
//! (pods, nodes, external hosts), a few ports and both TCP and UDP.

#![allow(clippy::unwrap_used)] // test helpers

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::policy_gen::{
    POD_KEYS, POD_VALUES, PORTS, V4, arb_cluster, arb_labels, cidr, endpoints,
};
use ipnet::IpNet;
use proptest::prelude::*;
use topology::cluster::{ClusterView, Event, Protocol};
use topology::policy::compile::subtract;
use topology::policy::{Change, ClusterRules, RuleSet, reference};

const PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

/// The first disagreement between the compiled rules and the reference, described.
fn disagreement(view: &ClusterView, nodes: &BTreeMap<String, Vec<IpAddr>>) -> Option<String> {
    let rules = ClusterRules::compile(view, nodes);
    let ends = endpoints(view, nodes, V4);
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
