//! Helpers the property tests share: peer names, records and tables built from a graph.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses its own subset

pub(crate) mod nft_eval;
pub(crate) mod policy_gen;

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use proptest::prelude::*;
use topology::peers::Peers;
use topology::{ConnectionSummary, PeerInfo, PeerName, PeerUid};

/// Peer `i`'s name.
pub(crate) fn name(i: usize) -> PeerName {
    PeerName::from_bytes([0x02, 0, 0, 0, (i >> 8) as u8, i as u8 + 1])
}

/// Peer `i`'s record: `uid`, `version`, established connections to `conns`.
pub(crate) fn record(i: usize, uid: u64, version: u64, conns: &BTreeSet<usize>) -> Arc<PeerInfo> {
    let addr: SocketAddr = "192.0.2.1:6783".parse().unwrap();
    let mut connections: Vec<ConnectionSummary> = conns
        .iter()
        .filter(|&&c| c != i)
        .map(|&c| ConnectionSummary {
            remote: name(c),
            addr,
            outbound: c > i,
            established: true,
        })
        .collect();
    connections.sort();
    Arc::new(PeerInfo::new(
        name(i),
        PeerUid(uid),
        version,
        format!("n{i}"),
        connections,
    ))
}

/// An undirected graph on `n` nodes as adjacency sets.
pub(crate) fn arb_graph() -> impl Strategy<Value = Vec<BTreeSet<usize>>> {
    (2usize..14).prop_flat_map(|n| {
        proptest::collection::vec((0..n, 0..n), 0..(n * 3)).prop_map(move |edges| {
            let mut adj = vec![BTreeSet::new(); n];
            for (a, b) in edges {
                if a != b {
                    adj[a].insert(b);
                    adj[b].insert(a);
                }
            }
            adj
        })
    })
}

/// The table `me` holds once it has applied the records of `order` (connections from `adj`).
pub(crate) fn peers_for(adj: &[BTreeSet<usize>], me: usize, order: &[usize]) -> Peers {
    let mut p = Peers::new(record(me, 1, 1, &adj[me]));
    for &i in order {
        if i != me {
            p.apply(record(i, 1, 1, &adj[i]));
        }
    }
    p
}

/// Hop counts from `from` by breadth-first search: the reference routes are checked against.
pub(crate) fn reference_dist(adj: &[BTreeSet<usize>], from: usize) -> Vec<Option<usize>> {
    let mut dist = vec![None; adj.len()];
    dist[from] = Some(0);
    let mut q = VecDeque::from([from]);
    while let Some(u) = q.pop_front() {
        for &v in &adj[u] {
            if dist[v].is_none() {
                dist[v] = Some(dist[u].unwrap() + 1);
                q.push_back(v);
            }
        }
    }
    dist
}
