//! IPAM: the address ring shared by all peers, allocation per container, space donation and
//! reclaim of dead peers' space. Pure: no clock, no I/O (docs/IPAM.md explains the design).
//!
//! [`Ipam`] is a sans-IO state machine with the quinn shape (STYLE §1.2):
//!
//! - **Inputs**: [`Ipam::handle_gossip`] (every IPAM message from a peer),
//!   [`Ipam::handle_peer_seen`] and [`Ipam::handle_peer_gone`] (driven by the topology's peer
//!   set), [`Ipam::handle_timeout`].
//! - **Commands**: [`Ipam::allocate`], [`Ipam::gateway`], [`Ipam::release`], [`Ipam::gc`],
//!   [`Ipam::claim`], [`Ipam::rmpeer`].
//! - **Outputs**, drained after every input in this order: [`Ipam::poll_snapshot`] (persist
//!   it, fsync included, *before* anything else: before sending the messages it caused and
//!   before answering the CNI call), then [`Ipam::poll_transmit`] until None, then
//!   [`Ipam::poll_timeout`], then [`Ipam::poll_event`] until None.
//! - **Getters**: [`Ipam::status`], [`Ipam::snapshot`], [`Ipam::lookup`].
//!
//! Files by concern: `types.rs` (the range, configuration, keys, results, errors, events),
//! `space.rs` (donation between peers), `reclaim.rs` (taking over dead peers' space),
//! `merge.rs` (merging gossiped rings and records), `ring.rs`, `paxos.rs`, `wire.rs`,
//! `snapshot.rs`, `status.rs`; this file holds the engine and its inputs and outputs.
//!
//! Addresses cross the API as [`IpAddr`]; the ring is IPv4-only inside: offsets are `u32`
//! within one CIDR of prefix 8..=30 ([`Range`]). Offset 0 (network) and the last offset
//! (broadcast) are never allocated.

mod merge;
mod paxos;
mod reclaim;
mod ring;
mod snapshot;
mod space;
mod status;
mod types;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use self::paxos::{Ballot, Claims};
pub use self::ring::{Entry, Merged, Ring, RingError, TAKEOVER_BUMP};
pub use self::snapshot::{SNAPSHOT_VERSION, Snapshot, SnapshotError};
pub use self::status::{IpamStatus, OwnerStatus, render_service_lines, render_status_ipam};
pub use self::types::{
    Address, AllocError, AllocKey, Allocation, Config, Destination, Event, Init, ParseRangeError,
    Range, RmPeerError, Waiting,
};
pub use self::wire::{Message, PeerRecord, RingState, Vote};
use crate::peer::PeerName;

/// The container ID the node's bridge gateway address is allocated under.
pub const GATEWAY_CONTAINER: &str = "_weft_gateway";
/// The interface name of the gateway allocation.
pub const GATEWAY_IFNAME: &str = "weft";
/// The longest container ID accepted, in bytes.
pub const MAX_CONTAINER_ID_LEN: usize = 512;
/// The longest interface name accepted, in bytes.
pub const MAX_IFNAME_LEN: usize = 64;

/// One node's IPAM engine.
#[derive(Debug)]
pub struct Ipam {
    config: Config,
    started: Instant,
    rng: ChaCha8Rng,
    ring: Option<Ring>,
    seeds: Vec<PeerName>,
    paxos: paxos::Paxos,
    allocs: BTreeMap<u32, AllocKey>,
    by_key: BTreeMap<AllocKey, u32>,
    pending: BTreeMap<AllocKey, u64>,
    pending_seq: u64,
    cursor: u32,
    records: BTreeMap<PeerName, PeerRecord>,
    live: BTreeMap<PeerName, Liveness>,
    request: Option<Request>,
    tried: BTreeSet<PeerName>,
    next_gossip: Instant,
    next_propose: Option<Instant>,
    paxos_progress: bool,
    minority_since: Option<Instant>,
    resync: BTreeSet<PeerName>,
    next_check: Option<Instant>,
    broadcast: bool,
    /// The next broadcast carries the whole state (the ring changed, a peer appeared, ...);
    /// otherwise only the records in `changed`.
    full: bool,
    changed: BTreeSet<PeerName>,
    digest_due: bool,
    answered: BTreeMap<PeerName, Answered>,
    dirty: bool,
    transmit: VecDeque<(Destination, Vec<u8>)>,
    events: VecDeque<Event>,
    conflicts: BTreeSet<u32>,
    refused: BTreeMap<PeerName, &'static str>,
    stats: Stats,
}

