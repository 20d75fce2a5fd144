//! The forwarding rules on hand-built tables. Whole meshes (routes from a peer table, every
//! pod pair, every broadcast origin) are in `topology/tests/dataplane.rs`.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::mac::{MacAddr, MacTable};
use crate::sleeve::{MessageType, Repr, VNET_HDR_LEN};

fn p(n: u8) -> PeerName {
    PeerName::from_bytes([0x0a, 0, 0, 0, 0, n])
}

fn mac(n: u8) -> MacAddr {
    MacAddr::from_bytes([0x02, 0, 0, 0, 0, n])
}

/// A TAP frame (virtio_net_hdr, then Ethernet) from `src` to `dst`.
fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + 60];
    f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst.bytes());
    f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&src.bytes());
    f
}

fn chunk(src: PeerName, dst: PeerName, hop_limit: u8) -> Repr {
    Repr {
        msg_type: MessageType::SealedChunk,
        src: src.bytes(),
        dst: dst.bytes(),
        hop_limit,
    }
}

fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)] // an arbitrary base instant for the test
    Instant::now()
}

/// Router 1 on the line 1 - 2 - 3, links to its neighbour 2 only; broadcasts from 3 reach 1
/// through 2.
fn line_table(me: u8) -> ForwardingTable {
    let mut t = ForwardingTable::new(p(me));
    let (unicast, broadcast): (HashMap<_, _>, HashMap<_, _>) = match me {
        1 => (
            [(p(2), p(2)), (p(3), p(2))].into(),
            [(p(1), vec![p(2)]), (p(2), vec![]), (p(3), vec![])].into(),
        ),
        2 => (
            [(p(1), p(1)), (p(3), p(3))].into(),
            [
                (p(1), vec![p(3)]),
                (p(2), vec![p(1), p(3)]),
                (p(3), vec![p(1)]),
            ]
            .into(),
        ),
        _ => (
            [(p(1), p(2)), (p(2), p(2))].into(),
            [(p(3), vec![p(2)]), (p(2), vec![]), (p(1), vec![])].into(),
        ),
    };
    t.set_hops(Arc::new(NextHops { unicast, broadcast }));
    for (peer, _) in t.hops().unicast.clone() {
        if t.hops().unicast.get(&peer) == Some(&peer) {
            t.set_link(peer, true);
        }
    }
    t
}

#[test]
fn a_learned_mac_goes_to_its_peer_through_the_next_hop() {
    let t = line_table(1);
    let f = Forwarder::new(p(1));
    let mut macs = MacTable::new(16, Duration::from_secs(600));
    macs.learn(t0(), mac(3), p(3));
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(mac(3), mac(1))),
        Captured::Unicast {
            dst: p(3),
            hop: p(2),
            late_for_fastdp: false
        }
    );
    // Our own pod's MAC (learned behind us): the bridge's business.
    macs.learn(t0(), mac(9), p(1));
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(mac(9), mac(1))),
        Captured::Local
    );
    // A MAC behind a peer with no route.
    macs.learn(t0(), mac(4), p(4));
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(mac(4), mac(1))),
        Captured::Drop(DropReason::NoRoute)
    );
    // A runt.
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(mac(3), mac(1))[..VNET_HDR_LEN + 13]),
        Captured::Drop(DropReason::Malformed)
    );
}

#[test]
fn unknown_and_group_macs_go_down_our_broadcast_tree() {
    let t = line_table(2);
    let f = Forwarder::new(p(2));
    let macs = MacTable::new(16, Duration::from_secs(600));
    let hops = [p(1), p(3)];
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(MacAddr::BROADCAST, mac(2))),
        Captured::Broadcast {
            hops: &hops,
            unknown_unicast: false
        }
    );
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(mac(7), mac(2))),
        Captured::Broadcast {
            hops: &hops,
            unknown_unicast: true
        }
    );
}

#[test]
fn the_link_going_down_takes_its_hop_out() {
    let mut t = line_table(2);
    t.set_link(p(3), false);
    assert_eq!(t.own_broadcast(), [p(1)]);
    let f = Forwarder::new(p(2));
    let mut macs = MacTable::new(16, Duration::from_secs(600));
    macs.learn(t0(), mac(3), p(3));
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(mac(3), mac(2))),
        Captured::Drop(DropReason::NoRoute)
    );
    let r = f.handle_opened(&t, p(1), &chunk(p(1), p(3), 5));
    assert!(matches!(r, Arrived::Drop(DropReason::NoRoute)), "{r:?}");
}

