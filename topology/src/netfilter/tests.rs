use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::masquerade::{self, MasqueradeSettings};
use super::reconcile::{Present, plan, plan_table};
use super::tunnels;
use super::wire::{self, Op, Reply};
use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn settings(enabled: bool, no_masq: &[&str]) -> MasqueradeSettings {
    MasqueradeSettings {
        pod_range: net("10.32.0.0/12"),
        enabled,
        no_masq_cidrs: no_masq.iter().map(|s| net(s)).collect(),
    }
}

#[test]
fn an_address_match_masks_the_prefix() {
    let e = match_addr(Addr::Source, CmpOp::Eq, &net("10.32.0.0/12"));
    assert_eq!(
        e,
        vec![
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 12,
                len: 4
            },
            Expr::Mask(vec![0xff, 0xf0, 0, 0]),
            Expr::Cmp(CmpOp::Eq, vec![10, 32, 0, 0]),
        ]
    );
    // A host address needs no mask; an IPv6 destination is read at offset 24.
    let e = match_addr(Addr::Destination, CmpOp::Neq, &net("192.0.2.1/32"));
    assert_eq!(e.len(), 2);
    let e = match_addr(Addr::Destination, CmpOp::Eq, &net("2001:db8::/33"));
    assert!(matches!(
        e[0],
        Expr::Payload {
            offset: 24,
            len: 16,
            ..
        }
    ));
    assert_eq!(
        e[1],
        Expr::Mask([vec![0xff; 4], vec![0x80], vec![0; 11]].concat())
    );
}

#[test]
fn the_masquerade_chain_returns_for_no_masq_cidrs_first() {
    let chain = masquerade::chain(&settings(true, &["203.0.113.0/24", "2001:db8::/32"]));
    assert_eq!(chain.name, "postrouting");
    assert_eq!(
        chain.base,
        Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: 100
        })
    );
    let names: Vec<&str> = chain.rules.iter().map(|r| r.name.as_str()).collect();
    // The IPv6 CIDR cannot match an IPv4 pod range and is left out.
    assert_eq!(names, ["no-masquerade 203.0.113.0/24", "masquerade"]);
    assert_eq!(
        chain.rules[0].exprs.last(),
        Some(&Expr::Verdict(Verdict::Return))
    );
    let masq = &chain.rules[1].exprs;
    assert_eq!(masq.last(), Some(&Expr::Masquerade));
    assert!(masq.contains(&Expr::Cmp(CmpOp::Neq, vec![10, 32, 0, 0])));
    // Off: the chain stays, empty.
    assert!(masquerade::chain(&settings(false, &[])).rules.is_empty());
}

#[test]
fn a_key_changes_with_the_rule_and_only_then() {
    let a = masquerade::chain(&settings(true, &[]));
    let b = masquerade::chain(&settings(true, &[]));
    assert_eq!(a.rules[0].key(), b.rules[0].key());
    let mut other = settings(true, &[]);
    other.pod_range = net("10.40.0.0/16");
    let c = masquerade::chain(&other);
    assert_ne!(a.rules[0].key(), c.rules[0].key());
    assert!(a.rules[0].key().starts_with("weft:masquerade:"));
}

/// Applies `ops` to a model of the kernel's table, as the kernel would (handles count up).
pub(super) fn apply(present: &mut Present, ops: &[Op], next_handle: &mut u64) {
    for op in ops {
        match op {
            Op::AddTable => present.table = true,
            Op::DelTable => *present = Present::default(),
            Op::AddChain(c) => {
                assert!(present.table, "chain added before its table");
                present
                    .chains
                    .entry(c.name.clone())
                    .or_insert((c.base, Vec::new()));
            }
            Op::DelChain(name) => {
                let (_, rules) = present
                    .chains
                    .remove(name)
                    .expect("deleting a missing chain");
                assert!(rules.is_empty(), "deleting chain {name} with rules in it");
            }
            Op::AddRule { chain, rule } => {
                let (_, rules) = present.chains.get_mut(chain).expect("rule's chain");
                rules.push((*next_handle, Some(rule.key())));
                *next_handle += 1;
            }
            Op::DelRule { chain, handle } => {
                let (_, rules) = present.chains.get_mut(chain).expect("rule's chain");
                let before = rules.len();
                rules.retain(|(h, _)| h != handle);
                assert_eq!(rules.len() + 1, before, "deleting a missing rule");
            }
            Op::AddSet(s) => {
                assert!(present.table, "set added before its table");
                present.sets.entry(s.name.clone()).or_default();
            }
            Op::DelSet(name) => {
                assert!(
                    present.sets.remove(name).is_some(),
                    "deleting a missing set"
                );
            }
            Op::AddElements { set, keys } => {
                let held = present.sets.get_mut(set).expect("elements' set");
                for k in keys {
                    assert!(held.insert(k.clone()), "adding an element twice");
                }
            }
            Op::AddJumps { set, entries } => {
                for (key, chain) in entries {
                    let held = present.sets.get_mut(set).expect("elements' set");
                    // The kernel refuses a key it holds already, whatever its chain.
                    assert!(
                        !held.iter().any(|id| id.starts_with(key)),
                        "adding a map key twice"
                    );
                    let mut id = key.clone();
                    id.extend_from_slice(chain.as_bytes());
                    held.insert(id);
                }
            }
            Op::DelElements { set, keys } => {
                let held = present.sets.get_mut(set).expect("elements' set");
                for k in keys {
                    // A map's element is known by its key alone.
                    let id = held.iter().find(|id| id.starts_with(k)).cloned();
                    assert!(
                        id.is_some_and(|id| held.remove(&id)),
                        "removing a missing element"
                    );
                }
            }
        }
    }
}

