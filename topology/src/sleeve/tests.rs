//! Property tests: chunk → reassemble round trips under reordering, duplication and loss, and
//! arbitrary bytes never panic the receiver.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// An arbitrary base instant: the code under test only ever compares instants.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

/// A valid frame: a zeroed virtio header (no GSO, no checksum) and an Ethernet-sized body.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    (14usize..4000, any::<u8>()).prop_map(|(len, seed)| {
        let mut f = vec![0u8; VNET_HDR_LEN + len];
        for (i, b) in f.iter_mut().enumerate().skip(VNET_HDR_LEN) {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        f
    })
}

fn chunk_all(frame: &[u8], max_datagram: usize, frame_id: u32) -> Vec<Vec<u8>> {
    let layout = ChunkLayout::plain(max_datagram).unwrap();
    let mut chunker = Chunker::new(layout, A, B, frame_id);
    let mut out = vec![0u8; layout.buffer_len(frame.len())];
    let chunks = chunker.chunk(frame, &mut out).unwrap();
    (0..chunks.count)
        .map(|i| out[chunks.datagram(i)].to_vec())
        .collect()
}

proptest! {
    #[test]
    fn round_trip_under_reordering_and_duplication(
        frame in frame_strategy(),
        max_datagram in 29usize..1500,
        order in any::<prop::sample::Index>(),
        dup in any::<prop::sample::Index>(),
    ) {
        let mut datagrams = chunk_all(&frame, max_datagram, 42);
        let extra = dup.get(&datagrams).clone();
        datagrams.push(extra);
        let n = datagrams.len();
        datagrams.rotate_left(order.index(n));
        let mut rx = Receiver::new(B, ReassemblyConfig::default());
        let now = t0();
        let mut delivered = Vec::new();
        for d in &datagrams {
            if let Received::Inject { src, frame } = rx.handle_datagram(now, d) {
                prop_assert_eq!(src, A);
                delivered.push(frame.to_vec());
            }
        }
        // A whole-frame chunk takes no reassembly state, so its duplicate is delivered again
        // (as a duplicated Ethernet frame would be); a split frame is delivered once.
        prop_assert_eq!(delivered.len(), if n == 2 { 2 } else { 1 });
        for d in &delivered {
            prop_assert_eq!(d, &frame);
        }
    }

    #[test]
    fn loss_never_delivers_a_partial_frame(
        frame in frame_strategy(),
        max_datagram in 29usize..1500,
        lost in any::<prop::sample::Index>(),
    ) {
        let mut datagrams = chunk_all(&frame, max_datagram, 7);
        prop_assume!(datagrams.len() > 1);
        datagrams.remove(lost.index(datagrams.len()));
        let mut rx = Receiver::new(B, ReassemblyConfig::default());
        let now = t0();
        for d in &datagrams {
            let got = rx.handle_datagram(now, d);
            prop_assert!(matches!(got, Received::Pending), "{got:?}");
        }
        rx.handle_timeout(now + Duration::from_secs(1));
        prop_assert_eq!(rx.counters().frames_timed_out, 1);
        prop_assert_eq!(rx.reassembler().in_flight(), 0);
    }

    #[test]
    fn interleaved_frames_all_arrive(
        frames in prop::collection::vec(frame_strategy(), 1..6),
        seed in any::<u64>(),
    ) {
        let mut datagrams: Vec<Vec<u8>> = frames
            .iter()
            .enumerate()
            .flat_map(|(i, f)| chunk_all(f, 600, i as u32))
            .collect();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..datagrams.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            datagrams.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut rx = Receiver::new(B, ReassemblyConfig::default());
        let now = t0();
        let mut delivered = Vec::new();
        for d in &datagrams {
            if let Received::Inject { frame, .. } = rx.handle_datagram(now, d) {
                delivered.push(frame.to_vec());
            }
        }
        let mut want = frames;
        want.sort();
        delivered.sort();
        prop_assert_eq!(delivered, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut rx = Receiver::new(B, ReassemblyConfig::default());
        let now = t0();
        let _ = rx.handle_datagram(now, &bytes);
        let _ = rx.handle_chunk(now, A, &bytes);
        rx.handle_timeout(now + Duration::from_secs(1));
    }

    #[test]
    fn mutated_headers_never_panic(
        frame in frame_strategy(),
        flips in prop::collection::vec((0usize..28, any::<u8>()), 1..4),
    ) {
        let mut rx = Receiver::new(B, ReassemblyConfig::default());
        let now = t0();
        for mut d in chunk_all(&frame, 700, 1) {
            for (at, v) in &flips {
                d[*at] = *v;
            }
            if let Received::Inject { frame: got, .. } = rx.handle_datagram(now, &d) {
                prop_assert!(VnetHdr::parse(got).is_ok());
            }
        }
    }
}

#[test]
fn counts_malformed_datagrams() {
    let frame = vec![0u8; 100];
    let good = chunk_all(&frame, 200, 1).remove(0);
    let mut rx = Receiver::new(B, ReassemblyConfig::default());
    let now = t0();
    let mut bad_version = good.clone();
    bad_version[0] = 2;
    let mut bad_type = good.clone();
    bad_type[1] = 0x7f;
    let mut bad_hop = good.clone();
    bad_hop[14] = 0;
    let mut other_dst = good.clone();
    other_dst[13] = 9;
    let mut bad_vnet = good.clone();
    bad_vnet[HEADER_LEN + CHUNK_HEADER_LEN + 1] = 0x42;
    for d in [&good[..10], &bad_version, &bad_type, &bad_hop, &bad_vnet] {
        assert_eq!(rx.handle_datagram(now, d), Received::Drop);
    }
    assert_eq!(
        rx.handle_datagram(now, &other_dst),
        Received::Forward {
            dst: [2, 0, 0, 0, 0, 9]
        }
    );
    assert!(matches!(
        rx.handle_datagram(now, &good),
        Received::Inject { .. }
    ));
    let c = rx.counters();
    assert_eq!(
        (
            c.truncated,
            c.unknown_version,
            c.unknown_type,
            c.malformed,
            c.frames_bad_vnet_hdr
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!((c.forward, c.frames_complete, c.datagrams), (1, 2, 7));
}
