//! `weft-sim lab demo`: builds a small lab, shows pods talking across it and the mesh as
//! `weft status` shows it, then removes everything.

use std::io::Write;

use anyhow::{Result, bail};

use crate::lab::{self, LabGuard, LabInfo, LabSpec};

/// The demo lab's name.
pub const DEMO_NAME: &str = "weftdemo";

/// Runs the demo, writing what it does to `out`.
///
/// # Errors
/// Fails when the lab cannot be built or the pods cannot reach each other.
pub fn run(out: &mut impl Write) -> Result<()> {
    let mut spec = LabSpec::new(DEMO_NAME);
    spec.pods = 2;
    spec.routers = routers_available();
    // A demo left behind by an interrupted run is removed first.
    lab::down(DEMO_NAME)?;
    let guard = LabGuard::new(DEMO_NAME);
    writeln!(
        out,
        "Building lab {DEMO_NAME}: {} nodes, {} pods each …",
        spec.nodes, spec.pods
    )?;
    let info = lab::up(&spec)?;
    print_lab(out, &info)?;

    let mut failures = 0;
    for (from, to) in ping_pairs(&info, spec.routers && ROUTERS_CARRY_PODS) {
        let (src, dst_ip) = (from.clone(), to.1.clone());
        let res = lab::exec_output(
            DEMO_NAME,
            &src,
            &["ping", "-c", "3", "-i", "0.2", "-W", "2", &dst_ip],
        )?;
        let summary = String::from_utf8_lossy(&res.stdout)
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("no reply")
            .to_owned();
        writeln!(out, "ping {src} -> {} ({dst_ip}): {summary}", to.0)?;
        if !res.status.success() {
            failures += 1;
        }
    }
    if spec.routers {
        let status = lab::exec_output(
            DEMO_NAME,
            "h1",
            &[&lab::weft_binary()?.display().to_string(), "status"],
        )?;
        writeln!(
            out,
            "\n$ weft status   (on h1)\n{}",
            String::from_utf8_lossy(&status.stdout)
        )?;
    }
    writeln!(out, "Removing lab {DEMO_NAME} …")?;
    drop(guard);
    if failures > 0 {
        bail!("{failures} ping(s) failed");
    }
    writeln!(
        out,
        "Demo finished: every ping answered, nothing left behind."
    )?;
    Ok(())
}

/// Writes a lab's nodes and pods as a table.
///
/// # Errors
/// Fails when `out` cannot be written.
pub fn print_lab(out: &mut impl Write, info: &LabInfo) -> Result<()> {
    writeln!(out, "lab {}", info.name)?;
    for node in &info.nodes {
        writeln!(
            out,
            "  {:<4} netns {:<16} underlay {}",
            node.name, node.netns, node.underlay_ip
        )?;
        for pod in &node.pods {
            writeln!(
                out,
                "    {:<4} netns {:<16} {:<16} {}",
                pod.name, pod.netns, pod.ip, pod.mac
            )?;
        }
    }
    Ok(())
}

/// Pairs to ping: within h1, and (with routers) from h1's first pod to every other node's.
fn ping_pairs(info: &LabInfo, cross_node: bool) -> Vec<(String, (String, String))> {
    let mut pairs = Vec::new();
    let Some(h1) = info.nodes.first() else {
        return pairs;
    };
    let Some(p1) = h1.pods.first() else {
        return pairs;
    };
    let bare = |ip: &str| ip.split('/').next().unwrap_or(ip).to_owned();
    for pod in h1.pods.iter().skip(1) {
        pairs.push((
            format!("h1/{}", p1.name),
            (format!("h1/{}", pod.name), bare(&pod.ip)),
        ));
    }
    if cross_node {
        for node in info.nodes.iter().skip(1) {
            for pod in &node.pods {
                let to = format!("{}/{}", node.name, pod.name);
                pairs.push((format!("h1/{}", p1.name), (to, bare(&pod.ip))));
            }
        }
    }
    pairs
}

/// Whether the `weft` router exists next to `weft-sim` (without it the demo shows the lab
/// alone).
fn routers_available() -> bool {
    lab::weft_binary().is_ok()
}

/// Whether routers carry pod frames between nodes (the sleeve does).
const ROUTERS_CARRY_PODS: bool = true;
