//! Shared test helpers: an in-memory handshake producing two data-plane sessions.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Instant;

use crypto::{Established, Handshake, HandshakeConfig, Mode, NodeKey, Session, SessionConfig};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Runs a handshake in memory and returns (initiator, responder).
pub fn established(seed: u64) -> (Established, Established) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let a = HandshakeConfig::new(NodeKey::generate(&mut rng), None);
    let b = HandshakeConfig::new(NodeKey::generate(&mut rng), None);
    let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
    let mut i = Handshake::initiate(&a, &mut rng, &mut to_r);
    let mut r = Handshake::respond(&b, &mut rng, &mut to_i);
    let (mut ie, mut re) = (None, None);
    while ie.is_none() || re.is_none() {
        if re.is_none() {
            re = r
                .handle_input(&std::mem::take(&mut to_r), &mut to_i)
                .unwrap();
        }
        if ie.is_none() {
            ie = i
                .handle_input(&std::mem::take(&mut to_i), &mut to_r)
                .unwrap();
        }
    }
    (ie.unwrap(), re.unwrap())
}

/// Two sessions facing each other.
pub fn sessions(config: SessionConfig, now: Instant) -> (Session, Session) {
    let (i, r) = established(11);
    let (_, ik) = i.into_parts();
    let (_, rk) = r.into_parts();
    (
        Session::new(ik, config, Mode::Sealed, now),
        Session::new(rk, config, Mode::Sealed, now),
    )
}
