//! The CNI plugin's HTTP/1.x response parser (the router's answers on the API socket).
//! Properties: no input panics; a parsed body is never longer than the input; a body sent
//! chunked (cut into chunks at sizes the input picks) reads back whole.

#![no_main]
#![allow(clippy::unwrap_used)]

use cni::client::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_response(data) {
        assert!(r.body.len() <= data.len());
    }
    // The input as a body, chunked at sizes its own bytes pick.
    let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut rest = data;
    let mut sizes = data.iter().cycle();
    while !rest.is_empty() {
        let n = (usize::from(*sizes.next().unwrap()) % 64 + 1).min(rest.len());
        wire.extend_from_slice(format!("{n:X}\r\n").as_bytes());
        wire.extend_from_slice(&rest[..n]);
        wire.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let r = parse_response(&wire).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, data));
});
