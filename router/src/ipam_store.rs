//! Crash-safe persistence of the IPAM snapshot (`<state-dir>/ipam.state`).
//!
//! Every change is written whole to `ipam.state.tmp` (mode 0600), fsynced, renamed over
//! `ipam.state`, and the directory is fsynced. Rename is atomic, so after a crash at any
//! instant (kill -9, power loss) the file holds either the previous or the new snapshot,
//! never a mixture; a stale temp file is ignored and removed on the next load. The daemon
//! saves the snapshot from `Ipam::poll_snapshot` *before* it sends the messages that change
//! caused and before it answers the CNI, so an address a pod got is always on disk, and a
//! space donation is on disk before the recipient can use it.
//!
//! File layout (big-endian): `"WEFTIPAM"`, format `u8 = 1`, payload length `u32`, CRC-32
//! (IEEE) of the payload `u32`, then the payload (`topology::ipam::Snapshot`, see
//! docs/IPAM.md). The checksum catches torn or bit-rotted files on filesystems that do not
//! honour the write–fsync–rename contract.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use topology::ipam::{Snapshot, SnapshotError};

/// The file name inside the state directory.
pub const FILE_NAME: &str = "ipam.state";
/// The temporary file name used while saving.
pub const TMP_NAME: &str = "ipam.state.tmp";
/// The largest file accepted (a /8 fully allocated with long IDs stays well below).
pub const MAX_FILE_LEN: u64 = 256 * 1024 * 1024;

const MAGIC: &[u8; 8] = b"WEFTIPAM";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 8 + 1 + 4 + 4;

/// Why the state file could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file does not hold a valid snapshot (bad magic, length, checksum or content).
    #[error("IPAM state file {path} is corrupt ({why}); move it away to start IPAM afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: &'static str,
    },
    /// Reading, writing, syncing or renaming failed.
    #[error("IPAM state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The IPAM state file of one router.
#[derive(Debug, Clone)]
pub struct IpamStore {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl IpamStore {
    /// Makes a store in `state_dir` (created with mode 0700 on the first save if missing).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_owned(),
            path: state_dir.join(FILE_NAME),
            tmp: state_dir.join(TMP_NAME),
        }
    }

    /// Returns the state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the snapshot; `None` when there is no state file yet. Removes a temp file left
    /// by a crash during a save (its content was never acknowledged to anyone).
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] or [`StoreError::Io`], naming the file.
    pub fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        match fs::remove_file(&self.tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.tmp.clone(),
                    source,
                });
            }
        }
        let bytes = match fs::metadata(&self.path) {
            Ok(m) if m.len() > MAX_FILE_LEN => return Err(self.corrupt("file too large")),
            Ok(_) => fs::read(&self.path).map_err(|e| self.io(e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        decode_file(&bytes)
            .map(Some)
            .map_err(|why| self.corrupt(why))
    }

    /// Saves the snapshot durably: write the temp file, fsync, rename, fsync the directory.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] naming the file that failed; the previous snapshot is then intact.
    pub fn save(&self, snap: &Snapshot) -> Result<(), StoreError> {
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|source| StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        let bytes = encode_file(snap);
        let tmp_err = |source| StoreError::Io {
            path: self.tmp.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.tmp)
            .map_err(tmp_err)?;
        f.write_all(&bytes).map_err(tmp_err)?;
        f.sync_all().map_err(tmp_err)?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| self.io(e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })
    }

    fn io(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, why: &'static str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            why,
        }
    }
}

