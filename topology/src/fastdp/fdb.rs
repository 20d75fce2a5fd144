//! Forwarding-database decisions for fastdp: which entries the VXLAN device holds towards a
//! peer, and which of the bridge's entries weft pins to which tunnel port.
//!
//! Sans-IO. Inputs are the peers' announcements, the path [`super::Fastdp`] chose for each
//! peer and this router's own announcement; outputs are [`FdbOp`]s, which the router's shell
//! applies over netlink one by one, in the order given (the order is part of the decision: a
//! pin moves before the entries it replaces go). Ports are named ([`Port`]), not kernel
//! indexes. The one piece of state is the pins table ([`Pins`]), because whether a MAC may be
//! unpinned depends on the other peers' pins.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Announcement, MacAddr, Path};
use crate::PeerName;

/// A tunnel port of the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// `weft-tap`, the sleeve's device.
    Tap,
    /// `weft-vxlan`, the kernel VXLAN device.
    Vxlan,
}

/// One change to the forwarding databases of the VXLAN device and the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdbOp {
    /// Adds the device's entries for `macs` towards the fastdp peer at `addr`.
    AddMacs {
        /// The peer's underlay address (the VXLAN remote).
        addr: IpAddr,
        /// MACs the peer announced since its previous announcement.
        macs: BTreeSet<MacAddr>,
    },
    /// Like [`FdbOp::Leave`], for a peer that stopped sending to this router over fastdp
    /// after this router left it: what the device and the bridge learned from its VXLAN
    /// frames in between points the wrong way.
    Flush {
        /// The peer's underlay address.
        addr: IpAddr,
        /// The MACs it announces.
        macs: BTreeSet<MacAddr>,
    },
    /// Removes the bridge's learned (unpinned) entry for `mac` on the TAP: the sleeve is
    /// about to leave its peer to fastdp, so the bridge must flood until it learns the MAC
    /// on the VXLAN port.
    ForgetOnTap {
        /// The MAC.
        mac: MacAddr,
    },
    /// The peer at `addr` joined fastdp: adds its flood entry and an entry per MAC.
    Join {
        /// The peer's underlay address.
        addr: IpAddr,
        /// The MACs it announces.
        macs: BTreeSet<MacAddr>,
    },
    /// The peer at `addr` left fastdp: every device entry towards it goes, and so do the
    /// bridge's unpinned entries on the VXLAN port for those MACs and for `macs`.
    Leave {
        /// The peer's underlay address.
        addr: IpAddr,
        /// The MACs it announces.
        macs: BTreeSet<MacAddr>,
    },
    /// Pins the bridge's entry for `mac` to `port` (created, or moved from another port).
    /// The shell reports a failure with [`Pins::handle_pin_failed`].
    Pin {
        /// The peer the pin is for.
        peer: PeerName,
        /// The port.
        port: Port,
        /// The MAC.
        mac: MacAddr,
    },
    /// Removes the device's entries for `macs` towards the fastdp peer at `addr`.
    RemoveMacs {
        /// The peer's underlay address.
        addr: IpAddr,
        /// MACs the peer withdrew since its previous announcement.
        macs: BTreeSet<MacAddr>,
    },
    /// Removes the bridge's pinned entry for `mac` on `port` (absent is fine).
    Unpin {
        /// The port.
        port: Port,
        /// The MAC.
        mac: MacAddr,
    },
}

/// The bridge entries pinned for each peer's announced MACs (and its bridge's): the VXLAN
/// port while the peer is on fastdp, the TAP on the sleeve, none when it is not connected
/// (relayed peers are left to learning).
///
/// Pinned, because in a change-over the peer keeps sending by the old path for one
/// control-message hop, and a learned entry would follow those frames back to the port this
/// router no longer sends that peer by.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    /// Whether there is a TAP (without one, sleeve peers get no pins).
    tap: bool,
    by_peer: BTreeMap<PeerName, BTreeMap<MacAddr, Port>>,
}

