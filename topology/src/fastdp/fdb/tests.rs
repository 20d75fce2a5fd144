#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::fastdp::{Announcements, Reason};

const LOCAL: u8 = 0;
const SLEEVE: Option<Path> = Some(Path::Sleeve(Reason::Probing));
const FASTDP: Option<Path> = Some(Path::Fastdp);

fn name(i: u8) -> PeerName {
    PeerName::from_bytes([0x02, 0, 0, 0, 0, i])
}

fn ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))
}

/// `mac(0)` is all-zero.
fn mac(i: u8) -> MacAddr {
    if i == 0 {
        MacAddr::ZERO
    } else {
        MacAddr::from_bytes([0x02, 0xaa, 0, 0, 0, i])
    }
}

fn macs(ids: &[u8]) -> BTreeSet<MacAddr> {
    ids.iter().copied().map(mac).collect()
}

fn ann(origin: u8, seq: u64, bridge: u8, ids: &[u8], theirs: bool) -> Announcement {
    Announcement {
        origin: name(origin),
        seq,
        bridge_mac: mac(bridge),
        fastdp_peers: if theirs {
            BTreeSet::from([name(LOCAL)])
        } else {
            BTreeSet::new()
        },
        macs: macs(ids),
    }
}

/// This router: bridge MAC 100, pods 101 and 102.
fn own() -> Announcement {
    ann(LOCAL, 1, 100, &[101, 102], false)
}

fn pin(peer: u8, port: Port, m: u8) -> FdbOp {
    FdbOp::Pin {
        peer: name(peer),
        port,
        mac: mac(m),
    }
}

fn unpin(port: Port, m: u8) -> FdbOp {
    FdbOp::Unpin { port, mac: mac(m) }
}

#[test]
fn a_sleeve_peer_pins_its_macs_and_bridge_to_the_tap() {
    let mut pins = Pins::new(true);
    let a = ann(2, 1, 20, &[1, 2], false);
    let ops = pins.handle_announcement(None, &a, SLEEVE, Some(ip(2)), &own());
    assert_eq!(
        ops,
        [
            pin(2, Port::Tap, 1),
            pin(2, Port::Tap, 2),
            pin(2, Port::Tap, 20)
        ]
    );
    assert_eq!(pins.port(name(2), mac(20)), Some(Port::Tap));
    // The same again changes nothing.
    assert!(pins.sync(name(2), SLEEVE, Some(&a), &own()).is_empty());
}

#[test]
fn without_a_tap_only_fastdp_peers_are_pinned() {
    let mut pins = Pins::new(false);
    let a = ann(2, 1, 20, &[1], false);
    assert!(pins.sync(name(2), SLEEVE, Some(&a), &own()).is_empty());
    assert_eq!(
        pins.sync(name(2), FASTDP, Some(&a), &own()),
        [pin(2, Port::Vxlan, 1), pin(2, Port::Vxlan, 20)]
    );
    assert!(pins.forget_on_tap(name(2), [mac(9)]).is_empty());
}

#[test]
fn this_routers_bridge_and_pods_and_the_zero_mac_are_never_pinned() {
    let mut pins = Pins::new(true);
    // Decoding rejects a zero MAC; the rule does not rely on it.
    let a = ann(2, 1, 0, &[0, 3, 100, 101], false);
    assert_eq!(
        pins.sync(name(2), FASTDP, Some(&a), &own()),
        [pin(2, Port::Vxlan, 3)]
    );
    let b = ann(3, 1, 100, &[102], false);
    assert!(pins.sync(name(3), SLEEVE, Some(&b), &own()).is_empty());
    assert_eq!(pins.iter().count(), 1);
}

#[test]
fn joining_adds_the_device_entries_before_the_pins_move() {
    let mut pins = Pins::new(true);
    let a = ann(2, 1, 20, &[1], false);
    pins.sync(name(2), SLEEVE, Some(&a), &own());
    let ops = pins.handle_joined(name(2), ip(2), FASTDP, Some(&a), &own());
    // The pins move by replacing (no unpin in between).
    assert_eq!(
        ops,
        [
            FdbOp::Join {
                addr: ip(2),
                macs: macs(&[1])
            },
            pin(2, Port::Vxlan, 1),
            pin(2, Port::Vxlan, 20),
        ]
    );
    // What the sleeve learned behind the peer and the peer did not announce is forgotten.
    assert_eq!(
        pins.forget_on_tap(name(2), [mac(1), mac(7), mac(20)]),
        [FdbOp::ForgetOnTap { mac: mac(7) }]
    );
}

