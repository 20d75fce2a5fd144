//! The peer table: what one node believes about every peer, the merge of gossiped records, the
//! view digests used for anti-entropy, and garbage collection of unreachable peers.
//!
//! Merge rule: for each name the table keeps the record with the greatest
//! [`PeerInfo::precedence`] (version, then uid, then content). Applying records is therefore
//! idempotent, commutative and associative: the table after applying any multiset of records,
//! in any order, any number of times, is the per-name maximum.
//!
//! Garbage collection follows Weave: a peer is kept while it is reachable from us by following
//! connections (in either state) that known records list. Two paths find unreachable peers:
//! a cheap one that removes *orphans* (records no known record points at), cascading, and a
//! breadth-first search for whole components cut off from us.
//!
//! The table is dense: names are interned to small integers by a [`PeerNames`] (shared by all
//! tables in a process when the engines are given the same one), each record memoises its
//! remotes' indices, and the per-peer state lives in `Vec`s indexed by them, so a probe is one
//! memory access. Nothing depends on the order of the indices: every list the table returns
//! is sorted by name.

use std::hash::{BuildHasher, Hasher};

use crate::peer::{PeerInfo, PeerName, PeerNames, Record, RecordKey};
use crate::wire::{BUCKETS, Entry};

/// What applying one record did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Applied {
    /// The name was unknown; the record was added.
    Added,
    /// The record was not newer than the one held; nothing changed.
    Ignored,
    /// The record replaced an older one.
    Replaced {
        /// True when the new record lists fewer connections than the old (some were removed).
        removed_connections: bool,
    },
}

/// The peer table of one node. Always holds the node's own record.
#[derive(Clone, Debug)]
pub struct Peers {
    ours: PeerName,
    own_idx: u32,
    names: PeerNames,
    /// Per name index: the record held and its key.
    slots: Vec<Slot>,
    /// Per name index: in-degree and tree parent, apart from `slots` because a new record
    /// touches these for each of its remotes (8 bytes each, dense in cache).
    links: Vec<Link>,
    records: usize,
    digest: u64,
    buckets: [u64; BUCKETS],
    /// Records held per bucket, so that an anti-entropy answer picks its buckets before it
    /// collects their entries.
    bucket_counts: [u32; BUCKETS],
    /// Orphans that arrived as such ("fresh"): during a cold start a record often arrives
    /// before the records pointing at it.
    fresh_orphans: OrphanList,
    /// Orphans made by a removed connection ("dropped"): unreachable.
    dropped_orphans: OrphanList,
    /// Records in the reachability tree (ourselves included). The tree is grown on every
    /// added connection and record; only the loss of a tree edge makes it unsure
    /// (`tree_broken`), and only then does [`Peers::unreachable`] search the whole table.
    treed: usize,
    tree_broken: bool,
    /// Reused buffers for remote indices (no allocation per record).
    scratch: [Vec<u32>; 4],
}

// One cache line per slot: a summary entry or a received record reads the key and the request
// mark together, and a slot straddling two lines cost two misses.
#[derive(Clone, Debug, Default)]
#[repr(align(64))]
struct Slot {
    rec: Option<Record>,
    /// The key of `rec` (meaningless without it), kept here so that comparing a summary entry
    /// with what we hold does not touch the record itself.
    key: RecordKey,
    /// The engine's marks (see [`Peers::pending_mark`]), here to share the cache line.
    pending_mark: u32,
    request: RequestMark,
    /// How many of the engine's tombstones of records removed here are unexpired (the last
    /// one's key is then `key`); meaningless while a record is held.
    tombstones: u16,
    /// Which orphan list holds this name (the lists may also name it stale).
    orphan: Orphan,
}

const _: () = assert!(size_of::<Slot>() == 64, "a slot is one cache line");

/// The names of one kind of orphan: candidate indices, each of which is one while its slot's
/// `orphan` says so (a name may be listed twice, or no longer be one), and how many are. A
/// tree set of names cost a search and often an allocation per change, and a partition's
/// collection changes thousands.
#[derive(Clone, Debug, Default)]
struct OrphanList {
    idxs: Vec<u32>,
    live: usize,
}

/// The engine's record of a request for a name's record: kept in the table's slot, beside the
/// key held, because both are read for every summary entry and every received record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestMark {
    /// The key last requested; meaningful while a request is in flight.
    pub key: RecordKey,
    /// When the request may be repeated, in the engine's ticks; 0 when none is in flight.
    pub deadline: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Orphan {
    #[default]
    No,
    Fresh,
    Dropped,
}

#[derive(Clone, Copy, Debug)]
struct Link {
    /// How many held records list a connection to this peer (a record listing itself counts).
    indegree: u32,
    /// This peer's parent in the reachability tree: a peer in the tree whose record lists a
    /// connection to this one. NONE when not in the tree (and for ourselves, the root).
    parent: u32,
}

const NONE: u32 = u32::MAX;

impl Default for Link {
    fn default() -> Self {
        Self {
            indegree: 0,
            parent: NONE,
        }
    }
}

impl Peers {
    /// Makes a table holding only our own record, with its own name interner.
    pub fn new(own: impl Into<Record>) -> Self {
        Self::with_names(own, PeerNames::new())
    }

