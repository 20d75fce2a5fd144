//! Data-plane sessions: replayed, beyond-window, truncated and bit-flipped packets are rejected;
//! in-window reordering is accepted; the mode switch and rekeying lose nothing in flight.

// A real instant anchors the virtual clock; the code under test never reads it.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use crypto::{
    HEADER_LEN, Mode, OVERHEAD, OpenError, PacketBuf, PacketStatus, REPLAY_WINDOW, SealError,
    Session, SessionConfig, TAG_LEN,
};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const ROOM: usize = 1400 + OVERHEAD;

/// Seals `payload` and returns the wire bytes.
fn seal(s: &mut Session, now: Instant, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + payload.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let mut p = PacketBuf::new(buf, HEADER_LEN, payload.len());
    s.seal(now, &mut p).unwrap();
    assert_eq!(
        (p.offset, p.len, p.status),
        (0, payload.len() + OVERHEAD, PacketStatus::Sealed)
    );
    p.buf
}

fn open(s: &mut Session, now: Instant, wire: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut p = PacketBuf::new(wire.to_vec(), 0, wire.len());
    s.open(now, &mut p)?;
    Ok(p.bytes().to_vec())
}

fn payload(n: u64) -> Vec<u8> {
    let mut v = vec![0u8; 64];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}

#[test]
fn roundtrip_both_directions_and_ciphertext_differs() {
    let now = Instant::now();
    let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
    let w = seal(&mut a, now, b"hello over the sleeve");
    assert!(!w.windows(5).any(|x| x == b"hello"));
    assert_eq!(open(&mut b, now, &w).unwrap(), b"hello over the sleeve");
    let w = seal(&mut b, now, b"and back");
    assert_eq!(open(&mut a, now, &w).unwrap(), b"and back");
    // A session cannot open its own packets (per-direction keys).
    let w = seal(&mut a, now, b"mine");
    assert_eq!(open(&mut a, now, &w), Err(OpenError::BadTag));
}

#[test]
fn replayed_packets_are_rejected() {
    let now = Instant::now();
    let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
    let w = seal(&mut a, now, b"once");
    open(&mut b, now, &w).unwrap();
    assert_eq!(open(&mut b, now, &w), Err(OpenError::Replayed));
}

#[test]
fn in_window_reordering_accepted_beyond_window_rejected() {
    let now = Instant::now();
    let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
    let n = REPLAY_WINDOW + 100;
    let wires: Vec<Vec<u8>> = (0..n).map(|i| seal(&mut a, now, &payload(i))).collect();
    // Newest first: everything within the window still opens, in reverse order.
    for i in (0..n).rev() {
        let r = open(&mut b, now, &wires[i as usize]);
        if n - 1 - i <= REPLAY_WINDOW {
            assert_eq!(r.unwrap(), payload(i), "counter {i}");
        } else {
            assert_eq!(r, Err(OpenError::TooOld), "counter {i}");
        }
    }
    const { assert!(REPLAY_WINDOW >= 2048) };
}

#[test]
fn truncated_and_bit_flipped_packets_are_rejected() {
    let now = Instant::now();
    let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
    for mode in [Mode::Sealed, Mode::Plain] {
        a.set_mode(mode);
        let w = seal(&mut a, now, &payload(7));
        for len in 0..w.len() {
            let r = open(&mut b, now, &w[..len]);
            assert!(r.is_err(), "{mode:?} truncated to {len}");
            if len < OVERHEAD {
                assert_eq!(r, Err(OpenError::Truncated));
            }
        }
        for bit in 0..w.len() * 8 {
            let mut bad = w.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                open(&mut b, now, &bad).is_err(),
                "{mode:?} bit {bit} flipped"
            );
        }
        // The untouched packet still opens: failed attempts did not burn its counter.
        assert_eq!(open(&mut b, now, &w).unwrap(), payload(7));
    }
}

