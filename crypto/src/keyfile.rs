//! Loading and saving the node key file: the only module of this crate that touches the file
//! system. The pure parts never call it; the router does, once, at start.
//!
//! The file holds the 32-byte X25519 private key as 64 lowercase hex digits and a newline. It
//! is created with mode 0600 by writing a temporary file in the same directory, fsyncing it,
//! renaming it into place and fsyncing the directory, so a crash leaves either no key or a
//! whole one. A key file that the group or others may read or write is refused, with an error
//! naming the path and its mode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::keys::{KEY_LEN, NodeKey};

/// Loads the key at `path`, or creates one from `rng` if the file does not exist.
///
/// # Errors
///
/// [`KeyFileError`] if the file cannot be read or written, is accessible to group or others,
/// or does not hold a key.
pub fn load_or_create(path: &Path, rng: &mut impl CryptoRngCore) -> Result<NodeKey, KeyFileError> {
    match fs::symlink_metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = NodeKey::generate(rng);
            save(path, &key)?;
            Ok(key)
        }
        Err(source) => Err(KeyFileError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Loads the key at `path`.
///
/// # Errors
///
/// [`KeyFileError::Insecure`] if group or others have any access to the file;
/// [`KeyFileError::Invalid`] if it does not hold exactly one hex-encoded key;
/// [`KeyFileError::Io`] if it cannot be read.
pub fn load(path: &Path) -> Result<NodeKey, KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::Invalid {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    Read::by_ref(&mut file)
        .take(256)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    parse_key_text(&text).ok_or_else(|| KeyFileError::Invalid {
        path: path.to_owned(),
    })
}

/// Reads the text of a key file (what [`load`] read of it): 64 hex digits, then any trailing
/// whitespace.
pub fn parse_key_text(text: &str) -> Option<NodeKey> {
    decode(text.trim_end())
}

/// Writes `key` to `path` atomically with mode 0600, replacing any existing file.
///
/// # Errors
///
/// [`KeyFileError::Io`] if any step fails; the previous file, if any, is then left intact.
pub fn save(path: &Path, key: &NodeKey) -> Result<(), KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        Some(_) | None => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(KeyFileError::Invalid {
            path: path.to_owned(),
        });
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(KeyFileError::Io { path: tmp, source }),
    }
    let text = encode(key);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io_err)
}

/// Reads a mesh password file: its bytes, less one trailing newline (`\n` or `\r\n`).
///
/// # Errors
///
/// [`KeyFileError::Io`] if the file cannot be read.
pub fn read_password_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let bytes = Zeroizing::new(fs::read(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?);
    Ok(password_from_file(bytes))
}

/// The password a password file's `bytes` hold: all of them, less one trailing newline (`\n`
/// or `\r\n`).
pub fn password_from_file(mut bytes: Zeroizing<Vec<u8>>) -> Zeroizing<Vec<u8>> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

/// Why a key file could not be used. Messages name the path (and mode), never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Group or others may access the file.
    #[error(
        "refusing key file {}: mode {mode:04o} lets group or others access it \
         (run: chmod 600 {})",
        path.display(),
        path.display()
    )]
    Insecure {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a key.
    #[error("key file {} does not hold a weft node key", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn encode(key: &NodeKey) -> Zeroizing<String> {
    let bytes = Zeroizing::new(key.to_bytes());
    let mut s = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
    for b in bytes.iter() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s.push('\n');
    s
}

fn decode(text: &str) -> Option<NodeKey> {
    let raw = text.as_bytes();
    if raw.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        key[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(NodeKey::from_bytes(*key))
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn create_then_load_same_key_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let a = load_or_create(&path, &mut rng).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path, &mut rng).unwrap();
        assert_eq!(a.public(), b.public());
        assert!(!dir.path().join(".node.key.tmp").exists());
    }

    #[test]
    fn refuses_group_readable_file_naming_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        save(&path, &NodeKey::from_bytes([3; 32])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, KeyFileError::Insecure { mode: 0o640, .. }),
            "{msg}"
        );
        assert!(msg.contains("node.key") && msg.contains("0640"), "{msg}");
        assert!(!msg.contains("0303"), "{msg}");
    }

    #[test]
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(b"not a key\n").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Invalid { .. })));
    }

    proptest::proptest! {
        /// A saved key reads back from its text, with any trailing whitespace and in either
        /// case; text of another length or with a non-hex digit is no key.
        #[test]
        fn key_text_reads_back(
            bytes in proptest::prelude::any::<[u8; 32]>(),
            tail in "[ \t\r\n]{0,4}",
            upper in proptest::prelude::any::<bool>(),
            cut in 0usize..64,
            junk in "[^0-9a-fA-F]",
        ) {
            let key = NodeKey::from_bytes(bytes);
            let text = encode(&key);
            let text = if upper { text.to_ascii_uppercase() } else { text.to_string() };
            let back = parse_key_text(&format!("{}{tail}", text.trim_end())).unwrap();
            proptest::prop_assert_eq!(back.to_bytes(), bytes);
            proptest::prop_assert!(parse_key_text(&text[..cut]).is_none());
            let mut bad = text;
            bad.replace_range(cut..=cut, "");
            bad.insert_str(cut, &junk);
            proptest::prop_assert!(parse_key_text(&bad).is_none());
        }

        /// A password file loses one trailing newline (`\n` or `\r\n`) and nothing else.
        #[test]
        fn password_loses_one_newline(p in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let with = |tail: &[u8]| password_from_file(Zeroizing::new([&p[..], tail].concat())).to_vec();
            proptest::prop_assert_eq!(with(b"\r\n"), p.clone());
            if p.last() != Some(&b'\r') {
                proptest::prop_assert_eq!(with(b"\n"), p.clone());
            }
            if p.last() != Some(&b'\n') {
                proptest::prop_assert_eq!(with(b""), p.clone());
            }
        }
    }

    #[test]
    fn password_file_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        fs::write(&path, b"s3cret\r\n").unwrap();
        assert_eq!(read_password_file(&path).unwrap().as_slice(), b"s3cret");
    }
}
