//! Putting frames back together from chunks, within a fixed memory budget.
//!
//! All memory is allocated in [`Reassembler::new`]: `slots` buffers of `max_frame_len` bytes,
//! each tracking up to [`MAX_PIECES`] disjoint received ranges. A frame that arrives whole in
//! one chunk is returned straight from the datagram and takes no slot. A new frame that finds
//! no free slot evicts the oldest frame in flight (of its own source first, when that source
//! is at its limit), so one sender cannot hold every slot. Frames not completed within
//! `timeout` are purged by [`Reassembler::handle_timeout`]. Chunks that overlap data already
//! received (duplicates included) or disagree with the frame's total length are dropped; every
//! drop is counted in [`Counters`].

use std::time::{Duration, Instant};

use super::Counters;
use super::packet::{ChunkRepr, MAX_FRAME_LEN};

/// Most disjoint received ranges tracked per frame; a frame split further is dropped.
pub const MAX_PIECES: usize = 64;

/// Memory and time bounds of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Frames in flight across all sources; memory is `slots * max_frame_len`.
    pub slots: usize,
    /// Frames in flight from one source.
    pub max_per_source: usize,
    /// Age after which an incomplete frame is purged.
    pub timeout: Duration,
    /// Largest frame accepted, at most [`MAX_FRAME_LEN`].
    pub max_frame_len: usize,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            slots: 16,
            max_per_source: 8,
            timeout: Duration::from_millis(200),
            max_frame_len: MAX_FRAME_LEN,
        }
    }
}

/// What became of one chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembly<'a> {
    /// The chunk completed a frame (valid until the next call).
    Complete(&'a [u8]),
    /// The chunk was dropped (and counted).
    Drop,
    /// The chunk was stored; its frame is still incomplete.
    Pending,
}

/// Reassembles frames from the chunks of any number of sources.
#[derive(Debug)]
pub struct Reassembler {
    config: ReassemblyConfig,
    slots: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    active: Option<Active>,
    pieces: [(u32, u32); MAX_PIECES],
    buf: Box<[u8]>,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    src: [u8; 6],
    frame_id: u32,
    total: u32,
    received: u32,
    started: Instant,
    pieces: usize,
}

impl Reassembler {
    /// Allocates the whole budget.
    pub fn new(config: ReassemblyConfig) -> Self {
        let config = ReassemblyConfig {
            slots: config.slots.max(1),
            max_per_source: config.max_per_source.clamp(1, config.slots.max(1)),
            max_frame_len: config.max_frame_len.min(MAX_FRAME_LEN),
            ..config
        };
        let slots = (0..config.slots)
            .map(|_| Slot {
                active: None,
                pieces: [(0, 0); MAX_PIECES],
                buf: vec![0; config.max_frame_len].into_boxed_slice(),
            })
            .collect();
        Self { config, slots }
    }

    /// Returns the configuration in force.
    pub const fn config(&self) -> &ReassemblyConfig {
        &self.config
    }

