//! Writes a release the router could not take into the release queue
//! (`topology::api::release_queue`), durably: the router applies it when it runs again, even
//! after a reboot.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use topology::api::ipam::ReleaseRequest;
use topology::api::release_queue;

/// Queues `req` in `dir` (created 0700 if missing): written beside its name, synced, renamed
/// into place and the directory synced, so the router sees the whole entry or none.
///
/// # Errors
///
/// The failing step's error, naming the path.
pub fn push(dir: &Path, req: &ReleaseRequest) -> io::Result<PathBuf> {
    let named = |what: &str, path: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| named("creating", dir, e))?;
    let name = release_queue::file_name(req);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| named("creating", &tmp, e))?;
    file.write_all(&release_queue::encode(req))
        .and_then(|()| file.sync_all())
        .map_err(|e| named("writing", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| named("placing", &path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named("syncing", dir, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_release_reads_back() {
        let dir = std::env::temp_dir().join(format!("weft-queue-test-{}", std::process::id()));
        let q = dir.join("queue");
        let req = ReleaseRequest {
            container_id: "c0ffee".to_owned(),
            ifname: "eth0".to_owned(),
            network: "weft".to_owned(),
        };
        let path = push(&q, &req).unwrap();
        assert_eq!(path, q.join("weft_c0ffee_eth0.json"));
        assert_eq!(
            release_queue::decode(&fs::read(&path).unwrap()),
            Ok(req.clone())
        );
        // Again: the same entry, replaced whole; nothing else left behind.
        push(&q, &req).unwrap();
        assert_eq!(fs::read_dir(&q).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
