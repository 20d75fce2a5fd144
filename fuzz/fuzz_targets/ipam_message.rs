//! Fuzzes the IPAM gossip decoder: anything that decodes must re-encode to the same bytes
//! (the encoding is canonical), and the engine must take any input without panicking.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use topology::PeerName;
use topology::ipam::{Config, Init, Ipam, Message, Snapshot};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        assert_eq!(msg.to_bytes(), data, "decode→encode must round-trip");
        let now = Instant::now();
        let mut c = Config::new(PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]));
        c.init = Init::Consensus { quorum: 2 };
        let mut ipam = Ipam::new(c, now, 1);
        let from = PeerName::from_bytes([0x0a, 0, 0, 0, 0, 2]);
        ipam.handle_peer_seen(now, from);
        let _ = ipam.allocate(now, "c", "eth0");
        assert!(ipam.handle_gossip(now, from, data).is_ok());
        while ipam.poll_transmit().is_some() {}
        let _ = ipam.status(now);
    }
    if let Ok(snap) = Snapshot::decode(data) {
        assert_eq!(
            snap.to_bytes(),
            data,
            "snapshot decode→encode must round-trip"
        );
    }
});