#[test]
fn leaving_moves_the_pins_to_the_tap_before_the_device_entries_go() {
    let mut pins = Pins::new(true);
    let a = ann(2, 1, 20, &[1], false);
    pins.sync(name(2), FASTDP, Some(&a), &own());
    let ops = pins.handle_left(name(2), ip(2), SLEEVE, Some(&a), &own());
    assert_eq!(
        ops,
        [
            pin(2, Port::Tap, 1),
            pin(2, Port::Tap, 20),
            FdbOp::Leave {
                addr: ip(2),
                macs: macs(&[1])
            },
        ]
    );
    // Left and gone (forgotten, or down while on fastdp): unpinned, then the entries go.
    let ops = pins.handle_left(name(2), ip(2), None, None, &own());
    assert_eq!(
        ops,
        [
            unpin(Port::Tap, 1),
            unpin(Port::Tap, 20),
            FdbOp::Leave {
                addr: ip(2),
                macs: BTreeSet::new()
            },
        ]
    );
    assert_eq!(pins.iter().count(), 0);
}

#[test]
fn a_mac_two_peers_announce_keeps_the_remaining_peers_pin() {
    let mut pins = Pins::new(true);
    let a = ann(2, 1, 20, &[1, 5], false);
    let b = ann(3, 1, 30, &[5], false);
    pins.sync(name(2), FASTDP, Some(&a), &own());
    pins.sync(name(3), FASTDP, Some(&b), &own());
    // Peer 2 disconnects: its own MACs are unpinned, the shared one stays for peer 3.
    assert_eq!(
        pins.sync(name(2), None, Some(&a), &own()),
        [unpin(Port::Vxlan, 1), unpin(Port::Vxlan, 20)]
    );
    assert_eq!(pins.port(name(3), mac(5)), Some(Port::Vxlan));
    // Peer 3 goes too: now it is unpinned.
    assert_eq!(
        pins.sync(name(3), None, None, &own()),
        [unpin(Port::Vxlan, 5), unpin(Port::Vxlan, 30)]
    );
}

#[test]
fn an_announcement_on_fastdp_adds_before_the_pins_and_removes_after() {
    let mut pins = Pins::new(true);
    let old = ann(2, 1, 20, &[1, 2], false);
    pins.sync(name(2), FASTDP, Some(&old), &own());
    let new = ann(2, 2, 20, &[2, 3], false);
    let ops = pins.handle_announcement(Some(&old), &new, FASTDP, Some(ip(2)), &own());
    assert_eq!(
        ops,
        [
            FdbOp::AddMacs {
                addr: ip(2),
                macs: macs(&[3])
            },
            unpin(Port::Vxlan, 1),
            pin(2, Port::Vxlan, 3),
            FdbOp::RemoveMacs {
                addr: ip(2),
                macs: macs(&[1])
            },
        ]
    );
}

#[test]
fn an_announcement_off_fastdp_touches_only_the_pins() {
    let mut pins = Pins::new(true);
    let old = ann(2, 1, 20, &[1], false);
    let new = ann(2, 2, 20, &[2], false);
    pins.sync(name(2), SLEEVE, Some(&old), &own());
    assert_eq!(
        pins.handle_announcement(Some(&old), &new, SLEEVE, Some(ip(2)), &own()),
        [unpin(Port::Tap, 1), pin(2, Port::Tap, 2)]
    );
    // A relayed peer (no path here) is left to learning.
    let c = ann(3, 1, 30, &[4], false);
    assert!(
        pins.handle_announcement(None, &c, None, None, &own())
            .is_empty()
    );
}

