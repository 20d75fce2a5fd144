//! `peers.json` in the state directory (the peers the router dialled, for its next start).
//! Properties: no input panics; what decodes writes back (as the router saves it) and reads
//! back to the same set.

#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use router::daemon::decode_persisted_peers;

fuzz_target!(|data: &[u8]| {
    if let Ok(peers) = decode_persisted_peers(data) {
        let list: Vec<_> = peers.iter().collect();
        let again = serde_json::to_vec_pretty(&list).unwrap();
        assert_eq!(decode_persisted_peers(&again).unwrap(), peers);
    }
});
