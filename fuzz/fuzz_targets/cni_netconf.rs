//! The CNI request-configuration parser (stdin of every verb). Properties: no input panics; a
//! parsed configuration serialises and parses back to the same value; validation is a pure
//! function of the value (same verdict after the round trip); VERSION never panics either.

#![no_main]
#![allow(clippy::unwrap_used)]

use cni::conf::{Env, NetConf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        let bytes = serde_json::to_vec(&conf).unwrap();
        let again = NetConf::parse(&bytes).unwrap();
        assert_eq!(conf, again);
        let verdict = conf.validate().map_err(|e| e.code);
        assert_eq!(verdict, again.validate().map_err(|e| e.code));
        if let Err(code) = verdict {
            assert!([1, 2, 7].contains(&code), "validate gave code {code}");
        }
    }
    let env = Env {
        command: Some("VERSION".into()),
        ..Env::default()
    };
    let out = cni::run(&env, &mut &data[..]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"].is_number(), out.exit_code != 0);
});
