//! `weft install-cni` and `weft uninstall-cni`: put the CNI plugin and its network configuration
//! on a node (the DaemonSet's init container runs the first), or take them away.
//!
//! Every file is written beside its final name under a name the runtime ignores (a leading dot,
//! a `.tmp` suffix), synced, given its mode, then renamed over the final name: kubelet or
//! containerd, which may read the configuration or run the plugin at any moment, see the old
//! file or the new one, never half of one. A plugin binary that is running keeps its old inode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde_json::json;

/// What `install-cni` writes where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallCni {
    /// The plugin binary to install (`weft-cni` in the image).
    pub plugin: PathBuf,
    /// The node's CNI plugin directory; the plugin lands there as `weft`.
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory.
    pub conf_dir: PathBuf,
    /// The conflist's file name.
    pub conf_name: String,
    /// The router's API socket, as the plugin (run by the runtime on the host) sees it.
    pub socket: PathBuf,
    /// The pod MTU for the conflist; `None` leaves the plugin to take the bridge's.
    pub mtu: Option<u32>,
    /// Where the plugin queues releases while the router is down.
    pub release_queue: PathBuf,
    /// More plugins (e.g. `portmap`) installed under their own names only where the node has
    /// none: the node's own copies are never replaced.
    pub if_missing: Vec<PathBuf>,
}

/// The CNI plugin type and its file name in the plugin directory.
pub const PLUGIN_NAME: &str = "weft";
/// The conflist's default file name: sorts before most others, so runtimes pick it.
pub const DEFAULT_CONF_NAME: &str = "10-weft.conflist";

impl InstallCni {
    /// Installs the plugin and the extra plugins, then writes the conflist; says what it did,
    /// one line per file.
    ///
    /// # Errors
    ///
    /// The first failure, naming the file.
    pub fn run(&self) -> io::Result<Vec<String>> {
        let mut done = Vec::new();
        let dest = self.bin_dir.join(PLUGIN_NAME);
        let bytes = read(&self.plugin)?;
        done.push(install_file(&dest, &bytes, 0o755)?);
        for extra in &self.if_missing {
            let name = extra.file_name().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a file name", extra.display()),
                )
            })?;
            let dest = self.bin_dir.join(name);
            if dest.exists() {
                done.push(format!("{} present; left alone", dest.display()));
            } else {
                done.push(install_file(&dest, &read(extra)?, 0o755)?);
            }
        }
        let conf = self.conf_dir.join(&self.conf_name);
        done.push(install_file(&conf, self.conflist().as_bytes(), 0o644)?);
        Ok(done)
    }

    /// The conflist: weft, then the reference `portmap` plugin, at CNI 1.0.0 (the highest
    /// that containerd 1.6 and the reference plugins of that age accept).
    pub fn conflist(&self) -> String {
        let mut weft = json!({
            "type": PLUGIN_NAME,
            "socket": self.socket,
            "releaseQueue": self.release_queue,
            "hairpinMode": true,
        });
        if let Some(mtu) = self.mtu {
            weft["mtu"] = json!(mtu);
        }
        let doc = json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "plugins": [
                weft,
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            ],
        });
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Removes the conflist, and the plugin too with `remove_plugin`; absent files are fine.
///
/// # Errors
///
/// The first failure other than absence, naming the file.
pub fn uninstall_cni(
    conf_dir: &Path,
    conf_name: &str,
    bin_dir: &Path,
    remove_plugin: bool,
) -> io::Result<Vec<String>> {
    let mut paths = vec![conf_dir.join(conf_name)];
    if remove_plugin {
        paths.push(bin_dir.join(PLUGIN_NAME));
    }
    let mut done = Vec::new();
    for path in paths {
        match fs::remove_file(&path) {
            Ok(()) => done.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                done.push(format!("{} absent", path.display()));
            }
            Err(e) => return Err(named(e, "removing", &path)),
        }
    }
    Ok(done)
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    fs::read(path).map_err(|e| named(e, "reading", path))
}

/// Writes `bytes` to `dest` atomically with `mode`, unless it holds them already.
fn install_file(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<String> {
    if let Ok(meta) = fs::metadata(dest)
        && meta.permissions().mode() & 0o7777 == mode
        && fs::read(dest).is_ok_and(|old| old == bytes)
    {
        return Ok(format!("{} up to date", dest.display()));
    }
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| named(e, "creating", dir))?;
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have cut the mode at create time.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(named(e, "installing", dest));
    }
    Ok(format!("installed {}", dest.display()))
}

