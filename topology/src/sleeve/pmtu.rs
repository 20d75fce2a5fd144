//! Path MTU discovery for the sleeve: which datagram size reaches each peer.
//!
//! A path may carry less than the local underlay MTU (a smaller link in the middle), and it
//! may drop what is too large without a word (no ICMP "fragmentation needed"). So the sleeve
//! verifies sizes itself, as Weave's sleeve did: it sends a sealed probe datagram of a size to
//! the peer, which answers with a small sealed acknowledgement naming the probe's nonce.
//!
//! Rules, per peer:
//! - The search starts at the largest datagram (`max`). A size is *verified* when acked, and
//!   *failed* after [`TRIES`] probes unanswered within [`PROBE_TIMEOUT`] each.
//! - After a failure the search halves the gap between the largest verified size (or `min`)
//!   and the smallest failed one, until the two are within [`GRANULARITY`] bytes; the result
//!   is the largest verified size (none when not even `min` passed).
//! - A finished search is run again after [`RECHECK`] when the largest size passed (paths
//!   change), after [`RECHECK_SMALLER`] when it found a smaller one (so a search spoiled by
//!   lost probes, or a path that grew back, costs the sleeve its full size for a minute at
//!   most), or after [`RETRY`] when nothing passed.
//! - The sleeve sends datagrams of [`PmtuTable::datagram_size`]: the smallest size known to
//!   pass among its peers (while a search runs after a failure, its largest verified size or
//!   `min`), and `max` when nothing smaller is known. One size for all peers keeps the data
//!   path's buffers uniform; a peer behind a smaller path shrinks everyone's datagrams, not
//!   their frames (the pod MTU never changes).
//!
//! Pure: time comes in as an argument; nonces come from a seeded generator.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::{RngCore as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use super::Error;

/// Probes per size before it counts as failed.
pub const TRIES: u8 = 3;
/// How long a probe waits for its acknowledgement.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// The search stops when verified and failed sizes are this close.
pub const GRANULARITY: usize = 8;
/// A finished search is repeated this often.
pub const RECHECK: Duration = Duration::from_secs(600);
/// A search that found a path smaller than the largest datagram is repeated this often.
pub const RECHECK_SMALLER: Duration = Duration::from_secs(60);
/// A search where nothing passed is repeated this often.
pub const RETRY: Duration = Duration::from_secs(10);

/// The body of a probe (after opening): nonce, then padding to the probed size.
pub const PROBE_BODY_MIN: usize = 8;
/// The body of an acknowledgement: nonce and the datagram length received.
pub const ACK_BODY_LEN: usize = 12;

/// Reads a probe's nonce from its opened body.
///
/// # Errors
/// [`Error::Truncated`] when the body is shorter than a nonce.
pub fn parse_probe(body: &[u8]) -> Result<u64, Error> {
    let nonce = body.get(..8).ok_or(Error::Truncated)?;
    Ok(u64::from_be_bytes(
        nonce.try_into().map_err(|_| Error::Truncated)?,
    ))
}

/// Writes a probe body of `len` bytes (at least [`PROBE_BODY_MIN`]) into `out`.
///
/// # Errors
/// [`Error::BufferTooSmall`] when `out` is shorter than `len` or `len` than a nonce.
pub fn emit_probe(nonce: u64, len: usize, out: &mut [u8]) -> Result<(), Error> {
    if len < PROBE_BODY_MIN || out.len() < len {
        return Err(Error::BufferTooSmall);
    }
    out[..8].copy_from_slice(&nonce.to_be_bytes());
    out[8..len].fill(0);
    Ok(())
}

/// Reads an acknowledgement's nonce and the datagram length the peer received.
///
/// # Errors
/// [`Error::Truncated`] or [`Error::Malformed`] (trailing bytes).
pub fn parse_ack(body: &[u8]) -> Result<(u64, usize), Error> {
    if body.len() < ACK_BODY_LEN {
        return Err(Error::Truncated);
    }
    if body.len() > ACK_BODY_LEN {
        return Err(Error::Malformed);
    }
    let mut nonce = [0; 8];
    nonce.copy_from_slice(&body[..8]);
    let mut len = [0; 4];
    len.copy_from_slice(&body[8..12]);
    Ok((u64::from_be_bytes(nonce), u32::from_be_bytes(len) as usize))
}