/// Counters for status and metrics.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    /// Messages that failed to decode.
    pub bad_messages: u64,
    /// Addresses donated to others.
    pub donated: u64,
    /// Space requests denied (nothing to give).
    pub denied: u64,
    /// Peers whose space we reclaimed.
    pub reclaimed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Liveness {
    seen: bool,
    since: Instant,
}

/// The last digest we answered for a peer: a digest pair repeats when our State did not
/// help (say, a record table at [`wire::MAX_PEERS`]), and is answered again only after a while.
#[derive(Clone, Copy, Debug)]
struct Answered {
    theirs: u64,
    ours: u64,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    donor: PeerName,
    deadline: Instant,
}

impl Ipam {
    /// Starts an engine with no ring. `seed` seeds the RNG (jitter and donor choice).
    pub fn new(config: Config, now: Instant, seed: u64) -> Self {
        let observer = config.init == Init::Observer;
        let quorum = match &config.init {
            Init::Consensus { quorum } => *quorum,
            Init::Observer | Init::Seed(_) => usize::MAX,
        };
        let mut records = BTreeMap::new();
        records.insert(config.name, PeerRecord::default());
        let mut this = Self {
            paxos: paxos::Paxos::new(config.name, quorum, observer),
            started: now,
            rng: ChaCha8Rng::seed_from_u64(seed),
            ring: None,
            seeds: Vec::new(),
            allocs: BTreeMap::new(),
            by_key: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_seq: 0,
            cursor: 1,
            records,
            live: BTreeMap::new(),
            request: None,
            tried: BTreeSet::new(),
            next_gossip: now,
            next_propose: None,
            paxos_progress: false,
            minority_since: None,
            resync: BTreeSet::new(),
            next_check: None,
            broadcast: false,
            full: false,
            changed: BTreeSet::new(),
            digest_due: false,
            answered: BTreeMap::new(),
            dirty: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            conflicts: BTreeSet::new(),
            refused: BTreeMap::new(),
            stats: Stats::default(),
            config,
        };
        if let Init::Seed(seeds) = &this.config.init {
            let mut seeds = seeds.clone();
            seeds.sort_unstable();
            seeds.dedup();
            if !seeds.is_empty() {
                this.install_ring(Ring::seeded(this.config.range.size(), &seeds), seeds);
            }
        }
        this
    }

    /// Starts an engine from a persisted snapshot: its ring and allocations.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::NameMismatch`] or [`SnapshotError::RangeMismatch`] when the snapshot
    /// belongs to another peer name or range (the shell then starts afresh and says so).
    pub fn restore(
        config: Config,
        now: Instant,
        seed: u64,
        snap: &Snapshot,
    ) -> Result<Self, SnapshotError> {
        if snap.name != config.name {
            return Err(SnapshotError::NameMismatch);
        }
        if snap.range != config.range {
            return Err(SnapshotError::RangeMismatch);
        }
        let mut this = Self::new(config, now, seed);
        if let Some(rs) = &snap.ring {
            let ring = Ring::from_entries(this.config.range.size(), rs.entries.clone())
                .map_err(|_| SnapshotError::Corrupt)?;
            this.ring = None;
            this.install_ring(ring, rs.seeds.clone());
        }
        if let Some(me) = this.records.get_mut(&this.config.name) {
            me.seq = snap.seq;
        }
        for (key, off) in &snap.allocations {
            this.allocs.insert(*off, key.clone());
            this.by_key.insert(key.clone(), *off);
            this.cursor = off.saturating_add(1);
        }
        this.dirty = false;
        // Allocations left inside ranges taken over while we were away are conflicts again
        // after a restart (the set is derived from the ring, never only remembered).
        this.recompute_conflicts();
        this.update_free();
        Ok(this)
    }

    /// Returns our name.
    pub fn name(&self) -> PeerName {
        self.config.name
    }

    /// Returns the range.
    pub fn range(&self) -> Range {
        self.config.range
    }

