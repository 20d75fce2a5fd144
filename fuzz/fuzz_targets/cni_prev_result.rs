//! The `prevResult` parser (chained ADD, CHECK, DEL). Properties: no input panics; a parsed
//! result serialises and parses back to the same value, in its own shape and after conversion
//! to each supported CNI version; 0.4.0 gives every address a `version`, 1.x none.

#![no_main]
#![allow(clippy::unwrap_used)]

use cni::conf::{CniResult, CniVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(result) = CniResult::from_value(&value) else {
        return;
    };
    let again = CniResult::from_value(&serde_json::to_value(&result).unwrap()).unwrap();
    assert_eq!(result, again);
    for v in [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0] {
        let mut converted = result.clone();
        converted.convert_to(v);
        let back = CniResult::from_value(&serde_json::to_value(&converted).unwrap()).unwrap();
        assert_eq!(converted, back);
        assert_eq!(back.cni_version.as_deref(), Some(v.as_str()));
        assert!(back.ips.iter().all(|ip| ip.version.is_some() == (v == CniVersion::V0_4_0)));
    }
});