    /// Makes a table holding only our own record, interning names in `names`.
    pub fn with_names(own: impl Into<Record>, names: PeerNames) -> Self {
        let own = own.into();
        let own_idx = names.intern(own.name);
        let mut p = Self {
            ours: own.name,
            own_idx,
            names,
            slots: Vec::new(),
            links: Vec::new(),
            records: 0,
            digest: 0,
            buckets: [0; BUCKETS],
            bucket_counts: [0; BUCKETS],
            fresh_orphans: OrphanList::default(),
            dropped_orphans: OrphanList::default(),
            treed: 0,
            tree_broken: false,
            scratch: Default::default(),
        };
        p.install(own);
        p
    }

    /// Returns our own name.
    pub fn ours(&self) -> PeerName {
        self.ours
    }

    /// Returns the name interner of this table.
    pub fn names_interner(&self) -> &PeerNames {
        &self.names
    }

    /// Returns the index of `name` in this table's interner, if it was ever interned.
    pub fn index_of(&self, name: PeerName) -> Option<u32> {
        self.names.get(name)
    }

    /// Returns the record held for `name`.
    pub fn get(&self, name: PeerName) -> Option<&Record> {
        self.get_at(self.index_of(name)?)
    }

    /// Returns the record held at interner index `idx`.
    pub fn get_at(&self, idx: u32) -> Option<&Record> {
        self.slots.get(idx as usize).and_then(|s| s.rec.as_ref())
    }

    /// Returns the key of the record held for `name`.
    pub fn key(&self, name: PeerName) -> Option<RecordKey> {
        self.key_at(self.index_of(name)?)
    }

    /// Returns the key of the record held at interner index `idx`.
    pub fn key_at(&self, idx: u32) -> Option<RecordKey> {
        self.slots
            .get(idx as usize)
            .filter(|s| s.rec.is_some())
            .map(|s| s.key)
    }

    /// Returns the engine's "pending" mark of the name at `idx` (0 unless set). The engine's
    /// per-name marks live in the table's slot, so that checking them with the record's key
    /// costs one memory access; the table itself never reads them, and they outlive the
    /// record.
    pub fn pending_mark(&self, idx: u32) -> u32 {
        self.slots.get(idx as usize).map_or(0, |s| s.pending_mark)
    }

    /// Sets the engine's "pending" mark of the name at `idx`.
    pub fn set_pending_mark(&mut self, idx: u32, mark: u32) {
        self.slot_mut(idx).pending_mark = mark;
    }

    /// Returns the engine's request mark of the name at `idx` (the default unless set).
    pub fn request_mark(&self, idx: u32) -> RequestMark {
        self.slots
            .get(idx as usize)
            .map_or_else(RequestMark::default, |s| s.request)
    }

    /// Returns the engine's request mark of the name at `idx`, to change it.
    pub fn request_mark_mut(&mut self, idx: u32) -> &mut RequestMark {
        &mut self.slot_mut(idx).request
    }

    /// Loads the slots at `idxs` into the cache ahead of their use: the loads are independent,
    /// so their cache misses overlap instead of following one another as the decisions that
    /// need them do.
    pub fn prefetch(&self, idxs: impl Iterator<Item = u32>) {
        let mut acc = 0u64;
        for i in idxs {
            if let Some(s) = self.slots.get(i as usize) {
                acc ^= s.key.version;
            }
        }
        std::hint::black_box(acc);
    }

    /// Returns the number of records held (ourselves included).
    pub fn len(&self) -> usize {
        self.records
    }

    /// Returns true when only... never: the table always holds our own record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Returns true when `rec` would replace what the table holds (or is about an unknown name).
    pub fn is_newer(&self, rec: &PeerInfo) -> bool {
        // The record's memoised index (no interner look-up once any table has installed it).
        let (idx, _) = rec.ids(&self.names, &mut Vec::new());
        let Some(slot) = self.slots.get(idx as usize) else {
            return true;
        };
        match (&slot.rec, rec.key().cmp(&slot.key)) {
            (None, _) => true,
            (Some(held), std::cmp::Ordering::Equal) => rec.precedence(held).is_gt(),
            (Some(_), order) => order.is_gt(),
        }
    }

    /// Merges one record. Our own record is only changed through [`Peers::set_own`].
    pub fn apply(&mut self, rec: impl Into<Record>) -> Applied {
        let rec = rec.into();
        if rec.name == self.ours || !self.is_newer(&rec) {
            return Applied::Ignored;
        }
        match self.install(rec) {
            None => Applied::Added,
            Some(removed_connections) => Applied::Replaced {
                removed_connections,
            },
        }
    }

    /// Replaces our own record.
    ///
    /// Returns true when connections were removed.
    pub fn set_own(&mut self, rec: impl Into<Record>) -> bool {
        let rec = rec.into();
        debug_assert_eq!(rec.name, self.ours);
        self.install(rec).unwrap_or(false)
    }

    /// Removes the record for `name` (never our own). Returns it.
    pub fn remove(&mut self, name: PeerName) -> Option<Record> {
        self.remove_at(self.index_of(name)?)
    }