#[test]
fn a_peer_that_stops_sending_over_fastdp_after_this_router_left_it_is_flushed() {
    let mut pins = Pins::new(true);
    let old = ann(2, 1, 20, &[1], true);
    let new = ann(2, 2, 20, &[1], false);
    pins.sync(name(2), SLEEVE, Some(&old), &own());
    assert_eq!(
        pins.handle_announcement(Some(&old), &new, SLEEVE, Some(ip(2)), &own()),
        [FdbOp::Flush {
            addr: ip(2),
            macs: macs(&[1])
        }]
    );
    // Not while this router still sends to it over fastdp, not without an address, not when
    // it did not send over fastdp before, not while it still does.
    let mut pins = Pins::new(true);
    let flushes = |ops: Vec<FdbOp>| {
        ops.iter()
            .filter(|op| matches!(op, FdbOp::Flush { .. }))
            .count()
    };
    assert_eq!(
        flushes(pins.handle_announcement(Some(&old), &new, FASTDP, Some(ip(2)), &own())),
        0
    );
    assert_eq!(
        flushes(pins.handle_announcement(Some(&old), &new, None, None, &own())),
        0
    );
    assert_eq!(
        flushes(pins.handle_announcement(Some(&new), &new, SLEEVE, Some(ip(2)), &own())),
        0
    );
    assert_eq!(
        flushes(pins.handle_announcement(Some(&old), &old, SLEEVE, Some(ip(2)), &own())),
        0
    );
}

#[test]
fn a_failed_pin_is_not_held_and_is_tried_again_at_the_next_sync() {
    let mut pins = Pins::new(true);
    let a = ann(2, 1, 20, &[1], false);
    pins.sync(name(2), SLEEVE, Some(&a), &own());
    pins.handle_pin_failed(name(2), Port::Tap, mac(1));
    assert_eq!(pins.port(name(2), mac(1)), None);
    // Not pinned, so the sleeve's learned entry would be forgotten on joining.
    assert_eq!(
        pins.forget_on_tap(name(2), [mac(1)]),
        [FdbOp::ForgetOnTap { mac: mac(1) }]
    );
    assert_eq!(
        pins.sync(name(2), SLEEVE, Some(&a), &own()),
        [pin(2, Port::Tap, 1)]
    );
    // A report for a pin no longer wanted on that port changes nothing.
    pins.handle_pin_failed(name(2), Port::Vxlan, mac(1));
    assert_eq!(pins.port(name(2), mac(1)), Some(Port::Tap));
    // The last pin failing empties the peer's table.
    pins.handle_pin_failed(name(2), Port::Tap, mac(1));
    pins.handle_pin_failed(name(2), Port::Tap, mac(20));
    assert_eq!(pins.iter().count(), 0);
}

#[test]
fn stale_pins_are_those_no_peer_claims_on_that_port() {
    let mut pins = Pins::new(true);
    let a = ann(2, 1, 20, &[1], false);
    pins.sync(name(2), FASTDP, Some(&a), &own());
    let found = [
        (Port::Vxlan, mac(1)),
        (Port::Tap, mac(1)),
        (Port::Vxlan, mac(20)),
        (Port::Tap, mac(9)),
    ];
    assert_eq!(
        pins.stale(found),
        [unpin(Port::Tap, 1), unpin(Port::Tap, 9)]
    );
}