/// Writes an acknowledgement body.
pub fn emit_ack(nonce: u64, received: usize) -> [u8; ACK_BODY_LEN] {
    let mut out = [0; ACK_BODY_LEN];
    out[..8].copy_from_slice(&nonce.to_be_bytes());
    out[8..].copy_from_slice(&(received.min(u32::MAX as usize) as u32).to_be_bytes());
    out
}

/// A probe to send: a datagram of `size` bytes to `peer` carrying `nonce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRequest<K> {
    /// The peer.
    pub peer: K,
    /// The whole datagram's size (outer header, seal, body).
    pub size: usize,
    /// The nonce its acknowledgement must name.
    pub nonce: u64,
}

/// One peer's search as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathView {
    /// The largest size verified so far (the result once done).
    pub verified: Option<usize>,
    /// The smallest size that failed, if any.
    pub failed: Option<usize>,
    /// Whether the search has finished.
    pub done: bool,
}

#[derive(Clone, Debug)]
struct Search {
    /// Largest verified size.
    lo: Option<usize>,
    /// Smallest failed size.
    hi: Option<usize>,
    /// The probe in flight: size, nonce, tries so far, deadline.
    probing: Option<(usize, u64, u8, Instant)>,
    /// When a finished search runs again.
    again_at: Option<Instant>,
    /// What the last finished search toward the peer verified (kept while a new one runs).
    settled: Option<usize>,
}

/// Every peer's search, and the datagram size they imply.
#[derive(Clone, Debug)]
pub struct PmtuTable<K> {
    min: usize,
    max: usize,
    peers: BTreeMap<K, Search>,
    probes: VecDeque<ProbeRequest<K>>,
    rng: ChaCha8Rng,
}

impl<K: Ord + Copy> PmtuTable<K> {
    /// A table probing sizes between `min` and `max` (whole datagrams); `seed` feeds the
    /// nonces.
    pub fn new(min: usize, max: usize, seed: u64) -> Self {
        Self {
            min: min.min(max),
            max,
            peers: BTreeMap::new(),
            probes: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The largest datagram.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Starts (or restarts) the search toward `peer`.
    pub fn add(&mut self, now: Instant, peer: K) {
        // A search run again keeps what the last one verified until it has a verdict.
        let settled = self.peers.get(&peer).and_then(|s| s.settled);
        self.peers.insert(
            peer,
            Search {
                lo: None,
                hi: None,
                probing: None,
                again_at: None,
                settled,
            },
        );
        self.probe(now, peer, self.max);
    }

    /// Forgets `peer`.
    pub fn remove(&mut self, peer: K) {
        self.peers.remove(&peer);
        self.probes.retain(|p| p.peer != peer);
    }

    /// An acknowledgement from `peer` naming `nonce`; returns whether it answered the probe
    /// in flight (anything else is ignored).
    pub fn handle_ack(&mut self, now: Instant, peer: K, nonce: u64) -> bool {
        let Some(search) = self.peers.get_mut(&peer) else {
            return false;
        };
        let Some((size, n, _, _)) = search.probing else {
            return false;
        };
        if n != nonce {
            return false;
        }
        search.probing = None;
        search.lo = Some(size);
        self.next(now, peer);
        true
    }

    /// Resends or gives up on probes whose time ran out, and restarts searches that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let keys: Vec<K> = self.peers.keys().copied().collect();
        for peer in keys {
            let Some(search) = self.peers.get_mut(&peer) else {
                continue;
            };
            match search.probing {
                Some((size, nonce, tries, deadline)) if now >= deadline => {
                    if tries < TRIES {
                        search.probing = Some((size, nonce, tries + 1, now + PROBE_TIMEOUT));
                        self.probes.push_back(ProbeRequest { peer, size, nonce });
                    } else {
                        search.probing = None;
                        search.hi = Some(size);
                        self.next(now, peer);
                    }
                }
                Some(_) => {}
                None => {
                    if search.again_at.is_some_and(|t| now >= t) {
                        self.add(now, peer);
                    }
                }
            }
        }
    }

    /// The next probe to send.
    pub fn poll_probe(&mut self) -> Option<ProbeRequest<K>> {
        self.probes.pop_front()
    }

    /// When [`Self::handle_timeout`] wants calling.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|s| s.probing.map(|p| p.3).or(s.again_at))
            .min()
    }