    /// Removes the record at interner index `idx` (never our own). Returns it.
    fn remove_at(&mut self, idx: u32) -> Option<Record> {
        if idx == self.own_idx {
            return None;
        }
        self.get_at(idx)?;
        self.forget_orphan(idx);
        let old = self.slots.get_mut(idx as usize)?.rec.take()?;
        let link = self.link(idx);
        if link.parent != NONE {
            self.treed -= 1;
        }
        if link.indegree == 0 {
            // Nothing lists the peer any more: its slot is as if never used.
            *self.link_mut(idx) = Link::default();
        }
        let mut ids = std::mem::take(&mut self.scratch[0]);
        let (_, remotes) = old.ids(&self.names, &mut ids);
        for &r in remotes {
            if self.link(r).parent == idx {
                self.tree_broken = true;
            }
        }
        self.records -= 1;
        self.account(&old, false);
        for &r in remotes {
            self.dec_indegree(r);
        }
        self.scratch[0] = ids;
        Some(old)
    }

    /// Returns the number of records and the view digest: a sum of per-record hashes of
    /// (name, uid, version), independent of the order in which records arrived.
    pub fn digest(&self) -> (u32, u64) {
        (u32::try_from(self.records).unwrap_or(u32::MAX), self.digest)
    }

    /// Returns the number of records held in each anti-entropy bucket.
    pub fn bucket_counts(&self) -> &[u32; BUCKETS] {
        &self.bucket_counts
    }