fn named(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, InstallCni) {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("image").join("weft-cni");
        let portmap = dir.path().join("image").join("portmap");
        fs::create_dir_all(plugin.parent().unwrap()).unwrap();
        fs::write(&plugin, b"plugin v1").unwrap();
        fs::write(&portmap, b"portmap from the image").unwrap();
        let install = InstallCni {
            plugin,
            bin_dir: dir.path().join("opt/cni/bin"),
            conf_dir: dir.path().join("etc/cni/net.d"),
            conf_name: DEFAULT_CONF_NAME.to_owned(),
            socket: PathBuf::from("/run/weft/weft.sock"),
            mtu: Some(1376),
            release_queue: PathBuf::from("/var/lib/weft/release-queue"),
            if_missing: vec![portmap],
        };
        (dir, install)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn installs_plugin_and_conflist_atomically_and_idempotently() {
        let (_dir, i) = setup();
        let done = i.run().unwrap();
        assert!(done.iter().all(|l| l.starts_with("installed ")), "{done:?}");
        let bin = i.bin_dir.join("weft");
        assert_eq!(fs::read(&bin).unwrap(), b"plugin v1");
        assert_eq!(mode(&bin), 0o755);
        assert_eq!(mode(&i.bin_dir.join("portmap")), 0o755);
        let conf = i.conf_dir.join("10-weft.conflist");
        assert_eq!(mode(&conf), 0o644);
        let doc: serde_json::Value = serde_json::from_slice(&fs::read(&conf).unwrap()).unwrap();
        assert_eq!(doc["cniVersion"], "1.0.0");
        assert_eq!(doc["plugins"][0]["type"], "weft");
        assert_eq!(
            doc["plugins"][0]["releaseQueue"],
            "/var/lib/weft/release-queue"
        );
        assert_eq!(doc["plugins"][0]["mtu"], 1376);
        assert_eq!(doc["plugins"][1]["type"], "portmap");
        // No temporary file is left where the runtime looks.
        let names: Vec<String> = fs::read_dir(&i.conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-weft.conflist"]);

        // Again: nothing to do. A new plugin replaces the old; the node's portmap is kept.
        let again = i.run().unwrap();
        assert!(again[0].ends_with("up to date"), "{again:?}");
        assert!(again[1].ends_with("present; left alone"), "{again:?}");
        fs::write(&i.plugin, b"plugin v2").unwrap();
        fs::write(i.bin_dir.join("portmap"), b"the node's own").unwrap();
        i.run().unwrap();
        assert_eq!(fs::read(&bin).unwrap(), b"plugin v2");
        assert_eq!(
            fs::read(i.bin_dir.join("portmap")).unwrap(),
            b"the node's own"
        );
    }

    #[test]
    fn the_plugin_accepts_the_conflist() {
        let (_dir, i) = setup();
        let doc: serde_json::Value = serde_json::from_str(&i.conflist()).unwrap();
        // What a runtime hands the first plugin of the list: its entry plus the list's
        // cniVersion and name.
        let mut conf = doc["plugins"][0].clone();
        conf["cniVersion"] = doc["cniVersion"].clone();
        conf["name"] = doc["name"].clone();
        let parsed = weft_cni::conf::NetConf::parse(conf.to_string().as_bytes()).unwrap();
        assert!(parsed.validate().is_ok());
    }

    #[test]
    fn uninstall_removes_the_conflist_and_optionally_the_plugin() {
        let (_dir, i) = setup();
        i.run().unwrap();
        let done = uninstall_cni(&i.conf_dir, DEFAULT_CONF_NAME, &i.bin_dir, false).unwrap();
        assert_eq!(done.len(), 1);
        assert!(!i.conf_dir.join(DEFAULT_CONF_NAME).exists());
        assert!(
            i.bin_dir.join("weft").exists(),
            "pods still need the plugin for DEL"
        );
        uninstall_cni(&i.conf_dir, DEFAULT_CONF_NAME, &i.bin_dir, true).unwrap();
        assert!(!i.bin_dir.join("weft").exists());
        // Absent files are fine.
        let done = uninstall_cni(&i.conf_dir, DEFAULT_CONF_NAME, &i.bin_dir, true).unwrap();
        assert!(done.iter().all(|l| l.ends_with("absent")), "{done:?}");
    }

    #[test]
    fn a_missing_plugin_is_named() {
        let (_dir, mut i) = setup();
        i.plugin = PathBuf::from("/nonexistent/weft-cni");
        let e = i.run().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/weft-cni"), "{e}");
        assert!(
            !i.conf_dir.join(DEFAULT_CONF_NAME).exists(),
            "conflist written without plugin"
        );
    }
}
