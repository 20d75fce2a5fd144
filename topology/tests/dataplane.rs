//! The forwarding rules over whole meshes: every router's [`Forwarder`] over its own
//! [`ForwardingTable`], built from the routes its peer table gives, frames passed hop by hop as
//! the sleeve would carry them (no kernel, no sessions). Checked on random graphs: unicast
//! takes a shortest path and arrives once within its hop limit; a broadcast reaches every
//! reachable router exactly once, by the sleeve or the VXLAN device; MACs are learned from
//! delivered frames, answers go unicast, and a MAC that moves is followed.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)] // test helpers

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{arb_graph, name, peers_for, reference_dist};
use proptest::prelude::*;
use topology::PeerName;
use topology::dataplane::{
    Arrived, BROADCAST, Captured, FastdpView, Forwarder, ForwardingTable, NextHops,
};
use topology::mac::{MacAddr, MacTable};
use topology::routes::Routes;
use topology::sleeve::packet::MAX_HOP_LIMIT;
use topology::sleeve::{MessageType, Repr, VNET_HDR_LEN};

/// One router: its table, its forwarder and its MAC table.
struct Router {
    table: ForwardingTable,
    forwarder: Forwarder,
    macs: MacTable,
}

/// Routers for graph `adj`, each linked to its neighbours; `fastdp` lists the edges carried
/// by the VXLAN device (both ways).
fn routers(adj: &[BTreeSet<usize>], fastdp: &BTreeSet<(usize, usize)>) -> Vec<Router> {
    let all: Vec<usize> = (0..adj.len()).collect();
    let on_fastdp = |i: usize| -> BTreeSet<PeerName> {
        fastdp
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(name(b)),
                (_, true) => Some(name(a)),
                _ => None,
            })
            .collect()
    };
    (0..adj.len())
        .map(|me| {
            let routes = Routes::calculate(&peers_for(adj, me, &all), name(me));
            let mut table = ForwardingTable::new(name(me));
            table.set_hops(Arc::new(NextHops::from_routes(&routes)));
            for n in &adj[me] {
                table.set_link(name(*n), true);
            }
            let local = on_fastdp(me);
            table.set_fastdp(Arc::new(FastdpView {
                macs: local.iter().map(|p| (pod(index(*p)), *p)).collect(),
                local: local.into_iter().collect(),
                by_origin: (0..adj.len())
                    .map(|o| (name(o), on_fastdp(o).into_iter().collect()))
                    .collect(),
            }));
            Router {
                table,
                forwarder: Forwarder::new(name(me)),
                macs: MacTable::new(1024, Duration::from_secs(600)),
            }
        })
        .collect()
}

fn index(p: PeerName) -> usize {
    let b = p.bytes();
    (usize::from(b[4]) << 8 | usize::from(b[5])) - 1
}

/// The MAC of the pod on router `i`.
fn pod(i: usize) -> MacAddr {
    MacAddr::from_bytes([0x02, 0xaa, 0, 0, (i >> 8) as u8, i as u8])
}

/// A TAP frame from `src` to `dst`.
fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + 60];
    f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst.bytes());
    f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&src.bytes());
    f
}

fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)] // an arbitrary base instant for the test
    Instant::now()
}

/// What became of one frame sent into the mesh.
#[derive(Debug, Default)]
struct Outcome {
    /// Routers whose TAP got it from the sleeve, with the hops it took.
    delivered: Vec<(usize, u32)>,
    /// Routers whose TAP got it from the origin's VXLAN device.
    by_vxlan: Vec<usize>,
    /// Datagrams relayed.
    relays: u32,
    /// Drops seen, by reason.
    drops: Vec<topology::dataplane::DropReason>,
    /// Sleeve copies that arrived and were neither delivered nor passed on: wasted.
    wasted: Vec<usize>,
}

