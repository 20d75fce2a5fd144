//! Mesh-wide encryption at run time: the shell around `topology::settings`.
//!
//! - [`SealPolicy`]: the effective rule every data path follows, published by the daemon in a
//!   `tokio::sync::watch` ([`crate::daemon`] keeps the sender). The sleeve is switched per link
//!   by the daemon; other data paths (fastdp) subscribe to the watch and ask
//!   [`SealPolicy::must_seal`] for each peer: where it says seal, traffic to that peer must go
//!   through the encrypted sleeve (this kernel has no ESP).
//! - Proofs: the router signs the records it makes with the [`SettingsKey`] derived from the
//!   mesh password, verifies every record it receives, and the `weft encryption disable`
//!   command proves knowledge of the password by signing the record it asks for
//!   ([`prove_record`]).
//! - Per-connection change-over state for status ([`link_mode`]).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use crypto::{MeshPassword, Mode, SettingsKey};
use ipnet::IpNet;
use topology::PeerUid;
use topology::settings::{self, EncryptionRecord, PROOF_LEN, SealDecision};

use crate::sleeve::LinkEncryption;
use crate::status::EncryptionMode;

/// How long after a link switched its sending mode it still reports [`EncryptionMode::Changing`]
/// (the peer accepts both modes all along; this only covers datagrams in flight).
pub const CHANGE_OVERLAP: Duration = Duration::from_millis(500);
/// How recent the peer's last datagram must be for its mode to count in status.
pub const RX_RECENT: Duration = Duration::from_secs(2);

/// The effective mesh encryption rule, as the daemon publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SealPolicy {
    /// Mesh encryption on.
    pub enabled: bool,
    /// The version of the mesh-wide record this comes from.
    pub version: u64,
    /// `--trusted-subnets`.
    pub trusted: Vec<IpNet>,
}

impl SealPolicy {
    /// Whether traffic between underlay addresses `local` and `remote` must be sealed, and
    /// why ([`settings::seal_decision`]).
    pub fn must_seal(&self, local: IpAddr, remote: IpAddr) -> SealDecision {
        settings::seal_decision(self.enabled, &self.trusted, local, remote)
    }
}

/// The record proof check every router runs: with a password, a record must carry a proof
/// made with the same password; without one, any record is taken (control connections are
/// then authenticated by node keys only, see docs/OPERATIONS.md).
pub fn verify(key: Option<&SettingsKey>, record: &EncryptionRecord) -> bool {
    match (key, &record.proof) {
        (None, _) => true,
        (Some(key), Some(proof)) => key.verify(&record.proof_message(), proof),
        (Some(_), None) => false,
    }
}

/// Signs `record` with `key`, if there is one.
pub fn sign(key: Option<&SettingsKey>, mut record: EncryptionRecord) -> EncryptionRecord {
    record.proof = key.map(|k| k.prove(&record.proof_message()));
    record
}

/// Reads a mesh password file and returns its settings key (Argon2id, then HKDF).
///
/// # Errors
/// Fails when the file cannot be read or holds no password; the message names the file.
pub fn settings_key_from_file(path: &Path) -> Result<SettingsKey> {
    let bytes = crypto::keyfile::read_password_file(path)
        .with_context(|| format!("password file {}", path.display()))?;
    let password =
        MeshPassword::new(&bytes).with_context(|| format!("password file {}", path.display()))?;
    Ok(SettingsKey::from_password(&password))
}

/// The proof (hex) of the record `{enabled, version, origin}`, as `weft encryption disable`
/// sends it.
pub fn prove_record(key: &SettingsKey, enabled: bool, version: u64, origin: PeerUid) -> String {
    let record = EncryptionRecord {
        enabled,
        version,
        origin,
        proof: None,
    };
    hex(&key.prove(&record.proof_message()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses a proof written as 64 hex digits.
///
/// # Errors
/// Names what is wrong with it.
pub fn parse_proof(text: &str) -> Result<[u8; PROOF_LEN], String> {
    let text = text.trim();
    if text.len() != 2 * PROOF_LEN || !text.is_ascii() {
        return Err(format!(
            "\"proof\" must be {} hex digits, got {} characters",
            2 * PROOF_LEN,
            text.len()
        ));
    }
    // from_str_radix alone would take a sign ("+f").
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("\"proof\" must be hex digits only".to_owned());
    }
    let mut out = [0u8; PROOF_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| "\"proof\" must be hex digits only".to_owned())?;
    }
    Ok(out)
}

/// Formats a uid as status shows it (16 hex digits).
pub fn uid_text(uid: PeerUid) -> String {
    format!("{:016x}", uid.0)
}

/// Parses a uid as [`uid_text`] writes it.
pub fn parse_uid(text: &str) -> Option<PeerUid> {
    // from_str_radix alone would take a sign ("+a").
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|&u| u != 0)
        .map(PeerUid)
}

