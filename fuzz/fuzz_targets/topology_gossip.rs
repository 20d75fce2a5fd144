//! Feeds arbitrary bytes to the topology gossip decoder (`topology::wire::Message::decode`) and
//! checks: nothing panics; a message that decodes re-encodes to exactly the input (the
//! encoding is canonical, so a hostile peer cannot smuggle alternative forms past the digest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::wire::{MAX_MESSAGE_LEN, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, data, "decode/encode is not byte-exact");
        assert!(out.len() <= MAX_MESSAGE_LEN);
    }
});
