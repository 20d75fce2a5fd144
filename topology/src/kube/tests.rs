use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;

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
fn a_node_from_its_status_addresses() {
    let n = Node::from_status(
        "n1",
        [
            ("Hostname", "n1"),
            ("InternalIP", "2001:db8::1"),
            ("InternalIP", "not an address"),
            ("InternalIP", "192.0.2.1"),
            ("ExternalIP", "203.0.113.9"),
            ("ExternalIP", "::ffff:192.0.2.1"),
        ],
    )
    .unwrap();
    // IPv4 is dialled first; a v4-mapped duplicate is kept once.
    assert_eq!(n.internal_ip, Some(ip("192.0.2.1")));
    assert_eq!(
        n.addresses,
        [ip("192.0.2.1"), ip("203.0.113.9"), ip("2001:db8::1")]
    );
    let none = Node::from_status("n2", [("ExternalIP", "203.0.113.2")]).unwrap();
    assert_eq!(none.internal_ip, None);
    assert!(matches!(
        Node::from_status("Not_A_Name", []),
        Err(NodeError::Name(_))
    ));
    // A long name of multi-byte characters is cut at a character boundary, not mid-character.
    let long = "é".repeat(600);
    let Err(NodeError::Name(kept)) = Node::from_status(&long, []) else {
        panic!("accepted");
    };
    assert_eq!(kept.chars().count(), 512);
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

    /// Any name and addresses: a node only with a valid name, its dialled address one of its
    /// InternalIPs, never more than the cap of addresses, each once.
    #[test]
    fn from_status_keeps_its_promises(name in ".{0,70}", addrs in proptest::collection::vec((prop_oneof![Just("InternalIP"), Just("ExternalIP"), Just("Hostname")], any::<[u8; 4]>(), any::<bool>()), 0..24)) {
        let strings: Vec<(&str, String)> = addrs.iter().map(|(k, ip, garbage)| (*k, if *garbage { format!("x{}", ip[0]) } else { IpAddr::from(*ip).to_string() })).collect();
        match Node::from_status(&name, strings.iter().map(|(k, a)| (*k, a.as_str()))) {
            Ok(node) => {
                prop_assert!(valid_node_name(&node.name));
                if let Some(ip) = node.internal_ip {
                    prop_assert!(strings.iter().any(|(k, a)| *k == "InternalIP" && a.parse::<IpAddr>().ok() == Some(ip)));
                }
                prop_assert!(node.addresses.len() <= MAX_NODE_ADDRESSES);
                prop_assert!(node.addresses.windows(2).all(|w| w[0] < w[1]));
            }
            Err(NodeError::Name(_)) => prop_assert!(!valid_node_name(&name)),
        }
    }
}
