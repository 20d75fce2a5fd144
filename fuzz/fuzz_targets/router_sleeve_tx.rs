//! The sleeve's send path on a frame read from the TAP: the frame laid into chunk slots as
//! `readv` does, its destination MAC read, chunked, sealed and cut into GSO trains, then each
//! datagram checked, opened and reassembled by the peer (`router::sleeve::send_path`). The
//! first two bytes pick the datagram size. Properties: no input panics; a frame of a carried
//! length always leaves, to the peer its MAC names (a group MAC: to all); the peer gets it
//! whole and unchanged, unless its virtio_net_hdr is one a TAP must not be given; the source
//! MAC the peer learns is the frame's.

#![no_main]

use std::sync::Mutex;
use std::time::Instant;

use crypto::session::Mode;
use libfuzzer_sys::fuzz_target;
use router::sleeve::{BROADCAST, send_path};
use topology::PeerName;
use topology::dataplane::{Forwarder, Learn};
use topology::dataplane::ethernet::Ethernet;
use topology::sleeve::{MAX_FRAME_LEN, VNET_HDR_LEN, VnetHdr};

const SRC: [u8; 6] = [0x0a, 0, 0, 0, 0, 1];
const PEER: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];

fuzz_target!(|data: &[u8]| {
    let Some((size, frame)) = data.split_first_chunk::<2>() else {
        return;
    };
    let datagram = usize::from(u16::from_be_bytes(*size));
    let mode = if size[1] & 1 == 0 {
        Mode::Sealed
    } else {
        Mode::Plain
    };
    let now = Instant::now();
    let (tx, mut rx) = crypto::fuzzing::session_pair(mode, now);
    let tx = Mutex::new(tx);
    let sent = send_path(frame, datagram, SRC, PEER, &tx, &mut rx, now)
        .unwrap_or_else(|e| panic!("the peer refused what was sent: {e}"));
    let carried = (VNET_HDR_LEN + 14..=MAX_FRAME_LEN).contains(&frame.len());
    assert_eq!(sent.is_some(), carried);
    let Some(sent) = sent else { return };
    let group = frame[VNET_HDR_LEN] & 1 == 1;
    assert_eq!(sent.dst, if group { BROADCAST } else { PEER });
    if VnetHdr::parse(frame).is_ok() {
        assert_eq!(sent.delivered, [frame]);
    } else {
        assert!(sent.delivered.is_empty());
    }
    // What the peer's forwarder has its MAC table learn from the delivered frame.
    let mut forwarder = Forwarder::new(PeerName::from_bytes(PEER));
    for delivered in &sent.delivered {
        let src = Ethernet::from_tap(delivered).map(|e| e.src());
        let learned = forwarder.handle_delivered(now, PeerName::from_bytes(SRC), delivered);
        let want = src.filter(|m| !m.is_group()).map(|mac| Learn {
            mac,
            peer: PeerName::from_bytes(SRC),
        });
        assert_eq!(learned, want);
    }
});