#[test]
fn fastdp_peers_get_our_broadcasts_from_the_vxlan_device() {
    let mut t = line_table(2);
    // 1 is on fastdp both ways: it needs no sleeve copy. 3 is not.
    t.set_fastdp(Arc::new(FastdpView {
        local: [p(1)].into(),
        macs: [(mac(1), p(1))].into(),
        by_origin: HashMap::new(),
    }));
    assert_eq!(t.own_broadcast(), [p(3)]);
    // A MAC it announced, not learned from the sleeve: the frame was queued on the TAP
    // before the bridge's entry moved, and is carried.
    let f = Forwarder::new(p(2));
    let macs = MacTable::new(16, Duration::from_secs(600));
    assert_eq!(
        f.handle_captured(&t, &macs, &frame(mac(1), mac(2))),
        Captured::Unicast {
            dst: p(1),
            hop: p(1),
            late_for_fastdp: true
        }
    );
}

#[test]
fn a_fastdp_neighbour_routing_to_sleeve_peers_still_gets_our_broadcasts() {
    // Router 1 on the line: 2 is on fastdp, but 3 (behind 2) is not.
    let mut t = line_table(1);
    t.set_fastdp(Arc::new(FastdpView {
        local: [p(2)].into(),
        ..FastdpView::default()
    }));
    assert_eq!(t.own_broadcast(), [p(2)]);
    t.set_fastdp(Arc::new(FastdpView {
        local: [p(2), p(3)].into(),
        ..FastdpView::default()
    }));
    assert!(t.own_broadcast().is_empty());
}

#[test]
fn relays_spend_one_hop_and_stop_at_the_limit() {
    let t = line_table(2);
    let f = Forwarder::new(p(2));
    let r = f.handle_opened(&t, p(1), &chunk(p(1), p(3), 5));
    assert!(
        matches!(r, Arrived::Relay { hop, hop_limit: 4 } if hop == p(3)),
        "{r:?}"
    );
    let r = f.handle_opened(&t, p(1), &chunk(p(1), p(3), 1));
    assert!(matches!(r, Arrived::Drop(DropReason::HopLimit)), "{r:?}");
    // Never back where it came from: the routes disagree (a loop in the making).
    let r = f.handle_opened(&t, p(3), &chunk(p(1), p(3), 5));
    assert!(matches!(r, Arrived::Drop(DropReason::NoRoute)), "{r:?}");
}

#[test]
fn own_frames_coming_back_are_dropped_and_ours_delivered() {
    let t = line_table(2);
    let f = Forwarder::new(p(2));
    let r = f.handle_opened(&t, p(1), &chunk(p(2), p(3), 5));
    assert!(matches!(r, Arrived::Drop(DropReason::Loop)), "{r:?}");
    let r = f.handle_opened(&t, p(1), &chunk(p(1), p(2), 5));
    assert!(matches!(r, Arrived::Deliver), "{r:?}");
}

#[test]
fn broadcasts_follow_the_origins_tree() {
    let t = line_table(2);
    let f = Forwarder::new(p(2));
    let Arrived::Broadcast {
        relay,
        hop_limit,
        deliver,
        hop_limit_spent,
    } = f.handle_opened(&t, p(1), &chunk(p(1), BROADCAST, 3))
    else {
        panic!()
    };
    assert_eq!(relay.collect::<Vec<_>>(), [p(3)]);
    assert_eq!((hop_limit, deliver, hop_limit_spent), (2, true, false));
    // The same broadcast at its last hop: delivered, not relayed.
    let Arrived::Broadcast {
        relay,
        deliver,
        hop_limit_spent,
        ..
    } = f.handle_opened(&t, p(1), &chunk(p(1), BROADCAST, 1))
    else {
        panic!()
    };
    assert_eq!(relay.count(), 0);
    assert!(deliver && hop_limit_spent);
}

#[test]
fn a_broadcast_the_vxlan_device_delivered_is_not_delivered_again() {
    let mut t = line_table(2);
    t.set_fastdp(Arc::new(FastdpView {
        by_origin: [(p(1), [p(2)].into())].into(),
        ..FastdpView::default()
    }));
    let f = Forwarder::new(p(2));
    let Arrived::Broadcast { relay, deliver, .. } =
        f.handle_opened(&t, p(1), &chunk(p(1), BROADCAST, 3))
    else {
        panic!()
    };
    // Still relayed to 3, which the origin does not reach by fastdp.
    assert_eq!(relay.collect::<Vec<_>>(), [p(3)]);
    assert!(!deliver);
}