    /// Returns the number of frames in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.active.is_some()).count()
    }

    /// Takes one parsed chunk from `src` whose data is `data` (`chunk.data_len` bytes).
    pub fn handle_chunk<'a>(
        &'a mut self,
        now: Instant,
        src: [u8; 6],
        chunk: &ChunkRepr,
        data: &'a [u8],
        counters: &mut Counters,
    ) -> Reassembly<'a> {
        let total = chunk.total as usize;
        if total > self.config.max_frame_len || data.len() != chunk.data_len {
            counters.chunks_out_of_range += 1;
            return Reassembly::Drop;
        }
        if chunk.offset == 0 && data.len() == total {
            counters.frames_complete += 1;
            return Reassembly::Complete(data);
        }
        let index = match self.find(src, chunk.frame_id) {
            Some(i) => i,
            None => self.allocate(now, src, chunk, counters),
        };
        let slot = &mut self.slots[index];
        let Some(active) = slot.active.as_mut() else {
            // `find` and `allocate` both return an active slot.
            return Reassembly::Drop;
        };
        if active.total != chunk.total {
            counters.chunks_inconsistent += 1;
            return Reassembly::Drop;
        }
        // ChunkRepr::parse bounded offset + len by total, itself at most MAX_FRAME_LEN.
        let start = chunk.offset;
        let end = chunk.offset + data.len() as u32;
        match insert_piece(&mut slot.pieces, &mut active.pieces, start, end) {
            Insert::Added => {}
            Insert::Overlap => {
                counters.chunks_duplicate += 1;
                return Reassembly::Drop;
            }
            Insert::Full => {
                counters.frames_too_fragmented += 1;
                slot.active = None;
                return Reassembly::Drop;
            }
        }
        slot.buf[start as usize..end as usize].copy_from_slice(data);
        active.received += end - start;
        if active.received == active.total {
            slot.active = None;
            counters.frames_complete += 1;
            return Reassembly::Complete(&slot.buf[..total]);
        }
        Reassembly::Pending
    }

    /// Purges frames older than the timeout.
    pub fn handle_timeout(&mut self, now: Instant, counters: &mut Counters) {
        let timeout = self.config.timeout;
        for slot in &mut self.slots {
            if let Some(a) = slot.active
                && now.saturating_duration_since(a.started) >= timeout
            {
                slot.active = None;
                counters.frames_timed_out += 1;
            }
        }
    }

    /// Returns when [`Self::handle_timeout`] next has work, if any frame is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.active.map(|a| a.started + self.config.timeout))
            .min()
    }

    fn find(&self, src: [u8; 6], frame_id: u32) -> Option<usize> {
        self.slots.iter().position(|s| {
            s.active
                .is_some_and(|a| a.frame_id == frame_id && a.src == src)
        })
    }

    /// Returns a slot set up for the chunk's frame, evicting the oldest frame (of this source
    /// when it is at its limit, else of anyone) when needed.
    fn allocate(
        &mut self,
        now: Instant,
        src: [u8; 6],
        chunk: &ChunkRepr,
        counters: &mut Counters,
    ) -> usize {
        let from_src = self
            .slots
            .iter()
            .filter(|s| s.active.is_some_and(|a| a.src == src))
            .count();
        let index = if from_src >= self.config.max_per_source {
            self.oldest(|a| a.src == src)
        } else {
            self.slots
                .iter()
                .position(|s| s.active.is_none())
                .or_else(|| self.oldest(|_| true))
        };
        // There is at least one slot, and when none is free every slot is active, so `oldest`
        // finds one; 0 is a safe fallback either way.
        let index = index.unwrap_or(0);
        if self.slots[index].active.is_some() {
            counters.frames_evicted += 1;
        }
        self.slots[index].active = Some(Active {
            src,
            frame_id: chunk.frame_id,
            total: chunk.total,
            received: 0,
            started: now,
            pieces: 0,
        });
        index
    }

    fn oldest(&self, filter: impl Fn(&Active) -> bool) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.active.filter(|a| filter(a)).map(|a| (a.started, i)))
            .min()
            .map(|(_, i)| i)
    }
}

enum Insert {
    Added,
    Full,
    Overlap,
}

