//! Internals exposed to the cargo-fuzz targets only (`cfg(fuzzing)`), as quinn-proto does.

use std::time::Instant;

use zeroize::Zeroizing;

use crate::kdf::ChainKey;
use crate::session::{DataKeys, Header, Mode, OpenError, Session, SessionConfig};

/// Two sessions facing each other, keyed from fixed secrets (no handshake, so a fuzz iteration
/// stays cheap).
pub fn session_pair(mode: Mode, now: Instant) -> (Session, Session) {
    let k = |b: u8| ChainKey::new(Zeroizing::new([b; 32]));
    let a = DataKeys {
        send: k(1),
        recv: k(2),
    };
    let b = DataKeys {
        send: k(2),
        recv: k(1),
    };
    (
        Session::new(a, SessionConfig::default(), mode, now),
        Session::new(b, SessionConfig::default(), mode, now),
    )
}

/// Parses a sealed packet's header: (plain, epoch nibble, counter).
///
/// # Errors
///
/// As [`Session::open`] would for a packet too short or of an unknown version.
pub fn parse_header(packet: &[u8]) -> Result<(bool, u8, u64), OpenError> {
    Header::parse(packet).map(|h| (h.mode == Mode::Plain, h.epoch, h.counter))
}

/// Starts a handshake with a fixed key, no password and a seeded RNG.
pub fn handshake(responder: bool, out: &mut Vec<u8>) -> crate::Handshake {
    use rand_core::SeedableRng;
    let config = crate::HandshakeConfig::new(crate::NodeKey::from_bytes([9; 32]), None);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    if responder {
        crate::Handshake::respond(&config, &mut rng, out)
    } else {
        crate::Handshake::initiate(&config, &mut rng, out)
    }
}
