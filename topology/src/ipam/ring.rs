//! The ring: which peer owns which part of the allocation range, as a state-based CRDT.
//!
//! The range is a set of offsets `0..size` (IPv4 only: offsets are `u32` inside one CIDR, see
//! [`super::Range`]). Tokens are sorted offsets; the entry at token `t` owns `[t, next token)`,
//! the last one up to `size` (no wrap: the first token is always 0). An entry carries its
//! owner and a version.
//!
//! Merge is a per-token join: tokens are never removed, and for one token the entry with the
//! greater `(version, owner)` wins. That join is commutative, associative and idempotent, so
//! rings converge whatever order gossip arrives in. Safety comes from who may *write*:
//!
//! - Only the owner of an entry changes it (gives it away with `version + 1`) or inserts a
//!   token inside it (splitting it). Ownership of every address therefore has one linear
//!   history, written by its successive owners, each of whom stopped allocating in it before
//!   handing it on. No two peers can believe they own one address at the same time, whatever
//!   the partitions, as long as rings travel whole (a receiver learns a transfer together
//!   with every token that existed when it was made).
//! - The one exception is a takeover ([`Ring::take_over`], from `rmpeer` or agreed
//!   auto-reclaim), which bumps versions by [`TAKEOVER_BUMP`] and is guarded by the engine.

use std::collections::BTreeMap;

use crate::peer::PeerName;

/// The version added by a takeover, large enough to beat any history the dead owner wrote.
pub const TAKEOVER_BUMP: u32 = 0x0001_0000;

/// One ring entry: the owner of `[token, next token)` and how many times it changed hands.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Entry {
    /// Compared first: later versions win.
    pub version: u32,
    /// Ties (only possible after unsafe operations) go to the greater name, deterministically.
    pub owner: PeerName,
}

/// The ring itself: tokens to entries, over offsets `0..size`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ring {
    size: u32,
    entries: BTreeMap<u32, Entry>,
}

/// What a merge did to the receiver's ring.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Merged {
    /// True when anything changed.
    pub changed: bool,
    /// Ranges `[start, end)` that `me` owned before the merge and no longer owns. Empty unless
    /// someone took over our entries (rmpeer of a live peer, or lost state): the engine reports
    /// them as conflicts.
    pub lost: Vec<(u32, u32)>,
}

/// Why a ring from a peer was refused before merging.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RingError {
    /// The ring is empty or does not start at offset 0.
    #[error("ring does not start at offset 0")]
    NoStart,
    /// A token lies outside the range.
    #[error("token outside the range")]
    OutOfRange,
}

impl Ring {
    /// Makes the initial ring: `0..size` split into equal consecutive pieces, one per seed,
    /// in the order given (the caller sorts and dedups), all at version 1.
    ///
    /// # Panics
    ///
    /// Never: an empty seed list or a size too small for the seeds gives the whole range to
    /// the first seed or fewer pieces.
    pub fn seeded(size: u32, seeds: &[PeerName]) -> Self {
        let mut entries = BTreeMap::new();
        let n = u64::try_from(seeds.len().max(1)).unwrap_or(1);
        for (i, seed) in seeds.iter().enumerate() {
            let i = u64::try_from(i).unwrap_or(0);
            // size < 2^32 and i < n, so the product fits in u64 and the quotient in u32.
            let token = u32::try_from(u64::from(size) * i / n).unwrap_or(0);
            entries.entry(token).or_insert(Entry {
                version: 1,
                owner: *seed,
            });
        }
        Self { size, entries }
    }

    /// Makes a ring from decoded entries, checking it covers the range from offset 0.
    ///
    /// # Errors
    ///
    /// [`RingError`] when a token is out of range or the ring does not start at 0.
    pub fn from_entries(size: u32, entries: BTreeMap<u32, Entry>) -> Result<Self, RingError> {
        match entries.keys().next() {
            Some(0) => {}
            _ => return Err(RingError::NoStart),
        }
        if entries.keys().next_back().is_some_and(|&t| t >= size) {
            return Err(RingError::OutOfRange);
        }
        Ok(Self { size, entries })
    }

    /// Returns the number of offsets in the range.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Returns the tokens and entries, sorted by token.
    pub fn entries(&self) -> &BTreeMap<u32, Entry> {
        &self.entries
    }

