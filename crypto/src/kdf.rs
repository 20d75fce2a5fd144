//! Key derivation: HKDF-SHA256 over the Noise split, and the per-direction data-plane ratchet.
//!
//! ```text
//! prk          = HKDF-Extract(salt = handshake hash, ikm = split_i2r || split_r2i)
//! control_i2r  = HKDF-Expand(prk, "weft/1 control i2r", 32)
//! control_r2i  = HKDF-Expand(prk, "weft/1 control r2i", 32)
//! chain_0_i2r  = HKDF-Expand(prk, "weft/1 data i2r", 32)
//! chain_0_r2i  = HKDF-Expand(prk, "weft/1 data r2i", 32)
//! key_e        = HKDF-Expand(chain_e, "weft/1 data key" || e as u32 BE, 32)
//! chain_{e+1}  = HKDF-Expand(chain_e, "weft/1 data chain", 32)
//! ```
//!
//! Each direction ratchets on its own; a chain key is dropped (and zeroized) once the next one
//! exists, so a key recovered from memory does not reveal earlier epochs of the session.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::aead::KEY_LEN;

/// A 32-byte secret, zeroized on drop.
pub(crate) type Secret = Zeroizing<[u8; KEY_LEN]>;

/// The per-direction ratchet state for one epoch.
pub(crate) struct ChainKey {
    chain: Secret,
    epoch: u32,
}

impl ChainKey {
    pub(crate) fn new(chain: Secret) -> Self {
        Self { chain, epoch: 0 }
    }

    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The AEAD key of this chain's epoch.
    pub(crate) fn key(&self) -> Secret {
        let mut info = [0u8; DATA_KEY_LABEL.len() + 4];
        info[..DATA_KEY_LABEL.len()].copy_from_slice(DATA_KEY_LABEL);
        info[DATA_KEY_LABEL.len()..].copy_from_slice(&self.epoch.to_be_bytes());
        expand_prk(&self.chain, &info)
    }

    /// The chain of the following epoch.
    pub(crate) fn next(&self) -> Self {
        Self {
            chain: expand_prk(&self.chain, DATA_CHAIN_LABEL),
            epoch: self.epoch.wrapping_add(1),
        }
    }
}

/// Everything the handshake hands to the data plane and the control channel.
pub(crate) struct SplitKeys {
    pub(crate) control_i2r: Secret,
    pub(crate) control_r2i: Secret,
    pub(crate) data_i2r: Secret,
    pub(crate) data_r2i: Secret,
}

pub(crate) fn split(handshake_hash: &[u8], i2r: &[u8; 32], r2i: &[u8; 32]) -> SplitKeys {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(i2r);
    ikm[32..].copy_from_slice(r2i);
    let hk = Hkdf::<Sha256>::new(Some(handshake_hash), ikm.as_slice());
    let exp = |label: &[u8]| {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's 8,160-byte output limit, so expand cannot fail.
        let _ = hk.expand(label, out.as_mut_slice());
        out
    };
    SplitKeys {
        control_i2r: exp(b"weft/1 control i2r"),
        control_r2i: exp(b"weft/1 control r2i"),
        data_i2r: exp(b"weft/1 data i2r"),
        data_r2i: exp(b"weft/1 data r2i"),
    }
}

fn expand_prk(prk: &Secret, info: &[u8]) -> Secret {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // A 32-byte PRK is exactly SHA-256's output length, the minimum `from_prk` accepts, and
    // 32 output bytes are within the limit; neither call can fail.
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(prk.as_slice()) {
        let _ = hk.expand(info, out.as_mut_slice());
    }
    out
}

const DATA_KEY_LABEL: &[u8] = b"weft/1 data key";
const DATA_CHAIN_LABEL: &[u8] = b"weft/1 data chain";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_and_directions_differ() {
        let s = split(b"hash", &[1; 32], &[2; 32]);
        let a = ChainKey::new(s.data_i2r.clone());
        let b = ChainKey::new(s.data_r2i.clone());
        let a1 = a.next();
        assert_ne!(*a.key(), *b.key());
        assert_ne!(*a.key(), *a1.key());
        assert_ne!(*a1.key(), *b.next().key());
        assert_ne!(*s.control_i2r, *s.control_r2i);
        assert_ne!(*s.control_i2r, *s.data_i2r);
        assert_eq!(a1.epoch(), 1);
        assert_eq!(*a1.key(), *ChainKey::new(s.data_i2r).next().key());
    }
}