#[test]
fn plain_mode_is_clear_but_authenticated() {
    let now = Instant::now();
    let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
    a.set_mode(Mode::Plain);
    let w = seal(&mut a, now, b"visible payload");
    assert_eq!(&w[HEADER_LEN..HEADER_LEN + 15], b"visible payload");
    let mut p = PacketBuf::new(w.clone(), 0, w.len());
    let opened = b.open(now, &mut p).unwrap();
    assert_eq!(opened.mode, Mode::Plain);
    assert_eq!(open(&mut b, now, &w), Err(OpenError::Replayed));
    // Forging the clear payload fails the tag.
    let w = seal(&mut a, now, b"visible payload");
    let mut forged = w.clone();
    forged[HEADER_LEN] = b'V';
    assert_eq!(open(&mut b, now, &forged), Err(OpenError::BadTag));
    // Flipping the mode bit (plain <-> sealed) fails the tag too.
    let mut flipped = w;
    flipped[0] ^= 0x10;
    assert_eq!(open(&mut b, now, &flipped), Err(OpenError::BadTag));
}

#[test]
fn mode_switch_with_packets_in_flight_in_both_modes() {
    let now = Instant::now();
    let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut wires = Vec::new();
    for i in 0..3000u64 {
        if i % 500 == 0 {
            a.set_mode(if a.mode() == Mode::Sealed {
                Mode::Plain
            } else {
                Mode::Sealed
            });
        }
        wires.push((i, seal(&mut a, now, &payload(i))));
    }
    shuffle_within(&mut wires, 300, &mut rng);
    let mut modes = [0u32; 2];
    for (i, w) in &wires {
        let mut p = PacketBuf::new(w.clone(), 0, w.len());
        let o = b.open(now, &mut p).unwrap();
        assert_eq!(p.bytes(), payload(*i));
        modes[usize::from(o.mode == Mode::Plain)] += 1;
    }
    assert_eq!(modes, [1500, 1500]);
}

