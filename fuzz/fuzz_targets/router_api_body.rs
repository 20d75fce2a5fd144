//! The JSON bodies the router's API parses (POST /connect, /forget, /rmpeer, /encryption and
//! the IPAM routes), and the encryption proof and uid texts. The first byte picks the route.
//! Properties: no input panics; a body that decodes encodes and decodes back to the same
//! value; an accepted proof or uid is hex digits only and writes back to itself.

#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use router::api::{AddrRequest, EncryptionRequest, RmPeerRequest};
use router::encryption::{parse_proof, parse_uid, uid_text};
use serde::Serialize;
use serde::de::DeserializeOwned;
use topology::api::ipam::{AllocateRequest, GcRequest, LookupRequest, ReleaseRequest};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(body) {
        let again = serde_json::to_vec(&v).unwrap();
        assert_eq!(serde_json::from_slice::<T>(&again).unwrap(), v);
    }
}

fn check_proof(text: &str) {
    if let Ok(proof) = parse_proof(text) {
        let hex: String = proof.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, text.trim().to_ascii_lowercase());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    match route % 8 {
        0 => round_trip::<AddrRequest>(body),
        1 => round_trip::<RmPeerRequest>(body),
        2 => {
            round_trip::<EncryptionRequest>(body);
            if let Ok(EncryptionRequest { proof: Some(p), .. }) = serde_json::from_slice(body) {
                check_proof(&p);
            }
        }
        3 => round_trip::<AllocateRequest>(body),
        4 => round_trip::<LookupRequest>(body),
        5 => round_trip::<ReleaseRequest>(body),
        6 => round_trip::<GcRequest>(body),
        _ => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            check_proof(text);
            if let Some(uid) = parse_uid(text) {
                assert!(uid.0 != 0 && text.bytes().all(|b| b.is_ascii_hexdigit()));
                assert_eq!(parse_uid(&uid_text(uid)), Some(uid));
            }
        }
    }
});
