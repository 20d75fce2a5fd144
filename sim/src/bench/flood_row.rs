//! The `sleeve-encrypted-flood` row: the `sleeve-encrypted` lab again, while a host on the
//! underlay that is no peer (the lab's gateway, 192.0.2.254) sends forged datagrams to the
//! server node's sleeve and VXLAN ports at a fixed rate. Its ratio to `sleeve-encrypted`, run
//! by run, is what the flood costs the pods.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::flood::{self, FloodSpec, FloodStats, Forgery, SleeveForge, Source, Stream};
use crate::lab::{self, netns};

/// The row's name.
pub const FLOOD: &str = "sleeve-encrypted-flood";
/// The row it is compared with (same lab, no flood).
pub(super) const FLOOD_BASE: &str = "sleeve-encrypted";
/// Forged datagrams per second to each of the two ports (the goal asks for at least 20,000;
/// the margin covers a sender that falls behind while the machine is busy).
pub(super) const RATE: u32 = 25_000;

/// The flood's cost, and what it sent.
#[derive(Debug, Clone, Serialize)]
pub struct FloodRatio {
    /// Median Gb/s of the flooded row over `sleeve-encrypted`'s, 1 stream.
    pub ratio_gbps_1: f64,
    /// The same, 4 streams.
    pub ratio_gbps_4: f64,
    /// Median of run-by-run ratios, 1 stream.
    pub paired_ratio_gbps_1: f64,
    /// The same, 4 streams.
    pub paired_ratio_gbps_4: f64,
    /// The lowest rate reached in any run, datagrams per second per port.
    pub min_rate_per_port: f64,
    /// Datagrams sent in all runs, by kind.
    pub sent_by_kind: std::collections::BTreeMap<String, u64>,
}

/// The flood for the lab `name` (two nodes, one pod each, on the sleeve): forged sleeve
/// datagrams (wrong keys, replays and truncations of a genuine datagram captured on h2,
/// random bytes, plain chunks) to 192.0.2.2:6783 and VXLAN echoes to h2's pod to
/// 192.0.2.2:6784, from 192.0.2.254, `RATE` per second each, for at most `max_time`.
///
/// # Errors
/// Fails when the lab cannot be read or no genuine datagram is seen within 10 s.
pub(super) fn spec(name: &str, max_time: Duration) -> Result<FloodSpec> {
    let info = lab::info(name)?;
    let [h1, h2, ..] = info.nodes.as_slice() else {
        bail!("lab {name} has fewer than two nodes");
    };
    let (client, server) = (
        h1.pods.first().context("no pod on h1")?,
        h2.pods.first().context("no pod on h2")?,
    );
    let server_ip: Ipv4Addr = server
        .ip
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .context("the server pod's address")?;
    let h1_ip: Ipv4Addr = h1.underlay_ip.parse().context("h1's underlay address")?;
    let h2_ip: Ipv4Addr = h2.underlay_ip.parse().context("h2's underlay address")?;
    let peer = |node: &str| -> Result<[u8; 6]> {
        let report = lab::report(name, node)?;
        let text = report["name"].as_str().context("no peer name")?;
        mac_bytes(text)
    };
    let genuine = capture_genuine(&h2.netns, h1_ip, &client.netns, &server_ip.to_string())?;
    let forge = SleeveForge {
        src: peer("h1")?,
        dst: peer("h2")?,
        genuine: Some(genuine),
    };
    Ok(FloodSpec {
        netns: format!("{name}-u"),
        source: Source::Bound(Ipv4Addr::new(192, 0, 2, 254)),
        streams: vec![
            Stream {
                to: SocketAddrV4::new(h2_ip, 6783),
                datagrams: flood::sleeve_forgeries(&forge, 1000, 1),
            },
            Stream {
                to: SocketAddrV4::new(h2_ip, 6784),
                datagrams: vec![(
                    Forgery::VxlanEcho,
                    flood::vxlan_echo(mac_bytes(&server.mac)?, server_ip),
                )],
            },
        ],
        rate: RATE,
        limit: u64::MAX,
        max_time,
    })
}

/// One sealed datagram from h1 to h2, captured on h2 while the client pod pings the server.
fn capture_genuine(h2: &str, h1_ip: Ipv4Addr, client: &str, server_ip: &str) -> Result<Vec<u8>> {
    let ns = h2.to_owned();
    let capture =
        std::thread::spawn(move || flood::capture_udp(&ns, h1_ip, 6783, Duration::from_secs(10)));
    let start = Instant::now();
    while !capture.is_finished() && start.elapsed() < Duration::from_secs(12) {
        let _ = netns::command_in(client, "ping")?
            .args(["-c", "1", "-W", "1", server_ip])
            .output();
    }
    capture
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))?
}

fn mac_bytes(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("not a MAC: {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("not a MAC: {text}"))
}

/// The lowest per-port rate reached and the datagrams sent by kind, over runs.
pub(super) fn totals(runs: &[FloodStats]) -> (f64, std::collections::BTreeMap<String, u64>) {
    let min_rate = runs
        .iter()
        .map(FloodStats::rate_per_target)
        .fold(f64::INFINITY, f64::min);
    let mut by_kind = std::collections::BTreeMap::new();
    for r in runs {
        for (k, n) in &r.by_kind {
            *by_kind.entry(k.clone()).or_insert(0) += n;
        }
    }
    (if runs.is_empty() { 0.0 } else { min_rate }, by_kind)
}
