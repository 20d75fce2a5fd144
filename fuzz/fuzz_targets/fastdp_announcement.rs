//! The fastdp announcement decoder (control channel 0x05). Properties: no input panics; what
//! decodes re-encodes to exactly the same bytes (one canonical form: sorted lists, no
//! duplicates, bounded counts); the decoded value never lists its origin or a non-unicast MAC.

#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::fastdp::Announcement;
use topology::mac::MacAddr;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Announcement::decode(data) {
        assert_eq!(a.encode(), data);
        assert!(!a.fastdp_peers.contains(&a.origin));
        assert!(a.macs.iter().all(|m| !m.is_group() && *m != MacAddr::ZERO));
        assert!(!a.bridge_mac.is_group());
    }
});
