//! Handshake and control-frame decoding. Properties: no input panics; fuzz bytes never complete
//! a handshake as either side (that would need the peer's secrets); a control channel never
//! yields a message from fuzz bytes; errors are sticky.
//!
//! Input: byte 0 = role and chunking (bit 0 responder, bits 1..7 chunk size), then the bytes
//! the "peer" sends. Half the inputs get a valid preamble prepended so the Noise messages
//! themselves are reached.

#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crypto::control::split_frame(data);
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::with_capacity(rest.len() + 7);
    if ctl & 0x80 != 0 {
        input.extend_from_slice(b"weft\x01\x01\x00");
    }
    input.extend_from_slice(rest);
    let chunk = usize::from((ctl >> 1) & 0x3f) + 1;

    let mut out = Vec::new();
    let mut hs = crypto::fuzzing::handshake(ctl & 1 != 0, &mut out);
    let mut failed = None;
    for piece in input.chunks(chunk) {
        match hs.handle_input(piece, &mut out) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("fuzz input completed a handshake"),
            Err(e) => {
                if let Some(prev) = failed {
                    assert_eq!(prev, e, "errors must be sticky");
                }
                failed = Some(e);
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