fn keys_of(present: &Present) -> BTreeMap<String, Vec<Option<String>>> {
    present
        .chains
        .iter()
        .map(|(n, (_, rules))| (n.clone(), rules.iter().map(|(_, k)| k.clone()).collect()))
        .collect()
}

#[test]
fn a_reconcile_from_nothing_builds_the_table_and_then_rests() {
    let wanted = vec![masquerade::chain(&settings(true, &["192.168.0.0/16"]))];
    let mut present = Present::default();
    let ops = plan(&wanted, &present);
    assert_eq!(ops[0], Op::AddTable);
    assert!(matches!(ops[1], Op::AddChain(_)));
    assert_eq!(ops.len(), 4);
    let mut handle = 1;
    apply(&mut present, &ops, &mut handle);
    assert!(plan(&wanted, &present).is_empty());
}

#[test]
fn a_changed_setting_replaces_the_chains_rules_in_one_batch() {
    let mut present = Present::default();
    let mut handle = 1;
    let before = vec![masquerade::chain(&settings(true, &[]))];
    let ops = plan(&before, &present);
    apply(&mut present, &ops, &mut handle);
    let after = vec![masquerade::chain(&settings(true, &["192.168.0.0/16"]))];
    let ops = plan(&after, &present);
    // The old rule goes and both new ones come, in the wanted order, without a chain rebuild.
    assert!(matches!(ops[0], Op::DelRule { handle: 1, .. }));
    assert_eq!(ops.len(), 3);
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::DelChain(_) | Op::AddChain(_)))
    );
    apply(&mut present, &ops, &mut handle);
    assert!(plan(&after, &present).is_empty());
}

fn arb_settings() -> impl Strategy<Value = MasqueradeSettings> {
    let cidr = (any::<[u8; 4]>(), 0_u8..=32).prop_map(|(a, p)| {
        IpNet::new(std::net::Ipv4Addr::from(a).into(), p).expect("prefix in range")
    });
    (
        any::<bool>(),
        proptest::collection::vec(cidr.clone(), 0..4),
        cidr,
    )
        .prop_map(|(enabled, no_masq_cidrs, pod_range)| MasqueradeSettings {
            pod_range,
            enabled,
            no_masq_cidrs,
        })
}

