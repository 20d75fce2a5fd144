//! Sealed-packet parsing and opening. Properties: decoding never panics; raw fuzz bytes never
//! open (nobody can forge a tag); a genuine packet with any change applied never opens, while
//! the unchanged packet opens to the original payload.
//!
//! Input: byte 0 = flags (bit 0 plain mode, bit 1 cut instead of xor), byte 1..3 = position,
//! byte 3 = xor value, then the payload.

#![no_main]
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Instant;

use crypto::{HEADER_LEN, Mode, PacketBuf, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let (mut a, mut b) = crypto::fuzzing::session_pair(Mode::Sealed, now);

    // Raw bytes straight off the wire.
    let _ = crypto::fuzzing::parse_header(data);
    let mut raw = PacketBuf::new(data.to_vec(), 0, data.len());
    assert!(b.open(now, &mut raw).is_err(), "forged packet opened");

    let Some((&[flags, p0, p1, xor], payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    if payload.len() > 2000 {
        return;
    }
    a.set_mode(if flags & 1 != 0 { Mode::Plain } else { Mode::Sealed });
    let mut buf = vec![0u8; HEADER_LEN + payload.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let mut p = PacketBuf::new(buf, HEADER_LEN, payload.len());
    a.seal(now, &mut p).unwrap();
    let wire = p.bytes().to_vec();
    let pos = usize::from(u16::from_le_bytes([p0, p1])) % wire.len();

    let mut bad = wire.clone();
    if flags & 2 != 0 {
        bad.truncate(pos);
    } else if xor != 0 {
        bad[pos] ^= xor;
    } else {
        bad[pos] ^= 0x80;
    }
    let mut q = PacketBuf::new(bad, 0, 0);
    q.len = q.buf.len();
    assert!(b.open(now, &mut q).is_err(), "mutated packet opened");

    let mut good = PacketBuf::new(wire.clone(), 0, wire.len());
    b.open(now, &mut good).unwrap();
    assert_eq!(good.bytes(), payload);
    // And only once.
    let mut again = PacketBuf::new(wire.clone(), 0, wire.len());
    assert!(b.open(now, &mut again).is_err(), "replay opened");
});
