//! Routes: unicast next hops and broadcast distribution, computed from a peer table.
//!
//! Only *symmetric established* connections carry traffic: an edge A–B exists when A's record
//! lists an established connection to B and B's record lists one to A. Hop count is the only
//! metric.
//!
//! Tie rule (the same at every peer, so peers with the same view agree): in a breadth-first
//! search from a root, the parent of a node `v` is the neighbour of `v` with the lowest name
//! among those one hop closer to the root. Unicast from us to `d` goes to the first hop of the
//! parent chain from us to `d`. A broadcast from origin `o` travels down `o`'s tree: each peer
//! forwards to its neighbours whose parent (in `o`'s tree) is that peer. With agreed views,
//! every peer reachable from `o` receives the broadcast exactly once (the tree is a spanning
//! tree), which is the invariant of Weave's `calculateBroadcast`.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::peer::PeerName;
use crate::peers::Peers;

/// The symmetric established connection graph, with peers numbered in name order.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    names: Vec<PeerName>,
    adj: Vec<Vec<u32>>,
}

impl Graph {
    /// Builds the graph from a peer table.
    pub fn build(peers: &Peers) -> Self {
        let records = peers.records();
        let names: Vec<PeerName> = records.iter().map(|r| r.name).collect();
        let mut adj = Vec::with_capacity(records.len());
        for rec in &records {
            let mut out = Vec::with_capacity(rec.connections.len());
            for c in rec.connections.iter().filter(|c| c.established) {
                let Ok(j) = names.binary_search(&c.remote) else {
                    continue;
                };
                let back = records
                    .get(j)
                    .and_then(|r| r.connection_to(rec.name))
                    .is_some_and(|b| b.established);
                if back {
                    // Connections are sorted by remote name, so `out` is sorted by index.
                    out.push(j as u32);
                }
            }
            adj.push(out);
        }
        Self { names, adj }
    }

    /// Returns the peers, sorted by name.
    pub fn names(&self) -> &[PeerName] {
        &self.names
    }

    /// Returns the index of `name`.
    pub fn index(&self, name: PeerName) -> Option<u32> {
        self.names.binary_search(&name).ok().map(|i| i as u32)
    }

    /// Returns the neighbours of peer `i`, sorted.
    pub fn neighbours(&self, i: u32) -> &[u32] {
        self.adj.get(i as usize).map_or(&[], Vec::as_slice)
    }

    /// Returns hop distances from `root` (`u32::MAX` where unreachable).
    pub fn distances(&self, root: u32) -> Vec<u32> {
        let mut dist = vec![u32::MAX; self.names.len()];
        let Some(d0) = dist.get_mut(root as usize) else {
            return dist;
        };
        *d0 = 0;
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(u) = queue.pop_front() {
            let du = dist[u as usize];
            for &v in self.neighbours(u) {
                if dist[v as usize] == u32::MAX {
                    dist[v as usize] = du + 1;
                    queue.push_back(v);
                }
            }
        }
        dist
    }

    /// Returns, for every peer, the index of the neighbour of `me` through which unicast to it
    /// goes (`u32::MAX` for `me` itself and for unreachable peers): the first hop of the parent
    /// chain from `me` (see the module's tie rule).
    pub fn next_hops(&self, me: u32) -> Vec<u32> {
        let mut next_hop = vec![NONE; self.names.len()];
        if me as usize >= self.names.len() {
            return next_hop;
        }
        let dist = self.distances(me);
        let mut order: Vec<u32> = (0..self.names.len() as u32)
            .filter(|&v| dist[v as usize] != u32::MAX && v != me)
            .collect();
        order.sort_unstable_by_key(|&v| dist[v as usize]);
        for v in order {
            let Some(p) = self.parent(&dist, v) else {
                continue;
            };
            next_hop[v as usize] = if p == me { v } else { next_hop[p as usize] };
        }
        next_hop
    }

    /// Returns the parent of `v` in the tree rooted where `dist` was measured from: the
    /// broadcast tree of that root (see the module's tie rule).
    pub fn parent(&self, dist: &[u32], v: u32) -> Option<u32> {
        let dv = *dist.get(v as usize)?;
        if dv == 0 || dv == u32::MAX {
            return None;
        }
        self.neighbours(v)
            .iter()
            .copied()
            .find(|&u| dist[u as usize] == dv - 1)
    }
}

/// The routes of one peer: unicast next hops to every reachable peer, and broadcast next hops
/// per origin (computed on first use and cached).
#[derive(Debug, Default)]
pub struct Routes {
    graph: Graph,
    me: Option<u32>,
    next_hop: Vec<u32>,
    broadcast: RefCell<HashMap<u32, Vec<PeerName>>>,
}

impl Routes {
    /// Computes the routes of `me` over the peer table.
    pub fn calculate(peers: &Peers, me: PeerName) -> Self {
        let graph = Graph::build(peers);
        let me_idx = graph.index(me);
        let next_hop = match me_idx {
            Some(m) => graph.next_hops(m),
            None => vec![NONE; graph.names.len()],
        };
        Self {
            graph,
            me: me_idx,
            next_hop,
            broadcast: RefCell::default(),
        }
    }

    /// Returns the graph the routes were computed on.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Returns the neighbour to send to for `dst`, or None if `dst` is us or unreachable.
    pub fn unicast_next_hop(&self, dst: PeerName) -> Option<PeerName> {
        let i = self.graph.index(dst)?;
        let h = *self.next_hop.get(i as usize)?;
        self.graph.names.get(h as usize).copied()
    }

    /// Returns every (destination, next hop) pair, sorted by destination.
    pub fn unicast(&self) -> Vec<(PeerName, PeerName)> {
        self.next_hop
            .iter()
            .enumerate()
            .filter_map(|(d, &h)| {
                Some((
                    *self.graph.names.get(d)?,
                    *self.graph.names.get(h as usize)?,
                ))
            })
            .collect()
    }

    /// Returns the number of peers reachable from us, ourselves excluded.
    pub fn reachable(&self) -> usize {
        self.next_hop.iter().filter(|&&h| h != NONE).count()
    }

    /// Returns the neighbours to which we forward a broadcast that `origin` started (or that
    /// we start, when `origin` is us), sorted by name. Empty when `origin` is unknown or cannot
    /// reach us.
    pub fn broadcast_next_hops(&self, origin: PeerName) -> Vec<PeerName> {
        let (Some(me), Some(o)) = (self.me, self.graph.index(origin)) else {
            return Vec::new();
        };
        if let Some(hit) = self.broadcast.borrow().get(&o) {
            return hit.clone();
        }
        let dist = self.graph.distances(o);
        let hops: Vec<PeerName> = if dist[me as usize] == u32::MAX {
            Vec::new()
        } else {
            self.graph
                .neighbours(me)
                .iter()
                .filter(|&&v| self.graph.parent(&dist, v) == Some(me))
                .filter_map(|&v| self.graph.names.get(v as usize).copied())
                .collect()
        };
        let mut cache = self.broadcast.borrow_mut();
        if cache.len() >= BROADCAST_CACHE {
            cache.clear();
        }
        cache.insert(o, hops.clone());
        hops
    }
}

const NONE: u32 = u32::MAX;
const BROADCAST_CACHE: usize = 4096;