    /// Returns the ring, once there is one.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// Returns the counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Returns the address allocated to a key, if any.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Option<Address> {
        let key = AllocKey::new(container_id, ifname).ok()?;
        self.by_key.get(&key).map(|&o| self.address(o))
    }

    /// Returns our allocations that lie in ranges another peer took over (reported conflicts).
    pub fn conflicts(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.conflicts.iter().map(|&o| self.config.range.addr(o))
    }

    /// Returns the encoded length of our whole state (what a full broadcast sends), bytes.
    pub fn state_len(&self) -> usize {
        self.state_message().to_bytes().len()
    }

    /// Returns the per-peer records we hold (ours included), by name.
    pub fn records(&self) -> &BTreeMap<PeerName, PeerRecord> {
        &self.records
    }

    /// Returns how many allocations are pending (waiting for a ring or for space).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Returns every allocation, by address.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &AllocKey)> + '_ {
        self.allocs
            .iter()
            .map(|(&o, k)| (self.config.range.addr(o), k))
    }

    /// Allocates an address for `container_id`/`ifname`, or returns the one it already has.
    ///
    /// Without free space of our own the allocation is pending and space is requested; the
    /// engine completes it when space arrives ([`Event::Allocated`]).
    ///
    /// # Errors
    ///
    /// [`AllocError::BadKey`] for an empty or oversized key.
    pub fn allocate(
        &mut self,
        now: Instant,
        container_id: &str,
        ifname: &str,
    ) -> Result<Allocation, AllocError> {
        let key = AllocKey::new(container_id, ifname)?;
        Ok(self.allocate_key(now, key))
    }

    /// Allocates (idempotently) the node's bridge gateway address, under a reserved key that
    /// [`Ipam::gc`] never releases.
    pub fn gateway(&mut self, now: Instant) -> Allocation {
        self.allocate_key(now, AllocKey::gateway())
    }

    /// Releases a key's address (or its pending request). Returns the address released.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Option<IpAddr> {
        let key = AllocKey::new(container_id, ifname).ok()?;
        self.release_key(&key)
    }

    /// Releases every allocation whose key is not in `valid` (the gateway excepted), and
    /// every pending request likewise. Returns what was released.
    pub fn gc(&mut self, valid: &[(String, String)]) -> Vec<(AllocKey, IpAddr)> {
        let keep: BTreeSet<(&str, &str)> = valid
            .iter()
            .map(|(c, i)| (c.as_str(), i.as_str()))
            .collect();
        let stale: Vec<AllocKey> = self
            .by_key
            .keys()
            .chain(self.pending.keys())
            .filter(|k| {
                k.container_id != GATEWAY_CONTAINER
                    && !keep.contains(&(k.container_id.as_str(), k.ifname.as_str()))
            })
            .cloned()
            .collect();
        let mut out = Vec::new();
        for k in stale {
            if let Some(a) = self.release_key(&k) {
                out.push((k, a));
            }
        }
        out
    }

    /// Records an existing address for a key (a pod found on the bridge at start). The
    /// address must lie in a range we own and be free or already this key's.
    ///
    /// # Errors
    ///
    /// [`AllocError`] says why the claim is refused.
    pub fn claim(
        &mut self,
        container_id: &str,
        ifname: &str,
        addr: IpAddr,
    ) -> Result<(), AllocError> {
        let key = AllocKey::new(container_id, ifname)?;
        let off = self
            .config
            .range
            .offset(addr)
            .ok_or(AllocError::OutOfRange)?;
        if off == 0 || off == self.config.range.size() - 1 {
            return Err(AllocError::Reserved);
        }
        match self.allocs.get(&off) {
            Some(k) if *k == key => return Ok(()),
            Some(_) => return Err(AllocError::Taken),
            None => {}
        }
        let owned = self
            .ring
            .as_ref()
            .and_then(|r| r.owner_of(off))
            .is_some_and(|(_, _, e)| e.owner == self.config.name);
        if !owned {
            return Err(AllocError::NotOwned);
        }
        if let Some(old) = self.by_key.remove(&key) {
            self.allocs.remove(&old);
        }
        self.pending.remove(&key);
        self.allocs.insert(off, key.clone());
        self.by_key.insert(key, off);
        self.changed_allocs();
        Ok(())
    }

    /// Takes over a dead peer's ranges (`weft rmpeer NAME`). Returns the addresses taken.
    ///
    /// # Errors
    ///
    /// [`RmPeerError::Alive`] when the peer is in the topology: run it only for peers that are
    /// gone, and on one node only.
    pub fn rmpeer(&mut self, now: Instant, peer: PeerName) -> Result<u64, RmPeerError> {
        if peer == self.config.name {
            return Err(RmPeerError::Ourselves);
        }
        if self.live.get(&peer).is_some_and(|l| l.seen) {
            return Err(RmPeerError::Alive);
        }
        let me = self.config.name;
        let ring = self.ring.as_mut().ok_or(RmPeerError::NoRing)?;
        let taken = ring.take_over(peer, me);
        if taken > 0 {
            self.stats.reclaimed += 1;
            self.events.push_back(Event::Reclaimed {
                peer,
                addresses: taken,
            });
            self.changed_ring(now);
        }
        Ok(taken)
    }

    /// Handles one IPAM message from `from`.
    ///
    /// # Errors
    ///
    /// [`wire::Error`] when the message does not decode; nothing is applied then.
    pub fn handle_gossip(
        &mut self,
        now: Instant,
        from: PeerName,
        bytes: &[u8],
    ) -> Result<(), wire::Error> {
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                return Err(e);
            }
        };
        match msg {
            Message::SpaceRequest { want } => self.donate(now, from, want),
            Message::Digest {
                range,
                ring,
                digest,
            } => self.handle_digest(now, from, range, ring, digest),
            Message::State {
                range,
                ring,
                peers,
                paxos,
                answer,
                delta,
            } => {
                if range != self.config.range {
                    self.refused.insert(from, "uses a different IP range");
                    return Ok(());
                }
                if delta {
                    // Changed records only: the sender may well hold a ring. Most copies of a
                    // delta bring nothing new (it reaches us from every neighbour).
                    if self.merge_records(&peers) {
                        self.after_change(now);
                    }
                    return Ok(());
                }
                let resyncing = self.resync.remove(&from);
                // Push-pull: what the answering peer holds, to compare with ours once merged.
                let mut theirs = answer
                    .then(|| digest_of(ring.as_ref().map(|r| (&r.seeds[..], &r.entries)), &peers));
                if ring.is_none() && self.ring.is_some() {
                    theirs = None;
                    // The sender has no ring yet (it may have missed every broadcast of it and
                    // is still proposing): answer it directly instead of leaving it to the
                    // periodic gossip.
                    self.transmit
                        .push_back((Destination::Peer(from), self.state_message().to_bytes()));
                }
                if let Some(rs) = ring {
                    self.merge_ring(now, from, rs);
                }
                let _ = self.merge_records(&peers);
                if resyncing && self.resync.is_empty() {
                    self.broadcast_full();
                }
                if self.ring.is_none()
                    && let Some(claims) = paxos
                {
                    if self.paxos.merge(&claims) {
                        self.broadcast_full();
                        self.paxos_progress = true;
                    }
                    if self.paxos.behind(&claims) {
                        // Push-pull: the sender missed claims we hold (lost messages); tell it.
                        self.transmit
                            .push_back((Destination::Peer(from), self.state_message().to_bytes()));
                    }
                    self.check_decided(now);
                }
                self.after_change(now);
                if theirs.is_some_and(|d| d != self.digest()) && !(self.broadcast && self.full) {
                    // The answer lacks something we hold (or we changed and will broadcast).
                    self.transmit
                        .push_back((Destination::Peer(from), self.state_message().to_bytes()));
                }
            }
        }
        Ok(())
    }

    /// Marks the whole state for the next broadcast.
    fn broadcast_full(&mut self) {
        self.broadcast = true;
        self.full = true;
    }

    /// Marks `peer`'s record, which changed in our table, for the next broadcast.
    fn broadcast_record(&mut self, peer: PeerName) {
        self.broadcast = true;
        self.changed.insert(peer);
    }

    /// Returns the digest of our ring and records that periodic gossip carries: FNV-1a over
    /// the seeds, every ring entry, and every record's name and sequence number.
    pub fn digest(&self) -> u64 {
        let ring = self.ring.as_ref().map(|r| (&self.seeds[..], r.entries()));
        digest_of(ring, &self.records)
    }

    fn handle_digest(&mut self, now: Instant, from: PeerName, range: Range, ring: bool, d: u64) {
        if range != self.config.range {
            self.refused.insert(from, "uses a different IP range");
            return;
        }
        let ours = self.digest();
        if d == ours {
            // The sender holds exactly our ring: as good as hearing it (see `resync`).
            if ring && self.resync.remove(&from) && self.resync.is_empty() {
                self.broadcast_full();
                self.after_change(now);
            }
            self.answered.remove(&from);
            return;
        }
        let repeat = self.answered.get(&from).is_some_and(|a| {
            a.theirs == d && a.ours == ours && now < a.at + self.config.gossip_interval * 10
        });
        if repeat {
            return;
        }
        self.answered.insert(
            from,
            Answered {
                theirs: d,
                ours,
                at: now,
            },
        );
        let mut msg = self.state_message();
        if let Message::State { answer, .. } = &mut msg {
            *answer = true;
        }
        self.transmit
            .push_back((Destination::Peer(from), msg.to_bytes()));
    }

    /// Notes that `peer` is in the topology (reachable through the mesh).
    pub fn handle_peer_seen(&mut self, now: Instant, peer: PeerName) {
        self.handle_peers_seen(now, [peer]);
    }

    /// Notes that every peer of `peers` is in the topology: the same as calling
    /// [`Ipam::handle_peer_seen`] for each, but re-evaluates the ring once, not once per peer
    /// (a mesh that converges reports its peers in bursts).
    pub fn handle_peers_seen(&mut self, now: Instant, peers: impl IntoIterator<Item = PeerName>) {
        let mut fresh = false;
        for peer in peers {
            if peer == self.config.name {
                continue;
            }
            let was = self.live.insert(
                peer,
                Liveness {
                    seen: true,
                    since: now,
                },
            );
            if !was.is_some_and(|l| l.seen) {
                self.tried.remove(&peer);
                fresh = true;
            }
        }
        if fresh {
            self.broadcast_full();
            self.after_change(now);
        }
    }

    /// Notes that `peer` left the topology.
    pub fn handle_peer_gone(&mut self, now: Instant, peer: PeerName) {
        if peer == self.config.name {
            return;
        }
        if self.live.get(&peer).is_none_or(|l| l.seen) {
            self.live.insert(
                peer,
                Liveness {
                    seen: false,
                    since: now,
                },
            );
        }
        if self.request.is_some_and(|r| r.donor == peer) {
            self.request = None;
        }
        self.resync.remove(&peer);
        self.answered.remove(&peer);
        self.after_change(now);
    }

    /// Runs what is due: periodic gossip, request retries, proposals, votes and reclaims.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_gossip {
            // With a ring, a digest: neighbours that differ answer with their state. Without
            // one, the whole state (seeding consensus runs on it; see docs/IPAM.md).
            if self.ring.is_some() {
                self.digest_due = true;
            } else {
                self.broadcast_full();
            }
            self.next_gossip = now + self.config.gossip_interval;
        }
        if self.request.is_some_and(|r| now >= r.deadline)
            && let Some(r) = self.request.take()
        {
            self.tried.insert(r.donor);
        }
        if self.next_propose.is_some_and(|t| now >= t) {
            self.next_propose = None;
            if self.ring.is_none() {
                // While claims keep changing, the current proposal may still win: repeat our
                // state (messages get lost) instead of pre-empting it with a higher round. Only
                // a silent interval starts a new round; that keeps proposers from duelling.
                if !std::mem::take(&mut self.paxos_progress) {
                    self.paxos.propose();
                }
                self.broadcast_full();
                self.check_decided(now);
            }
        }
        self.after_change(now);
    }

    /// Returns the state to persist when it changed since the last call. Persist it durably
    /// before sending anything from [`Ipam::poll_transmit`] and before answering the CNI.
    pub fn poll_snapshot(&mut self) -> Option<Snapshot> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.snapshot())
    }

    /// Returns the next message to send.
    pub fn poll_transmit(&mut self) -> Option<(Destination, Vec<u8>)> {
        if self.broadcast {
            self.broadcast = false;
            self.digest_due = false;
            let changed = std::mem::take(&mut self.changed);
            if std::mem::take(&mut self.full) || self.ring.is_none() {
                let msg = self.state_message();
                self.transmit
                    .push_back((Destination::Broadcast, msg.to_bytes()));
            } else if !changed.is_empty() {
                let msg = Message::State {
                    range: self.config.range,
                    ring: None,
                    peers: changed
                        .iter()
                        .filter_map(|p| Some((*p, self.records.get(p)?.clone())))
                        .collect(),
                    paxos: None,
                    answer: false,
                    delta: true,
                };
                self.transmit
                    .push_back((Destination::Broadcast, msg.to_bytes()));
            }
        } else if self.digest_due {
            self.digest_due = false;
            let msg = Message::Digest {
                range: self.config.range,
                ring: self.ring.is_some(),
                digest: self.digest(),
            };
            self.transmit
                .push_back((Destination::Broadcast, msg.to_bytes()));
        }
        self.transmit.pop_front()
    }

    /// Returns the next deadline and why; call [`Ipam::handle_timeout`] when it passes.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut best = (self.next_gossip, "ipam gossip");
        if let Some(r) = self.request
            && r.deadline < best.0
        {
            best = (r.deadline, "ipam space request");
        }
        if let Some(t) = self.next_propose
            && t < best.0
        {
            best = (t, "ipam consensus proposal");
        }
        if let Some(t) = self.next_check
            && t < best.0
        {
            best = (t, "ipam reclaim check");
        }
        Some(best)
    }

    /// Returns the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Returns the persistent state: ring and our allocations.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            name: self.config.name,
            range: self.config.range,
            seq: self.records.get(&self.config.name).map_or(0, |r| r.seq),
            ring: self.ring.as_ref().map(|r| RingState {
                seeds: self.seeds.clone(),
                entries: r.entries().clone(),
            }),
            allocations: self.allocs.iter().map(|(&o, k)| (k.clone(), o)).collect(),
        }
    }

    /// Returns what `weft status ipam` shows.
    pub fn status(&self, now: Instant) -> IpamStatus {
        let me = self.config.name;
        let mut owners = Vec::new();
        if let Some(ring) = &self.ring {
            let totals = ring.totals();
            let mine = totals.get(&me).copied().unwrap_or(0);
            owners.push(OwnerStatus {
                name: me,
                nickname: String::new(),
                ips: mine,
                active: Some(self.allocs.len() as u64),
                reachable: true,
            });
            for (&p, &ips) in &totals {
                if p != me {
                    owners.push(OwnerStatus {
                        name: p,
                        nickname: String::new(),
                        ips,
                        active: None,
                        reachable: self.live.get(&p).is_some_and(|l| l.seen),
                    });
                }
            }
        }
        let mut notes: Vec<String> = self
            .refused
            .iter()
            .map(|(p, why)| format!("peer {p} {why}"))
            .collect();
        if !self.conflicts.is_empty() {
            notes.push(format!(
                "{} allocated address(es) now in ranges another peer took over",
                self.conflicts.len()
            ));
        }
        let doubled = self.doubled();
        if !doubled.is_empty() {
            notes.push(format!(
                "{} allocated address(es) also held by another peer (split brain: {})",
                doubled.len(),
                doubled
                    .iter()
                    .take(8)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        IpamStatus {
            status: self.status_line(now),
            range: self.config.range.to_string(),
            default_subnet: self.config.range.to_string(),
            range_num_ips: u64::from(self.config.range.size()),
            owners,
            pending: self.pending.len(),
            conflicting: (self.conflicts.len() + doubled.len()) as u64,
            notes,
        }
    }

    // ---- helpers ----

    fn address(&self, off: u32) -> Address {
        Address {
            addr: self.config.range.addr(off),
            prefix_len: self.config.range.prefix(),
        }
    }

    fn allocate_key(&mut self, now: Instant, key: AllocKey) -> Allocation {
        if let Some(&o) = self.by_key.get(&key) {
            return Allocation::Allocated(self.address(o));
        }
        if self.ring.is_none()
            && matches!(self.config.init, Init::Consensus { .. })
            && !self.paxos.started()
        {
            // Lazy seeding: the first allocation starts consensus (at once with quorum 1).
            self.paxos.propose();
            self.broadcast_full();
            self.check_decided(now);
        }
        if self.blocked(now).is_none()
            && let Some(o) = self.find_free()
        {
            self.pending.remove(&key);
            self.insert_alloc(o, key);
            self.after_change(now);
            return Allocation::Allocated(self.address(o));
        }
        self.enqueue(key.clone());
        self.after_change(now);
        if let Some(&o) = self.by_key.get(&key) {
            return Allocation::Allocated(self.address(o));
        }
        Allocation::Pending(self.blocked(now).unwrap_or_else(|| self.space_wait()))
    }

    fn enqueue(&mut self, key: AllocKey) {
        if !self.pending.contains_key(&key) {
            self.pending_seq += 1;
            self.pending.insert(key, self.pending_seq);
        }
    }

    fn insert_alloc(&mut self, o: u32, key: AllocKey) {
        self.allocs.insert(o, key.clone());
        self.by_key.insert(key, o);
        self.cursor = o.saturating_add(1);
        self.changed_allocs();
    }

    fn release_key(&mut self, key: &AllocKey) -> Option<IpAddr> {
        self.pending.remove(key);
        let o = self.by_key.remove(key)?;
        self.allocs.remove(&o);
        self.conflicts.remove(&o);
        self.changed_allocs();
        Some(self.config.range.addr(o))
    }

    fn changed_allocs(&mut self) {
        self.dirty = true;
        self.update_free();
    }

    fn changed_ring(&mut self, now: Instant) {
        self.dirty = true;
        self.broadcast_full();
        self.after_change(now);
    }

    /// Why allocation cannot proceed from our own space right now, if it cannot.
    fn blocked(&self, now: Instant) -> Option<Waiting> {
        if self.ring.is_none() {
            return Some(if self.config.init == Init::Observer {
                Waiting::Ring
            } else {
                Waiting::Consensus
            });
        }
        if !self.resync.is_empty() {
            return Some(Waiting::Fenced);
        }
        let after = self.config.reclaim_after?;
        let since = self.minority_since?;
        (now >= since + after / 2).then_some(Waiting::Fenced)
    }

    fn space_wait(&self) -> Waiting {
        if self.choose_donor().is_some() || self.request.is_some() {
            Waiting::Space
        } else {
            Waiting::Unreachable
        }
    }

    /// Lowest free offset at or after the cursor in our ranges, wrapping once.
    fn find_free(&self) -> Option<u32> {
        let ring = self.ring.as_ref()?;
        let owned = ring.owned_by(self.config.name);
        let last = self.config.range.size() - 1;
        let held = self.foreign_held();
        let scan = |from: u32, to: u32| -> Option<u32> {
            for &(s, e) in &owned {
                let lo = s.max(from).max(1);
                let hi = e.min(to).min(last);
                if lo >= hi {
                    continue;
                }
                let mut cand = lo;
                for a in self.used_in(&held, lo, hi) {
                    if a != cand {
                        break;
                    }
                    cand += 1;
                }
                if cand < hi {
                    return Some(cand);
                }
            }
            None
        };
        scan(self.cursor, u32::MAX).or_else(|| scan(0, self.cursor))
    }

    fn free_count(&self) -> u32 {
        let Some(ring) = &self.ring else { return 0 };
        let last = self.config.range.size() - 1;
        let held = self.foreign_held();
        let mut free = 0u32;
        for (s, e) in ring.owned_by(self.config.name) {
            let lo = s.max(1);
            let hi = e.min(last);
            if lo < hi {
                let used = u32::try_from(self.used_in(&held, lo, hi).len()).unwrap_or(u32::MAX);
                free = free.saturating_add((hi - lo).saturating_sub(used));
            }
        }
        free
    }

    /// Refreshes our own record: free count and held-foreign offsets.
    fn update_free(&mut self) {
        let free = self.free_count();
        let held: Vec<u32> = self
            .conflicts
            .iter()
            .take(wire::MAX_HELD)
            .copied()
            .collect();
        let me = self.config.name;
        if let Some(r) = self.records.get_mut(&me)
            && (free_changed(r.free, free) || r.held != held)
        {
            r.free = free;
            r.held = held;
            r.seq = r.seq.saturating_add(1);
            self.broadcast_record(me);
        }
    }

    /// Derives the conflict set from the ring: every allocation of ours outside our own
    /// ranges (they were taken over while we were cut off). New ones are reported.
    fn recompute_conflicts(&mut self) {
        let Some(ring) = &self.ring else { return };
        let me = self.config.name;
        let now: BTreeSet<u32> = self
            .allocs
            .keys()
            .filter(|&&o| ring.owner_of(o).is_none_or(|(_, _, e)| e.owner != me))
            .copied()
            .collect();
        let fresh: Vec<IpAddr> = now
            .difference(&self.conflicts)
            .map(|&o| self.config.range.addr(o))
            .collect();
        if !fresh.is_empty() {
            self.events.push_back(Event::Conflict { addresses: fresh });
        }
        self.conflicts = now;
    }

    /// Offsets other peers still hold inside ranges they lost (their records' `held`), from
    /// peers that are reachable or still own space: we never hand these out. A peer removed
    /// from the ring and gone from the topology no longer counts.
    fn foreign_held(&self) -> BTreeSet<u32> {
        let me = self.config.name;
        let owners = self.ring.as_ref().map(Ring::totals).unwrap_or_default();
        self.records
            .iter()
            .filter(|&(&p, r)| {
                p != me
                    && !r.held.is_empty()
                    && (owners.contains_key(&p) || self.live.get(&p).is_some_and(|l| l.seen))
            })
            .flat_map(|(_, r)| r.held.iter().copied())
            .collect()
    }

    /// Our allocations that another peer also holds (it was cut off, reclaimed, and we or a
    /// peer we got the space from allocated the same address meanwhile): a true split-brain
    /// double allocation, reported in status.
    pub fn doubled(&self) -> Vec<IpAddr> {
        let held = self.foreign_held();
        self.allocs
            .keys()
            .filter(|o| held.contains(o))
            .map(|&o| self.config.range.addr(o))
            .collect()
    }

    /// Our allocations plus the offsets others hold in lost ranges, within `[lo, hi)`.
    fn used_in(&self, held: &BTreeSet<u32>, lo: u32, hi: u32) -> Vec<u32> {
        if held.is_empty() {
            return self.allocs.range(lo..hi).map(|(&a, _)| a).collect();
        }
        let mut v: BTreeSet<u32> = self.allocs.range(lo..hi).map(|(&a, _)| a).collect();
        v.extend(held.range(lo..hi).copied());
        v.into_iter().collect()
    }

    fn check_decided(&mut self, _now: Instant) {
        if self.ring.is_some() {
            return;
        }
        if let Some(seeds) = self.paxos.decided()
            && !seeds.is_empty()
        {
            let ring = Ring::seeded(self.config.range.size(), &seeds);
            self.install_ring(ring, seeds);
        }
    }

    /// Re-evaluates everything that depends on the ring, liveness and pending work.
    fn after_change(&mut self, now: Instant) {
        // Others' held offsets and liveness change what we count as free.
        self.update_free();
        self.update_fence(now);
        self.update_vote(now);
        self.try_reclaim(now);
        self.fill_pending(now);
        self.request_space(now);
        self.next_check = self.compute_next_check(now);
        if self.ring.is_none()
            && !self.pending.is_empty()
            && self.next_propose.is_none()
            && matches!(self.config.init, Init::Consensus { .. })
        {
            let base = self.config.propose_interval;
            let jitter = self.rng.gen_range(0..=base.as_millis() as u64 / 2);
            self.next_propose = Some(now + base + Duration::from_millis(jitter));
        }
    }

    fn fill_pending(&mut self, now: Instant) {
        if self.pending.is_empty() || self.blocked(now).is_some() {
            return;
        }
        let mut order: Vec<(u64, AllocKey)> =
            self.pending.iter().map(|(k, &s)| (s, k.clone())).collect();
        order.sort();
        for (_, key) in order {
            let Some(o) = self.find_free() else { break };
            self.pending.remove(&key);
            self.insert_alloc(o, key.clone());
            self.events.push_back(Event::Allocated {
                key,
                address: self.address(o),
            });
        }
    }

    fn state_message(&self) -> Message {
        Message::State {
            range: self.config.range,
            ring: self.ring.as_ref().map(|r| RingState {
                seeds: self.seeds.clone(),
                entries: r.entries().clone(),
            }),
            peers: self.records.clone(),
            paxos: if self.ring.is_none() && self.paxos.started() {
                Some(self.paxos.claims().clone())
            } else {
                None
            },
            answer: false,
            delta: false,
        }
    }

    fn status_line(&self, now: Instant) -> String {
        if self.ring.is_none() {
            return match self.config.init {
                Init::Observer => "priming (observer: waiting to hear the IP ring)".to_owned(),
                Init::Consensus { quorum } if self.paxos.started() || !self.pending.is_empty() => {
                    format!(
                        "awaiting consensus (quorum: {quorum}, known: {})",
                        self.paxos.known()
                    )
                }
                Init::Consensus { .. } | Init::Seed(_) => "idle".to_owned(),
            };
        }
        if let Some(w) = self.blocked(now) {
            return w.as_str().to_owned();
        }
        if !self.pending.is_empty() {
            return self.space_wait().as_str().to_owned();
        }
        if !self.refused.is_empty() || !self.conflicts.is_empty() || !self.doubled().is_empty() {
            return "ready (with conflicts: see 'weft status ipam')".to_owned();
        }
        "ready".to_owned()
    }

    /// The next instant at which a liveness threshold passes (a vote or fence may change).
    fn compute_next_check(&self, now: Instant) -> Option<Instant> {
        let after = self.config.reclaim_after?;
        let ring = self.ring.as_ref()?;
        let mut edges: Vec<Instant> = ring
            .totals()
            .keys()
            .filter(|&&p| p != self.config.name)
            .filter_map(|p| match self.live.get(p) {
                Some(l) if l.seen => None,
                Some(l) => Some(l.since + after),
                None => Some(self.started + after),
            })
            .collect();
        if let Some(m) = self.minority_since {
            edges.push(m + after / 2);
        }
        edges.into_iter().filter(|&t| t > now).min()
    }
}

/// FNV-1a over the sorted owner names: the owner set a reclaim vote was cast under.
pub fn owners_hash(owners: impl Iterator<Item = PeerName>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in owners {
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Whether our record should publish a new free count: it is a hint for choosing donors, so
/// it is republished only when it moves by an eighth or more, or crosses the "more than one
/// free" line that donor choice tests. An allocation or release inside a large range then
/// changes nothing that gossip carries.
fn free_changed(published: u32, free: u32) -> bool {
    let d = published.abs_diff(free);
    d > 0 && (u64::from(d) * 8 >= u64::from(published.max(free)) || (published > 1) != (free > 1))
}

/// FNV-1a over what a digest covers: the ring (seeds and entries) and each record's name and
/// sequence number (a record changes only with its sequence number).
fn digest_of(
    ring: Option<(&[PeerName], &BTreeMap<u32, Entry>)>,
    records: &BTreeMap<PeerName, PeerRecord>,
) -> u64 {
    let mut h = Fnv::new();
    match ring {
        None => h.write(&[0]),
        Some((seeds, entries)) => {
            h.write(&[1]);
            h.write(&(seeds.len() as u64).to_be_bytes());
            for p in seeds {
                h.write(&p.bytes());
            }
            for (t, e) in entries {
                h.write(&t.to_be_bytes());
                h.write(&e.owner.bytes());
                h.write(&e.version.to_be_bytes());
            }
        }
    }
    h.write(&[2]);
    for (p, r) in records {
        h.write(&p.bytes());
        h.write(&r.seq.to_be_bytes());
    }
    h.0
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
