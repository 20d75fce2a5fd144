//! The forwarder's decisions on bytes from the network and from the TAP, on router `me` of
//! the line 1 - 2 - 3 (routes and links as the mesh gives them). The first byte picks `me`,
//! the neighbour a datagram opened with, and whether origin 1 reaches `me` by fastdp; the rest
//! is a datagram (and, read as a TAP frame, a frame). Properties: no input panics; only sealed
//! types pass the check; a relay spends one hop, never goes back where it came from and
//! names a linked neighbour; a chunk is delivered only to its destination or as a broadcast;
//! a TAP frame goes to a linked next hop or down our own broadcast tree.

#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use topology::PeerName;
use topology::dataplane::{
    Arrived, BROADCAST, Captured, FastdpView, Forwarder, ForwardingTable, NextHops,
};
use topology::mac::{MacAddr, MacTable};
use topology::sleeve::MessageType;

fn p(n: u8) -> PeerName {
    PeerName::from_bytes([0x0a, 0, 0, 0, 0, n])
}

fn table(me: u8, by_fastdp: bool) -> ForwardingTable {
    let mut unicast = HashMap::new();
    let mut broadcast = HashMap::new();
    for other in 1..=3u8 {
        if other != me {
            // On a line, the next hop is the neighbour toward `other`.
            let hop = if other > me { me + 1 } else { me - 1 };
            unicast.insert(p(other), p(hop));
        }
        // The tree of origin `other` below `me`: the neighbour farther from `other`.
        let below: Vec<PeerName> = [me.checked_sub(1), me.checked_add(1)]
            .into_iter()
            .flatten()
            .filter(|n| (1..=3).contains(n) && n.abs_diff(other) > me.abs_diff(other))
            .map(p)
            .collect();
        broadcast.insert(p(other), below);
    }
    let mut t = ForwardingTable::new(p(me));
    t.set_hops(Arc::new(NextHops { unicast, broadcast }));
    for n in [me - 1, me + 1] {
        if (1..=3).contains(&n) {
            t.set_link(p(n), true);
        }
    }
    if by_fastdp {
        t.set_fastdp(Arc::new(FastdpView {
            by_origin: [(p(1), [p(me)].into())].into(),
            ..FastdpView::default()
        }));
    }
    t
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let me = pick % 3 + 1;
    let from = (pick / 3) % 3 + 1;
    let t = table(me, pick & 0x80 != 0);
    let mut forwarder = Forwarder::new(p(me));
    if let Ok(repr) = Forwarder::check(rest) {
        assert!(matches!(
            repr.msg_type,
            MessageType::SealedChunk | MessageType::SealedPmtuProbe | MessageType::SealedPmtuAck
        ));
        let dst = PeerName::from_bytes(repr.dst);
        match forwarder.handle_opened(&t, p(from), &repr) {
            Arrived::Relay { hop, hop_limit } => {
                assert!(hop_limit >= 1 && hop_limit + 1 == repr.hop_limit);
                assert!(hop != p(from) && t.has_link(hop));
            }
            Arrived::Broadcast {
                relay, hop_limit, ..
            } => {
                assert_eq!(dst, BROADCAST);
                for hop in relay {
                    assert!(hop_limit >= 1 && hop != p(from) && t.has_link(hop));
                }
            }
            Arrived::Deliver => assert_eq!(dst, p(me)),
            Arrived::PmtuProbe | Arrived::PmtuAck => {
                assert_eq!((PeerName::from_bytes(repr.src), dst), (p(from), p(me)));
            }
            Arrived::Drop(_) => {}
        }
    } else {
        assert!(Forwarder::check(rest).is_err());
    }
    // The same bytes as a TAP frame, with the MAC table knowing a few of its bytes as MACs.
    let now = Instant::now();
    let mut macs = MacTable::new(8, Duration::from_secs(600));
    for (i, w) in rest.chunks_exact(6).take(4).enumerate() {
        let mac = MacAddr::from_bytes(w.try_into().unwrap_or_default());
        macs.learn(now, mac, p(i as u8 % 3 + 1));
    }
    match forwarder.handle_captured(&t, &macs, rest) {
        Captured::Unicast { dst, hop, .. } => {
            assert!(dst != p(me) && t.has_link(hop));
        }
        Captured::Broadcast { hops, .. } => assert_eq!(hops, t.own_broadcast()),
        Captured::Local | Captured::Drop(_) => {}
    }
    let _ = forwarder.handle_delivered(now, p(from), rest);
});