proptest! {
    /// Whatever the table held (another version's rules, rules altered by hand, stray
    /// chains), one plan brings it to exactly what is wanted, and a second plan is empty.
    #[test]
    fn one_plan_reaches_the_wanted_state(
        old in arb_settings(),
        new in arb_settings(),
        stray_rules in proptest::collection::vec(any::<u8>(), 0..3),
        stray_chain in any::<bool>(),
    ) {
        let mut present = Present::default();
        let mut handle = 1;
        let ops = plan(&[masquerade::chain(&old)], &present);
        apply(&mut present, &ops, &mut handle);
        for (i, tag) in stray_rules.into_iter().enumerate() {
            let (_, rules) = present.chains.get_mut("postrouting").expect("chain");
            // Handles are unique in a table.
            rules.insert(0, (1000 + i as u64, Some(format!("hand-made {tag}"))));
        }
        if stray_chain {
            present.chains.insert("old".into(), (None, vec![(2000, None)]));
        }
        let wanted = vec![masquerade::chain(&new)];
        let ops = plan(&wanted, &present);
        apply(&mut present, &ops, &mut handle);
        let want: BTreeMap<_, _> = wanted
            .iter()
            .map(|c| (c.name.clone(), c.rules.iter().map(|r| Some(r.key())).collect::<Vec<_>>()))
            .collect();
        prop_assert_eq!(keys_of(&present), want);
        prop_assert!(plan(&wanted, &present).is_empty());
    }

    /// The decoder never panics, whatever the bytes.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_replies(&bytes);
    }

    /// A dump of the rules weft wrote reads back with their keys, in order.
    #[test]
    fn a_rule_dump_reads_back(s in arb_settings()) {
        let chain = masquerade::chain(&s);
        let bytes = wire::encode_rule_dump(std::slice::from_ref(&chain), 7);
        let replies = wire::decode_replies(&bytes).expect("decodes");
        let keys: Vec<_> = replies
            .iter()
            .map(|r| {
                let Reply::Rule(r) = r else { panic!("unexpected {r:?}") };
                (r.chain.clone(), r.key.clone())
            })
            .collect();
        let want: Vec<_> = chain.rules.iter().map(|r| (chain.name.clone(), Some(r.key()))).collect();
        prop_assert_eq!(keys, want);
    }

    /// A truncated dump is an error, never a short list read as complete.
    #[test]
    fn a_truncated_dump_is_an_error(s in arb_settings(), cut in 1_usize..64) {
        let chain = masquerade::chain(&s);
        prop_assume!(!chain.rules.is_empty());
        let bytes = wire::encode_rule_dump(std::slice::from_ref(&chain), 1);
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(wire::decode_replies(&bytes[..bytes.len() - cut]).is_err());
    }
}

#[test]
fn a_batch_is_framed_by_begin_and_end_and_every_op_asks_for_an_ack() {
    let chain = masquerade::chain(&settings(true, &[]));
    let ops = plan(std::slice::from_ref(&chain), &Present::default());
    let (bytes, seqs) = wire::encode_batch(&ops, 100);
    assert_eq!(seqs, (101..101 + ops.len() as u32).collect::<Vec<_>>());
    // Walk the messages: type and flags of each.
    let mut at = 0;
    let mut kinds = Vec::new();
    while at < bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]);
        let flags = u16::from_ne_bytes([bytes[at + 6], bytes[at + 7]]);
        kinds.push((kind, flags & 0x4 != 0));
        assert_eq!(len % 4, 0);
        at += len;
    }
    assert_eq!(kinds.first(), Some(&(16, false)));
    assert_eq!(kinds.last(), Some(&(17, false)));
    assert!(
        kinds[1..kinds.len() - 1]
            .iter()
            .all(|(k, ack)| k >> 8 == 10 && *ack)
    );
}

#[test]
fn acks_errors_and_chains_decode() {
    // NLMSG_ERROR with -EPERM for seq 5.
    let mut b = Vec::new();
    b.extend_from_slice(&36_u32.to_ne_bytes());
    b.extend_from_slice(&2_u16.to_ne_bytes());
    b.extend_from_slice(&0_u16.to_ne_bytes());
    b.extend_from_slice(&5_u32.to_ne_bytes());
    b.extend_from_slice(&0_u32.to_ne_bytes());
    b.extend_from_slice(&(-1_i32).to_ne_bytes());
    b.extend_from_slice(&[0; 16]); // the original header
    let replies = wire::decode_replies(&b).expect("decodes");
    assert_eq!(replies, vec![Reply::Ack { seq: 5, error: -1 }]);
}