/// A link's mode for status, and the reason to add to the decision's: sealed or plain once
/// the link sends in its mode and the peer's recent datagrams agree, changing while the
/// switch is fresh or the peer still sends the other mode.
pub fn link_mode(link: &LinkEncryption) -> (EncryptionMode, Option<&'static str>) {
    let settled = match link.sending {
        Mode::Sealed => EncryptionMode::Sealed,
        Mode::Plain => EncryptionMode::Plain,
    };
    if link.switched.is_some_and(|d| d < CHANGE_OVERLAP) {
        return (EncryptionMode::Changing, Some("switched moments ago"));
    }
    match link.received {
        Some((mode, ago)) if ago < RX_RECENT && mode != link.sending => (
            EncryptionMode::Changing,
            Some(match mode {
                Mode::Sealed => "peer still sends sealed",
                Mode::Plain => "peer still sends plain",
            }),
        ),
        _ => (settled, None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proofs_round_trip_through_hex() {
        let key = SettingsKey::from_password(&MeshPassword::new(b"pw").unwrap());
        let origin = PeerUid(0xabc);
        let proof = prove_record(&key, false, 3, origin);
        let mut record = EncryptionRecord {
            enabled: false,
            version: 3,
            origin,
            proof: Some(parse_proof(&proof).unwrap()),
        };
        assert!(verify(Some(&key), &record));
        record.version = 4;
        assert!(!verify(Some(&key), &record));
        record.proof = None;
        assert!(!verify(Some(&key), &record));
        assert!(verify(None, &record));
        assert!(parse_proof("zz").is_err());
        assert!(parse_proof(&"g".repeat(64)).is_err());
        assert_eq!(parse_uid(&uid_text(origin)), Some(origin));
        assert_eq!(parse_uid("0"), None);
        // Regression (found by proofs_and_uids_read_back): a sign passed for a hex digit.
        assert_eq!(parse_uid("+a"), None);
        assert!(parse_proof(&"+f".repeat(32)).is_err());
    }

    proptest::proptest! {
        /// Proofs read back from hex in either case with surrounding whitespace, uids from
        /// their status text; what either parser accepts is hex digits only.
        #[test]
        fn proofs_and_uids_read_back(
            proof in proptest::prelude::any::<[u8; PROOF_LEN]>(),
            upper in proptest::prelude::any::<bool>(),
            uid in 1u64..,
            text in "[ +0-9a-fA-Fg-z]{0,70}",
        ) {
            let hex: String = proof.iter().map(|b| format!("{b:02x}")).collect();
            let hex = if upper { hex.to_ascii_uppercase() } else { hex };
            proptest::prop_assert_eq!(parse_proof(&format!(" {hex}\n")), Ok(proof));
            proptest::prop_assert_eq!(parse_uid(&uid_text(PeerUid(uid))), Some(PeerUid(uid)));
            if parse_proof(&text).is_ok() {
                proptest::prop_assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
            }
            if let Some(u) = parse_uid(&text) {
                proptest::prop_assert!(u.0 != 0 && text.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }

    #[test]
    fn link_modes() {
        let settled = LinkEncryption {
            sending: Mode::Sealed,
            received: Some((Mode::Sealed, Duration::from_millis(10))),
            switched: Some(Duration::from_secs(5)),
        };
        assert_eq!(link_mode(&settled).0, EncryptionMode::Sealed);
        let fresh = LinkEncryption {
            switched: Some(Duration::from_millis(10)),
            ..settled
        };
        assert_eq!(link_mode(&fresh).0, EncryptionMode::Changing);
        let lagging = LinkEncryption {
            received: Some((Mode::Plain, Duration::from_millis(10))),
            ..settled
        };
        assert_eq!(
            link_mode(&lagging),
            (EncryptionMode::Changing, Some("peer still sends plain"))
        );
        let quiet = LinkEncryption {
            sending: Mode::Plain,
            received: Some((Mode::Sealed, Duration::from_secs(9))),
            switched: None,
        };
        assert_eq!(link_mode(&quiet).0, EncryptionMode::Plain);
    }
}