#[test]
fn rekey_under_load_loses_nothing() {
    let start = Instant::now();
    let config = SessionConfig {
        rekey_after_packets: 1000,
        rekey_after: Duration::from_millis(700),
        previous_key_lifetime: Duration::from_secs(1),
    };
    let (mut a, mut b) = common::sessions(config, start);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let total = 40_000u64;
    let mut wires = Vec::with_capacity(total as usize);
    for i in 0..total {
        // Virtual time: 10 µs per packet, so both the count and the age triggers fire.
        let now = start + Duration::from_micros(10 * i);
        if i % 7_000 == 0 {
            a.set_mode(if a.mode() == Mode::Sealed {
                Mode::Plain
            } else {
                Mode::Sealed
            });
        }
        wires.push((i, now, seal(&mut a, now, &payload(i))));
    }
    assert!(a.send_epoch() >= 39, "epoch {}", a.send_epoch());
    shuffle_within(&mut wires, 400, &mut rng);
    let mut seen = vec![false; total as usize];
    for (i, sent, w) in &wires {
        let now = *sent + Duration::from_millis(2);
        let got = open(&mut b, now, w).unwrap_or_else(|e| panic!("packet {i}: {e}"));
        assert_eq!(got, payload(*i));
        assert!(!std::mem::replace(&mut seen[*i as usize], true));
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(b.recv_epoch(), a.send_epoch());
}

#[test]
fn receiver_catches_up_when_whole_epochs_are_lost() {
    let now = Instant::now();
    let config = SessionConfig {
        rekey_after_packets: 10,
        ..SessionConfig::default()
    };
    let (mut a, mut b) = common::sessions(config, now);
    let first = seal(&mut a, now, &payload(0));
    open(&mut b, now, &first).unwrap();
    // Epochs 1 and 2 are lost entirely; epoch 3's packet must still open.
    let wires: Vec<Vec<u8>> = (1..35).map(|i| seal(&mut a, now, &payload(i))).collect();
    assert_eq!(a.send_epoch(), 3);
    assert_eq!(open(&mut b, now, &wires[33]).unwrap(), payload(34));
    assert_eq!(b.recv_epoch(), 3);
    // Epoch 2, the new previous, still opens; epoch 0 (two back) does not.
    assert_eq!(open(&mut b, now, &wires[20]).unwrap(), payload(21));
    assert!(open(&mut b, now, &wires[3]).is_err());
}

#[test]
fn previous_epoch_expires() {
    let now = Instant::now();
    let config = SessionConfig {
        rekey_after_packets: 2,
        previous_key_lifetime: Duration::from_secs(1),
        ..SessionConfig::default()
    };
    let (mut a, mut b) = common::sessions(config, now);
    let w: Vec<Vec<u8>> = (0..3).map(|i| seal(&mut a, now, &payload(i))).collect();
    open(&mut b, now, &w[2]).unwrap();
    assert_eq!(
        open(&mut b, now + Duration::from_secs(2), &w[0]),
        Err(OpenError::StaleEpoch)
    );
}

#[test]
fn seal_reports_missing_room() {
    let now = Instant::now();
    let (mut a, _) = common::sessions(SessionConfig::default(), now);
    let mut p = PacketBuf::new(vec![0u8; 100], 4, 10);
    assert_eq!(a.seal(now, &mut p), Err(SealError::NoHeadroom));
    let mut p = PacketBuf::new(vec![0u8; 100], HEADER_LEN, 100 - HEADER_LEN);
    assert_eq!(a.seal(now, &mut p), Err(SealError::NoTailroom));
    assert_eq!(p.status, PacketStatus::SealFailed(SealError::NoTailroom));
}

#[test]
fn batch_seal_and_open() {
    let now = Instant::now();
    let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
    let mut batch: Vec<PacketBuf<[u8; ROOM]>> = (0..64)
        .map(|i| {
            let mut buf = [0u8; ROOM];
            buf[HEADER_LEN] = i;
            PacketBuf::new(buf, HEADER_LEN, 1400)
        })
        .collect();
    assert_eq!(a.seal_batch(now, &mut batch), 64);
    batch[5].buf[20] ^= 1;
    assert_eq!(b.open_batch(now, &mut batch), 63);
    assert_eq!(batch[5].status, PacketStatus::OpenFailed(OpenError::BadTag));
    for (i, p) in batch.iter().enumerate() {
        if i != 5 {
            assert!(matches!(p.status, PacketStatus::Opened(_)));
            assert_eq!((p.offset, p.len, p.bytes()[0]), (HEADER_LEN, 1400, i as u8));
        }
    }
}

/// Shuffles `v` within consecutive blocks of `block` items: reordering bounded by the block.
fn shuffle_within<T>(v: &mut [T], block: usize, rng: &mut ChaCha20Rng) {
    for chunk in v.chunks_mut(block) {
        chunk.shuffle(rng);
    }
}

mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any change to a sealed packet (one byte xor-ed, or a cut) makes open fail, in both
        /// modes; the original still opens afterwards.
        #[test]
        fn mutated_packets_never_open(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            plain in any::<bool>(),
            pos in any::<prop::sample::Index>(),
            xor in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let now = Instant::now();
            let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
            a.set_mode(if plain { Mode::Plain } else { Mode::Sealed });
            let w = seal(&mut a, now, &data);
            let mut bad = w.clone();
            bad[pos.index(w.len())] ^= xor;
            prop_assert!(open(&mut b, now, &bad).is_err());
            prop_assert!(open(&mut b, now, &w[..cut.index(w.len())]).is_err());
            prop_assert_eq!(open(&mut b, now, &w).unwrap(), data);
        }

        /// Deliveries drawn with duplicates and bounded reordering: each packet opens exactly
        /// once.
        #[test]
        fn reordered_duplicated_delivery_opens_each_once(
            order in proptest::collection::vec((0usize..600, 0usize..40), 1..800),
        ) {
            let now = Instant::now();
            let (mut a, mut b) = common::sessions(SessionConfig::default(), now);
            let wires: Vec<Vec<u8>> = (0..640).map(|i| seal(&mut a, now, &payload(i))).collect();
            let mut opened = vec![false; wires.len()];
            for (base, jitter) in order {
                let i = base + jitter;
                let r = open(&mut b, now, &wires[i]);
                prop_assert_eq!(r.is_ok(), !opened[i], "packet {}", i);
                opened[i] = true;
            }
        }
    }
}
