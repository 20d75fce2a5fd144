//! The nf_tables netlink decoder (dumps and acknowledgements the kernel sends weft): never
//! panics, and whatever it accepts feeds the reconcile plan without panicking either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::netfilter::masquerade::{self, MasqueradeSettings};
use topology::netfilter::reconcile::{Present, plan, plan_table};
use topology::netfilter::tunnels;
use topology::netfilter::wire::{Reply, decode_replies};

fuzz_target!(|data: &[u8]| {
    let Ok(replies) = decode_replies(data) else {
        return;
    };
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    let mut sets = std::collections::BTreeMap::new();
    for r in replies {
        match r {
            Reply::Chain(c) => chains.push(c),
            Reply::Rule(r) => rules.push(r),
            Reply::Elements { set, keys, .. } => {
                sets.entry(set).or_insert_with(std::collections::BTreeSet::new).extend(keys);
            }
            Reply::Set { .. }
            | Reply::Ack { .. }
            | Reply::Done { .. }
            | Reply::Generation(_)
            | Reply::Other => {}
        }
    }
    let present = Present::from_dumps(&chains, &rules).with_sets(sets);
    let wanted = [masquerade::chain(&MasqueradeSettings {
        pod_range: "10.32.0.0/12".parse().expect("range"),
        enabled: true,
        no_masq_cidrs: Vec::new(),
    })];
    let _ = plan(&wanted, &present);
    let peers = ["192.0.2.1".parse().expect("address")].into_iter().collect();
    let _ = plan_table(&[tunnels::chain(6783, 6784)], &tunnels::sets(&peers), &present);
});
