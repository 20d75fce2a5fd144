//! Attaching lab pods through the real CNI plugin, exactly as a container runtime does: the
//! plugin binary is executed in the node's namespace with the CNI environment and the network
//! configuration on stdin, and its result (or CNI error) is read from stdout.
//!
//! The lab keeps a private plugin directory (`/run/weft-lab/N/cni-bin`) where `weft` links to
//! the `weft-cni` binary; nothing is put on PATH or under /opt/cni/bin.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{lab_dir, netns, node_dir, node_ns, router::weft_binary};

/// The CNI version the lab's network configuration says (what Debian's containerd speaks).
const CNI_VERSION: &str = "1.0.0";

/// What ADD gave a pod.
pub(super) struct Attached {
    /// Address with prefix.
    pub(super) ip: String,
    /// The pod interface's MAC.
    pub(super) mac: String,
}

/// Makes the lab's private plugin directory, with `weft` linking to `weft-cni`.
pub(super) fn install(name: &str) -> Result<PathBuf> {
    let dir = lab_dir(name).join("cni-bin");
    std::fs::create_dir_all(&dir)?;
    let plugin = weft_cni_binary()?;
    let link = dir.join("weft");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&plugin, &link)
        .with_context(|| format!("linking {} to {}", link.display(), plugin.display()))?;
    Ok(dir)
}

/// Runs CNI ADD for pod namespace `pod_ns` on node `i`; `mac` is passed as `MAC=` in CNI_ARGS.
pub(super) fn add(name: &str, i: usize, pod_ns: &str, mac: Option<&str>) -> Result<Attached> {
    let netns_path = netns::netns_path(pod_ns);
    let args = mac.map(|m| format!("MAC={m}"));
    let result = exec(
        name,
        i,
        "ADD",
        pod_ns,
        &netns_path.display().to_string(),
        args.as_deref(),
    )?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .context("CNI ADD result has no address")?
        .to_owned();
    let mac = result["interfaces"]
        .as_array()
        .and_then(|ifs| ifs.iter().find(|i| i["sandbox"].is_string()))
        .and_then(|i| i["mac"].as_str())
        .context("CNI ADD result has no pod interface MAC")?
        .to_owned();
    Ok(Attached { ip, mac })
}

/// Runs CNI DEL for pod namespace `pod_ns` on node `i`, with an empty CNI_NETNS as containerd
/// does.
pub(super) fn del(name: &str, i: usize, pod_ns: &str) -> Result<()> {
    exec(name, i, "DEL", pod_ns, "", None).map(drop)
}

/// Runs CNI ADD on node `node` for a namespace the caller made (named `NAME-hI-pJ`, so the
/// lab's teardown finds it) without recording a pod in the lab's state, so tests may run many
/// at once; returns the address (with prefix).
///
/// # Errors
/// Fails when the lab or node is unknown or the plugin fails (its CNI error in the message).
pub fn cni_add(name: &str, node: &str, pod_ns: &str) -> Result<String> {
    let state = super::load(name)?;
    let i = super::parse_index(node, 'h', state.spec.nodes)?;
    add(name, i, pod_ns, None).map(|a| a.ip)
}

/// Runs CNI DEL on node `node` for a namespace given to [`cni_add`].
///
/// # Errors
/// Fails when the lab or node is unknown or the plugin fails.
pub fn cni_del(name: &str, node: &str, pod_ns: &str) -> Result<()> {
    let state = super::load(name)?;
    let i = super::parse_index(node, 'h', state.spec.nodes)?;
    del(name, i, pod_ns)
}

fn exec(
    name: &str,
    i: usize,
    command: &str,
    container_id: &str,
    netns_path: &str,
    args: Option<&str>,
) -> Result<Value> {
    let dir = lab_dir(name).join("cni-bin");
    let conf = serde_json::json!({
        "cniVersion": CNI_VERSION,
        "name": "weft",
        "type": "weft",
        "socket": node_dir(name, i).join("weft.sock"),
        "releaseQueue": node_dir(name, i).join("release-queue"),
    });
    let mut cmd = netns::command_in(&node_ns(name, i), dir.join("weft"))?;
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(args) = args {
        cmd.env("CNI_ARGS", args);
    }
    let mut child = cmd.spawn().context("running the weft CNI plugin")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("CNI {command} of {container_id} failed: {}", stdout.trim());
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).with_context(|| format!("CNI {command} printed {stdout:?}"))
}

/// `weft-cni` next to the `weft` binary.
fn weft_cni_binary() -> Result<PathBuf> {
    let weft = weft_binary()?;
    let dir = weft.parent().unwrap_or_else(|| Path::new("."));
    let plugin = dir.join("weft-cni");
    if !plugin.is_file() {
        bail!(
            "cannot find {} (build it with `cargo build --workspace --bins`)",
            plugin.display()
        );
    }
    Ok(plugin)
}