    /// Returns every entry as `(start, end, entry)`, sorted.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u32, Entry)> + '_ {
        let mut it = self.entries.iter().peekable();
        std::iter::from_fn(move || {
            let (&start, &e) = it.next()?;
            let end = it.peek().map_or(self.size, |(t, _)| **t);
            Some((start, end, e))
        })
    }

    /// Returns the ranges `owner` owns, sorted, adjacent ones coalesced.
    pub fn owned_by(&self, owner: PeerName) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for (s, e, entry) in self.ranges() {
            if entry.owner != owner {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Returns the entry owning `offset` with its bounds.
    pub fn owner_of(&self, offset: u32) -> Option<(u32, u32, Entry)> {
        let (&start, &entry) = self.entries.range(..=offset).next_back()?;
        let end = self
            .entries
            .range(offset.checked_add(1)?..)
            .next()
            .map_or(self.size, |(&t, _)| t);
        (offset < self.size).then_some((start, end, entry))
    }

    /// Returns the addresses each owner holds, sorted by owner.
    pub fn totals(&self) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for (s, e, entry) in self.ranges() {
            *out.entry(entry.owner).or_insert(0) += u64::from(e - s);
        }
        out
    }

    /// Joins `other` into this ring (see the module doc) and reports what `me` lost.
    pub fn merge(&mut self, other: &Self, me: PeerName) -> Merged {
        let before = self.owned_by(me);
        let mut changed = false;
        for (&token, &theirs) in &other.entries {
            match self.entries.get_mut(&token) {
                Some(ours) if *ours >= theirs => {}
                Some(ours) => {
                    *ours = theirs;
                    changed = true;
                }
                None => {
                    self.entries.insert(token, theirs);
                    changed = true;
                }
            }
        }
        let mut lost = Vec::new();
        if changed {
            let after = self.owned_by(me);
            for (s, e) in before {
                subtract(s, e, &after, &mut lost);
            }
        }
        Merged { changed, lost }
    }

    /// Gives `[start, end)` to `to`. The range must lie inside one entry that `me` owns.
    /// Inserts at most two tokens and returns false (changing nothing) when the range is
    /// empty or not wholly ours.
    pub fn transfer(&mut self, start: u32, end: u32, me: PeerName, to: PeerName) -> bool {
        if start >= end || end > self.size {
            return false;
        }
        let Some((es, ee, entry)) = self.owner_of(start) else {
            return false;
        };
        if entry.owner != me || end > ee {
            return false;
        }
        let next = Entry {
            version: entry.version.saturating_add(1),
            owner: me,
        };
        if end < ee {
            // We keep the tail; a fresh token, so no peer knows an older entry for it.
            self.entries.insert(end, next);
        }
        let given = Entry {
            version: entry.version.saturating_add(1),
            owner: to,
        };
        if start > es {
            self.entries.insert(start, given);
        } else {
            self.entries.insert(es, given);
        }
        true
    }

    /// Gives every entry of `dead` to `me` with versions bumped by [`TAKEOVER_BUMP`]. Returns
    /// the addresses taken. The unsafe operation: the engine calls it only for peers gone from
    /// the topology (rmpeer) or agreed dead by the owners (auto-reclaim).
    pub fn take_over(&mut self, dead: PeerName, me: PeerName) -> u64 {
        let mut taken = 0;
        let ranges: Vec<_> = self.ranges().collect();
        for (s, e, entry) in ranges {
            if entry.owner == dead {
                self.entries.insert(
                    s,
                    Entry {
                        version: entry.version.saturating_add(TAKEOVER_BUMP),
                        owner: me,
                    },
                );
                taken += u64::from(e - s);
            }
        }
        taken
    }
}

/// Appends to `out` the parts of `[s, e)` not covered by the sorted, disjoint `cover`.
fn subtract(s: u32, e: u32, cover: &[(u32, u32)], out: &mut Vec<(u32, u32)>) {
    let mut cur = s;
    for &(cs, ce) in cover {
        if ce <= cur || cs >= e {
            continue;
        }
        if cs > cur {
            out.push((cur, cs));
        }
        cur = cur.max(ce);
        if cur >= e {
            return;
        }
    }
    if cur < e {
        out.push((cur, e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, b])
    }

    #[test]
    fn seeded_splits_evenly() {
        let r = Ring::seeded(1024, &[n(1), n(2), n(3), n(4)]);
        let got: Vec<_> = r.ranges().map(|(s, e, x)| (s, e, x.owner)).collect();
        assert_eq!(
            got,
            vec![
                (0, 256, n(1)),
                (256, 512, n(2)),
                (512, 768, n(3)),
                (768, 1024, n(4))
            ]
        );
    }

    #[test]
    fn transfer_splits_and_merge_propagates() {
        let mut a = Ring::seeded(1024, &[n(1)]);
        assert!(a.transfer(512, 768, n(1), n(2)));
        assert_eq!(a.owned_by(n(1)), vec![(0, 512), (768, 1024)]);
        assert_eq!(a.owned_by(n(2)), vec![(512, 768)]);
        assert!(
            !a.transfer(500, 600, n(1), n(3)),
            "straddles an entry we gave away"
        );
        let mut b = Ring::seeded(1024, &[n(1)]);
        let m = b.merge(&a, n(2));
        assert!(m.changed && m.lost.is_empty());
        assert_eq!(b, a);
        assert!(!b.merge(&a, n(2)).changed, "idempotent");
    }

    #[test]
    fn takeover_beats_history_and_reports_loss() {
        let mut a = Ring::seeded(1024, &[n(1), n(2)]);
        let mut b = a.clone();
        assert_eq!(b.take_over(n(1), n(2)), 512);
        let m = a.merge(&b, n(1));
        assert_eq!(m.lost, vec![(0, 512)]);
        assert_eq!(a.owned_by(n(2)), vec![(0, 1024)]);
    }

    #[test]
    fn owner_of_bounds() {
        let mut a = Ring::seeded(16, &[n(1)]);
        assert!(a.transfer(4, 8, n(1), n(2)));
        assert_eq!(
            a.owner_of(5).map(|x| (x.0, x.1, x.2.owner)),
            Some((4, 8, n(2)))
        );
        assert_eq!(a.owner_of(15).map(|x| (x.0, x.1)), Some((8, 16)));
        assert_eq!(a.owner_of(16), None);
    }

    #[test]
    fn subtract_works() {
        let mut out = Vec::new();
        subtract(0, 10, &[(2, 3), (5, 12)], &mut out);
        assert_eq!(out, vec![(0, 2), (3, 5)]);
    }
}