    /// The datagram size the sleeve should send (see the module's rules).
    pub fn datagram_size(&self) -> usize {
        self.peers
            .values()
            .filter_map(|s| {
                // The last search's result holds while nothing at or below it failed since.
                let settled = s.settled.filter(|v| s.hi.is_none_or(|h| *v < h));
                match s.hi {
                    None => settled,
                    // Something failed: only what is verified is safe.
                    Some(_) => Some(s.lo.max(settled).unwrap_or(self.min)),
                }
            })
            .min()
            .unwrap_or(self.max)
    }

    /// What the search toward `peer` found so far.
    pub fn view(&self, peer: K) -> Option<PathView> {
        self.peers.get(&peer).map(|s| PathView {
            verified: s.lo,
            failed: s.hi,
            done: s.probing.is_none(),
        })
    }

    fn probe(&mut self, now: Instant, peer: K, size: usize) {
        let nonce = self.rng.next_u64();
        if let Some(search) = self.peers.get_mut(&peer) {
            search.probing = Some((size, nonce, 1, now + PROBE_TIMEOUT));
            search.again_at = None;
            self.probes.push_back(ProbeRequest { peer, size, nonce });
        }
    }

    /// Picks the next size after a verdict, or ends the search.
    fn next(&mut self, now: Instant, peer: K) {
        let Some(search) = self.peers.get_mut(&peer) else {
            return;
        };
        let low = search.lo.unwrap_or(self.min);
        let Some(hi) = search.hi else {
            // Nothing failed: the largest size passed.
            search.settled = search.lo;
            search.again_at = Some(now + RECHECK);
            return;
        };
        let size = match search.lo {
            // Nothing passed yet: close in on `min`, then try `min` itself.
            None if hi <= self.min => {
                search.settled = None;
                search.again_at = Some(now + RETRY);
                return;
            }
            None if hi <= self.min + GRANULARITY => self.min,
            Some(_) if hi <= low + GRANULARITY => {
                search.settled = search.lo;
                search.again_at = Some(now + RECHECK_SMALLER);
                return;
            }
            _ => low + (hi - low) / 2,
        };
        self.probe(now, peer, size);
    }
}

