//! The lab's router processes: one `weft router` per node, started inside the node's namespace,
//! detached from the lab command (which returns while they run), tracked by pid files.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use weft_router::api::ApiAddr;
use weft_router::api::client::ApiClient;

use super::{
    LabSpec, Underlay, api_value, lab_dir, netns, node_dir, node_ns, underlay_ip, wait_until,
};

/// What `lab router N NODE …` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RouterAction {
    /// SIGKILL: the router dies at once, leaving its devices.
    Kill,
    /// Stop, then start.
    Restart,
    /// Start it if it is not running.
    Start,
    /// SIGTERM, and wait for it to exit.
    Stop,
}

pub(super) fn act(spec: &LabSpec, i: usize, action: RouterAction) -> Result<()> {
    match action {
        RouterAction::Kill => signal_and_wait(&spec.name, i, libc::SIGKILL),
        RouterAction::Restart => {
            signal_and_wait(&spec.name, i, libc::SIGTERM)?;
            start(spec, i)
        }
        RouterAction::Start => {
            if running_pid(&spec.name, i).is_some() {
                return Ok(());
            }
            start(spec, i)
        }
        RouterAction::Stop => signal_and_wait(&spec.name, i, libc::SIGTERM),
    }
}

/// Starts node `i`'s router, detached, logging to the node's `router.log`.
pub(super) fn start(spec: &LabSpec, i: usize) -> Result<()> {
    let dir = node_dir(&spec.name, i);
    let peers: Vec<String> = (1..=spec.nodes)
        .filter(|&j| j != i && (spec.underlay == Underlay::Full || j.abs_diff(i) == 1))
        .map(underlay_ip)
        .collect();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("router.log"))
        .context("opening the router log")?;
    let bin = weft_binary()?;
    let mut cmd = netns::command_in(&node_ns(&spec.name, i), &bin)?;
    cmd.arg("router")
        .args(["--nickname", &format!("h{i}")])
        .args(["--state-dir", &dir.join("state").display().to_string()])
        .args(["--api-socket", &dir.join("weft.sock").display().to_string()])
        .args([
            "--release-queue",
            &dir.join("release-queue").display().to_string(),
        ])
        .args(["--datapath", spec.datapath.as_str()])
        .args(["--encryption", if spec.encrypt { "on" } else { "off" }]);
    if spec.kube {
        // Peers come from the Node objects.
        cmd.args(["--kube-peers", "--kube-api", &super::api_url()]);
        cmd.args(["--network-policy", "on"]);
    } else if !peers.is_empty() {
        cmd.args(["--peers", &peers.join(",")]);
    }
    if !spec.trusted_subnets.is_empty() {
        cmd.args(["--trusted-subnets", &spec.trusted_subnets.join(",")]);
    }
    let password = dir.join("password");
    if password.exists() {
        cmd.arg("--password-file").arg(&password);
    }
    cmd.env(
        "WEFT_LOG",
        std::env::var("WEFT_LOG").unwrap_or_else(|_| "info".into()),
    )
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    let child = spawn_detached(&mut cmd).with_context(|| format!("starting {}", bin.display()))?;
    std::fs::write(dir.join("router.pid"), child.id().to_string())?;
    Ok(())
}

/// Waits until every router of the lab answers, has all its expected connections established
/// and knows every peer (returns when that was first seen of the last one), then until every
/// router is ready (`/ready`: IPAM gave the node its gateway and the data plane routes to
/// every connected peer, so a pod's first frame crosses).
///
/// Polls each router's API directly (a `weft report` per router per round would cost a
/// process each, and the full report of a 100-node mesh lists 9,900 connections); a router
/// already seen meshed or ready is not asked again.
pub(super) fn wait_ready(spec: &LabSpec, timeout: Duration) -> Result<Instant> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the lab's API client")?;
    let deadline = Instant::now() + timeout;
    let pause = Duration::from_millis(if spec.nodes > 10 { 200 } else { 50 });
    let clients: Vec<ApiClient> = (1..=spec.nodes)
        .map(|i| ApiClient::new(ApiAddr::Unix(node_dir(&spec.name, i).join("weft.sock"))))
        .collect();
    let mut last = String::new();
    let mut pending: Vec<usize> = (1..=spec.nodes).collect();
    let mut meshed_at = None;
    // Phase 1: connections and peers; phase 2: readiness.
    for phase in [1, 2] {
        while !pending.is_empty() {
            pending.retain(|&i| {
                if running_pid(&spec.name, i).is_none() {
                    last = format!(
                        "router h{i} is not running (see {})",
                        log_path(&spec.name, i).display()
                    );
                    return true;
                }
                let client = &clients[i - 1];
                let verdict = if phase == 1 {
                    runtime.block_on(meshed(spec, i, client))
                } else {
                    runtime.block_on(ready(client))
                };
                match verdict {
                    Ok(()) => false,
                    Err(e) => {
                        last = format!("h{i}: {e:#}");
                        true
                    }
                }
            });
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "lab {} not ready after {timeout:?} ({} routers waited for; \
                     raise --ready-timeout for big labs): {last}",
                    spec.name,
                    pending.len()
                );
            }
            std::thread::sleep(pause);
        }
        if phase == 1 {
            meshed_at = Some(Instant::now());
            pending = (1..=spec.nodes).collect();
        }
    }
    Ok(meshed_at.unwrap_or_else(Instant::now))
}

