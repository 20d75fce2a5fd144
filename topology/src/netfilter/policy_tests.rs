//! Policy enforcement's part of the table before the first sync, when off, and beside the
//! other owners' chains.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::masquerade::{self, MasqueradeSettings};
use super::policy::{self, FORWARD, Programmed, Want, hold, owns, program, resolve};
use super::reconcile::{Present, plan_keeping, plan_table};
use super::tests::apply;
use super::wire::Op;
use super::*;
use crate::policy::{Allow, PodRules, PortMatch, RuleSet};

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// One node, one pod isolated for ingress from a set of one pod.
fn rules() -> RuleSet {
    RuleSet {
        node: "n0".to_owned(),
        node_addresses: [ip("192.168.0.1")].into(),
        sets: [(
            "a/np/ingress/0/0".to_owned(),
            [net("10.32.0.9/32")].into_iter().collect(),
        )]
        .into(),
        pods: [(
            ("a".to_owned(), "p".to_owned()),
            PodRules {
                ips: vec![ip("10.32.0.2")],
                ingress: Some(vec![Allow {
                    peer: Some("a/np/ingress/0/0".to_owned()),
                    ports: PortMatch::Any,
                }]),
                egress: None,
            },
        )]
        .into(),
    }
}

fn masq() -> Chain {
    masquerade::chain(&MasqueradeSettings {
        pod_range: net("10.32.0.0/12"),
        enabled: true,
        no_masq_cidrs: Vec::new(),
    })
}

/// The kernel's table after programming `chains` and `sets` from nothing.
fn programmed(chains: &[Chain], sets: &[Set]) -> Present {
    let mut present = Present::default();
    let mut handle = 1;
    let ops = plan_table(chains, sets, &present);
    apply(&mut present, &ops, &mut handle);
    present
}

fn names(ops: &[Op]) -> BTreeSet<&str> {
    ops.iter()
        .filter_map(|op| match op {
            Op::AddTable | Op::DelTable => None,
            Op::AddChain(c) => Some(c.name.as_str()),
            Op::AddSet(s) => Some(s.name.as_str()),
            Op::DelChain(name) | Op::DelSet(name) => Some(name.as_str()),
            Op::AddRule { chain, .. } | Op::DelRule { chain, .. } => Some(chain.as_str()),
            Op::AddElements { set, .. }
            | Op::AddJumps { set, .. }
            | Op::DelElements { set, .. } => Some(set.as_str()),
        })
        .collect()
}

#[test]
fn pending_keeps_a_present_policy_chain_as_it_is() {
    let p = program(&rules());
    let mut chains = p.chains.clone();
    chains.push(masq());
    let present = programmed(&chains, &p.sets);
    let pending = Want::Pending {
        pod_range: net("10.32.0.0/12"),
    };
    let got = resolve(pending, &present);
    assert!(got.keep_present);
    assert!(got.chains.is_empty() && got.sets.is_empty() && got.pod_chains.is_empty());
    // What the router then plans with the other owners' chains leaves policy's alone.
    let ops = plan_keeping(&[masq()], &[], &present, owns);
    assert!(ops.is_empty(), "{ops:?}");
}

#[test]
fn pending_holds_the_pods_when_no_policy_chain_is_present() {
    let pod_range = net("10.32.0.0/12");
    // A table without a policy chain (the masquerade chain only) is no reason to keep.
    for present in [Present::default(), programmed(&[masq()], &[])] {
        let got = resolve(Want::Pending { pod_range }, &present);
        assert!(!got.keep_present);
        assert_eq!(got.chains, vec![hold(pod_range)]);
        assert!(got.sets.is_empty());
    }
    let chain = hold(pod_range);
    assert_eq!(chain.name, FORWARD);
    assert_eq!(chain.base.map(|b| b.hook), Some(Hook::Forward));
    let drops: Vec<&str> = chain
        .rules
        .iter()
        .filter(|r| r.exprs.last() == Some(&Expr::Verdict(Verdict::Drop)))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(drops, ["hold-from", "hold-to"]);
}

#[test]
fn off_wants_nothing_and_removes_what_policy_left() {
    let p = program(&rules());
    let present = programmed(&p.chains, &p.sets);
    let got = resolve(Want::Off, &present);
    assert_eq!(got, Programmed::default());
    let mut present = present;
    let ops = plan_table(&got.chains, &got.sets, &present);
    apply(&mut present, &ops, &mut 1000);
    assert!(present.chains.is_empty() && present.sets.is_empty());
}

#[test]
fn rules_are_programmed_whatever_is_present() {
    let r = rules();
    let pending = programmed(&[hold(net("10.32.0.0/12"))], &[]);
    for present in [Present::default(), pending] {
        assert_eq!(resolve(Want::Rules(&r), &present), program(&r));
    }
}

#[test]
fn plan_keeping_leaves_kept_names_alone() {
    let p = program(&rules());
    let mut chains = p.chains.clone();
    chains.push(masq());
    let mut present = programmed(&chains, &p.sets);
    present
        .chains
        .insert("stray".to_owned(), (None, vec![(9000, None)]));
    present.sets.insert("stray-set".to_owned(), BTreeSet::new());
    let ops = plan_keeping(&[masq()], &[], &present, owns);
    let touched = names(&ops);
    assert_eq!(touched, BTreeSet::from(["stray", "stray-set"]), "{ops:?}");
    assert!(touched.iter().all(|n| !owns(n)));
    let before = present.clone();
    apply(&mut present, &ops, &mut 1000);
    let policy_part = |p: &Present| {
        let chains: BTreeMap<_, _> = p.chains.iter().filter(|(n, _)| owns(n)).collect();
        let sets: BTreeMap<_, _> = p.sets.iter().filter(|(n, _)| owns(n)).collect();
        format!("{chains:?} {sets:?}")
    };
    assert_eq!(policy_part(&present), policy_part(&before));
    assert!(!present.chains.contains_key("stray") && !present.sets.contains_key("stray-set"));
    // Without keeping, the same plan removes policy's chains and sets too.
    let ops = plan_table(&[masq()], &[], &before);
    let touched = names(&ops);
    assert!(touched.contains(FORWARD) && touched.iter().any(|n| n.starts_with(policy::PREFIX)));
}
