//! The forwarding decisions, frame by frame.

use std::time::{Duration, Instant};

use super::ethernet::Ethernet;
use super::{BROADCAST, DropReason, ForwardingTable};
use crate::mac::{MacAddr, MacTable};
use crate::peer::PeerName;
use crate::sleeve::{MessageType, Packet, Repr};

/// How long a (MAC, peer) pair learned from a delivered frame is not reported again while it
/// repeats: the MAC table is locked when the pair changes rather than per frame, and an
/// active MAC is still refreshed this often, long before it expires.
pub const RELEARN_AFTER: Duration = Duration::from_millis(50);

/// Where a frame read from the TAP goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured<'t> {
    /// For a pod of this node (the bridge delivers it): nothing to send.
    Local,
    /// To `dst`'s router, through neighbour `hop`.
    Unicast {
        /// The peer whose TAP the frame is for.
        dst: PeerName,
        /// The neighbour to send it to.
        hop: PeerName,
        /// `dst` is on fastdp; the frame was queued on the TAP before the bridge's entry
        /// moved to the VXLAN device, and is carried rather than lost.
        late_for_fastdp: bool,
    },
    /// To every peer ([`BROADCAST`]): one copy to each of `hops`.
    Broadcast {
        /// The neighbours to send a copy to (none: nobody to reach over the sleeve).
        hops: &'t [PeerName],
        /// A unicast MAC no peer is known for, flooded.
        unknown_unicast: bool,
    },
    /// Not sent.
    Drop(DropReason),
}

/// What becomes of an authenticated datagram.
#[derive(Debug, Clone)]
pub enum Arrived<'t> {
    /// Not delivered, not relayed.
    Drop(DropReason),
    /// A chunk for this router: reassemble it and write the frame to the TAP.
    Deliver,
    /// For another peer: reseal for `hop` with the hop limit set to `hop_limit` and send.
    Relay {
        /// The neighbour to send it to.
        hop: PeerName,
        /// The datagram's new hop limit.
        hop_limit: u8,
    },
    /// A broadcast chunk: relay a copy to each of `relay` (hop limit set to `hop_limit`),
    /// and deliver it here when `deliver`.
    Broadcast {
        /// The neighbours below this router in the origin's broadcast tree.
        relay: Relays<'t>,
        /// The copies' new hop limit.
        hop_limit: u8,
        /// Deliver it here too; false when the origin's VXLAN device did already.
        deliver: bool,
        /// Neighbours were due a copy but the hop limit ran out.
        hop_limit_spent: bool,
    },
    /// A path MTU probe from the link's peer: answer it.
    PmtuProbe,
    /// A path MTU probe's answer from the link's peer.
    PmtuAck,
}

/// The neighbours a broadcast is relayed to: the origin's tree below this router, without
/// the neighbour it came from or any without a link.
#[derive(Debug, Clone)]
pub struct Relays<'t> {
    hops: std::slice::Iter<'t, PeerName>,
    from: PeerName,
    table: &'t ForwardingTable,
}

impl Iterator for Relays<'_> {
    type Item = PeerName;

    fn next(&mut self) -> Option<PeerName> {
        let (from, table) = (self.from, self.table);
        self.hops
            .by_ref()
            .copied()
            .find(|hop| *hop != from && table.has_link(*hop))
    }
}

/// A MAC seen behind a peer, for the MAC table's owner to learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learn {
    /// The frame's source address.
    pub mac: MacAddr,
    /// The peer whose router sent the frame.
    pub peer: PeerName,
}

/// One data-plane thread's forwarding state: the rules, and the last MAC it reported.
#[derive(Debug, Clone)]
pub struct Forwarder {
    local: PeerName,
    last_learned: Option<Learn>,
    relearn_at: Option<Instant>,
}

impl Forwarder {
    /// A forwarder for the router named `local`.
    pub const fn new(local: PeerName) -> Self {
        Self {
            local,
            last_learned: None,
            relearn_at: None,
        }
    }

