//! Node identity keys: the static X25519 key pair, its public half and the peer name derived
//! from it.
//!
//! This module owns key material in memory only. Loading and saving key files lives in
//! [`crate::keyfile`]; nothing here touches the file system.

use std::fmt;

use blake2::{Blake2s256, Digest};
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A node's static X25519 private key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct NodeKey {
    secret: [u8; KEY_LEN],
}

impl NodeKey {
    /// Generates a fresh key pair from the caller's cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut secret = [0u8; KEY_LEN];
        rng.fill_bytes(&mut secret);
        Self::from_bytes(secret)
    }

    /// Wraps raw private-key bytes (clamping happens inside X25519).
    pub fn from_bytes(secret: [u8; KEY_LEN]) -> Self {
        Self { secret }
    }

    /// Returns the raw private-key bytes; for writing the key file and for Noise only.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.secret
    }

    pub(crate) fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// Returns the public half of the key pair.
    pub fn public(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.secret);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A node's static X25519 public key: the root of its peer name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// Returns the raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Returns the 6-byte peer name derived from this key (see [`peer_name_bytes`]).
    pub fn peer_name(&self) -> [u8; PEER_NAME_LEN] {
        peer_name_bytes(self)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Derives the 6-byte peer name from a public key.
///
/// `name = BLAKE2s-256("weft peer name v1" || public_key)[0..6]`, with the locally
/// administered bit (0x02) set and the multicast bit (0x01) cleared in the first byte, so a
/// name read as a MAC address is a valid unicast, locally administered address (Weave's names
/// were MAC addresses). 46 bits of hash remain; collisions are the topology crate's concern
/// (it already handles Weave-style name collisions by UID).
pub fn peer_name_bytes(key: &PublicKey) -> [u8; PEER_NAME_LEN] {
    let mut h = Blake2s256::new();
    h.update(PEER_NAME_LABEL);
    h.update(key.0);
    let digest = h.finalize();
    let mut name = [0u8; PEER_NAME_LEN];
    name.copy_from_slice(&digest[..PEER_NAME_LEN]);
    name[0] = (name[0] | 0x02) & !0x01;
    name
}

/// Length of an X25519 key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a peer name in bytes.
pub const PEER_NAME_LEN: usize = 6;
const PEER_NAME_LABEL: &[u8] = b"weft peer name v1";

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn debug_redacts_secret() {
        let key = NodeKey::from_bytes([0xab; 32]);
        let s = format!("{key:?}");
        assert!(s.contains("redacted"));
        assert!(!s.contains("abab"));
    }

    #[test]
    fn peer_name_is_unicast_local_and_stable() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for _ in 0..100 {
            let k = NodeKey::generate(&mut rng).public();
            let n = peer_name_bytes(&k);
            assert_eq!(n[0] & 0x03, 0x02);
            assert_eq!(n, k.peer_name());
        }
    }

    #[test]
    fn peer_name_vector() {
        let name = peer_name_bytes(&PublicKey([0u8; 32]));
        // Fixed vector so a change to the derivation is caught (it is part of the protocol).
        assert_eq!(name, PEER_NAME_ZERO_KEY);
    }

    const PEER_NAME_ZERO_KEY: [u8; 6] = [0x0a, 0x2f, 0x36, 0xdf, 0xbc, 0x8b];
}