proptest! {
    #[test]
    fn the_device_entries_follow_the_announced_set_exactly(
        old in proptest::collection::btree_set(1u8..16, 0..10),
        new in proptest::collection::btree_set(1u8..16, 0..10),
    ) {
        let old_ids: Vec<u8> = old.iter().copied().collect();
        let new_ids: Vec<u8> = new.iter().copied().collect();
        let (old, new) = (ann(2, 1, 20, &old_ids, false), ann(2, 2, 20, &new_ids, false));
        let mut pins = Pins::new(true);
        pins.sync(name(2), FASTDP, Some(&old), &own());
        let ops = pins.handle_announcement(Some(&old), &new, FASTDP, Some(ip(2)), &own());
        let added: BTreeSet<MacAddr> = new.macs.difference(&old.macs).copied().collect();
        let gone: BTreeSet<MacAddr> = old.macs.difference(&new.macs).copied().collect();
        let mut expect_add = Vec::new();
        if !added.is_empty() {
            expect_add.push(FdbOp::AddMacs { addr: ip(2), macs: added });
        }
        let mut expect_remove = Vec::new();
        if !gone.is_empty() {
            expect_remove.push(FdbOp::RemoveMacs { addr: ip(2), macs: gone });
        }
        let adds: Vec<FdbOp> =
            ops.iter().filter(|op| matches!(op, FdbOp::AddMacs { .. })).cloned().collect();
        let removes: Vec<FdbOp> =
            ops.iter().filter(|op| matches!(op, FdbOp::RemoveMacs { .. })).cloned().collect();
        prop_assert_eq!(adds, expect_add);
        prop_assert_eq!(removes, expect_remove);
        // Adds first, removals last, pin changes between.
        let add_at = ops.iter().position(|op| matches!(op, FdbOp::AddMacs { .. }));
        let remove_at = ops.iter().position(|op| matches!(op, FdbOp::RemoveMacs { .. }));
        prop_assert!(add_at.is_none_or(|i| i == 0), "adds first: {:?}", ops);
        prop_assert!(remove_at.is_none_or(|i| i == ops.len() - 1), "removals last: {:?}", ops);
        // The same announcement on the sleeve leaves the device alone.
        let mut pins = Pins::new(true);
        let ops = pins.handle_announcement(Some(&old), &new, SLEEVE, Some(ip(2)), &own());
        let pins_only = ops.iter().all(|op| matches!(op, FdbOp::Pin { .. } | FdbOp::Unpin { .. }));
        prop_assert!(pins_only, "device touched off fastdp: {:?}", ops);
    }

    #[test]
    fn joins_and_leaves_keep_pins_and_device_in_line(
        actions in proptest::collection::vec(arb_action(), 1..60),
    ) {
        let mut m = Model::new();
        for action in actions {
            m.step(action)?;
        }
        // Every peer goes: nothing is left behind for them.
        for p in PEERS {
            m.step(Action::Forget { peer: p })?;
        }
        prop_assert_eq!(m.pins.iter().count(), 0);
        prop_assert!(m.kernel.device.is_empty() && m.kernel.flood.is_empty());
        for held in m.kernel.pins.keys() {
            prop_assert!(m.conflicted.contains(held), "pin left behind: {:?}", held);
        }
    }
}

const PEERS: [u8; 3] = [2, 3, 4];

/// The rule, written out again so the model does not trust [`pinnable`].
fn may_pin(mac: &MacAddr, own: &Announcement) -> bool {
    *mac != MacAddr::ZERO && *mac != own.bridge_mac && !own.macs.contains(mac)
}

/// MACs 0 (all-zero) to 7, and this router's 100 to 102, so peers share some and announce
/// this router's now and then.
fn arb_mac_id() -> impl Strategy<Value = u8> {
    prop_oneof![0u8..8, 100u8..103]
}

#[derive(Clone, Debug)]
enum Action {
    Announce {
        peer: u8,
        bridge: u8,
        macs: BTreeSet<u8>,
        theirs: bool,
    },
    Forget {
        peer: u8,
    },
    OwnPods {
        macs: BTreeSet<u8>,
    },
    /// 0: not connected, 1: sleeve, 2 and 3: fastdp.
    Path {
        peer: u8,
        path: u8,
    },
}

fn arb_action() -> impl Strategy<Value = Action> {
    let peer = proptest::sample::select(PEERS.to_vec());
    prop_oneof![
        4 => (peer.clone(), arb_mac_id(), proptest::collection::btree_set(arb_mac_id(), 0..5), any::<bool>())
            .prop_map(|(peer, bridge, macs, theirs)| Action::Announce { peer, bridge, macs, theirs }),
        1 => peer.clone().prop_map(|peer| Action::Forget { peer }),
        1 => proptest::collection::btree_set(1u8..8, 0..3).prop_map(|macs| Action::OwnPods { macs }),
        4 => (peer, 0u8..4).prop_map(|(peer, path)| Action::Path { peer, path }),
    ]
}

