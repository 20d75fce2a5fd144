//! Drives a topology engine with arbitrary control messages from one connected peer and checks
//! its invariants after every message: nothing panics, every message it sends decodes and fits
//! the size bound, it always holds its own record, and its view digest counts its table.
//! The input is split into messages at 0xfe bytes; each message advances time 7 ms.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use topology::wire::{MAX_MESSAGE_LEN, Message};
use topology::{Config, ConnId, Mesh, PeerName, PeerUid};

fuzz_target!(|data: &[u8]| {
    #[allow(clippy::disallowed_methods)] // the base of virtual time
    let mut now = Instant::now();
    let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
    let them = PeerName::from_bytes([2, 0, 0, 0, 0, 2]);
    let mut mesh = Mesh::new(Config::new(me, "fuzz"), now, 1);
    let addr = "192.0.2.2:6783".parse().expect("literal address");
    mesh.handle_connection_up(now, ConnId(1), them, PeerUid(9), "them", addr, false);
    for msg in data.split(|b| *b == 0xfe).filter(|m| !m.is_empty()) {
        now += Duration::from_millis(7);
        let _ = mesh.handle_control(now, ConnId(1), msg);
        if mesh.poll_timeout().is_some_and(|(t, _)| t <= now) {
            mesh.handle_timeout(now);
        }
        while let Some((_, bytes)) = mesh.poll_transmit() {
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            assert!(Message::decode(&bytes).is_ok(), "engine sent an undecodable message");
        }
        while mesh.poll_event().is_some() {}
        assert!(mesh.peers().get(me).is_some());
        assert_eq!(mesh.view_digest().0 as usize, mesh.peers().len());
    }
});