    /// Decides where `frame` (read from the TAP: virtio_net_hdr, then Ethernet; its header at
    /// least) goes: to the peer its destination MAC was learned behind (or announced by over
    /// fastdp), else to everyone.
    pub fn handle_captured<'t>(
        &self,
        table: &'t ForwardingTable,
        macs: &MacTable,
        frame: &[u8],
    ) -> Captured<'t> {
        let Some(eth) = Ethernet::from_tap(frame) else {
            return Captured::Drop(DropReason::Malformed);
        };
        let mac = eth.dst();
        let broadcast = |unknown_unicast| Captured::Broadcast {
            hops: table.own_broadcast(),
            unknown_unicast,
        };
        if mac.is_group() {
            return broadcast(false);
        }
        // Learned from the sleeve first: a peer that just went onto fastdp still sent over the
        // sleeve moments ago, so the bridge may hand its frames here rather than to the VXLAN
        // device; carry them (a duplicate at worst) rather than drop them.
        let (dst, late_for_fastdp) = match macs.lookup(&mac) {
            Some(peer) => (peer, false),
            None => match table.fastdp().macs.get(&mac) {
                // The bridge has this MAC pinned to the VXLAN port, so the frame was queued
                // on the TAP before the pin moved: carry it, or it is lost.
                Some(peer) => (*peer, true),
                None => return broadcast(true),
            },
        };
        if dst == self.local {
            return Captured::Local;
        }
        match table.linked_hop(dst) {
            Some(hop) => Captured::Unicast {
                dst,
                hop,
                late_for_fastdp,
            },
            None => Captured::Drop(DropReason::NoRoute),
        }
    }

    /// Checks a received datagram's header before the shell opens it: only sealed types
    /// (chunks, path MTU probes and acks) are taken; plain chunks are never sent by a router.
    ///
    /// # Errors
    /// [`DropReason::Malformed`] for anything else.
    pub fn check(datagram: &[u8]) -> Result<Repr, DropReason> {
        match Packet::new_checked(datagram).and_then(|p| Repr::parse(&p)) {
            Ok(r)
                if matches!(
                    r.msg_type,
                    MessageType::SealedChunk
                        | MessageType::SealedPmtuProbe
                        | MessageType::SealedPmtuAck
                ) =>
            {
                Ok(r)
            }
            Ok(_) | Err(_) => Err(DropReason::Malformed),
        }
    }

    /// Decides the fate of a datagram whose header `repr` checked and which opened with the
    /// session of neighbour `from`.
    pub fn handle_opened<'t>(
        &self,
        table: &'t ForwardingTable,
        from: PeerName,
        repr: &Repr,
    ) -> Arrived<'t> {
        let (src, dst) = (
            PeerName::from_bytes(repr.src),
            PeerName::from_bytes(repr.dst),
        );
        if repr.msg_type != MessageType::SealedChunk {
            // Path MTU probes and acks: one hop, from the link's own peer, to us.
            if src != from || dst != self.local {
                return Arrived::Drop(DropReason::Malformed);
            }
            return if repr.msg_type == MessageType::SealedPmtuProbe {
                Arrived::PmtuProbe
            } else {
                Arrived::PmtuAck
            };
        }
        if src == self.local {
            return Arrived::Drop(DropReason::Loop);
        }
        if dst == self.local {
            return Arrived::Deliver;
        }
        let hop_limit = repr.hop_limit.saturating_sub(1);
        if dst == BROADCAST {
            let hops = table
                .hops()
                .broadcast
                .get(&src)
                .map_or(&[][..], Vec::as_slice);
            let mut relay = Relays {
                hops: hops.iter(),
                from,
                table,
            };
            let hop_limit_spent = hop_limit == 0 && relay.clone().next().is_some();
            if hop_limit == 0 {
                relay.hops = [].iter();
            }
            let by_fastdp = table
                .fastdp()
                .by_origin
                .get(&src)
                .is_some_and(|peers| peers.contains(&self.local));
            return Arrived::Broadcast {
                relay,
                hop_limit,
                deliver: !by_fastdp,
                hop_limit_spent,
            };
        }
        match table.linked_hop(dst) {
            Some(hop) if hop != from => {
                if hop_limit == 0 {
                    Arrived::Drop(DropReason::HopLimit)
                } else {
                    Arrived::Relay { hop, hop_limit }
                }
            }
            _ => Arrived::Drop(DropReason::NoRoute),
        }
    }

    /// A frame from `origin`'s router was delivered to the TAP: returns the source MAC to
    /// learn behind `origin`, unless it was reported within [`RELEARN_AFTER`] (or is a group
    /// address, or the frame is a runt).
    pub fn handle_delivered(
        &mut self,
        now: Instant,
        origin: PeerName,
        frame: &[u8],
    ) -> Option<Learn> {
        let mac = Ethernet::from_tap(frame)?.src();
        if mac.is_group() {
            return None;
        }
        let learn = Learn { mac, peer: origin };
        if self.last_learned == Some(learn) && self.relearn_at.is_some_and(|at| now < at) {
            return None;
        }
        self.last_learned = Some(learn);
        self.relearn_at = Some(now + RELEARN_AFTER);
        Some(learn)
    }
}