/// Router `at`'s pod sends `f`; the mesh carries it. Delivered frames teach MAC tables.
fn send(rs: &mut [Router], at: usize, f: &[u8], hop_limit: u8, now: Instant) -> Outcome {
    let mut out = Outcome::default();
    let r = &rs[at];
    let (dst, first_hops): (PeerName, Vec<PeerName>) =
        match r.forwarder.handle_captured(&r.table, &r.macs, f) {
            Captured::Unicast { dst, hop, .. } => (dst, vec![hop]),
            Captured::Broadcast { hops, .. } => {
                // The VXLAN device floods our broadcasts to our fastdp peers.
                #[allow(clippy::disallowed_methods)] // counted per router: order does not matter
                let by_vxlan = r.table.fastdp().local.iter().map(|p| index(*p)).collect();
                out.by_vxlan = by_vxlan;
                (BROADCAST, hops.to_vec())
            }
            Captured::Local => return out,
            Captured::Drop(reason) => {
                out.drops.push(reason);
                return out;
            }
        };
    // (router, neighbour it came from, hop limit, hops so far)
    let mut queue: VecDeque<(usize, PeerName, u8, u32)> = first_hops
        .into_iter()
        .map(|h| (index(h), name(at), hop_limit, 1))
        .collect();
    while let Some((v, from, limit, hops)) = queue.pop_front() {
        assert!(hops < 64, "a datagram went round in circles");
        let repr = Repr {
            msg_type: MessageType::SealedChunk,
            src: name(at).bytes(),
            dst: dst.bytes(),
            hop_limit: limit,
        };
        let r = &mut rs[v];
        let mut deliver = false;
        let queued = queue.len();
        match r.forwarder.handle_opened(&r.table, from, &repr) {
            Arrived::Deliver => deliver = true,
            Arrived::Relay { hop, hop_limit } => {
                out.relays += 1;
                queue.push_back((index(hop), name(v), hop_limit, hops + 1));
            }
            Arrived::Broadcast {
                relay,
                hop_limit,
                deliver: here,
                ..
            } => {
                for hop in relay {
                    out.relays += 1;
                    queue.push_back((index(hop), name(v), hop_limit, hops + 1));
                }
                deliver = here;
            }
            Arrived::Drop(reason) => out.drops.push(reason),
            other @ (Arrived::PmtuProbe | Arrived::PmtuAck) => panic!("{other:?}"),
        }
        if !deliver && queue.len() == queued && out.drops.is_empty() {
            out.wasted.push(v);
        }
        if deliver {
            out.delivered.push((v, hops));
            if let Some(l) = r.forwarder.handle_delivered(now, name(at), f) {
                r.macs.learn(now, l.mac, l.peer);
            }
        }
    }
    out
}

/// Hop counts from `from`.
fn dist(adj: &[BTreeSet<usize>], from: usize) -> Vec<Option<u32>> {
    let d = reference_dist(adj, from);
    d.into_iter().map(|k| k.map(|k| k as u32)).collect()
}

