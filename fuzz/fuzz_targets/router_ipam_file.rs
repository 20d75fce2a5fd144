//! The IPAM state file (`ipam.state`): header (magic, format, length, CRC-32) and snapshot.
//! Properties: no input panics; an accepted file re-encodes to the same bytes. The input is
//! also tried as the payload of a file with a valid header, so the fuzzer reaches the
//! snapshot decoder past the checksum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::ipam_store::{crc32, decode_file, encode_file};

fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = decode_file(data) {
        assert_eq!(encode_file(&snap), data);
    }
    let mut file = b"WEFTIPAM\x01".to_vec();
    file.extend_from_slice(&(data.len() as u32).to_be_bytes());
    file.extend_from_slice(&crc32(data).to_be_bytes());
    file.extend_from_slice(data);
    if let Ok(snap) = decode_file(&file) {
        assert_eq!(encode_file(&snap), file);
    }
});