    /// Returns the digest of each anti-entropy bucket.
    pub fn bucket_digests(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// Returns every record name, sorted.
    pub fn names(&self) -> Vec<PeerName> {
        let mut v: Vec<PeerName> = self
            .slots
            .iter()
            .filter_map(|s| s.rec.as_ref().map(|r| r.name))
            .collect();
        v.sort_unstable();
        v
    }

    /// Returns every record, sorted by name.
    pub fn records(&self) -> Vec<&Record> {
        let mut v: Vec<&Record> = self.slots.iter().filter_map(|s| s.rec.as_ref()).collect();
        v.sort_unstable_by_key(|r| r.name);
        v
    }

    /// Returns the summary entries of every record in the buckets set in `mask`, ordered by
    /// bucket, then by name, each with its bucket.
    ///
    /// One pass over the table (its slots are contiguous and the interner keeps each name's
    /// bucket): it runs once per anti-entropy exchange, while an index kept per bucket cost a
    /// tree insertion for every record applied.
    pub fn entries_in(&self, mask: u64) -> Vec<(u8, Entry)> {
        let mut v: Vec<(u8, Entry)> = self.names.with_names(|names, buckets| {
            self.slots
                .iter()
                .zip(names.iter().zip(buckets))
                // The bucket first: it is a dense byte per name, the slot a line.
                .filter(|(s, (_, b))| mask & (1u64 << (**b & 63)) != 0 && s.rec.is_some())
                .map(|(s, (&name, &b))| {
                    (
                        b,
                        Entry {
                            name,
                            uid: s.key.uid,
                            version: s.key.version,
                        },
                    )
                })
                .collect()
        });
        // One integer per key (names order as their big-endian value).
        v.sort_unstable_by_key(|(b, e)| (u64::from(*b) << 48) | name_u64(e.name));
        v
    }

    /// Returns true when some record was orphaned by a removed connection: no held record
    /// lists a connection to it any more. Such a peer is unreachable;
    /// [`Peers::remove_dropped_orphans`] drops it.
    pub fn has_dropped_orphans(&self) -> bool {
        self.dropped_orphans.live != 0
    }

    /// Returns the records that arrived as orphans and still are, sorted. During a cold start
    /// a record often arrives before the records pointing at it, so these are only suspects.
    pub fn fresh_orphans(&self) -> Vec<PeerName> {
        let mut v: Vec<PeerName> = self
            .fresh_orphans
            .idxs
            .iter()
            .filter(|&&i| self.orphan_at(i) == Orphan::Fresh)
            .filter_map(|&i| self.name_at(i))
            .collect();
        // A name may be listed more than once.
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Returns true when no record is a fresh orphan.
    pub fn fresh_orphans_empty(&self) -> bool {
        self.fresh_orphans.live == 0
    }

    /// Removes the orphans made by removed connections, and those that removing them makes;
    /// returns the names and keys of the records removed, sorted by name.
    pub fn remove_dropped_orphans(&mut self) -> Vec<(PeerName, RecordKey)> {
        let mut removed = Vec::new();
        // Removing one may orphan others, which join the (emptied) list: until it stays empty.
        loop {
            let batch = std::mem::take(&mut self.dropped_orphans.idxs);
            if batch.is_empty() {
                break;
            }
            for &i in &batch {
                if self.orphan_at(i) != Orphan::Dropped {
                    continue;
                }
                if let Some(rec) = self.remove_at(i) {
                    removed.push((rec.name, rec.key()));
                }
            }
            if self.dropped_orphans.idxs.is_empty() {
                self.dropped_orphans.idxs = crate::mesh::recycle(batch);
            }
        }
        removed.sort_unstable();
        removed
    }

    /// Adds a tombstone of the record just removed at `idx` (the engine's memory of a collected
    /// peer's last record, kept in the slot that held it so that checking it costs no look-up
    /// of its own; see [`Peers::tombstone_at`]). False when none can be added (a name removed
    /// 65,535 times before its tombstones expire).
    pub fn add_tombstone(&mut self, idx: u32, key: RecordKey) -> bool {
        let slot = self.slot_mut(idx);
        if slot.rec.is_some() || slot.tombstones == u16::MAX {
            return false;
        }
        slot.key = key;
        slot.tombstones += 1;
        true
    }

    /// Drops one of the tombstones at `idx` (the engine's oldest has expired).
    pub fn drop_tombstone(&mut self, idx: u32) {
        let slot = self.slot_mut(idx);
        slot.tombstones = slot.tombstones.saturating_sub(1);
    }

    /// Returns the key of the last record removed at `idx` while one of its tombstones is
    /// unexpired and no record is held there: the engine installs a record over a tombstone
    /// only when it is newer, so a record held makes the tombstone moot.
    pub fn tombstone_at(&self, idx: u32) -> Option<RecordKey> {
        self.slots
            .get(idx as usize)
            .filter(|s| s.rec.is_none() && s.tombstones != 0)
            .map(|s| s.key)
    }

    /// Returns every peer not reachable from us over listed connections, sorted.
    ///
    /// Cheap unless a connection on the reachability tree was lost since the last call: the
    /// tree then is rebuilt by a search of the whole table.
    pub fn unreachable(&mut self) -> Vec<PeerName> {
        let (unlisted, listed) = self.unreachable_split();
        let mut all: Vec<PeerName> = listed.iter().filter_map(|&i| self.name_at(i)).collect();
        all.extend(unlisted);
        all.sort_unstable();
        all
    }

    /// Returns the peers not reachable from us over listed connections, in two lists: those
    /// no record held lists (orphans), sorted by name; and those some record held still lists
    /// (cut off from us together with others, as by a network split), by table index.
    ///
    /// Cheap unless a connection on the reachability tree was lost since the last call: the
    /// tree then is rebuilt by a search of the whole table.
    pub fn unreachable_split(&mut self) -> (Vec<PeerName>, Vec<u32>) {
        if self.tree_broken {
            self.rebuild_tree();
        }
        if self.treed == self.records {
            return (Vec::new(), Vec::new());
        }
        let own = self.own_idx as usize;
        let mut listed = Vec::new();
        // Names from the interner's list, not from the records (a cache miss each).
        let mut unlisted: Vec<PeerName> = self.names.with_names(|names, _| {
            let mut unlisted = Vec::new();
            for (i, ((s, l), &name)) in self.slots.iter().zip(&self.links).zip(names).enumerate() {
                if s.rec.is_none() || l.parent != NONE || i == own {
                    continue;
                }
                if l.indegree == 0 {
                    unlisted.push(name);
                } else {
                    listed.push(i as u32);
                }
            }
            unlisted
        });
        unlisted.sort_unstable();
        (unlisted, listed)
    }

    /// Searches the table from us and records each reached peer's parent.
    fn rebuild_tree(&mut self) {
        self.tree_broken = false;
        let n = self.links.len().max(self.slots.len());
        let mut seen = vec![false; n];
        let own = self.own_idx;
        if let Some(s) = seen.get_mut(own as usize) {
            *s = true;
        }
        self.link_mut(own).parent = NONE;
        // Level by level, each level in passes whose loads do not depend on each other (the
        // records held, then their remotes, then the marks), so that their cache misses
        // overlap; one node after another, each step waited for the previous one's three.
        // Indices, not records: cloning a shared record's `Arc` is an atomic write to a line
        // other threads' tables also hold.
        let mut frontier: Vec<u32> = vec![own];
        let mut next: Vec<u32> = Vec::new();
        let mut held: Vec<(u32, &PeerInfo)> = Vec::new();
        let mut remotes: Vec<u32> = Vec::new();
        let mut ends: Vec<usize> = Vec::new();
        let mut tmp = Vec::new();
        let mut reached = 0usize;
        while !frontier.is_empty() {
            held.clear();
            held.extend(frontier.iter().filter_map(|&i| {
                let rec = self.slots.get(i as usize)?.rec.as_deref()?;
                Some((i, rec))
            }));
            reached += held.len();
            remotes.clear();
            ends.clear();
            for (_, rec) in &held {
                remotes.extend_from_slice(rec.ids(&self.names, &mut tmp).1);
                ends.push(remotes.len());
            }
            next.clear();
            let mut start = 0;
            for (&(me, _), &end) in held.iter().zip(&ends) {
                for &r in remotes.get(start..end).unwrap_or_default() {
                    let Some(s) = seen.get_mut(r as usize) else {
                        continue;
                    };
                    if !*s {
                        *s = true;
                        if let Some(l) = self.links.get_mut(r as usize) {
                            l.parent = me;
                        }
                        next.push(r);
                    }
                }
                start = end;
            }
            std::mem::swap(&mut frontier, &mut next);
        }
        for (l, s) in self.links.iter_mut().zip(&seen) {
            if !*s {
                l.parent = NONE;
            }
        }
        self.treed = reached;
    }

    /// Copies the remotes' indices of the record held at `idx` into `out`; false when no
    /// record is held there.
    fn remotes_at(&self, idx: u32, tmp: &mut Vec<u32>, out: &mut Vec<u32>) -> bool {
        out.clear();
        let Some(rec) = self.get_at(idx) else {
            return false;
        };
        out.extend_from_slice(rec.ids(&self.names, tmp).1);
        true
    }

    fn link(&self, idx: u32) -> Link {
        self.links.get(idx as usize).copied().unwrap_or_default()
    }

    fn link_mut(&mut self, idx: u32) -> &mut Link {
        let i = idx as usize;
        if i >= self.links.len() {
            self.grow(i);
        }
        &mut self.links[i]
    }

    fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        let i = idx as usize;
        if i >= self.slots.len() {
            self.grow(i);
        }
        &mut self.slots[i]
    }

    /// Grows both vectors to cover index `i` and every name interned so far. Within the
    /// names of a frozen interner (all known up front, as in the simulator) to that size
    /// exactly: doubling reserved memory that thousands of tables in one process never used
    /// (peak RSS at 5,000 nodes 4.0 → 3.3 GB); beyond them, as names trickle in, amortized.
    fn grow(&mut self, i: usize) {
        let n = (i + 1).max(self.names.len());
        let exact = self.names.frozen_len().is_some_and(|f| n <= f);
        if self.slots.len() < n {
            let more = n - self.slots.len();
            if exact {
                self.slots.reserve_exact(more);
            }
            self.slots.resize_with(n, Slot::default);
        }
        if self.links.len() < n {
            let more = n - self.links.len();
            if exact {
                self.links.reserve_exact(more);
            }
            self.links.resize(n, Link::default());
        }
    }

    fn in_tree(&self, idx: u32) -> bool {
        idx == self.own_idx || self.link(idx).parent != NONE
    }

    /// Adds `to` (listed by `from`, which is in the tree) to the tree if it is not there yet,
    /// and with it every peer newly reachable through it.
    fn graft(&mut self, from: u32, to: u32) {
        if self.in_tree(to) {
            return;
        }
        let mut stack = std::mem::take(&mut self.scratch[3]);
        stack.clear();
        stack.extend([from, to]);
        let (mut tmp, mut remotes) = (Vec::new(), Vec::new());
        while let (Some(name), Some(parent)) = (stack.pop(), stack.pop()) {
            if name == self.own_idx || self.link(name).parent != NONE {
                continue;
            }
            self.link_mut(name).parent = parent;
            if !self.remotes_at(name, &mut tmp, &mut remotes) {
                continue;
            }
            self.treed += 1;
            for &r in &remotes {
                if !self.in_tree(r) {
                    stack.extend([name, r]);
                }
            }
        }
        self.scratch[3] = crate::mesh::recycle(stack);
    }

    /// Installs `rec` unconditionally. Returns None if the name had no record, else whether the
    /// replacement removed connections.
    fn install(&mut self, rec: Record) -> Option<bool> {
        let [mut tmp_new, mut tmp_old, mut added, mut dropped] = std::mem::take(&mut self.scratch);
        let (idx, new_ids) = rec.ids(&self.names, &mut tmp_new);
        if idx as usize >= self.slots.len() || idx as usize >= self.links.len() {
            self.grow(idx as usize);
        }
        // Taken out, not cloned (an atomic write to a line shared with other threads); the
        // slot gets `rec` below, and nothing in between reads this slot's record.
        let old = self.slots.get_mut(idx as usize).and_then(|s| s.rec.take());
        // Only the connections that differ change in-degrees. A remote listed by both keeps an
        // in-degree of at least one throughout, so its orphanhood does not change either.
        match &old {
            Some(old) => {
                let (_, old_ids) = old.ids(&self.names, &mut tmp_old);
                diff_remotes(old_ids, new_ids, &mut added, &mut dropped);
            }
            None => {
                added.clear();
                added.extend_from_slice(new_ids);
                dropped.clear();
            }
        }
        // Load the remotes' links first (independent loads: their misses overlap).
        let mut acc = 0u32;
        for &r in added.iter().chain(&dropped) {
            if let Some(l) = self.links.get(r as usize) {
                acc ^= l.indegree;
            }
        }
        std::hint::black_box(acc);
        // A record's own place in the tree does not depend on its content, so its new remotes
        // are grafted while their slots are at hand. Its own link (a cache miss) is read only
        // when something here depends on it: a new record, new remotes, or its own in-degree
        // changing (a record listing itself).
        let new_record = old.is_none();
        let name_in_tree = (new_record || !added.is_empty()) && self.in_tree(idx);
        let own_indegree_changes = new_record || added.contains(&idx) || dropped.contains(&idx);
        for &r in &added {
            self.inc_indegree(r);
            if name_in_tree {
                self.graft(idx, r);
            }
        }
        self.account(&rec, true);
        let slot = self.slot_mut(idx);
        slot.key = rec.key();
        slot.rec = Some(rec);
        // A replaced record whose own in-degree did not change keeps its orphan state: what
        // it lists is not what lists it.
        if idx != self.own_idx && own_indegree_changes {
            let indegree = self.link(idx).indegree;
            if indegree == 0 {
                // A replaced record keeps its kind of orphanhood.
                if self.orphan_at(idx) == Orphan::No {
                    self.set_orphan(idx, Orphan::Fresh);
                }
            } else {
                self.forget_orphan(idx);
            }
        }
        let result = match old {
            None => {
                self.records += 1;
                if name_in_tree {
                    self.treed += 1;
                }
                None
            }
            Some(old) => {
                self.account(&old, false);
                for &r in &dropped {
                    if self.link(r).parent == idx {
                        self.tree_broken = true;
                    }
                    self.dec_indegree(r);
                }
                Some(!dropped.is_empty())
            }
        };
        self.scratch = [tmp_new, tmp_old, added, dropped];
        result
    }

    fn account(&mut self, rec: &PeerInfo, add: bool) {
        let h = entry_hash(rec.name, rec.uid.0, rec.version);
        let b = bucket_of(rec.name);
        if add {
            self.digest = self.digest.wrapping_add(h);
            self.buckets[b] = self.buckets[b].wrapping_add(h);
            self.bucket_counts[b] += 1;
        } else {
            self.digest = self.digest.wrapping_sub(h);
            self.buckets[b] = self.buckets[b].wrapping_sub(h);
            self.bucket_counts[b] = self.bucket_counts[b].saturating_sub(1);
        }
    }

    fn inc_indegree(&mut self, idx: u32) {
        let l = self.link_mut(idx);
        l.indegree += 1;
        if l.indegree == 1 {
            self.forget_orphan(idx);
        }
    }

    fn dec_indegree(&mut self, idx: u32) {
        let l = self.link_mut(idx);
        l.indegree = l.indegree.saturating_sub(1);
        if l.indegree == 0 && idx != self.own_idx {
            if self.get_at(idx).is_none() {
                // Nothing lists the peer and we hold no record: as if never used.
                *self.link_mut(idx) = Link::default();
                return;
            }
            self.set_orphan(idx, Orphan::Dropped);
        }
    }

    /// Takes the record at `idx` out of the orphan lists (a no-op unless it is in one).
    fn forget_orphan(&mut self, idx: u32) {
        self.set_orphan(idx, Orphan::No);
    }

    fn orphan_at(&self, idx: u32) -> Orphan {
        self.slots
            .get(idx as usize)
            .map_or(Orphan::No, |s| s.orphan)
    }

    /// Returns the name of the record held at `idx`.
    fn name_at(&self, idx: u32) -> Option<PeerName> {
        self.get_at(idx).map(|r| r.name)
    }

    /// Moves the name at `idx` (which holds a record unless `to` is `No`) to the orphan list
    /// of kind `to`.
    fn set_orphan(&mut self, idx: u32, to: Orphan) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let from = std::mem::replace(&mut slot.orphan, to);
        if from == to {
            return;
        }
        if let Some(list) = self.orphan_list(from) {
            list.live -= 1;
        }
        let Some(list) = self.orphan_list(to) else {
            return;
        };
        list.live += 1;
        list.idxs.push(idx);
        if list.idxs.len() > 2 * list.live + 64 {
            // Stale entries are dropped once they outnumber the live ones.
            let mut idxs = std::mem::take(&mut list.idxs);
            idxs.retain(|&i| self.orphan_at(i) == to);
            idxs.sort_unstable();
            idxs.dedup();
            if let Some(list) = self.orphan_list(to) {
                list.idxs = idxs;
            }
        }
    }