/// Some edges of `adj` on fastdp, picked by the bits of `mask`.
fn fastdp_edges(adj: &[BTreeSet<usize>], mask: u64) -> BTreeSet<(usize, usize)> {
    let edges =
        (0..adj.len()).flat_map(|a| adj[a].iter().filter(move |b| **b > a).map(move |b| (a, *b)));
    edges
        .enumerate()
        .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
        .map(|(_, e)| e)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Unicast to a learned MAC takes a shortest path, is delivered once at its destination
    /// only, and only within its hop limit; an unreachable destination is no route.
    #[test]
    fn unicast_takes_a_shortest_path_within_its_hop_limit(
        adj in arb_graph(),
        hop_limit in 1u8..=MAX_HOP_LIMIT,
    ) {
        let n = adj.len();
        let mut rs = routers(&adj, &BTreeSet::new());
        let now = t0();
        for a in 0..n {
            let d = dist(&adj, a);
            for b in (0..n).filter(|b| *b != a) {
                rs[a].macs.learn(now, pod(b), name(b));
                let out = send(&mut rs, a, &frame(pod(b), pod(a)), hop_limit, now);
                match d[b] {
                    Some(k) if k <= u32::from(hop_limit) => {
                        prop_assert_eq!(&out.delivered, &vec![(b, k)]);
                        prop_assert_eq!(out.relays, k - 1);
                        prop_assert!(out.drops.is_empty());
                    }
                    Some(_) => {
                        prop_assert!(out.delivered.is_empty());
                        prop_assert_eq!(
                            &out.drops,
                            &vec![topology::dataplane::DropReason::HopLimit]
                        );
                    }
                    None => {
                        prop_assert!(out.delivered.is_empty());
                        prop_assert_eq!(&out.drops, &vec![topology::dataplane::DropReason::NoRoute]);
                    }
                }
            }
        }
    }

    /// A broadcast reaches every router its origin reaches exactly once: by the sleeve, or
    /// by the origin's VXLAN device where the two are on fastdp; nobody else, and never the
    /// origin itself. No sleeve copy is wasted on a router that neither delivers it nor
    /// passes it on (a neighbour whose whole subtree has it from the VXLAN device).
    #[test]
    fn broadcasts_reach_each_router_once(adj in arb_graph(), mask in any::<u64>()) {
        let n = adj.len();
        let fastdp = fastdp_edges(&adj, mask);
        let mut rs = routers(&adj, &fastdp);
        let now = t0();
        for o in 0..n {
            let d = dist(&adj, o);
            let out = send(&mut rs, o, &frame(MacAddr::BROADCAST, pod(o)), MAX_HOP_LIMIT, now);
            let mut got = vec![0u32; n];
            for (v, _) in &out.delivered {
                got[*v] += 1;
            }
            for v in &out.by_vxlan {
                got[*v] += 1;
            }
            for v in 0..n {
                let want = u32::from(v != o && d[v].is_some());
                prop_assert_eq!(got[v], want, "router {} from origin {}: {:?}", v, o, out);
            }
            prop_assert!(out.drops.is_empty(), "{:?}", out.drops);
            prop_assert!(out.wasted.is_empty(), "copies wasted on {:?}", out.wasted);
        }
    }

    /// A pod's first frame to an unknown MAC is flooded; every router learns the sender from
    /// it, so the answer goes unicast; when the first pod's MAC moves to another router and
    /// announces itself there, the answers follow it.
    #[test]
    fn macs_are_learned_and_followed_when_they_move(
        adj in arb_graph(),
        a in 0usize..14,
        b in 0usize..14,
        c in 0usize..14,
    ) {
        let n = adj.len();
        let (a, b, c) = (a % n, b % n, c % n);
        prop_assume!(a != b && b != c);
        let d = dist(&adj, a);
        prop_assume!(d[b].is_some() && dist(&adj, c)[b].is_some());
        let mut rs = routers(&adj, &BTreeSet::new());
        let now = t0();
        let mac = pod(a);
        // a asks for b's pod: unknown, flooded; b learns a's pod.
        let out = send(&mut rs, a, &frame(pod(b), mac), MAX_HOP_LIMIT, now);
        prop_assert!(out.delivered.iter().any(|(v, _)| *v == b));
        prop_assert_eq!(rs[b].macs.lookup(&mac), Some(name(a)));
        // b answers: unicast, delivered at a only.
        let out = send(&mut rs, b, &frame(mac, pod(b)), MAX_HOP_LIMIT, now);
        prop_assert_eq!(out.delivered.iter().map(|(v, _)| *v).collect::<Vec<_>>(), vec![a]);
        // The pod moves to c and announces itself (a broadcast): b follows it.
        let later = now + Duration::from_secs(1);
        send(&mut rs, c, &frame(MacAddr::BROADCAST, mac), MAX_HOP_LIMIT, later);
        prop_assert_eq!(rs[b].macs.lookup(&mac), Some(name(c)));
        let out = send(&mut rs, b, &frame(mac, pod(b)), MAX_HOP_LIMIT, later);
        let want = if c == b { vec![] } else { vec![c] };
        prop_assert_eq!(out.delivered.iter().map(|(v, _)| *v).collect::<Vec<_>>(), want);
    }
}