#[test]
fn path_mtu_messages_travel_one_hop_only() {
    let t = line_table(2);
    let f = Forwarder::new(p(2));
    let probe = |src, dst| Repr {
        msg_type: MessageType::SealedPmtuProbe,
        ..chunk(src, dst, 1)
    };
    assert!(matches!(
        f.handle_opened(&t, p(1), &probe(p(1), p(2))),
        Arrived::PmtuProbe
    ));
    let ack = Repr {
        msg_type: MessageType::SealedPmtuAck,
        ..chunk(p(3), p(2), 1)
    };
    assert!(matches!(f.handle_opened(&t, p(3), &ack), Arrived::PmtuAck));
    // From someone else than the link's peer, or for someone else: refused.
    for r in [probe(p(3), p(2)), probe(p(1), p(3))] {
        let got = f.handle_opened(&t, p(1), &r);
        assert!(
            matches!(got, Arrived::Drop(DropReason::Malformed)),
            "{got:?}"
        );
    }
}

#[test]
fn only_sealed_datagrams_pass_the_check() {
    let mut d = vec![0u8; 64];
    let mut repr = chunk(p(1), p(2), 3);
    for (t, ok) in [
        (MessageType::SealedChunk, true),
        (MessageType::SealedPmtuProbe, true),
        (MessageType::SealedPmtuAck, true),
        (MessageType::Chunk, false),
    ] {
        repr.msg_type = t;
        let mut packet = crate::sleeve::Packet::new_unchecked(&mut d[..]);
        repr.emit(&mut packet);
        assert_eq!(Forwarder::check(&d).is_ok(), ok, "{t:?}");
    }
    assert_eq!(Forwarder::check(&d[..3]), Err(DropReason::Malformed));
}

#[test]
fn delivered_frames_teach_the_mac_table_once_per_change() {
    let mut f = Forwarder::new(p(2));
    let t = t0();
    let learn = |peer| Some(Learn { mac: mac(1), peer });
    assert_eq!(
        f.handle_delivered(t, p(1), &frame(mac(2), mac(1))),
        learn(p(1))
    );
    assert_eq!(f.handle_delivered(t, p(1), &frame(mac(2), mac(1))), None);
    // The MAC moved to another peer: reported at once.
    assert_eq!(
        f.handle_delivered(t, p(3), &frame(mac(2), mac(1))),
        learn(p(3))
    );
    // Refreshed now and then while it stays.
    let later = t + RELEARN_AFTER;
    assert_eq!(
        f.handle_delivered(later, p(3), &frame(mac(2), mac(1))),
        learn(p(3))
    );
    // Group sources and runts teach nothing.
    assert_eq!(
        f.handle_delivered(later, p(3), &frame(mac(2), MacAddr::BROADCAST)),
        None
    );
    assert_eq!(f.handle_delivered(later, p(3), &[0; 20]), None);
}

proptest! {
    /// Whatever the header, a datagram either passes the check as a sealed type or is
    /// refused as malformed, and the decision after opening never relays with more hops
    /// than it came with, nor back to where it came from.
    #[test]
    fn decisions_spend_hops_and_never_turn_back(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        from in 1u8..4,
        me in 1u8..4,
    ) {
        let t = line_table(me);
        let f = Forwarder::new(p(me));
        let Ok(repr) = Forwarder::check(&bytes) else { return Ok(()) };
        match f.handle_opened(&t, p(from), &repr) {
            Arrived::Relay { hop, hop_limit } => {
                prop_assert!(hop_limit < repr.hop_limit && hop_limit >= 1);
                prop_assert_ne!(hop, p(from));
                prop_assert!(t.has_link(hop));
            }
            Arrived::Broadcast { relay, hop_limit, .. } => {
                for hop in relay {
                    prop_assert!(hop_limit < repr.hop_limit && hop_limit >= 1);
                    prop_assert_ne!(hop, p(from));
                }
            }
            Arrived::Drop(_) | Arrived::Deliver | Arrived::PmtuProbe | Arrived::PmtuAck => {}
        }
    }
}