/// Whether node `i`'s router has every expected connection established and knows every peer,
/// as its `weft status` summary says.
async fn meshed(spec: &LabSpec, i: usize, client: &ApiClient) -> Result<()> {
    let expected = (1..=spec.nodes)
        .filter(|&j| j != i && (spec.underlay == Underlay::Full || j.abs_diff(i) == 1))
        .count();
    let summary = client.text("/status").await?;
    let (established, peers) = mesh_counts(&summary);
    if established < expected || peers < spec.nodes {
        bail!(
            "{established}/{expected} connections established, {peers}/{} peers",
            spec.nodes
        );
    }
    Ok(())
}

async fn ready(client: &ApiClient) -> Result<()> {
    let answer = client.get("/ready").await?;
    if answer.status == 200 {
        return Ok(());
    }
    let reason = serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or(answer.body);
    bail!("not ready: {reason}")
}

/// Connections established and peers known, from a `weft status` summary's `Connections:`
/// (`5 (2 established, 1 retrying)`) and `Peers:` (`3 (with …)`) lines; 0 when absent.
pub(crate) fn mesh_counts(summary: &str) -> (usize, usize) {
    let field = |label: &str| {
        summary
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .map(str::trim)
    };
    let established = field("Connections:")
        .and_then(|v| {
            let (_, states) = v.split_once('(')?;
            states
                .trim_end_matches(')')
                .split(',')
                .find_map(|p| p.trim().strip_suffix(" established")?.parse().ok())
        })
        .unwrap_or(0);
    let peers = field("Peers:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (established, peers)
}

/// Reads node `i`'s router report through the `weft` CLI, as an admin would.
pub(super) fn report(name: &str, i: usize) -> Result<serde_json::Value> {
    let out = std::process::Command::new(weft_binary()?)
        .args(["--api", &api_value(name, i), "report"])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "weft report: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("weft report printed invalid JSON")
}

/// Stops every router of lab `name` that has a pid file, even when the lab's state is gone.
pub(super) fn stop_all(name: &str) -> Result<()> {
    let Ok(dir) = std::fs::read_dir(lab_dir(name)) else {
        return Ok(());
    };
    let mut nodes: Vec<usize> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('h')?.parse().ok())
        .collect();
    nodes.sort_unstable();
    for i in nodes {
        signal_and_wait(name, i, libc::SIGTERM)?;
    }
    Ok(())
}

/// Sends `sig` to node `i`'s router and waits for it to exit; escalates to SIGKILL after 5 s.
fn signal_and_wait(name: &str, i: usize, sig: libc::c_int) -> Result<()> {
    let Some(pid) = running_pid(name, i) else {
        return Ok(());
    };
    // SAFETY: kill(2) with a pid we verified is our lab's router.
    unsafe { libc::kill(pid, sig) };
    if !wait_until(Duration::from_secs(5), || !alive(pid)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if !wait_until(Duration::from_secs(5), || !alive(pid)) {
            bail!("router h{i} of lab {name} (pid {pid}) does not exit");
        }
    }
    let _ = std::fs::remove_file(node_dir(name, i).join("router.pid"));
    Ok(())
}

/// The pid of node `i`'s router if it runs: the pid file names it, and its command line names
/// the node's socket (so a reused pid is never signalled).
pub(super) fn running_pid(name: &str, i: usize) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(node_dir(name, i).join("router.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let sock = node_dir(name, i).join("weft.sock");
    let sock = sock.to_str()?.as_bytes();
    let ours = cmdline.split(|&b| b == 0).any(|arg| arg == sock);
    (ours && alive(pid)).then_some(pid)
}

/// Whether `pid` runs; reaps it if it is our own exited child, and counts a zombie as gone
/// once it is a zombie alone. A killed router's main thread turns zombie while its other
/// threads still exit, and those hold its sockets open until the last one is gone: a router
/// started before then finds the old API socket still answering.
pub(super) fn alive(pid: i32) -> bool {
    // SAFETY: waitpid with WNOHANG on a pid; ECHILD when it is not our child is fine.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
            !matches!(state, Some('Z' | 'X') | None) || threads > 1
        }
        Err(_) => false,
    }
}

fn log_path(name: &str, i: usize) -> PathBuf {
    node_dir(name, i).join("router.log")
}

/// Spawns `cmd` in a session of its own (setsid), so a Ctrl-C on the lab command does not
/// reach it.
pub(super) fn spawn_detached(
    cmd: &mut std::process::Command,
) -> std::io::Result<std::process::Child> {
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
}

/// Finds the `weft` binary: `$WEFT_BIN`, else next to this executable (or its parent, for test
/// binaries in `target/*/deps`).
pub fn weft_binary() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("WEFT_BIN") {
        return Ok(PathBuf::from(bin));
    }
    sibling_binary("weft")
}

/// The binary `name`: this executable when it is that, else next to it or its parent
/// directory (test binaries live in `target/*/deps`).
pub(super) fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == name) {
        return Ok(exe);
    }
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for _ in 0..2 {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if !dir.pop() {
            break;
        }
    }
    bail!(
        "cannot find the {name} binary next to {} (build it with `cargo build --workspace \
         --bins`, or set WEFT_BIN for weft)",
        exe.display()
    )
}

#[cfg(test)]
mod tests {
    use super::mesh_counts;

    #[test]
    fn mesh_counts_read_the_status_summary() {
        let summary = "\n        Version: 0.1.0\n    Connections: 5 (2 established, 1 retrying, 1 failed, 1 connecting)\n          Peers: 3 (with 3 established, 1 pending connections)\n";
        assert_eq!(mesh_counts(summary), (2, 3));
        let all = "    Connections: 99 (99 established)\n          Peers: 100 (with 9900 established connections)\n";
        assert_eq!(mesh_counts(all), (99, 100));
        assert_eq!(
            mesh_counts("    Connections: 0\n          Peers: 1\n"),
            (0, 1)
        );
        assert_eq!(mesh_counts(""), (0, 0));
    }
}
