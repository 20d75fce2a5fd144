//! The control-channel envelope and hello: decoding never panics, and whatever decodes
//! re-encodes to the very same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::channel::{self, Channel, Hello};

fuzz_target!(|data: &[u8]| {
    if let Ok((Channel::Hello, body)) = channel::split(data) {
        if let Ok(hello) = Hello::decode(body) {
            assert_eq!(hello.encode(), data);
        }
    }
});
