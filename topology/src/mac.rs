//! The MAC table: which peer each overlay MAC address sits behind, learnt from traffic.
//!
//! Rules:
//! - [`MacTable::learn`] binds a MAC to the peer a frame came from, refreshing its last-seen
//!   time, and reports a MAC that moved from one peer to another.
//! - [`MacTable::expire`] drops entries not seen for `max_age` (Weave uses 10 minutes, which
//!   must exceed 1.5 × the kernel's ARP `base_reachable_time`).
//! - The table holds at most `capacity` entries. Learning a new MAC into a full table evicts
//!   the entry seen least recently (ties: the lowest MAC), so a flood of spoofed source MACs
//!   can only push out idle entries and never grows memory.
//!
//! Pure: time comes in as an argument.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use crate::peer::PeerName;

/// An Ethernet address: a pod's, a bridge's. Its own type, so a MAC is never taken for a peer
/// name (both are six bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The broadcast address, ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Self = Self([0xff; 6]);
    /// The all-zero address, which no interface has.
    pub const ZERO: Self = Self([0; 6]);

    /// Makes an address from its six bytes.
    pub const fn from_bytes(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }

    /// Returns the six bytes.
    pub const fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// Returns true for a group address (broadcast or multicast: the I/G bit is set), which
    /// no frame comes from and which the bridge floods.
    pub const fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What [`MacTable::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// The MAC was bound to a different peer before.
    Moved {
        /// The previous peer.
        from: PeerName,
    },
    /// The MAC was unknown.
    New,
    /// The MAC was already bound to this peer.
    Refreshed,
}

/// A bounded MAC → peer table with idle expiry and least-recently-seen eviction.
#[derive(Clone, Debug)]
pub struct MacTable {
    entries: HashMap<MacAddr, (PeerName, Instant)>,
    by_age: BTreeSet<(Instant, MacAddr)>,
    capacity: usize,
    max_age: Duration,
    evicted: u64,
}

impl MacTable {
    /// Weave's default idle age.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
    /// Default capacity.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    /// Makes an empty table. A capacity of zero is treated as one.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            by_age: BTreeSet::new(),
            capacity: capacity.max(1),
            max_age,
            evicted: 0,
        }
    }

    /// Binds `mac` to `peer` as seen at `now`.
    pub fn learn(&mut self, now: Instant, mac: MacAddr, peer: PeerName) -> Learned {
        if let Some((old_peer, seen)) = self.entries.get_mut(&mac) {
            let (old_peer_v, old_seen) = (*old_peer, *seen);
            *old_peer = peer;
            *seen = now.max(old_seen);
            let new_seen = *seen;
            self.by_age.remove(&(old_seen, mac));
            self.by_age.insert((new_seen, mac));
            return if old_peer_v == peer {
                Learned::Refreshed
            } else {
                Learned::Moved { from: old_peer_v }
            };
        }
        if self.entries.len() >= self.capacity
            && let Some((_, victim)) = self.by_age.pop_first()
        {
            self.entries.remove(&victim);
            self.evicted += 1;
        }
        self.entries.insert(mac, (peer, now));
        self.by_age.insert((now, mac));
        Learned::New
    }

    /// Returns the peer `mac` is bound to.
    pub fn lookup(&self, mac: &MacAddr) -> Option<PeerName> {
        self.entries.get(mac).map(|(p, _)| *p)
    }

    /// Drops entries idle for `max_age` or longer; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(seen, mac)) = self.by_age.first() {
            if now.saturating_duration_since(seen) < self.max_age {
                break;
            }
            self.by_age.pop_first();
            self.entries.remove(&mac);
            n += 1;
        }
        n
    }

    /// Returns when the oldest entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_age.first().map(|(seen, _)| *seen + self.max_age)
    }

    /// The MACs bound to `peer`.
    pub fn macs_of(&self, peer: PeerName) -> Vec<MacAddr> {
        // Oldest first (the age index is ordered; the map is not).
        self.by_age
            .iter()
            .map(|(_, mac)| *mac)
            .filter(|mac| self.entries.get(mac).is_some_and(|(p, _)| *p == peer))
            .collect()
    }

    /// Drops every entry bound to `peer` (when the peer is collected); returns how many.
    pub fn remove_peer(&mut self, peer: PeerName) -> usize {
        let victims: Vec<(Instant, MacAddr)> = self
            .by_age
            .iter()
            .filter(|(_, mac)| self.entries.get(mac).is_some_and(|(p, _)| *p == peer))
            .copied()
            .collect();
        for (seen, mac) in &victims {
            self.by_age.remove(&(*seen, *mac));
            self.entries.remove(mac);
        }
        victims.len()
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns true when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns how many entries were evicted for lack of room.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(b: u8) -> MacAddr {
        MacAddr::from_bytes([b; 6])
    }

    fn p(b: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, b])
    }

    #[test]
    fn learns_moves_expires_and_evicts() {
        #[allow(clippy::disallowed_methods)] // an arbitrary base instant for the test
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = MacTable::new(2, s(10));
        assert_eq!(t.learn(t0, m(1), p(1)), Learned::New);
        assert_eq!(t.learn(t0 + s(1), m(1), p(1)), Learned::Refreshed);
        assert_eq!(
            t.learn(t0 + s(2), m(1), p(2)),
            Learned::Moved { from: p(1) }
        );
        assert_eq!(t.lookup(&m(1)), Some(p(2)));
        assert_eq!(t.learn(t0 + s(3), m(2), p(1)), Learned::New);
        // Full: the least recently seen ([1;6] at t0+2) goes.
        assert_eq!(t.learn(t0 + s(4), m(3), p(1)), Learned::New);
        assert_eq!(t.lookup(&m(1)), None);
        assert_eq!(t.evicted(), 1);
        assert_eq!(t.expire(t0 + s(13)), 1);
        assert_eq!(t.lookup(&m(3)), Some(p(1)));
        assert_eq!(t.remove_peer(p(1)), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn lists_the_macs_behind_a_peer() {
        #[allow(clippy::disallowed_methods)] // an arbitrary base instant for the test
        let t0 = Instant::now();
        let mut t = MacTable::new(8, Duration::from_secs(10));
        t.learn(t0, m(1), p(1));
        t.learn(t0, m(2), p(2));
        t.learn(t0, m(3), p(1));
        let mut of1 = t.macs_of(p(1));
        of1.sort_unstable();
        assert_eq!(of1, vec![m(1), m(3)]);
        assert_eq!(t.macs_of(p(3)), Vec::<MacAddr>::new());
        // Listing changes nothing.
        assert_eq!(t.len(), 3);
    }
}
