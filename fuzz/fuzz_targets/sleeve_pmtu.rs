//! The sleeve's path MTU probe and acknowledgement bodies (opened from sealed datagrams):
//! never panic, and an accepted acknowledgement re-encodes to the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::sleeve::pmtu::{emit_ack, parse_ack, parse_probe};

fuzz_target!(|data: &[u8]| {
    let _ = parse_probe(data);
    if let Ok((nonce, received)) = parse_ack(data) {
        assert_eq!(&emit_ack(nonce, received)[..], data);
    }
});