    fn orphan_list(&mut self, kind: Orphan) -> Option<&mut OrphanList> {
        match kind {
            Orphan::No => None,
            Orphan::Fresh => Some(&mut self.fresh_orphans),
            Orphan::Dropped => Some(&mut self.dropped_orphans),
        }
    }
}

/// Collects the remotes only `new_ids` lists into `added` and those only `old_ids` lists into
/// `dropped` (in index order): a record's remotes as interner indices, compared as sets. The
/// indices are one line per record; comparing the connections by name read six.
fn diff_remotes(old_ids: &[u32], new_ids: &[u32], added: &mut Vec<u32>, dropped: &mut Vec<u32>) {
    added.clear();
    added.extend_from_slice(new_ids);
    added.sort_unstable();
    dropped.clear();
    dropped.extend_from_slice(old_ids);
    dropped.sort_unstable();
    // One merge pass keeps what only one side has, in place.
    let (mut i, mut j, mut kept_added, mut kept_dropped) = (0, 0, 0, 0);
    while let (Some(&x), Some(&y)) = (added.get(i), dropped.get(j)) {
        match x.cmp(&y) {
            std::cmp::Ordering::Less => {
                added[kept_added] = x;
                kept_added += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                dropped[kept_dropped] = y;
                kept_dropped += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    added.copy_within(i.., kept_added);
    added.truncate(kept_added + (added.len() - i));
    dropped.copy_within(j.., kept_dropped);
    dropped.truncate(kept_dropped + (dropped.len() - j));
}

/// Returns the anti-entropy bucket of a name.
pub fn bucket_of(name: PeerName) -> usize {
    (mix(name_u64(name) ^ 0x9e37_79b9_7f4a_7c15) >> 58) as usize
}

/// Returns the digest contribution of one record; the same function at every node.
pub fn entry_hash(name: PeerName, uid: u64, version: u64) -> u64 {
    mix(mix(name_u64(name)) ^ mix(uid ^ 0x5851_f42d_4c95_7f2d) ^ version.rotate_left(29))
}

fn name_u64(name: PeerName) -> u64 {
    let b = name.bytes();
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// SplitMix64's finaliser: a fast, well-mixing bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fast hasher for peer-name keys. Names are chosen by authenticated mesh members only, so
/// flooding attacks on the table are out of scope; lookups never depend on iteration order.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NameHashBuilder;

impl BuildHasher for NameHashBuilder {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher(0)
    }
}

pub(crate) struct NameHasher(u64);

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).rotate_left(5) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        // Mixed in, not xor-ed: a key of several integers (name, uid, version) must not
        // collide whenever two of them swap bits.
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::peer::{ConnectionSummary, PeerUid};
    use std::sync::Arc;

    pub(crate) fn n(b: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, b])
    }

    pub(crate) fn rec(name: u8, version: u64, conns: &[u8]) -> Arc<PeerInfo> {
        let addr: SocketAddr = "192.0.2.1:6783".parse().unwrap();
        let mut connections: Vec<ConnectionSummary> = conns
            .iter()
            .map(|&c| ConnectionSummary {
                remote: n(c),
                addr,
                outbound: true,
                established: true,
            })
            .collect();
        connections.sort();
        connections.dedup_by_key(|c| c.remote);
        Arc::new(PeerInfo::new(
            n(name),
            PeerUid(1),
            version,
            String::new(),
            connections,
        ))
    }

    /// Asserts that every link and slot agree with a recount from the records held: the
    /// in-degree (held records that list the peer; a record listing itself counts) and the
    /// orphan state (a held record nothing lists is in an orphan list, any other name in none).
    fn assert_links_agree(p: &Peers) {
        let mut count = vec![0u32; p.links.len()];
        for s in &p.slots {
            if let Some(r) = &s.rec {
                for &x in r.ids(&p.names, &mut Vec::new()).1 {
                    count[x as usize] += 1;
                }
            }
        }
        for (i, (s, l)) in p.slots.iter().zip(&p.links).enumerate() {
            assert_eq!(l.indegree, count[i], "in-degree of {i}");
            let orphan = s.rec.is_some() && count[i] == 0 && i != p.own_idx as usize;
            assert_eq!(s.orphan != Orphan::No, orphan, "orphan state of {i}");
        }
    }

    #[test]
    fn links_agree_with_the_records_held_through_applies_and_removals() {
        let mut p = Peers::new(rec(1, 1, &[2, 3]));
        let mut versions = [1u64; 16];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let name = 2 + (x % 12) as u8;
            if x.is_multiple_of(7) {
                p.remove(n(name));
            } else {
                versions[usize::from(name)] += 1;
                let conns: Vec<u8> = (1..15u8).filter(|&c| (x >> (8 + c)) & 3 == 0).collect();
                p.apply(rec(name, versions[usize::from(name)], &conns));
            }
            assert_links_agree(&p);
        }
    }

    #[test]
    fn remote_diff_keeps_what_one_side_lists() {
        let (mut added, mut dropped) = (vec![9], vec![9]);
        diff_remotes(&[5, 1, 7, 3], &[2, 7, 5, 8, 0], &mut added, &mut dropped);
        assert_eq!(
            (added.as_slice(), dropped.as_slice()),
            (&[0, 2, 8][..], &[1, 3][..])
        );
        diff_remotes(&[], &[4, 2], &mut added, &mut dropped);
        assert_eq!(
            (added.as_slice(), dropped.as_slice()),
            (&[2, 4][..], &[][..])
        );
        diff_remotes(&[4, 2], &[2, 4], &mut added, &mut dropped);
        assert!(added.is_empty() && dropped.is_empty());
        diff_remotes(&[6, 1], &[], &mut added, &mut dropped);
        assert_eq!(
            (added.as_slice(), dropped.as_slice()),
            (&[][..], &[1, 6][..])
        );
    }

    #[test]
    fn newer_version_wins_and_digest_follows() {
        let mut p = Peers::new(rec(1, 1, &[2]));
        assert_eq!(p.apply(rec(2, 1, &[1])), Applied::Added);
        let d1 = p.digest();
        assert_eq!(
            p.apply(rec(2, 2, &[1, 3])),
            Applied::Replaced {
                removed_connections: false
            }
        );
        assert_eq!(p.apply(rec(2, 1, &[1])), Applied::Ignored);
        assert_eq!(
            p.apply(rec(2, 3, &[3])),
            Applied::Replaced {
                removed_connections: true
            }
        );
        assert_ne!(p.digest(), d1);
        let mut q = Peers::new(rec(1, 1, &[2]));
        q.apply(rec(2, 3, &[3]));
        assert_eq!(p.digest(), q.digest());
        assert_eq!(p.bucket_digests(), q.bucket_digests());
    }

    #[test]
    fn orphans_and_cut_off_components_are_collected() {
        // 1 - 2 - 3, 4 - 5 (4 and 5 cut off), 6 orphan.
        let mut p = Peers::new(rec(1, 1, &[2]));
        p.apply(rec(2, 1, &[1, 3]));
        p.apply(rec(3, 1, &[2]));
        p.apply(rec(4, 1, &[5]));
        p.apply(rec(5, 1, &[4]));
        p.apply(rec(6, 1, &[2]));
        assert!(!p.has_dropped_orphans());
        assert_eq!(p.fresh_orphans(), vec![n(6)]);
        let names =
            |v: Vec<(PeerName, RecordKey)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(p.unreachable(), vec![n(4), n(5), n(6)]);
        for x in [4, 5, 6] {
            p.remove(n(x));
        }
        assert_eq!(p.names(), vec![n(1), n(2), n(3)]);
        // 2 drops 3: 3 becomes an orphan.
        p.apply(rec(2, 2, &[1]));
        assert!(p.has_dropped_orphans());
        assert_eq!(names(p.remove_dropped_orphans()), vec![n(3)]);
        assert_eq!(p.len(), 2);
        // The per-bucket counts follow adds, replacements and removals.
        let mut counted = [0u32; BUCKETS];
        for (b, _) in p.entries_in(u64::MAX) {
            counted[usize::from(b)] += 1;
        }
        assert_eq!(p.bucket_counts(), &counted);
        assert_eq!(p.bucket_counts().iter().sum::<u32>(), 2);
    }

    #[test]
    fn tombstones_live_in_the_slot_while_no_record_is_held() {
        let mut p = Peers::new(rec(1, 1, &[2]));
        p.apply(rec(2, 3, &[1]));
        let i = p.index_of(n(2)).unwrap();
        assert_eq!(p.tombstone_at(i), None);
        let old = p.remove(n(2)).unwrap().key();
        assert!(p.add_tombstone(i, old));
        assert!(p.add_tombstone(i, old));
        assert_eq!(p.tombstone_at(i), Some(old));
        p.drop_tombstone(i);
        assert_eq!(p.tombstone_at(i), Some(old), "one of the two is left");
        p.apply(rec(2, 4, &[1]));
        assert_eq!(p.tombstone_at(i), None, "a record held makes it moot");
        assert!(!p.add_tombstone(i, old), "none while a record is held");
        let newer = p.remove(n(2)).unwrap().key();
        assert!(p.add_tombstone(i, newer));
        assert_eq!(p.tombstone_at(i), Some(newer), "the last removal's key");
        p.drop_tombstone(i);
        p.drop_tombstone(i);
        assert_eq!(p.tombstone_at(i), None);
        assert_eq!(p.key_at(i), None);
    }

    #[test]
    fn a_name_orphaned_again_and_again_is_listed_once() {
        let mut p = Peers::new(rec(1, 1, &[2]));
        p.apply(rec(2, 1, &[1]));
        p.apply(rec(3, 1, &[2]));
        assert_eq!(p.fresh_orphans(), vec![n(3)]);
        for v in 0..300 {
            p.apply(rec(2, 2 * v + 2, &[1, 3]));
            assert!(p.fresh_orphans_empty() && !p.has_dropped_orphans());
            p.apply(rec(2, 2 * v + 3, &[1]));
            assert!(p.has_dropped_orphans());
        }
        // Stale entries are dropped as they pile up.
        assert!(p.dropped_orphans.idxs.len() <= 2 * p.dropped_orphans.live + 65);
        assert_eq!(p.fresh_orphans(), Vec::<PeerName>::new());
        let removed = p.remove_dropped_orphans();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].0, n(3));
        assert!(!p.has_dropped_orphans());
        assert_eq!(p.names(), vec![n(1), n(2)]);
    }

    #[test]
    fn tables_grow_to_a_frozen_interners_names_exactly() {
        let names = PeerNames::new();
        let mut p = Peers::with_names(rec(1, 1, &[]), names.clone());
        for b in 2..=100 {
            names.intern(n(b));
        }
        names.freeze();
        p.apply(rec(100, 1, &[1]));
        assert_eq!((p.slots.len(), p.slots.capacity()), (100, 100));
        assert_eq!((p.links.len(), p.links.capacity()), (100, 100));
        // Names interned after the freeze: amortized growth again.
        for b in 101..=140 {
            names.intern(n(b));
        }
        p.apply(rec(140, 1, &[1]));
        assert_eq!(p.slots.len(), 140);
        assert!(p.slots.capacity() >= 140);
        assert_eq!(p.names(), vec![n(1), n(100), n(140)]);
    }

    #[test]
    fn tables_with_shared_or_separate_interners_agree() {
        // The same records (one Arc each) in a table sharing an interner with another and in
        // one with its own: the second sees memoised indices of another interner and must
        // still count in-degrees, orphans and reachability right.
        let shared = PeerNames::new();
        let recs = [
            rec(2, 1, &[1, 3]),
            rec(3, 1, &[2, 4]),
            rec(4, 1, &[3]),
            rec(5, 1, &[6]),
            rec(6, 1, &[5]),
        ];
        let mut a = Peers::with_names(rec(1, 1, &[2]), shared.clone());
        let mut b = Peers::with_names(rec(9, 1, &[]), shared);
        let mut c = Peers::new(rec(1, 1, &[2]));
        for r in &recs {
            a.apply(r.clone());
            b.apply(r.clone());
            c.apply(r.clone());
        }
        assert_eq!(a.names(), c.names());
        assert_eq!(a.digest(), c.digest());
        assert_eq!(a.unreachable(), vec![n(5), n(6)]);
        assert_eq!(c.unreachable(), vec![n(5), n(6)]);
        assert_eq!(b.unreachable().len(), 5);
        // 2 drops 3: 3 and 4 are cut off, in both tables.
        a.apply(rec(2, 2, &[1]));
        c.apply(rec(2, 2, &[1]));
        assert_eq!(a.unreachable(), vec![n(3), n(4), n(5), n(6)]);
        assert_eq!(c.unreachable(), vec![n(3), n(4), n(5), n(6)]);
        assert_eq!(
            a.index_of(n(3)),
            b.index_of(n(3)),
            "one interner, one index"
        );
    }
}
