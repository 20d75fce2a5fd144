//! Property tests: merge laws, routes against a reference BFS, broadcast exactly once, codec.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)] // test helpers

mod common;
use common::{arb_graph, name, peers_for, record, reference_dist};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use proptest::prelude::*;
use topology::peers::Peers;
use topology::routes::Routes;
use topology::wire::{Entry, Message};
use topology::{PeerInfo, PeerName, Record};

/// A table whose own record (peer 0) is fixed, with the given records applied in order.
fn table(records: &[Arc<PeerInfo>]) -> Peers {
    let mut p = Peers::new(record(0, 1, 1, &BTreeSet::new()));
    for r in records {
        p.apply(Arc::clone(r));
    }
    p
}

fn snapshot(p: &Peers) -> Vec<PeerInfo> {
    p.records().into_iter().map(|r| (**r).clone()).collect()
}

fn arb_record() -> impl Strategy<Value = Arc<PeerInfo>> {
    (
        1usize..6,
        1u64..3,
        1u64..4,
        proptest::collection::btree_set(0usize..6, 0..4),
    )
        .prop_map(|(i, uid, v, conns)| record(i, uid, v, &conns))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_commutative_associative_idempotent(
        a in proptest::collection::vec(arb_record(), 0..8),
        b in proptest::collection::vec(arb_record(), 0..8),
        c in proptest::collection::vec(arb_record(), 0..8),
    ) {
        let ab_c: Vec<_> = a.iter().chain(&b).chain(&c).cloned().collect();
        let c_ba: Vec<_> = c.iter().chain(&b).chain(&a).cloned().collect();
        let twice: Vec<_> = ab_c.iter().chain(&ab_c).cloned().collect();
        let (x, y, z) = (table(&ab_c), table(&c_ba), table(&twice));
        prop_assert_eq!(snapshot(&x), snapshot(&y));
        prop_assert_eq!(snapshot(&x), snapshot(&z));
        prop_assert_eq!(x.digest(), y.digest());
        prop_assert_eq!(x.bucket_digests(), z.bucket_digests());
        // Merging a merged table into another equals merging everything.
        let mut m = table(&a);
        for r in table(&b.iter().chain(&c).cloned().collect::<Vec<_>>()).records() {
            m.apply(r.clone());
        }
        prop_assert_eq!(snapshot(&m), snapshot(&x));
    }

    #[test]
    fn unicast_follows_shortest_paths(adj in arb_graph(), seed in any::<u64>()) {
        let n = adj.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        for me in 0..n {
            let routes = Routes::calculate(&peers_for(&adj, me, &order), name(me));
            let sorted = Routes::calculate(&peers_for(&adj, me, &(0..n).collect::<Vec<_>>()), name(me));
            prop_assert_eq!(routes.unicast(), sorted.unicast(), "insertion order changed routes");
            let dist_me = reference_dist(&adj, me);
            for d in 0..n {
                let hop = routes.unicast_next_hop(name(d));
                match dist_me[d] {
                    None | Some(0) => prop_assert_eq!(hop, None),
                    Some(k) => {
                        let h = (0..n).find(|&i| Some(name(i)) == hop);
                        let h = h.expect("reachable destination has a next hop");
                        prop_assert!(adj[me].contains(&h), "next hop is a neighbour");
                        prop_assert_eq!(reference_dist(&adj, d)[h], Some(k - 1));
                    }
                }
            }
        }
    }

    #[test]
    fn broadcast_reaches_every_peer_exactly_once(adj in arb_graph(), origin_pick in any::<usize>()) {
        let n = adj.len();
        let origin = origin_pick % n;
        let all: Vec<usize> = (0..n).collect();
        let routes: Vec<Routes> =
            (0..n).map(|me| Routes::calculate(&peers_for(&adj, me, &all), name(me))).collect();
        let mut received = vec![0usize; n];
        let mut q = VecDeque::from([origin]);
        while let Some(u) = q.pop_front() {
            for hop in routes[u].broadcast_next_hops(name(origin)) {
                let v = (0..n).find(|&i| name(i) == hop).unwrap();
                prop_assert!(adj[u].contains(&v));
                received[v] += 1;
                q.push_back(v);
            }
        }
        let dist = reference_dist(&adj, origin);
        for v in 0..n {
            let expect = usize::from(v != origin && dist[v].is_some());
            prop_assert_eq!(received[v], expect, "peer {} from origin {}", v, origin);
        }
    }

    #[test]
    fn messages_round_trip(recs in proptest::collection::vec(arb_record(), 0..5), c in any::<u64>()) {
        let entries: Vec<Entry> =
            recs.iter().map(|r| Entry { name: r.name, uid: r.uid, version: r.version }).collect();
        let msgs = [
            Message::Update { records: recs.clone() },
            Message::Summary { complete: c, entries },
            Message::Request { names: recs.iter().map(|r| r.name).collect() },
            Message::Heartbeat { count: c as u32, digest: c },
            Message::BucketDigest { full: c & 1 == 1, buckets: Box::new([c; 64]) },
        ];
        for m in msgs {
            let mut out = Vec::new();
            m.encode(&mut out);
            prop_assert_eq!(Message::decode(&out), Ok(m));
        }
    }

    #[test]
    fn decoder_never_panics_and_reencodes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(m) = Message::decode(&bytes) {
            let mut out = Vec::new();
            m.encode(&mut out);
            prop_assert_eq!(out, bytes);
        }
    }
}

