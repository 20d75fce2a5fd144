//! Fuzzes the Kubernetes API decoders (`--kube-peers`): the node list and one watch line. No
//! input panics; whatever decodes holds only valid names and versions; and the reconcile of any
//! decoded node set never dials this node and settles once its actions are applied.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use topology::kube::{
    Action, Discovery, MAX_RESOURCE_VERSION, WatchEvent, decode_node_list, decode_watch_event,
    reconcile, valid_node_name,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(WatchEvent::Added { node, resource_version }
    | WatchEvent::Modified { node, resource_version }
    | WatchEvent::Deleted { node, resource_version }) = decode_watch_event(data)
    {
        assert!(valid_node_name(&node.name));
        assert!(!resource_version.is_empty() && resource_version.len() <= MAX_RESOURCE_VERSION);
    }
    if let Ok(list) = decode_node_list(data) {
        assert!(list.resource_version.len() <= MAX_RESOURCE_VERSION);
        let nodes: BTreeMap<_, _> = list.nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
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
    }
});