/// Returns the file image of a snapshot.
pub fn encode_file(snap: &Snapshot) -> Vec<u8> {
    let payload = snap.to_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&crc32(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Parses a file image.
///
/// # Errors
///
/// A short reason when the image is not a valid snapshot.
pub fn decode_file(bytes: &[u8]) -> Result<Snapshot, &'static str> {
    let (Some(magic), Some(&format), Some(len), Some(crc)) = (
        bytes.get(..8),
        bytes.get(8),
        bytes.get(9..13),
        bytes.get(13..17),
    ) else {
        return Err("truncated header");
    };
    if magic != MAGIC {
        return Err("not an IPAM state file");
    }
    if format != FORMAT {
        return Err("unknown format version");
    }
    let mut l = [0u8; 4];
    l.copy_from_slice(len);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    let payload = &bytes[HEADER_LEN..];
    if usize::try_from(u32::from_be_bytes(l)).ok() != Some(payload.len()) {
        return Err("length mismatch (truncated file)");
    }
    if crc32(payload) != u32::from_be_bytes(c) {
        return Err("checksum mismatch");
    }
    Snapshot::decode(payload).map_err(|e| match e {
        SnapshotError::UnknownVersion => "unknown snapshot version",
        SnapshotError::Corrupt | SnapshotError::NameMismatch | SnapshotError::RangeMismatch => {
            "snapshot does not decode"
        }
    })
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it): the file header's checksum.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Instant;

    use topology::PeerName;
    use topology::ipam::{Allocation, Config, Init, Ipam};

    use super::*;

    fn engine(now: Instant) -> Ipam {
        let mut c = Config::new(PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]));
        c.init = Init::Seed(vec![c.name]);
        Ipam::new(c, now, 1)
    }

    fn alloc(ipam: &mut Ipam, now: Instant, id: &str) -> std::net::IpAddr {
        match ipam.allocate(now, id, "eth0") {
            Ok(Allocation::Allocated(a)) => a.addr,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = IpamStore::new(&dir.path().join("state"));
        assert!(store.load().unwrap().is_none());
        let now = Instant::now();
        let mut ipam = engine(now);
        alloc(&mut ipam, now, "a");
        let snap = ipam.poll_snapshot().unwrap();
        store.save(&snap).unwrap();
        assert_eq!(store.load().unwrap(), Some(snap));
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A crash at each step of a save leaves either the old or the new snapshot, and a
    /// restarted engine neither loses an acknowledged allocation nor hands it out twice.
    #[test]
    fn crash_at_every_step_loses_and_duplicates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = IpamStore::new(dir.path());
        let now = Instant::now();
        let mut ipam = engine(now);
        let a = alloc(&mut ipam, now, "a");
        store.save(&ipam.poll_snapshot().unwrap()).unwrap();
        // "a" is acknowledged. Now "b" is allocated and the save of that state crashes.
        let b = alloc(&mut ipam, now, "b");
        let new_image = encode_file(&ipam.poll_snapshot().unwrap());
        let cut_points = [0, 1, HEADER_LEN, new_image.len() / 2, new_image.len() - 1];
        for cut in cut_points {
            // Crash while writing the temp file (any prefix of it on disk).
            fs::write(dir.path().join(TMP_NAME), &new_image[..cut]).unwrap();
            let snap = store.load().unwrap().unwrap();
            assert!(
                !dir.path().join(TMP_NAME).exists(),
                "stale temp file removed"
            );
            let mut restarted = Ipam::restore(ipam_config(), now, 2, &snap).unwrap();
            assert_eq!(restarted.lookup("a", "eth0").unwrap().addr, a, "kept");
            // "b" was never acknowledged; whoever asks again gets an address, never "a"'s.
            let b2 = alloc(&mut restarted, now, "b");
            assert_ne!(b2, a);
            let c = alloc(&mut restarted, now, "c");
            assert!(c != a && c != b2);
        }
        // Crash after the temp file is complete and synced, before the rename: old state.
        fs::write(dir.path().join(TMP_NAME), &new_image).unwrap();
        let snap = store.load().unwrap().unwrap();
        assert!(
            Ipam::restore(ipam_config(), now, 2, &snap)
                .unwrap()
                .lookup("b", "eth0")
                .is_none()
        );
        // Crash after the rename: new state, with both.
        fs::write(dir.path().join(FILE_NAME), &new_image).unwrap();
        let snap = store.load().unwrap().unwrap();
        let r = Ipam::restore(ipam_config(), now, 2, &snap).unwrap();
        assert_eq!(r.lookup("a", "eth0").unwrap().addr, a);
        assert_eq!(r.lookup("b", "eth0").unwrap().addr, b);
    }

    fn ipam_config() -> Config {
        let mut c = Config::new(PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]));
        c.init = Init::Seed(vec![c.name]);
        c
    }

    #[test]
    fn corrupt_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = IpamStore::new(dir.path());
        let now = Instant::now();
        let mut ipam = engine(now);
        alloc(&mut ipam, now, "a");
        let image = encode_file(&ipam.poll_snapshot().unwrap());
        for (bytes, want) in [
            (image[..image.len() - 3].to_vec(), "truncated"),
            (b"garbage!".to_vec(), "truncated header"),
            (
                [&b"XXXXXXXX"[..], &image[8..]].concat(),
                "not an IPAM state file",
            ),
            (
                {
                    let mut v = image.clone();
                    let last = v.len() - 1;
                    v[last] ^= 1;
                    v
                },
                "checksum",
            ),
        ] {
            fs::write(store.path(), &bytes).unwrap();
            let err = store.load().unwrap_err().to_string();
            assert!(err.contains(&store.path().display().to_string()), "{err}");
            assert!(err.contains(want), "{err}");
        }
    }

    /// A file of `n` allocations.
    fn image(n: usize) -> Vec<u8> {
        let now = Instant::now();
        let mut ipam = engine(now);
        for i in 0..n {
            alloc(&mut ipam, now, &format!("c{i}"));
        }
        encode_file(&ipam.poll_snapshot().unwrap())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A saved file reads back; any one bit flipped anywhere (header or snapshot), any
        /// cut and any byte appended is refused; arbitrary bytes never panic.
        #[test]
        fn any_damage_is_refused(
            n in 0usize..6,
            bit in proptest::prelude::any::<proptest::sample::Index>(),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            extra in proptest::prelude::any::<u8>(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let file = image(n);
            let snap = decode_file(&file).unwrap();
            proptest::prop_assert_eq!(&encode_file(&snap), &file);
            let mut flipped = file.clone();
            let at = bit.index(file.len() * 8);
            flipped[at / 8] ^= 1 << (at % 8);
            proptest::prop_assert!(decode_file(&flipped).is_err());
            proptest::prop_assert!(decode_file(&file[..cut.index(file.len())]).is_err());
            proptest::prop_assert!(decode_file(&[&file[..], &[extra]].concat()).is_err());
            let _ = decode_file(&junk);
            let _ = decode_file(&[&file[..HEADER_LEN], &junk[..]].concat());
        }
    }

    /// Measures the cost of one durable save (run with `--ignored --nocapture`).
    #[test]
    #[ignore = "timing, not a check"]
    #[allow(clippy::print_stderr)]
    fn save_cost() {
        let dir = tempfile::tempdir().unwrap();
        let store = IpamStore::new(dir.path());
        let now = Instant::now();
        let mut ipam = engine(now);
        let t = Instant::now();
        for i in 0..200 {
            alloc(&mut ipam, now, &format!("c{i}"));
            store.save(&ipam.poll_snapshot().unwrap()).unwrap();
        }
        eprintln!("save: {:?} per allocation", t.elapsed() / 200);
    }
}
