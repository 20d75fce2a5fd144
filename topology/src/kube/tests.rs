use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;

/// A node as the Kubernetes API reference shows it (trimmed to what a kubelet reports).
fn node_json(name: &str, rv: &str, ip: &str) -> String {
    format!(
        r#"{{"kind":"Node","apiVersion":"v1","metadata":{{"name":"{name}","uid":"0f1e","resourceVersion":"{rv}","labels":{{"kubernetes.io/hostname":"{name}"}}}},"spec":{{"podCIDR":"10.244.0.0/24"}},"status":{{"addresses":[{{"type":"Hostname","address":"{name}"}},{{"type":"InternalIP","address":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
    )
}

fn node(name: &str, ip: &str) -> Node {
    let ip: IpAddr = ip.parse().unwrap();
    Node {
        name: name.to_owned(),
        internal_ip: Some(ip),
        addresses: vec![ip],
    }
}

fn nodes(list: &[(&str, &str)]) -> BTreeMap<String, Node> {
    list.iter()
        .map(|(n, ip)| ((*n).to_owned(), node(n, ip)))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn node_list_decodes() {
    let body = format!(
        r#"{{"kind":"NodeList","apiVersion":"v1","metadata":{{"resourceVersion":"4711"}},"items":[{},{}]}}"#,
        node_json("n1", "10", "192.0.2.1"),
        node_json("n2", "11", "192.0.2.2")
    );
    let list = decode_node_list(body.as_bytes()).unwrap();
    assert_eq!(list.resource_version, "4711");
    assert_eq!(
        list.nodes,
        [node("n1", "192.0.2.1"), node("n2", "192.0.2.2")]
    );
    assert_eq!(list.skipped, 0);
}

#[test]
fn node_list_edge_cases() {
    // `items: null` is how an empty list may come.
    let list =
        decode_node_list(br#"{"kind":"NodeList","metadata":{"resourceVersion":"1"},"items":null}"#)
            .unwrap();
    assert!(list.nodes.is_empty());
    // A bad name is skipped, not fatal; a node without InternalIP has no address.
    let body = r#"{"kind":"NodeList","metadata":{"resourceVersion":"2"},"items":[
        {"metadata":{"name":"Bad Name"}},
        {"metadata":{"name":"n3"},"status":{"addresses":[{"type":"ExternalIP","address":"203.0.113.9"}]}},
        {"metadata":{"name":"n4"},"status":{"addresses":[
            {"type":"InternalIP","address":"2001:db8::4"},{"type":"InternalIP","address":"192.0.2.4"}]}}]}"#;
    let list = decode_node_list(body.as_bytes()).unwrap();
    assert_eq!(list.skipped, 1);
    assert_eq!(list.nodes[0].internal_ip, None);
    // ... but its ExternalIP is still an address its router may dial from.
    assert_eq!(list.nodes[0].addresses, [ip("203.0.113.9")]);
    // Dual stack: IPv4 first, whatever the order; every address kept, sorted.
    assert_eq!(list.nodes[1].internal_ip, Some(ip("192.0.2.4")));
    assert_eq!(
        list.nodes[1].addresses,
        [ip("192.0.2.4"), ip("2001:db8::4")]
    );
    for bad in [
        &br#"{"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[]}"#[..],
        br#"{"kind":"NodeList","items":[]}"#,
        br#"{"kind":"NodeList","metadata":{"resourceVersion":"a b"}}"#,
        br#"[1,2]"#,
        b"",
    ] {
        assert!(
            decode_node_list(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn watch_events_decode() {
    let line = format!(
        r#"{{"type":"ADDED","object":{}}}"#,
        node_json("n1", "12", "192.0.2.1")
    );
    assert_eq!(
        decode_watch_event(line.as_bytes()).unwrap(),
        WatchEvent::Added {
            node: node("n1", "192.0.2.1"),
            resource_version: "12".into()
        }
    );
    let line = format!(
        r#"{{"type":"DELETED","object":{}}}"#,
        node_json("n1", "13", "192.0.2.1")
    );
    assert!(matches!(
        decode_watch_event(line.as_bytes()).unwrap(),
        WatchEvent::Deleted { .. }
    ));
    assert_eq!(
        decode_watch_event(
            br#"{"type":"BOOKMARK","object":{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"99"}}}"#
        )
        .unwrap(),
        WatchEvent::Bookmark {
            resource_version: "99".into()
        }
    );
    assert_eq!(
        decode_watch_event(
            br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (52)","reason":"Expired","code":410}}"#
        )
        .unwrap(),
        WatchEvent::Error {
            code: 410,
            message: "Expired: too old resource version: 1 (52)".into()
        }
    );
    for bad in [
        &br#"{"type":"RENAMED","object":{}}"#[..],
        br#"{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"p","resourceVersion":"1"}}}"#,
        br#"{"type":"ADDED","object":{"metadata":{"name":"n1"}}}"#,
        br#"{"type":"BOOKMARK","object":{"metadata":{}}}"#,
        br#"{"object":{}}"#,
    ] {
        assert!(decode_watch_event(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn node_names() {
    for good in ["n1", "worker-1.example.com", "a"] {
        assert!(valid_node_name(good), "{good}");
    }
    let long = "a".repeat(64);
    for bad in ["", "Upper", "-a", "a-", "a..b", "a b", long.as_str()] {
        assert!(!valid_node_name(bad), "{bad}");
    }
}

#[test]
fn reconcile_dials_every_other_node() {
    let cluster = nodes(&[
        ("n1", "192.0.2.1"),
        ("n2", "192.0.2.2"),
        ("n3", "192.0.2.3"),
    ]);
    let mut d = Discovery::default();
    d.observe("n1", &cluster);
    let plan = reconcile("n1", 6783, &cluster, &d);
    assert_eq!(
        plan,
        [
            Action::Connect {
                node: "n2".into(),
                addr: sa("192.0.2.2:6783")
            },
            Action::Connect {
                node: "n3".into(),
                addr: sa("192.0.2.3:6783")
            },
        ]
    );
    for a in &plan {
        if let Action::Connect { node, addr } = a {
            d.connected(node, *addr);
        }
    }
    assert!(reconcile("n1", 6783, &cluster, &d).is_empty(), "settled");
}

#[test]
fn reconcile_forgets_and_reclaims_deleted_nodes_on_the_reclaimer_only() {
    let before = nodes(&[
        ("n1", "192.0.2.1"),
        ("n2", "192.0.2.2"),
        ("n3", "192.0.2.3"),
    ]);
    let after = nodes(&[("n1", "192.0.2.1"), ("n2", "192.0.2.2")]);
    for (me, reclaims) in [("n1", true), ("n2", false)] {
        let mut d = Discovery::default();
        d.observe(me, &before);
        for n in before.values().filter(|n| n.name != me) {
            d.connected(&n.name, SocketAddr::new(n.internal_ip.unwrap(), 6783));
        }
        d.observe(me, &after);
        let plan = reconcile(me, 6783, &after, &d);
        let mut want = vec![Action::Forget {
            node: "n3".into(),
            addr: sa("192.0.2.3:6783"),
        }];
        if reclaims {
            want.push(Action::RmPeer { node: "n3".into() });
        }
        assert_eq!(plan, want, "{me}");
        d.forgotten("n3", sa("192.0.2.3:6783"));
        // An rmpeer that has not succeeded is planned again; once done, never.
        assert_eq!(
            reconcile(me, 6783, &after, &d).len(),
            usize::from(reclaims),
            "{me}"
        );
        d.reclaimed("n3");
        assert!(reconcile(me, 6783, &after, &d).is_empty(), "{me}");
    }
}

#[test]
fn reconcile_moves_a_node_whose_address_changed_and_cancels_reclaim_of_a_returning_node() {
    let mut d = Discovery::default();
    let c1 = nodes(&[("n1", "192.0.2.1"), ("n2", "192.0.2.2")]);
    d.observe("n1", &c1);
    d.connected("n2", sa("192.0.2.2:6783"));
    let c2 = nodes(&[("n1", "192.0.2.1"), ("n2", "192.0.2.22")]);
    d.observe("n1", &c2);
    assert_eq!(
        reconcile("n1", 6783, &c2, &d),
        [
            Action::Forget {
                node: "n2".into(),
                addr: sa("192.0.2.2:6783")
            },
            Action::Connect {
                node: "n2".into(),
                addr: sa("192.0.2.22:6783")
            },
        ]
    );
    // n2 deleted, then back before its reclaim succeeded: no rmpeer.
    d.observe("n1", &nodes(&[("n1", "192.0.2.1")]));
    assert!(d.unreclaimed.contains("n2"));
    d.observe("n1", &c2);
    assert!(d.unreclaimed.is_empty());
    // A node without an address is not dialled; one that loses its address is forgotten.
    let mut c3 = c2.clone();
    c3.get_mut("n2").unwrap().internal_ip = None;
    d.connected("n2", sa("192.0.2.22:6783"));
    assert_eq!(
        reconcile("n1", 6783, &c3, &d),
        [Action::Forget {
            node: "n2".into(),
            addr: sa("192.0.2.22:6783")
        }]
    );
    // Ourselves: never dialled, never reclaimed.
    let mut d = Discovery::default();
    d.observe("n1", &c1);
    d.observe("n1", &nodes(&[("n2", "192.0.2.2")]));
    assert!(d.unreclaimed.is_empty());
}

fn arb_cluster() -> impl Strategy<Value = BTreeMap<String, Node>> {
    proptest::collection::btree_map(
        (0u8..8).prop_map(|i| format!("n{i}")),
        proptest::option::of(0u8..4),
        0..8,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(name, ip)| {
                let internal_ip = ip.map(|i| IpAddr::from([192, 0, 2, i]));
                (
                    name.clone(),
                    Node {
                        name,
                        internal_ip,
                        addresses: internal_ip.into_iter().collect(),
                    },
                )
            })
            .collect()
    })
}

proptest! {
    /// Whatever sequence of cluster states, applying every planned action (as if the router
    /// did it) converges: the next plan is empty but for rmpeers that have not been done, and
    /// the dialled set is exactly the other nodes with addresses.
    #[test]
    fn reconcile_converges(states in proptest::collection::vec(arb_cluster(), 1..6), me in (0u8..8).prop_map(|i| format!("n{i}"))) {
        let mut d = Discovery::default();
        for cluster in &states {
            d.observe(&me, cluster);
            let plan = reconcile(&me, 6783, cluster, &d);
            for a in &plan {
                match a {
                    Action::Forget { node, addr } => d.forgotten(node, *addr),
                    Action::Connect { node, addr } => {
                        prop_assert!(node != &me);
                        d.connected(node, *addr);
                    }
                    Action::RmPeer { node } => {
                        prop_assert!(!cluster.contains_key(node));
                        prop_assert!(is_reclaimer(&me, cluster));
                        d.reclaimed(node);
                    }
                }
            }
            prop_assert!(reconcile(&me, 6783, cluster, &d).is_empty());
            let want: BTreeMap<String, SocketAddr> = cluster
                .values()
                .filter(|n| n.name != me)
                .filter_map(|n| n.internal_ip.map(|ip| (n.name.clone(), SocketAddr::new(ip, 6783))))
                .collect();
            prop_assert_eq!(&d.dialled, &want);
        }
    }

    /// The decoders never panic, and a list they accept keeps its version.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_watch_event(&bytes);
        if let Ok(list) = decode_node_list(&bytes) {
            prop_assert!(!list.resource_version.is_empty());
        }
    }

    /// Generated nodes round-trip through the JSON the API server sends.
    #[test]
    fn generated_events_decode(name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", rv in 1u64.., ip in any::<[u8; 4]>(), kind in prop_oneof![Just("ADDED"), Just("MODIFIED"), Just("DELETED")]) {
        let ip = IpAddr::from(ip);
        let line = format!(r#"{{"type":"{kind}","object":{}}}"#, node_json(&name, &rv.to_string(), &ip.to_string()));
        let ev = decode_watch_event(line.as_bytes()).unwrap();
        let (WatchEvent::Added { node, resource_version } | WatchEvent::Modified { node, resource_version } | WatchEvent::Deleted { node, resource_version }) = ev else {
            panic!("{ev:?}");
        };
        prop_assert_eq!(node, Node { name, internal_ip: Some(ip), addresses: vec![ip] });
        prop_assert_eq!(resource_version, rv.to_string());
    }
}