#[cfg(test)]
mod tests {
    // An arbitrary base instant for the tests; the core itself never reads the clock.
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)]
    use proptest::prelude::*;

    use super::*;

    const MIN: usize = 548;
    const MAX: usize = 1472;

    /// Runs searches toward peers 1..=n over paths that carry up to `limits[i]` bytes, until
    /// every search has finished; returns the table and the virtual time it took.
    fn run(limits: &[usize]) -> (PmtuTable<u8>, Duration) {
        let start = Instant::now();
        let mut now = start;
        let mut table = PmtuTable::new(MIN, MAX, 7);
        for peer in 1..=limits.len() as u8 {
            table.add(now, peer);
        }
        for _ in 0..10_000 {
            while let Some(p) = table.poll_probe() {
                if p.size <= limits[usize::from(p.peer) - 1] {
                    table.handle_ack(now, p.peer, p.nonce);
                }
            }
            let done = (1..=limits.len() as u8).all(|p| table.view(p).unwrap().done);
            if done {
                return (table, now - start);
            }
            now = table.poll_timeout().unwrap().max(now);
            table.handle_timeout(now);
        }
        panic!("the search did not finish");
    }

    #[test]
    fn a_clean_path_is_verified_at_once_and_changes_nothing() {
        let (table, took) = run(&[MAX]);
        assert_eq!(table.view(1).unwrap().verified, Some(MAX));
        assert_eq!(table.datagram_size(), MAX);
        assert_eq!(took, Duration::ZERO);
    }

    #[test]
    fn a_smaller_path_in_the_middle_is_found_within_granularity() {
        // A 1400-byte link: datagrams of up to 1372 bytes pass.
        let (table, took) = run(&[MAX, 1372]);
        let v = table.view(2).unwrap().verified.unwrap();
        assert!(v <= 1372 && 1372 - v < GRANULARITY, "{v}");
        assert_eq!(table.datagram_size(), v);
        assert!(took < Duration::from_secs(6), "{took:?}");
    }

    #[test]
    fn a_smaller_path_is_checked_again_within_a_minute_and_a_healed_one_restores_the_size() {
        let (mut table, took) = run(&[1372]);
        let start = Instant::now() + took;
        let again = table.poll_timeout().unwrap();
        assert!(again <= start + RECHECK_SMALLER, "{again:?}");
        // While the next search runs, the size found holds (no dip to the largest or the
        // smallest); the path healed, so it verifies the largest size at once.
        let found = table.datagram_size();
        assert!(found < MAX);
        table.handle_timeout(again);
        assert_eq!(table.datagram_size(), found);
        let p = table.poll_probe().unwrap();
        assert_eq!(p.size, MAX);
        assert!(table.handle_ack(again, 1, p.nonce));
        assert_eq!(table.datagram_size(), MAX);
    }

    #[test]
    fn a_recheck_over_an_unchanged_small_path_keeps_the_size_throughout() {
        let (mut table, _) = run(&[1372]);
        let found = table.datagram_size();
        let mut now = table.poll_timeout().unwrap();
        table.handle_timeout(now);
        // Drive the second search to its end; the size never leaves what was found.
        while !table.view(1).unwrap().done {
            while let Some(p) = table.poll_probe() {
                if p.size <= 1372 {
                    table.handle_ack(now, 1, p.nonce);
                }
                assert_eq!(table.datagram_size(), found);
            }
            now = table.poll_timeout().unwrap().max(now);
            table.handle_timeout(now);
            assert_eq!(table.datagram_size(), found);
        }
        assert_eq!(table.view(1).unwrap().verified, Some(found));
    }

    #[test]
    fn a_path_that_passes_nothing_leaves_the_minimum_and_retries() {
        let (table, _) = run(&[100]);
        let view = table.view(1).unwrap();
        assert_eq!(view.verified, None);
        assert_eq!(view.failed, Some(MIN));
        assert_eq!(table.datagram_size(), MIN);
    }

    #[test]
    fn a_late_or_foreign_ack_is_ignored_and_a_finished_search_runs_again() {
        let now = Instant::now();
        let mut table = PmtuTable::new(MIN, MAX, 1);
        table.add(now, 1_u8);
        let p = table.poll_probe().unwrap();
        assert!(!table.handle_ack(now, 1, p.nonce ^ 1));
        assert!(!table.handle_ack(now, 2, p.nonce));
        assert!(table.handle_ack(now, 1, p.nonce));
        assert!(!table.handle_ack(now, 1, p.nonce), "a duplicate");
        let again = table.poll_timeout().unwrap();
        assert_eq!(again, now + RECHECK);
        table.handle_timeout(again);
        assert_eq!(table.poll_probe().map(|p| p.size), Some(MAX));
        table.remove(1);
        assert_eq!(table.poll_timeout(), None);
    }

    #[test]
    fn bodies_round_trip_and_bad_ones_are_refused() {
        let mut body = [0xff; 40];
        emit_probe(42, 40, &mut body).unwrap();
        assert_eq!(parse_probe(&body).unwrap(), 42);
        assert!(body[8..].iter().all(|b| *b == 0));
        assert_eq!(emit_probe(1, 7, &mut body), Err(Error::BufferTooSmall));
        assert_eq!(parse_probe(&body[..7]), Err(Error::Truncated));
        let ack = emit_ack(9, 1372);
        assert_eq!(parse_ack(&ack).unwrap(), (9, 1372));
        assert_eq!(parse_ack(&ack[..11]), Err(Error::Truncated));
        assert_eq!(parse_ack(&[0; 13]), Err(Error::Malformed));
    }

    proptest! {
        /// Whatever each path carries, every search ends with the largest size it carries
        /// (within the granularity), bounded in time, and the datagram size is the smallest.
        #[test]
        fn every_search_finds_its_path(limits in proptest::collection::vec(MIN..=MAX + 100, 1..5)) {
            let (table, took) = run(&limits);
            for (i, limit) in limits.iter().enumerate() {
                let v = table.view(i as u8 + 1).unwrap().verified.unwrap();
                let carried = (*limit).min(MAX);
                prop_assert!(v <= carried && carried - v < GRANULARITY, "{v} for {limit}");
            }
            let smallest = limits.iter().min().copied().unwrap();
            prop_assert!(table.datagram_size() <= smallest.min(MAX));
            prop_assert!(took < Duration::from_secs(10), "{took:?}");
        }

        /// Bodies from anywhere never panic the parsers.
        #[test]
        fn parsing_arbitrary_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_probe(&body);
            let _ = parse_ack(&body);
        }
    }
}
