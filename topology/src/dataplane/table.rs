//! The forwarding table: what the data plane forwards by, replaced as a whole by its owner
//! (the daemon, as routes, links and fastdp paths change) and read by the data-plane threads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::mac::MacAddr;
use crate::peer::PeerName;
use crate::routes::Routes;

/// The mesh's routes, by destination: a snapshot of [`Routes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextHops {
    /// Destination → next hop.
    pub unicast: HashMap<PeerName, PeerName>,
    /// Broadcast origin (this router included) → the neighbours to pass it to.
    pub broadcast: HashMap<PeerName, Vec<PeerName>>,
}

impl NextHops {
    /// Takes a snapshot of `routes` for every peer they know.
    pub fn from_routes(routes: &Routes) -> Self {
        let unicast = routes.unicast().into_iter().collect();
        let broadcast = routes
            .graph()
            .names()
            .iter()
            .map(|o| (*o, routes.broadcast_next_hops(*o)))
            .collect();
        Self { unicast, broadcast }
    }
}

/// What the sleeve leaves to fastdp, so every frame reaches each peer by one path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastdpView {
    /// The peers this router reaches over fastdp both ways: its broadcasts reach them through
    /// the VXLAN device, and unicast to them never takes the sleeve.
    pub local: HashSet<PeerName>,
    /// MACs announced by those peers, with the peer: unicast to them is the VXLAN device's.
    pub macs: HashMap<MacAddr, PeerName>,
    /// For every origin, the peers it reaches over fastdp (from its announcements): a sleeve
    /// broadcast from that origin is not delivered here if this router is one.
    pub by_origin: HashMap<PeerName, HashSet<PeerName>>,
}

/// Routes, links and fastdp's share, with what follows from them worked out once per change
/// rather than per frame.
#[derive(Debug, Clone)]
pub struct ForwardingTable {
    local: PeerName,
    hops: Arc<NextHops>,
    fastdp: Arc<FastdpView>,
    /// Peers with a sleeve link up.
    links: HashSet<PeerName>,
    /// The neighbours our own broadcasts go to over the sleeve: in our tree, with a link, and
    /// not wholly served by the VXLAN device.
    own_broadcast: Vec<PeerName>,
}

impl ForwardingTable {
    /// An empty table for the router named `local`.
    pub fn new(local: PeerName) -> Self {
        Self {
            local,
            hops: Arc::default(),
            fastdp: Arc::default(),
            links: HashSet::new(),
            own_broadcast: Vec::new(),
        }
    }

    /// This router's name.
    pub const fn local(&self) -> PeerName {
        self.local
    }

    /// Replaces the routes.
    pub fn set_hops(&mut self, hops: Arc<NextHops>) {
        self.hops = hops;
        self.derive();
    }

    /// Replaces what is left to fastdp.
    pub fn set_fastdp(&mut self, fastdp: Arc<FastdpView>) {
        self.fastdp = fastdp;
        self.derive();
    }

    /// Records whether a sleeve link to `peer` is up.
    pub fn set_link(&mut self, peer: PeerName, up: bool) {
        let changed = if up {
            self.links.insert(peer)
        } else {
            self.links.remove(&peer)
        };
        if changed {
            self.derive();
        }
    }

    /// Whether a sleeve link to `peer` is up.
    pub fn has_link(&self, peer: PeerName) -> bool {
        self.links.contains(&peer)
    }

    /// The routes.
    pub fn hops(&self) -> &NextHops {
        &self.hops
    }

    /// What is left to fastdp.
    pub fn fastdp(&self) -> &FastdpView {
        &self.fastdp
    }

    /// The neighbours our own broadcasts go to over the sleeve.
    pub fn own_broadcast(&self) -> &[PeerName] {
        &self.own_broadcast
    }

    /// The next hop toward `dst`, when it has a link.
    pub(super) fn linked_hop(&self, dst: PeerName) -> Option<PeerName> {
        self.hops
            .unicast
            .get(&dst)
            .copied()
            .filter(|hop| self.has_link(*hop))
    }

    fn derive(&mut self) {
        // A neighbour on fastdp needs no sleeve copy of our broadcasts when every peer we route
        // through it is on fastdp too (our broadcast tree is the unicast next-hop tree).
        #[allow(clippy::disallowed_methods)] // collected into a set: the order does not matter
        let needed: HashSet<PeerName> = self
            .hops
            .unicast
            .iter()
            .filter(|(dst, _)| !self.fastdp.local.contains(*dst))
            .map(|(_, hop)| *hop)
            .collect();
        self.own_broadcast = self
            .hops
            .broadcast
            .get(&self.local)
            .into_iter()
            .flatten()
            .filter(|hop| {
                self.links.contains(*hop)
                    && (!self.fastdp.local.contains(*hop) || needed.contains(*hop))
            })
            .copied()
            .collect();
    }
}