impl Pins {
    /// An empty table; `tap` is whether the bridge has a TAP port.
    pub fn new(tap: bool) -> Self {
        Self {
            tap,
            by_peer: BTreeMap::new(),
        }
    }

    /// The port `peer`'s pin of `mac` is on, if it has one.
    pub fn port(&self, peer: PeerName, mac: MacAddr) -> Option<Port> {
        self.by_peer.get(&peer)?.get(&mac).copied()
    }

    /// Every pin held, by peer.
    pub fn iter(&self) -> impl Iterator<Item = (PeerName, MacAddr, Port)> + '_ {
        self.by_peer
            .iter()
            .flat_map(|(peer, pins)| pins.iter().map(|(mac, port)| (*peer, *mac, *port)))
    }

    /// Brings `peer`'s pins in line with its `path` (`None`: not connected) and its latest
    /// announcement; `own` is this router's announcement (its bridge and pods are never
    /// pinned to a tunnel, whatever a peer announces).
    ///
    /// Unpins come first, then pins; a MAC another peer also pins keeps that pin.
    pub fn sync(
        &mut self,
        peer: PeerName,
        path: Option<Path>,
        announced: Option<&Announcement>,
        own: &Announcement,
    ) -> Vec<FdbOp> {
        let mut want: BTreeMap<MacAddr, Port> = BTreeMap::new();
        if let (Some(port), Some(a)) = (self.port_for(path), announced) {
            for mac in a.macs.iter().chain(std::iter::once(&a.bridge_mac)) {
                if pinnable(mac, own) {
                    want.insert(*mac, port);
                }
            }
        }
        let have = self.by_peer.remove(&peer).unwrap_or_default();
        let mut ops = Vec::new();
        for (mac, port) in &have {
            // A MAC that stays is moved by its pin below (a pin replaces), not unpinned.
            if !want.contains_key(mac) && !self.claimed(mac) {
                ops.push(FdbOp::Unpin {
                    port: *port,
                    mac: *mac,
                });
            }
        }
        for (mac, port) in &want {
            if have.get(mac) != Some(port) {
                ops.push(FdbOp::Pin {
                    peer,
                    port: *port,
                    mac: *mac,
                });
            }
        }
        if !want.is_empty() {
            self.by_peer.insert(peer, want);
        }
        ops
    }

    /// A new announcement `new` was taken into the table (`old` is the one it replaced), from
    /// a peer whose path is `path` and underlay address `addr` (both `None` when the core does
    /// not know it).
    ///
    /// On fastdp the device's entries follow the MAC set: the added ones before the pins, the
    /// withdrawn ones after (a MAC never points nowhere). A peer that announced this router as
    /// a fastdp peer and no longer does, while this router has left fastdp towards it, gets a
    /// [`FdbOp::Flush`] last.
    pub fn handle_announcement(
        &mut self,
        old: Option<&Announcement>,
        new: &Announcement,
        path: Option<Path>,
        addr: Option<IpAddr>,
        own: &Announcement,
    ) -> Vec<FdbOp> {
        let empty = BTreeSet::new();
        let old_macs = old.map_or(&empty, |o| &o.macs);
        let mut ops = Vec::new();
        match addr.filter(|_| path == Some(Path::Fastdp)) {
            Some(addr) => {
                let added: BTreeSet<MacAddr> = new.macs.difference(old_macs).copied().collect();
                let gone: BTreeSet<MacAddr> = old_macs.difference(&new.macs).copied().collect();
                if !added.is_empty() {
                    ops.push(FdbOp::AddMacs { addr, macs: added });
                }
                ops.extend(self.sync(new.origin, path, Some(new), own));
                if !gone.is_empty() {
                    ops.push(FdbOp::RemoveMacs { addr, macs: gone });
                }
            }
            None => ops.extend(self.sync(new.origin, path, Some(new), own)),
        }
        let was_theirs = old.is_some_and(|o| o.fastdp_peers.contains(&own.origin));
        if was_theirs
            && !new.fastdp_peers.contains(&own.origin)
            && path != Some(Path::Fastdp)
            && let Some(addr) = addr
        {
            ops.push(FdbOp::Flush {
                addr,
                macs: new.macs.clone(),
            });
        }
        ops
    }

    /// `peer` at `addr` joined fastdp: its device entries, then its pins move to the VXLAN
    /// port (so its frames still in flight over the sleeve cannot move them back).
    pub fn handle_joined(
        &mut self,
        peer: PeerName,
        addr: IpAddr,
        path: Option<Path>,
        announced: Option<&Announcement>,
        own: &Announcement,
    ) -> Vec<FdbOp> {
        let mut ops = vec![FdbOp::Join {
            addr,
            macs: announced.map(|a| a.macs.clone()).unwrap_or_default(),
        }];
        ops.extend(self.sync(peer, path, announced, own));
        ops
    }

    /// `peer` at `addr` left fastdp: its pins move to the TAP (or go), then the device's
    /// entries go. Never the other way round: the bridge would hand its MACs to a port that
    /// can no longer send them, and its VXLAN frames in flight could move them back.
    pub fn handle_left(
        &mut self,
        peer: PeerName,
        addr: IpAddr,
        path: Option<Path>,
        announced: Option<&Announcement>,
        own: &Announcement,
    ) -> Vec<FdbOp> {
        let mut ops = self.sync(peer, path, announced, own);
        ops.push(FdbOp::Leave {
            addr,
            macs: announced.map(|a| a.macs.clone()).unwrap_or_default(),
        });
        ops
    }

    /// The bridge entries on the TAP to forget for `peer`, which just joined fastdp: the MACs
    /// the sleeve learned behind it (`learned`) that it has not announced, so not pinned.
    pub fn forget_on_tap(
        &self,
        peer: PeerName,
        learned: impl IntoIterator<Item = MacAddr>,
    ) -> Vec<FdbOp> {
        if !self.tap {
            return Vec::new();
        }
        let pinned = self.by_peer.get(&peer);
        learned
            .into_iter()
            .filter(|mac| !pinned.is_some_and(|p| p.contains_key(mac)))
            .map(|mac| FdbOp::ForgetOnTap { mac })
            .collect()
    }

    /// The pins an earlier run left: of the bridge's sticky entries on the tunnel ports
    /// (`pinned`), those no peer's pin claims on that port.
    pub fn stale(&self, pinned: impl IntoIterator<Item = (Port, MacAddr)>) -> Vec<FdbOp> {
        pinned
            .into_iter()
            .filter(|(port, mac)| !self.by_peer.values().any(|p| p.get(mac) == Some(port)))
            .map(|(port, mac)| FdbOp::Unpin { port, mac })
            .collect()
    }

    /// The shell could not apply `peer`'s [`FdbOp::Pin`] of `mac` to `port`: the pin is not
    /// held, so the next sync tries it again.
    pub fn handle_pin_failed(&mut self, peer: PeerName, port: Port, mac: MacAddr) {
        let Some(pins) = self.by_peer.get_mut(&peer) else {
            return;
        };
        if pins.get(&mac) == Some(&port) {
            pins.remove(&mac);
        }
        if pins.is_empty() {
            self.by_peer.remove(&peer);
        }
    }

    fn port_for(&self, path: Option<Path>) -> Option<Port> {
        match path? {
            Path::Fastdp => Some(Port::Vxlan),
            Path::Sleeve(_) => self.tap.then_some(Port::Tap),
        }
    }

    /// Whether a peer's pin holds `mac` (the peer being synced is out of the table then).
    fn claimed(&self, mac: &MacAddr) -> bool {
        self.by_peer.values().any(|p| p.contains_key(mac))
    }
}

/// Whether a peer's announced `mac` may be pinned to a tunnel: never all-zero, never this
/// router's bridge or one of its pods.
fn pinnable(mac: &MacAddr, own: &Announcement) -> bool {
    *mac != MacAddr::ZERO && *mac != own.bridge_mac && !own.macs.contains(mac)
}

#[cfg(test)]
mod tests;
