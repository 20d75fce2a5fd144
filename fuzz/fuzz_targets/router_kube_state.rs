//! The node discovery state kept across restarts (`kube-nodes.json`). Properties: no input
//! panics; what decodes writes back and reads back to the same state.

#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use router::kube::nodes::Saved;

fuzz_target!(|data: &[u8]| {
    if let Ok(saved) = Saved::decode(data) {
        let again = serde_json::to_vec_pretty(&saved).unwrap();
        assert_eq!(Saved::decode(&again).unwrap(), saved);
    }
});
