//! The one AEAD weft seals with: AES-256-GCM from `ring`, chosen by measured throughput (see
//! `docs/BENCHMARKS.md`, section "Crypto"). Nonces are 96 bits: four zero bytes, then the
//! 64-bit packet counter little-endian (WireGuard's layout), so a key never needs a random
//! nonce.
//!
//! `ring` keeps its expanded key schedule inside `LessSafeKey` and offers no way to wipe it;
//! the raw key bytes this crate derives are zeroized, the schedule is freed with the session.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroizing;

/// A keyed AEAD for one direction of one epoch.
pub(crate) struct Cipher {
    key: LessSafeKey,
}

impl Cipher {
    pub(crate) fn new(key: &Zeroizing<[u8; KEY_LEN]>) -> Self {
        // AES-256-GCM takes exactly 32 key bytes, which the type guarantees, so `new` cannot
        // fail (the only error ring reports is a wrong key length).
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_slice()).expect("32-byte AES key");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `in_out` in place and returns the tag.
    ///
    /// Fails only for inputs longer than GCM's 2^36-byte limit.
    pub(crate) fn seal(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], BadTag> {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), in_out)
            .map_err(|_| BadTag)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks `tag` and decrypts `in_out` in place.
    pub(crate) fn open(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), BadTag> {
        let tag = Tag::from(*tag);
        self.key
            .open_in_place_separate_tag(nonce(counter), Aad::from(aad), tag, in_out, 0..)
            .map(|_| ())
            .map_err(|_| BadTag)
    }
}

/// The tag did not verify (or, from `seal`, the input was too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadTag;

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

pub(crate) const KEY_LEN: usize = 32;
/// Length of the authentication tag.
pub const TAG_LEN: usize = 16;
