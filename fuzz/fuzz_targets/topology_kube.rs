//! Fuzzes Kubernetes node discovery's pure half (`--kube-peers`): nodes built from arbitrary
//! names and status addresses, and the reconcile of the node set they make. No input panics;
//! whatever is accepted holds only valid names; and the reconcile never dials this node and
//! settles once its actions are applied.
//!
//! The input is text: one node per line, `name type=address type=address ...`.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use topology::kube::{Action, Discovery, MAX_NODE_ADDRESSES, Node, reconcile, valid_node_name};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut nodes = BTreeMap::new();
    for line in text.lines().take(64) {
        let mut words = line.split(' ');
        let name = words.next().unwrap_or_default();
        let addresses: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
        if let Ok(node) = Node::from_status(name, addresses) {
            assert!(valid_node_name(&node.name));
            assert!(node.addresses.len() <= MAX_NODE_ADDRESSES);
            nodes.insert(node.name.clone(), node);
        }
    }
    let me = nodes.keys().next().cloned().unwrap_or_default();
    let mut d = Discovery::default();
    d.observe(&me, &nodes);
    for a in reconcile(&me, 6783, &nodes, &d) {
        match a {
            Action::Connect { node, addr } => {
                assert_ne!(node, me);
                d.connected(&node, addr);
            }
            Action::Forget { node, addr } => d.forgotten(&node, addr),
            Action::RmPeer { node } => d.reclaimed(&node),
        }
    }
    assert!(reconcile(&me, 6783, &nodes, &d).is_empty());
});