/// The kernel's side: the bridge's pins (one port per MAC; a pin replaces) and the VXLAN
/// device's flood and MAC entries.
#[derive(Debug, Default)]
struct Kernel {
    pins: BTreeMap<MacAddr, Port>,
    flood: BTreeSet<IpAddr>,
    device: BTreeSet<(IpAddr, MacAddr)>,
}

impl Kernel {
    fn apply(&mut self, ops: &[FdbOp]) {
        for op in ops {
            match op {
                FdbOp::AddMacs { addr, macs } => {
                    self.device.extend(macs.iter().map(|m| (*addr, *m)));
                }
                FdbOp::RemoveMacs { addr, macs } => {
                    for m in macs {
                        self.device.remove(&(*addr, *m));
                    }
                }
                FdbOp::Join { addr, macs } => {
                    self.flood.insert(*addr);
                    self.device.extend(macs.iter().map(|m| (*addr, *m)));
                }
                // Learned bridge entries are not modelled; pins are sticky and stay.
                FdbOp::Leave { addr, .. } | FdbOp::Flush { addr, .. } => {
                    self.flood.remove(addr);
                    self.device.retain(|(a, _)| a != addr);
                }
                FdbOp::ForgetOnTap { .. } => {}
                FdbOp::Pin { port, mac, .. } => {
                    self.pins.insert(*mac, *port);
                }
                // Deleting on a port the entry is not on fails (absent), and changes nothing.
                FdbOp::Unpin { port, mac } => {
                    if self.pins.get(mac) == Some(port) {
                        self.pins.remove(mac);
                    }
                }
            }
        }
    }
}

/// The shell's side, driving [`Pins`] as `router/src/fastdp.rs` does, with a model kernel.
struct Model {
    pins: Pins,
    kernel: Kernel,
    own: Announcement,
    table: Announcements,
    paths: BTreeMap<PeerName, Path>,
    seq: u64,
    /// `own` as it was at each peer's last sync (a change of this router's pods alone does
    /// not resync).
    own_at_sync: BTreeMap<PeerName, Announcement>,
    /// MACs two peers held pinned to different ports at once: the kernel keeps one of the
    /// two, and unpinning the other later may leave it behind.
    conflicted: BTreeSet<MacAddr>,
}

impl Model {
    fn new() -> Self {
        Self {
            pins: Pins::new(true),
            kernel: Kernel::default(),
            own: own(),
            table: Announcements::new(),
            paths: BTreeMap::new(),
            seq: 0,
            own_at_sync: BTreeMap::new(),
            conflicted: BTreeSet::new(),
        }
    }

