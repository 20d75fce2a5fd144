//! Fuzzes the release queue's entry decoder (files the CNI plugin leaves for the router on
//! disk). No input panics; whatever decodes has a non-empty container id and ifname within the
//! bounds, encodes back to an entry that decodes to the same request, and names a file without
//! a path separator.

#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::api::release_queue::{MAX_FIELD, SUFFIX, decode, encode, file_name};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode(data) {
        assert!(!req.container_id.is_empty() && !req.ifname.is_empty());
        assert!(req.container_id.len() <= MAX_FIELD && req.network.len() <= MAX_FIELD);
        assert_eq!(decode(&encode(&req)).as_ref(), Ok(&req));
        let name = file_name(&req);
        assert!(!name.contains('/') && name.ends_with(SUFFIX));
    }
});