/// Inserts `[start, end)` into the sorted, disjoint, non-adjacent ranges `pieces[..*len]`,
/// merging with neighbours it touches.
fn insert_piece(
    pieces: &mut [(u32, u32); MAX_PIECES],
    len: &mut usize,
    start: u32,
    end: u32,
) -> Insert {
    let n = *len;
    // First range that starts after `start`.
    let at = pieces[..n].partition_point(|p| p.0 <= start);
    let prev = at.checked_sub(1).map(|i| pieces[i]);
    let next = (at < n).then(|| pieces[at]);
    if prev.is_some_and(|p| p.1 > start) || next.is_some_and(|p| p.0 < end) {
        return Insert::Overlap;
    }
    let joins_prev = prev.is_some_and(|p| p.1 == start);
    let joins_next = next.is_some_and(|p| p.0 == end);
    match (joins_prev, joins_next) {
        (true, true) => {
            pieces[at - 1].1 = pieces[at].1;
            pieces.copy_within(at + 1..n, at);
            *len = n - 1;
        }
        (true, false) => pieces[at - 1].1 = end,
        (false, true) => pieces[at].0 = start,
        (false, false) => {
            if n == MAX_PIECES {
                return Insert::Full;
            }
            pieces.copy_within(at..n, at + 1);
            pieces[at] = (start, end);
            *len = n + 1;
        }
    }
    Insert::Added
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// An arbitrary base instant: the code under test only ever compares instants.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn chunk(frame_id: u32, offset: u32, total: u32, len: usize) -> ChunkRepr {
        ChunkRepr {
            frame_id,
            offset,
            total,
            data_len: len,
        }
    }

    fn small(slots: usize, per_source: usize) -> Reassembler {
        Reassembler::new(ReassemblyConfig {
            slots,
            max_per_source: per_source,
            timeout: Duration::from_millis(100),
            max_frame_len: 64,
        })
    }

    #[test]
    fn reassembles_out_of_order_and_drops_overlaps() {
        let now = t0();
        let mut r = small(2, 2);
        let mut c = Counters::default();
        assert_eq!(
            r.handle_chunk(now, A, &chunk(1, 4, 10, 4), b"4567", &mut c),
            Reassembly::Pending
        );
        assert_eq!(
            r.handle_chunk(now, A, &chunk(1, 4, 10, 4), b"4567", &mut c),
            Reassembly::Drop
        );
        assert_eq!(
            r.handle_chunk(now, A, &chunk(1, 2, 10, 3), b"234", &mut c),
            Reassembly::Drop
        );
        assert_eq!(
            r.handle_chunk(now, A, &chunk(1, 0, 11, 4), b"0123", &mut c),
            Reassembly::Drop
        );
        assert_eq!(
            r.handle_chunk(now, A, &chunk(1, 8, 10, 2), b"89", &mut c),
            Reassembly::Pending
        );
        assert_eq!(
            r.handle_chunk(now, A, &chunk(1, 0, 10, 4), b"0123", &mut c),
            Reassembly::Complete(b"0123456789")
        );
        assert_eq!(r.in_flight(), 0);
        assert_eq!(
            (c.chunks_duplicate, c.chunks_inconsistent, c.frames_complete),
            (2, 1, 1)
        );
    }

    #[test]
    fn single_chunk_frames_take_no_slot() {
        let mut r = small(1, 1);
        let mut c = Counters::default();
        let got = r.handle_chunk(t0(), A, &chunk(9, 0, 3, 3), b"abc", &mut c);
        assert_eq!(got, Reassembly::Complete(b"abc"));
        assert_eq!(r.in_flight(), 0);
        assert_eq!(
            r.handle_chunk(t0(), A, &chunk(9, 0, 65, 1), b"a", &mut c),
            Reassembly::Drop
        );
        assert_eq!(c.chunks_out_of_range, 1);
    }

    #[test]
    fn evicts_oldest_per_source_then_overall() {
        let t0 = t0();
        let t1 = t0 + Duration::from_millis(1);
        let t2 = t0 + Duration::from_millis(2);
        let mut r = small(3, 2);
        let mut c = Counters::default();
        r.handle_chunk(t0, A, &chunk(1, 0, 8, 1), b"x", &mut c);
        r.handle_chunk(t1, A, &chunk(2, 0, 8, 1), b"x", &mut c);
        // A is at its limit of 2: frame 1 goes.
        r.handle_chunk(t2, A, &chunk(3, 0, 8, 1), b"x", &mut c);
        assert_eq!(c.frames_evicted, 1);
        r.handle_chunk(t2, B, &chunk(1, 0, 8, 1), b"x", &mut c);
        assert_eq!((c.frames_evicted, r.in_flight()), (1, 3));
        // Full: B's next frame evicts the oldest overall (A's frame 2).
        r.handle_chunk(t2, B, &chunk(2, 0, 8, 1), b"x", &mut c);
        assert_eq!((c.frames_evicted, r.in_flight()), (2, 3));
        assert!(r.find(A, 2).is_none() && r.find(A, 3).is_some());
    }

    #[test]
    fn times_out() {
        let t0 = t0();
        let mut r = small(2, 2);
        let mut c = Counters::default();
        r.handle_chunk(t0, A, &chunk(1, 0, 8, 1), b"x", &mut c);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        r.handle_timeout(t0 + Duration::from_millis(99), &mut c);
        assert_eq!(r.in_flight(), 1);
        r.handle_timeout(t0 + Duration::from_millis(100), &mut c);
        assert_eq!((r.in_flight(), c.frames_timed_out), (0, 1));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn too_fragmented_frames_are_dropped() {
        let now = t0();
        let mut r = small(1, 1);
        let mut c = Counters::default();
        let total = 2 * MAX_PIECES as u32 + 2;
        let mut r_big = Reassembler::new(ReassemblyConfig {
            max_frame_len: 1024,
            ..*r.config()
        });
        for i in 0..MAX_PIECES as u32 {
            let got = r_big.handle_chunk(now, A, &chunk(1, 2 * i, total, 1), b"x", &mut c);
            assert_eq!(got, Reassembly::Pending);
        }
        let got = r_big.handle_chunk(
            now,
            A,
            &chunk(1, 2 * MAX_PIECES as u32, total, 1),
            b"x",
            &mut c,
        );
        assert_eq!(got, Reassembly::Drop);
        assert_eq!((c.frames_too_fragmented, r_big.in_flight()), (1, 0));
        assert_eq!(
            r.handle_chunk(now, A, &chunk(1, 0, 2, 1), b"x", &mut c),
            Reassembly::Pending
        );
    }
}