    fn step(&mut self, action: Action) -> Result<(), TestCaseError> {
        let (peer, ops) = match action {
            Action::Announce {
                peer,
                bridge,
                macs,
                theirs,
            } => {
                self.seq += 1;
                let ids: Vec<u8> = macs.into_iter().collect();
                let new = ann(peer, self.seq, bridge, &ids, theirs);
                let old = self.table.get(name(peer)).cloned();
                self.table.merge(new.clone());
                let path = self.paths.get(&name(peer)).copied();
                let addr = path.map(|_| ip(peer));
                let ops = self
                    .pins
                    .handle_announcement(old.as_ref(), &new, path, addr, &self.own);
                (peer, ops)
            }
            Action::Forget { peer } => {
                self.table.remove(name(peer));
                let ops = match self.paths.remove(&name(peer)) {
                    Some(Path::Fastdp) => {
                        self.pins
                            .handle_left(name(peer), ip(peer), None, None, &self.own)
                    }
                    _ => self.pins.sync(name(peer), None, None, &self.own),
                };
                (peer, ops)
            }
            Action::OwnPods { macs } => {
                self.own.macs = macs.into_iter().map(mac).collect();
                return self.check();
            }
            Action::Path { peer, path } => {
                let new = match path {
                    0 => None,
                    1 => SLEEVE,
                    _ => FASTDP,
                };
                let p = name(peer);
                let old = self.paths.get(&p).copied();
                match new {
                    Some(path) => self.paths.insert(p, path),
                    None => self.paths.remove(&p),
                };
                let a = self.table.get(p).cloned();
                let ops = match (old == FASTDP, new == FASTDP) {
                    (false, true) => {
                        let ops = self
                            .pins
                            .handle_joined(p, ip(peer), new, a.as_ref(), &self.own);
                        let join_first = matches!(ops.first(), Some(FdbOp::Join { .. }));
                        let to_tap = ops.iter().any(|op| {
                            matches!(
                                op,
                                FdbOp::Pin {
                                    port: Port::Tap,
                                    ..
                                }
                            )
                        });
                        prop_assert!(join_first && !to_tap, "joined: {:?}", ops);
                        ops
                    }
                    (true, false) => {
                        let ops = self
                            .pins
                            .handle_left(p, ip(peer), new, a.as_ref(), &self.own);
                        let (last, before) = ops.split_last().unwrap();
                        let pins_before = before.iter().all(|op| {
                            matches!(
                                op,
                                FdbOp::Pin {
                                    port: Port::Tap,
                                    ..
                                } | FdbOp::Unpin { .. }
                            )
                        });
                        prop_assert!(
                            matches!(last, FdbOp::Leave { .. }) && pins_before,
                            "left: {:?}",
                            ops
                        );
                        ops
                    }
                    (false, false) | (true, true) => self.pins.sync(p, new, a.as_ref(), &self.own),
                };
                (peer, ops)
            }
        };
        for op in &ops {
            if let FdbOp::Pin { mac, .. } = op {
                prop_assert!(may_pin(mac, &self.own), "pinned {:?}", mac);
            }
        }
        self.own_at_sync.insert(name(peer), self.own.clone());
        self.kernel.apply(&ops);
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        // The table holds exactly what each peer's path and announcement call for.
        for p in PEERS.map(name) {
            let path = self.paths.get(&p).copied();
            let own = self.own_at_sync.get(&p).unwrap_or(&self.own);
            let want: BTreeMap<MacAddr, Port> = match (path, self.table.get(p)) {
                (Some(path), Some(a)) => {
                    let port = if path == Path::Fastdp {
                        Port::Vxlan
                    } else {
                        Port::Tap
                    };
                    a.macs
                        .iter()
                        .chain([&a.bridge_mac])
                        .filter(|m| may_pin(m, own))
                        .map(|m| (*m, port))
                        .collect()
                }
                _ => BTreeMap::new(),
            };
            let held: BTreeMap<MacAddr, Port> = self
                .pins
                .iter()
                .filter(|(peer, _, _)| *peer == p)
                .map(|(_, m, port)| (m, port))
                .collect();
            prop_assert_eq!(held, want, "pins of {:?}", p);
        }
        // The kernel pins each MAC to its holders' port, and nothing no peer holds.
        let mut holders: BTreeMap<MacAddr, BTreeSet<Port>> = BTreeMap::new();
        for (_, m, port) in self.pins.iter() {
            holders.entry(m).or_default().insert(port);
        }
        for (m, ports) in &holders {
            if ports.len() > 1 {
                self.conflicted.insert(*m);
            }
        }
        let macs: BTreeSet<MacAddr> = holders
            .keys()
            .chain(self.kernel.pins.keys())
            .copied()
            .collect();
        for m in macs.difference(&self.conflicted) {
            let held = holders.get(m).and_then(|p| p.first().copied());
            prop_assert_eq!(
                self.kernel.pins.get(m).copied(),
                held,
                "kernel pin of {:?}",
                m
            );
        }
        // The device holds exactly the announced MACs of the peers on fastdp.
        let mut device = BTreeSet::new();
        let mut flood = BTreeSet::new();
        for (p, path) in &self.paths {
            if *path == Path::Fastdp {
                let i = p.bytes()[5];
                flood.insert(ip(i));
                if let Some(a) = self.table.get(*p) {
                    device.extend(a.macs.iter().map(|m| (ip(i), *m)));
                }
            }
        }
        prop_assert_eq!(&self.kernel.flood, &flood);
        prop_assert_eq!(&self.kernel.device, &device);
        Ok(())
    }
}