#[test]
fn a_chain_message_reads_back_with_its_hook() {
    let chain = masquerade::chain(&settings(true, &[]));
    let (bytes, _) = wire::encode_batch(&[Op::AddTable, Op::AddChain(chain.clone())], 1);
    let replies = wire::decode_replies(&bytes).expect("decodes");
    let chains: Vec<_> = replies
        .into_iter()
        .filter_map(|r| {
            if let Reply::Chain(c) = r {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].name, "postrouting");
    assert_eq!(chains[0].table, TABLE);
    assert_eq!(chains[0].family, wire::NFPROTO_INET);
    assert_eq!(chains[0].base, chain.base);
    assert_eq!(chains[0].policy, Some(1));
}

fn peers(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs
        .iter()
        .map(|a| a.parse().expect("test address"))
        .collect()
}

#[test]
fn the_tunnel_filter_drops_non_peers_on_both_ports_and_both_families() {
    let chain = tunnels::chain(6783, 6784);
    assert_eq!(chain.rules.len(), 4);
    assert_eq!(chain.base.map(|b| b.hook), Some(Hook::Input));
    for rule in &chain.rules {
        assert_eq!(rule.exprs.last(), Some(&Expr::Verdict(Verdict::Drop)));
        assert!(
            rule.exprs
                .iter()
                .any(|e| matches!(e, Expr::Lookup { invert: true, .. }))
        );
    }
    let ports: Vec<Vec<u8>> = chain
        .rules
        .iter()
        .filter_map(|r| {
            r.exprs.iter().find_map(|e| {
                let Expr::Cmp(CmpOp::Eq, v) = e else {
                    return None;
                };
                (v.len() == 2).then(|| v.clone())
            })
        })
        .collect();
    assert_eq!(
        ports,
        [
            vec![0x1a, 0x7f],
            vec![0x1a, 0x80],
            vec![0x1a, 0x7f],
            vec![0x1a, 0x80]
        ]
    );
    let sets = tunnels::sets(&peers(&["192.0.2.1", "2001:db8::1", "192.0.2.2"]));
    assert_eq!(sets[0].keys().len(), 2);
    assert_eq!(sets[1].keys().len(), 1);
}

#[test]
fn a_peer_change_touches_only_the_sets_elements() {
    let chain = tunnels::chain(6783, 6784);
    let mut present = Present::default();
    let mut handle = 1;
    let before = tunnels::sets(&peers(&["192.0.2.1", "192.0.2.2"]));
    let ops = plan_table(std::slice::from_ref(&chain), &before, &present);
    // Sets come before the rules that look into them.
    let first_rule = ops
        .iter()
        .position(|o| matches!(o, Op::AddRule { .. }))
        .expect("rules");
    let last_set = ops
        .iter()
        .rposition(|o| matches!(o, Op::AddSet(_) | Op::AddElements { .. }))
        .expect("sets");
    assert!(last_set < first_rule, "{ops:?}");
    apply(&mut present, &ops, &mut handle);
    assert!(plan_table(std::slice::from_ref(&chain), &before, &present).is_empty());
    let after = tunnels::sets(&peers(&["192.0.2.2", "192.0.2.3"]));
    let ops = plan_table(std::slice::from_ref(&chain), &after, &present);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(
        ops.iter()
            .all(|o| matches!(o, Op::AddElements { .. } | Op::DelElements { .. }))
    );
    apply(&mut present, &ops, &mut handle);
    assert!(plan_table(std::slice::from_ref(&chain), &after, &present).is_empty());
    // Sets no longer wanted go after the rules that used them.
    let ops = plan_table(&[], &[], &present);
    let last_rule_del = ops
        .iter()
        .rposition(|o| matches!(o, Op::DelRule { .. }))
        .expect("rule deletions");
    let first_set_del = ops
        .iter()
        .position(|o| matches!(o, Op::DelSet(_)))
        .expect("set deletions");
    assert!(last_rule_del < first_set_del, "{ops:?}");
    apply(&mut present, &ops, &mut handle);
    assert!(present.sets.is_empty() && present.chains.is_empty());
}

#[test]
fn set_messages_read_back() {
    let sets = tunnels::sets(&peers(&["192.0.2.1", "192.0.2.7"]));
    let ops = vec![
        Op::AddSet(sets[0].clone()),
        Op::AddElements {
            set: sets[0].name.clone(),
            keys: sets[0].keys().into_iter().collect(),
        },
    ];
    let (bytes, _) = wire::encode_batch(&ops, 1);
    let replies = wire::decode_replies(&bytes).expect("decodes");
    assert!(replies.contains(&Reply::Set {
        table: TABLE.into(),
        name: "peers4".into()
    }));
    assert!(replies.contains(&Reply::Elements {
        table: TABLE.into(),
        set: "peers4".into(),
        keys: vec![vec![192, 0, 2, 1], vec![192, 0, 2, 7]],
    }));
}

proptest! {
    /// Whatever peers come and go, one plan brings the sets to exactly the peers known, never
    /// re-making a set or a rule once they exist.
    #[test]
    fn peer_sets_follow_the_peers(
        steps in proptest::collection::vec(proptest::collection::btree_set(any::<[u8; 4]>(), 0..6), 1..6),
    ) {
        let chain = tunnels::chain(6783, 6784);
        let mut present = Present::default();
        let mut handle = 1;
        for (i, step) in steps.iter().enumerate() {
            let addrs = step.iter().map(|a| IpAddr::from(*a)).collect();
            let sets = tunnels::sets(&addrs);
            let ops = plan_table(std::slice::from_ref(&chain), &sets, &present);
            if i > 0 {
                prop_assert!(ops.iter().all(|o| matches!(o, Op::AddElements { .. } | Op::DelElements { .. })), "{:?}", ops);
            }
            apply(&mut present, &ops, &mut handle);
            prop_assert_eq!(present.sets.get("peers4").cloned().unwrap_or_default(), sets[0].keys());
            prop_assert!(plan_table(std::slice::from_ref(&chain), &sets, &present).is_empty());
        }
    }
}
