//! The sliding replay window: a fixed bitmap over the most recent counters, after boringtun's
//! `ReceivingKeyCounterValidator` (and RFC 6479).
//!
//! The window accepts a counter at most once, accepts any order inside the window, and rejects
//! counters that fell behind it. It must only be updated ([`ReplayWindow::mark`]) after the
//! packet's tag verified, or a forger could burn counters; [`ReplayWindow::check`] is the
//! cheap pre-check done before decryption.

/// A replay and reorder window over 64-bit counters.
#[derive(Clone)]
pub(crate) struct ReplayWindow {
    /// One past the highest counter accepted so far (0 = nothing accepted yet).
    next: u64,
    bitmap: [u64; WORDS],
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Says whether `counter` would be accepted now, without recording it.
    pub(crate) fn check(&self, counter: u64) -> Result<(), ReplayReject> {
        if counter >= self.next {
            return Ok(());
        }
        // `next > counter` here, so `next - 1` is the highest accepted counter.
        if self.next - 1 - counter > WINDOW {
            return Err(ReplayReject::TooOld);
        }
        let (word, bit) = Self::position(counter);
        if self.bitmap[word] & bit != 0 {
            return Err(ReplayReject::Duplicate);
        }
        Ok(())
    }

    /// Records `counter` as received; call only after the packet authenticated.
    pub(crate) fn mark(&mut self, counter: u64) -> Result<(), ReplayReject> {
        self.check(counter)?;
        if counter >= self.next {
            // Clear the words that slide into the window between the old and the new head;
            // they still hold bits of counters one ring length older.
            if self.next != 0 {
                let old_word = (self.next - 1) / 64;
                let advance = counter / 64 - old_word;
                if advance >= WORDS as u64 {
                    self.bitmap = [0; WORDS];
                } else {
                    for i in 1..=advance {
                        // The modulo keeps the index below WORDS, so the cast is lossless.
                        self.bitmap[((old_word + i) % WORDS as u64) as usize] = 0;
                    }
                }
            }
            self.next = counter + 1;
        }
        let (word, bit) = Self::position(counter);
        self.bitmap[word] |= bit;
        Ok(())
    }

    /// One past the highest counter accepted so far.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / 64) % WORDS as u64) as usize,
            1u64 << (counter % 64),
        )
    }
}

/// Why the window rejected a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayReject {
    Duplicate,
    TooOld,
}

/// Number of 64-bit words in the ring.
const WORDS: usize = 64;
/// Counters at most this far behind the highest accepted one are still accepted (4,032; the
/// 4,096-bit ring keeps one word of slack so the head can advance a word at a time).
pub const REPLAY_WINDOW: u64 = ((WORDS - 1) * 64) as u64;
const WINDOW: u64 = REPLAY_WINDOW;
const _: () = assert!(
    REPLAY_WINDOW >= 2048,
    "the issue asks for at least 2,048 packets"
);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.mark(0), Ok(()));
        assert_eq!(w.mark(0), Err(ReplayReject::Duplicate));
        assert_eq!(w.mark(5), Ok(()));
        assert_eq!(w.mark(3), Ok(()));
        assert_eq!(w.mark(3), Err(ReplayReject::Duplicate));
        assert_eq!(w.mark(5), Err(ReplayReject::Duplicate));
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new();
        w.mark(10_000).unwrap();
        assert_eq!(w.check(10_000 - WINDOW), Ok(()));
        assert_eq!(w.check(10_000 - WINDOW - 1), Err(ReplayReject::TooOld));
        assert_eq!(w.check(9_999), Ok(()));
        w.mark(10_000 - WINDOW).unwrap();
    }

    #[test]
    fn big_jump_clears_bitmap() {
        let mut w = ReplayWindow::new();
        for c in 0..100 {
            w.mark(c).unwrap();
        }
        w.mark(1_000_000).unwrap();
        for c in (1_000_000 - WINDOW)..1_000_000 {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a reference model: a counter is accepted iff never accepted before and
        /// within the window of the highest accepted counter.
        #[test]
        fn matches_model(
            base in 0u64..200,
            counters in proptest::collection::vec(0u64..20_000, 1..600),
        ) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut max: Option<u64> = None;
            for c in counters {
                let c = c + base * 64;
                let expect = !seen.contains(&c) && max.is_none_or(|m| c + WINDOW >= m);
                prop_assert_eq!(w.mark(c).is_ok(), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    max = Some(max.map_or(c, |m| m.max(c)));
                }
            }
        }
    }
}
