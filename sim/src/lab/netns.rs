//! Network-namespace plumbing for the lab: entering namespaces with `setns`, and running the
//! iproute2/nft tools that build the lab's simulated hosts.
//!
//! The lab is test infrastructure that builds the "physical" world around weft (hosts, underlay
//! cables, pods before the CNI plugin attaches them); it may use the command-line tools for that.
//! weft's own data-plane configuration goes through netlink in the router crate.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Where `ip netns add` keeps its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Returns the path of the handle of the named network namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// Lists the named network namespaces (`ip netns list`, read from the handle directory).
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Moves the calling thread into the namespace whose handle is `ns_file`.
///
/// # Errors
/// Returns the OS error of `setns(2)`.
pub fn setns(ns_file: &File) -> io::Result<()> {
    // SAFETY: setns takes a valid fd (owned by `ns_file`, open for the whole call) and a flag.
    let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens the handle of the named namespace.
///
/// # Errors
/// Fails when the namespace does not exist.
pub fn open(ns: &str) -> Result<File> {
    File::open(netns_path(ns)).with_context(|| format!("network namespace {ns} does not exist"))
}

/// Builds a command that runs inside namespace `ns` (setns between fork and exec, like
/// `nsenter --net`; never `ip netns exec`, which remounts /sys).
///
/// # Errors
/// Fails when the namespace does not exist.
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Result<Command> {
    let file = open(ns)?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure only calls async-signal-safe setns(2) on an fd that stays open
    // because `file` is moved into the closure, which lives as long as the Command.
    unsafe {
        cmd.pre_exec(move || setns(&file));
    }
    Ok(cmd)
}

/// Runs `f` on a fresh thread that has entered namespace `ns`, so the caller's own namespace
/// never changes.
///
/// # Errors
/// Fails when the namespace cannot be entered, or with `f`'s error.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = open(ns)?;
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        setns(&file).with_context(|| format!("entering network namespace {ns}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in a network namespace panicked"))?
}

/// Runs a tool to completion and fails with its stderr when it exits non-zero.
///
/// # Errors
/// Fails when the tool cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip ARGS...` (in the namespace `-n` names, if any).
///
/// # Errors
/// Fails when `ip` exits non-zero.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// Writes a sysctl of the namespace `ns` (the file under /proc/sys is resolved in the
/// writer's own namespace, so the write happens on a thread inside it).
///
/// # Errors
/// Fails when the namespace cannot be entered or the file cannot be written.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    in_netns(ns, move || {
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))
    })
}

/// Deletes a named namespace; a namespace that is already gone is not an error.
///
/// # Errors
/// Fails when `ip netns del` fails for another reason.
pub fn delete(ns: &str) -> Result<()> {
    if !netns_path(ns).exists() {
        return Ok(());
    }
    ip(&["netns", "del", ns])
}