#[test]
fn partial_connectivity_relays_through_the_middle() {
    // A–B, B–C, no A–C.
    let adj = vec![
        BTreeSet::from([1]),
        BTreeSet::from([0, 2]),
        BTreeSet::from([1]),
    ];
    let routes = Routes::calculate(&peers_for(&adj, 0, &[0, 1, 2]), name(0));
    assert_eq!(routes.unicast_next_hop(name(2)), Some(name(1)));
    assert_eq!(routes.unicast_next_hop(name(1)), Some(name(1)));
    assert_eq!(routes.broadcast_next_hops(name(0)), vec![name(1)]);
    let b = Routes::calculate(&peers_for(&adj, 1, &[0, 1, 2]), name(1));
    assert_eq!(b.broadcast_next_hops(name(0)), vec![name(2)]);
}

#[test]
fn asymmetric_connections_carry_no_routes() {
    // A lists B, B does not list A.
    let a = record(0, 1, 1, &BTreeSet::from([1]));
    let b = record(1, 1, 1, &BTreeSet::new());
    let mut p = Peers::new(a);
    p.apply(b);
    let routes = Routes::calculate(&p, name(0));
    assert_eq!(routes.unicast_next_hop(name(1)), None);
    let _: BTreeMap<(), ()> = BTreeMap::new();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The lazy Update view accepts and rejects exactly what the full decoder does, and decodes
    /// the same records.
    #[test]
    fn update_view_agrees_with_the_decoder(
        recs in proptest::collection::vec(arb_record(), 0..5),
        cut in any::<usize>(),
        flip in any::<(usize, u8)>(),
    ) {
        let mut good = Vec::new();
        Message::Update { records: recs }.encode(&mut good);
        let mut cut_short = good.clone();
        cut_short.truncate(cut % (good.len() + 1));
        let mut flipped = good.clone();
        let i = flip.0 % flipped.len();
        flipped[i] ^= flip.1;
        for bytes in [good, cut_short, flipped] {
            let full = Message::decode(&bytes);
            match topology::wire::UpdateView::parse(&bytes) {
                None => {
                    let is_update = matches!(full, Ok(Message::Update { .. }));
                    prop_assert!(!is_update);
                }
                Some(Err(e)) => prop_assert_eq!(full, Err(e)),
                Some(Ok(view)) => {
                    let decoded: Vec<Arc<PeerInfo>> =
                        view.records().iter().map(|r| Arc::new(r.decode())).collect();
                    prop_assert_eq!(full, Ok(Message::Update { records: decoded }));
                }
            }
        }
    }
}

/// The peers with a record that a search from `me` over listed connections does not reach.
fn reference_unreachable(p: &Peers, me: PeerName) -> Vec<PeerName> {
    let recs: BTreeMap<PeerName, Record> = p
        .records()
        .into_iter()
        .map(|r| (r.name, r.clone()))
        .collect();
    let mut seen = BTreeSet::from([me]);
    let mut q = VecDeque::from([me]);
    while let Some(u) = q.pop_front() {
        let Some(r) = recs.get(&u) else { continue };
        for c in &r.connections {
            if seen.insert(c.remote) {
                q.push_back(c.remote);
            }
        }
    }
    recs.keys().filter(|n| !seen.contains(n)).copied().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The incrementally kept reachability tree answers as a fresh search would, whatever the
    /// order of additions, replacements and removals.
    #[test]
    fn unreachable_matches_a_fresh_search(
        ops in proptest::collection::vec(
            (0u8..4, 0usize..6, 1u64..6, proptest::collection::btree_set(0usize..6, 0..4)),
            0..40,
        ),
    ) {
        let mut p = Peers::new(record(0, 1, 1, &BTreeSet::new()));
        let mut own_version = 1;
        for (op, i, v, conns) in ops {
            match op {
                0 | 1 => {
                    p.apply(record(i, 1, v, &conns));
                }
                2 => {
                    p.remove(name(i));
                }
                _ => {
                    own_version += 1;
                    p.set_own(record(0, 1, own_version, &conns));
                }
            }
            if op != 1 {
                prop_assert_eq!(p.unreachable(), reference_unreachable(&p, name(0)));
            }
        }
        prop_assert_eq!(p.unreachable(), reference_unreachable(&p, name(0)));
    }
}
