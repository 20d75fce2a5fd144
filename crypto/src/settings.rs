//! Proof of the mesh password for mesh-wide settings (the encryption on/off record).
//!
//! A router that holds the mesh password, and an admin's `weft` command that reads the password
//! file, derive the same [`SettingsKey`] from it and authenticate a setting record with
//! HMAC-SHA256. The key is derived from the password's Argon2id output with its own HKDF label,
//! so it is never the Noise pre-shared key itself:
//!
//! ```text
//! settings_key = HKDF-SHA256(salt = "", ikm = psk, info = "weft/1 settings mac", 32)
//! proof        = HMAC-SHA256(settings_key, message)
//! ```
//!
//! Which bytes the message holds is the caller's business (`topology::settings` documents
//! them); this module only keys, tags and checks in constant time.

use std::fmt;

use hkdf::Hkdf;
use ring::hmac;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::handshake::MeshPassword;

/// Length of a settings proof.
pub const PROOF_LEN: usize = 32;

/// The key that authenticates mesh-wide setting records. Debug output is redacted.
pub struct SettingsKey {
    key: hmac::Key,
}

impl SettingsKey {
    /// Derives the settings key from the mesh password.
    pub fn from_password(password: &MeshPassword) -> Self {
        let hk = Hkdf::<Sha256>::new(None, password.psk_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        let _ = hk.expand(SETTINGS_LABEL, okm.as_mut_slice());
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, okm.as_slice()),
        }
    }

    /// Returns the proof (HMAC-SHA256 tag) of `message`.
    pub fn prove(&self, message: &[u8]) -> [u8; PROOF_LEN] {
        let tag = hmac::sign(&self.key, message);
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Returns whether `proof` is the proof of `message`, compared in constant time.
    pub fn verify(&self, message: &[u8], proof: &[u8; PROOF_LEN]) -> bool {
        hmac::verify(&self.key, message, proof).is_ok()
    }
}

impl fmt::Debug for SettingsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SettingsKey(<redacted>)")
    }
}

const SETTINGS_LABEL: &[u8] = b"weft/1 settings mac";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_password_and_message() {
        let a = SettingsKey::from_password(&MeshPassword::new(b"correct horse").unwrap());
        let a2 = SettingsKey::from_password(&MeshPassword::new(b"correct horse").unwrap());
        let b = SettingsKey::from_password(&MeshPassword::new(b"battery staple").unwrap());
        let proof = a.prove(b"record 1");
        assert!(a2.verify(b"record 1", &proof));
        assert!(!a2.verify(b"record 2", &proof));
        assert!(!b.verify(b"record 1", &proof));
        let mut bent = proof;
        bent[0] ^= 1;
        assert!(!a.verify(b"record 1", &bent));
        assert_eq!(format!("{a:?}"), "SettingsKey(<redacted>)");
    }

    #[test]
    fn the_settings_key_is_not_the_psk() {
        let pw = MeshPassword::new(b"pw").unwrap();
        let key = SettingsKey::from_password(&pw);
        // An HMAC keyed with the PSK itself must not verify the settings key's proofs.
        let psk_key = hmac::Key::new(hmac::HMAC_SHA256, pw.psk_bytes());
        let proof = key.prove(b"m");
        assert!(hmac::verify(&psk_key, b"m", &proof).is_err());
    }
}
