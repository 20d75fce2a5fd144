//! Prometheus metrics: counters the data and control planes bump, rendered in the text
//! exposition format on `--metrics-addr` (default `0.0.0.0:6782`) at `/metrics`.
//!
//! Counters are relaxed atomics behind a cloneable [`Metrics`] handle, so the per-packet path
//! pays one uncontended atomic add and never allocates or locks. Gauges that describe the mesh
//! (connections by state, peers) are read from the published [`RouterStatus`] at scrape time, so
//! metrics and `weft status` always agree. Label values come from closed enums, so no scrape can
//! produce an unbounded label set.
//!
//! This module formats; it never reads the engine.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::{ConnectionState, Datapath, EncryptionMode, RouterStatus};

/// The content type of the text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Cheaply cloneable handle to the router's counters.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Counters>,
}

/// Direction of gossip traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipDirection {
    /// Gossip bytes read from peers.
    Received,
    /// Gossip bytes written to peers.
    Sent,
}

/// Why a control-connection handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer did not prove knowledge of the password, or its key did not verify.
    Auth,
    /// The remote closed or the socket failed mid-handshake.
    Io,
    /// A handshake message did not parse.
    Malformed,
    /// No protocol version in common.
    ProtocolVersion,
    /// The peer is this router (connect to self).
    SelfConnect,
    /// The handshake did not finish in time.
    Timeout,
}

/// Why a frame was dropped instead of forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A sealed datagram failed to open.
    Decrypt,
    /// A datagram or frame did not parse.
    Malformed,
    /// No route to the destination peer.
    NoRoute,
    /// A send queue was full.
    QueueFull,
    /// The datagram's counter was outside or already seen in the replay window.
    Replay,
    /// The frame was larger than the pod MTU allows.
    TooBig,
    /// The datagram came from or was addressed to a peer the router does not know.
    UnknownPeer,
}

impl Metrics {
    /// Creates a handle with every counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds gossip bytes sent or received.
    pub fn add_gossip_bytes(&self, direction: GossipDirection, bytes: u64) {
        self.inner.gossip_bytes[direction as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one failed handshake.
    pub fn inc_handshake_failure(&self, reason: HandshakeFailure) {
        self.inner.handshake_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds frames and their bytes forwarded over a data path.
    pub fn add_forwarded(&self, datapath: Datapath, frames: u64, bytes: u64) {
        let i = datapath_index(datapath);
        self.inner.forwarded_frames[i].fetch_add(frames, Ordering::Relaxed);
        self.inner.forwarded_bytes[i].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds dropped frames for a reason.
    pub fn add_dropped(&self, reason: DropReason, frames: u64) {
        self.inner.dropped_frames[reason as usize].fetch_add(frames, Ordering::Relaxed);
    }

    /// Counts one fastdp event.
    pub fn inc_fastdp(&self, what: FastdpCounter) {
        self.inner.fastdp[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one control connection refused before the handshake (no Node's address).
    pub fn inc_refused_not_a_node(&self) {
        self.inner
            .refused_not_a_node
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one local HTTP connection closed by weft.
    pub fn inc_http_closed(&self, server: HttpServer, why: HttpClosed) {
        self.inner.http_closed[server as usize][why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Local HTTP connections closed by weft so far, for one server and reason.
    pub fn http_closed(&self, server: HttpServer, why: HttpClosed) -> u64 {
        load(&self.inner.http_closed[server as usize][why as usize])
    }

    /// Control connections refused so far because their source is no Node's address.
    pub fn refused_not_a_node(&self) -> u64 {
        load(&self.inner.refused_not_a_node)
    }

    /// Counts one failed reconcile of weft's nftables rules.
    pub fn inc_nft_sync_error(&self) {
        self.inner.nft_sync_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a cluster view change took to reach the kernel's rules.
    pub fn observe_policy_sync(&self, lag: std::time::Duration) {
        let secs = lag.as_secs_f64();
        let bucket = SYNC_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(SYNC_BUCKETS.len());
        let c = &self.inner.policy_sync;
        c[bucket].fetch_add(1, Ordering::Relaxed);
        c[SYNC_BUCKETS.len() + 1].fetch_add(lag.as_micros() as u64, Ordering::Relaxed);
    }

    /// Returns the frames and bytes forwarded over a data path so far.
    pub fn forwarded(&self, datapath: Datapath) -> (u64, u64) {
        let i = datapath_index(datapath);
        (
            self.inner.forwarded_frames[i].load(Ordering::Relaxed),
            self.inner.forwarded_bytes[i].load(Ordering::Relaxed),
        )
    }

    /// Renders every metric in the Prometheus text exposition format, taking the gauges from
    /// `status`.
    pub fn render(&self, status: &RouterStatus) -> String {
        let c = &self.inner;
        let mut out = String::with_capacity(4096);

        header(
            &mut out,
            "weft_build_info",
            "gauge",
            "Build information; the value is always 1.",
        );
        let _ = writeln!(
            out,
            "weft_build_info{{version=\"{}\"}} 1",
            escape(&status.version)
        );

        header(
            &mut out,
            "weft_connections",
            "gauge",
            "Connections of this router by state.",
        );
        for state in ConnectionState::STATUS_ORDER {
            let n = status
                .connections
                .iter()
                .filter(|conn| conn.state == state)
                .count();
            let _ = writeln!(out, "weft_connections{{state=\"{}\"}} {n}", state.as_str());
        }

        header(
            &mut out,
            "weft_encryption_enabled",
            "gauge",
            "1 when mesh encryption is on, 0 when off.",
        );
        let enc = &status.encryption;
        let _ = writeln!(out, "weft_encryption_enabled {}", u8::from(enc.enabled));
        header(
            &mut out,
            "weft_encryption_setting_version",
            "gauge",
            "Version of the mesh-wide encryption setting held.",
        );
        let _ = writeln!(out, "weft_encryption_setting_version {}", enc.version);
        header(
            &mut out,
            "weft_encryption_setting_changes_total",
            "counter",
            "Changes of the mesh-wide encryption setting seen by this router.",
        );
        let _ = writeln!(out, "weft_encryption_setting_changes_total {}", enc.changes);
        header(
            &mut out,
            "weft_encryption_records_rejected_total",
            "counter",
            "Encryption setting records refused for a missing or wrong password proof.",
        );
        let _ = writeln!(
            out,
            "weft_encryption_records_rejected_total {}",
            enc.rejected
        );
        header(
            &mut out,
            "weft_encryption_connections",
            "gauge",
            "Established connections by encryption mode.",
        );
        for mode in EncryptionMode::ALL {
            let n = enc.connections.iter().filter(|c| c.mode == mode).count();
            let _ = writeln!(
                out,
                "weft_encryption_connections{{mode=\"{}\"}} {n}",
                mode.as_str()
            );
        }

        header(
            &mut out,
            "weft_peers",
            "gauge",
            "Peers known to this router, itself included.",
        );
        let _ = writeln!(out, "weft_peers {}", status.peers.len());

        header(
            &mut out,
            "weft_gossip_bytes_total",
            "counter",
            "Gossip bytes by direction.",
        );
        for dir in [GossipDirection::Received, GossipDirection::Sent] {
            let v = load(&c.gossip_bytes[dir as usize]);
            let _ = writeln!(
                out,
                "weft_gossip_bytes_total{{direction=\"{}\"}} {v}",
                dir.as_str()
            );
        }

        header(
            &mut out,
            "weft_handshake_failures_total",
            "counter",
            "Failed control-connection handshakes by reason.",
        );
        for reason in HandshakeFailure::ALL {
            let v = load(&c.handshake_failures[reason as usize]);
            let _ = writeln!(
                out,
                "weft_handshake_failures_total{{reason=\"{}\"}} {v}",
                reason.as_str()
            );
        }

        header(
            &mut out,
            "weft_connections_refused_total",
            "counter",
            "Control connections closed before the handshake, by reason (not_a_node: with \
             Kubernetes discovery and no password, the source is no Node's address nor a named \
             peer).",
        );
        let _ = writeln!(
            out,
            "weft_connections_refused_total{{reason=\"not_a_node\"}} {}",
            load(&c.refused_not_a_node)
        );

        header(
            &mut out,
            "weft_http_connections_closed_total",
            "counter",
            "Connections to the router's API or metrics server that weft closed: limit (every \
             slot taken, the oldest made room), timeout (no complete request head in time).",
        );
        for server in HttpServer::ALL {
            for why in HttpClosed::ALL {
                let _ = writeln!(
                    out,
                    "weft_http_connections_closed_total{{server=\"{}\",reason=\"{}\"}} {}",
                    server.as_str(),
                    why.as_str(),
                    load(&c.http_closed[server as usize][why as usize])
                );
            }
        }

        header(
            &mut out,
            "weft_nft_sync_errors_total",
            "counter",
            "Reconciles of weft's nftables rules the kernel refused or that failed.",
        );
        let _ = writeln!(
            out,
            "weft_nft_sync_errors_total {}",
            load(&c.nft_sync_errors)
        );
        header(
            &mut out,
            "weft_nft_rules_in_place",
            "gauge",
            "1 when the kernel holds exactly weft's wanted nftables rules, 0 when not.",
        );
        let in_place = status.netfilter.as_ref().is_some_and(|n| n.in_place);
        let _ = writeln!(out, "weft_nft_rules_in_place {}", u8::from(in_place));
        header(
            &mut out,
            "weft_tunnel_dropped_total",
            "counter",
            "Datagrams to the sleeve or VXLAN port dropped because their source is no mesh peer \
             (read at each reconcile of weft's nftables table).",
        );
        let drops = status.netfilter.as_ref().map_or(0, |n| n.tunnel_drops);
        let _ = writeln!(out, "weft_tunnel_dropped_total {drops}");

        if let Some(p) = status.netfilter.as_ref().and_then(|n| n.policy.as_ref()) {
            self.render_policy(&mut out, p);
        }

        header(
            &mut out,
            "weft_forwarded_frames_total",
            "counter",
            "Frames forwarded to peers by data path.",
        );
        for dp in Datapath::ALL {
            let v = load(&c.forwarded_frames[datapath_index(dp)]);
            let _ = writeln!(
                out,
                "weft_forwarded_frames_total{{datapath=\"{}\"}} {v}",
                dp.as_str()
            );
        }

        header(
            &mut out,
            "weft_forwarded_bytes_total",
            "counter",
            "Frame bytes forwarded to peers by data path.",
        );
        for dp in Datapath::ALL {
            let v = load(&c.forwarded_bytes[datapath_index(dp)]);
            let _ = writeln!(
                out,
                "weft_forwarded_bytes_total{{datapath=\"{}\"}} {v}",
                dp.as_str()
            );
        }

        header(
            &mut out,
            "weft_dropped_frames_total",
            "counter",
            "Frames dropped by reason.",
        );
        for reason in DropReason::ALL {
            let v = load(&c.dropped_frames[reason as usize]);
            let _ = writeln!(
                out,
                "weft_dropped_frames_total{{reason=\"{}\"}} {v}",
                reason.as_str()
            );
        }
        if let Some(ipam) = &status.ipam {
            header(
                &mut out,
                "weft_ipam_conflicting_addresses",
                "gauge",
                "Addresses this router allocated that another router may also hold.",
            );
            let _ = writeln!(out, "weft_ipam_conflicting_addresses {}", ipam.conflicting);
        }

        header(
            &mut out,
            "weft_fastdp_probes_total",
            "counter",
            "fastdp probes (VXLAN-encapsulated ARP requests) by result.",
        );
        let _ = writeln!(
            out,
            "weft_fastdp_probes_total{{result=\"sent\"}} {}",
            load(&c.fastdp[FastdpCounter::ProbeSent as usize])
        );
        let _ = writeln!(
            out,
            "weft_fastdp_probes_total{{result=\"answered\"}} {}",
            load(&c.fastdp[FastdpCounter::ProbeAnswered as usize])
        );
        header(
            &mut out,
            "weft_datapath_switches_total",
            "counter",
            "Peers moved between fastdp and the sleeve, by the path moved to.",
        );
        let _ = writeln!(
            out,
            "weft_datapath_switches_total{{to=\"fastdp\"}} {}",
            load(&c.fastdp[FastdpCounter::SwitchToFastdp as usize])
        );
        let _ = writeln!(
            out,
            "weft_datapath_switches_total{{to=\"sleeve\"}} {}",
            load(&c.fastdp[FastdpCounter::SwitchToSleeve as usize])
        );
        out
    }
}

impl Metrics {
    /// The NetworkPolicy metrics (with `--network-policy on`).
    fn render_policy(&self, out: &mut String, p: &crate::policy::PolicyStatus) {
        header(
            out,
            "weft_policy_dropped_packets_total",
            "counter",
            "New connections' packets NetworkPolicy dropped, by the direction whose rules \
             dropped them (held: before the first sync after a boot); read at each reconcile.",
        );
        for (direction, n) in [
            ("egress", p.dropped_egress),
            ("ingress", p.dropped_ingress),
            ("held", p.dropped_held),
        ] {
            let _ = writeln!(
                out,
                "weft_policy_dropped_packets_total{{direction=\"{direction}\"}} {n}"
            );
        }
        header(
            out,
            "weft_policy_enforced",
            "gauge",
            "1 when the kernel holds the rules of the current cluster view and bridged traffic \
             meets them.",
        );
        let enforced = p.state == crate::policy::PolicyState::Enforcing;
        let _ = writeln!(out, "weft_policy_enforced {}", u8::from(enforced));
        header(
            out,
            "weft_policy_rules",
            "gauge",
            "Rules of weft's NetworkPolicy chains.",
        );
        let _ = writeln!(out, "weft_policy_rules {}", p.rules);
        header(
            out,
            "weft_policy_sets",
            "gauge",
            "Address sets of weft's NetworkPolicy rules.",
        );
        let _ = writeln!(out, "weft_policy_sets {}", p.sets);
        header(
            out,
            "weft_policy_sync_seconds",
            "histogram",
            "Time from a cluster view change to its rules in the kernel.",
        );
        let c = &self.inner.policy_sync;
        let mut cumulative = 0;
        for (i, le) in SYNC_BUCKETS.iter().enumerate() {
            cumulative += load(&c[i]);
            let _ = writeln!(
                out,
                "weft_policy_sync_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += load(&c[SYNC_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "weft_policy_sync_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = load(&c[SYNC_BUCKETS.len() + 1]) as f64 / 1e6;
        let _ = writeln!(out, "weft_policy_sync_seconds_sum {sum}");
        let _ = writeln!(out, "weft_policy_sync_seconds_count {cumulative}");
    }
}

impl GossipDirection {
    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Sent => "sent",
        }
    }
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [Self; 6] = [
        Self::Auth,
        Self::Io,
        Self::Malformed,
        Self::ProtocolVersion,
        Self::SelfConnect,
        Self::Timeout,
    ];

    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Io => "io",
            Self::Malformed => "malformed",
            Self::ProtocolVersion => "protocol_version",
            Self::SelfConnect => "self_connect",
            Self::Timeout => "timeout",
        }
    }
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 7] = [
        Self::Decrypt,
        Self::Malformed,
        Self::NoRoute,
        Self::QueueFull,
        Self::Replay,
        Self::TooBig,
        Self::UnknownPeer,
    ];

    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decrypt => "decrypt",
            Self::Malformed => "malformed",
            Self::NoRoute => "no_route",
            Self::QueueFull => "queue_full",
            Self::Replay => "replay",
            Self::TooBig => "too_big",
            Self::UnknownPeer => "unknown_peer",
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    gossip_bytes: [AtomicU64; 2],
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    forwarded_frames: [AtomicU64; Datapath::ALL.len()],
    forwarded_bytes: [AtomicU64; Datapath::ALL.len()],
    dropped_frames: [AtomicU64; DropReason::ALL.len()],
    /// fastdp: probes sent, probes answered, switches to fastdp, switches to the sleeve.
    fastdp: [AtomicU64; 4],
    /// Reconciles of weft's nftables rules that failed.
    nft_sync_errors: AtomicU64,
    /// Control connections closed before the handshake: the source is no Node nor named peer.
    refused_not_a_node: AtomicU64,
    /// Local HTTP connections closed by weft, by server and reason.
    http_closed: [[AtomicU64; HttpClosed::ALL.len()]; HttpServer::ALL.len()],
    /// NetworkPolicy sync latency: per bucket of [`SYNC_BUCKETS`] (and +Inf), then the sum in
    /// microseconds.
    policy_sync: [AtomicU64; SYNC_BUCKETS.len() + 2],
}

/// Upper bounds (seconds) of the policy sync latency histogram's buckets.
const SYNC_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// One of the router's local HTTP servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpServer {
    /// The API (unix socket and HTTP address).
    Api = 0,
    /// The metrics address.
    Metrics = 1,
}

impl HttpServer {
    /// Both, in label order.
    pub const ALL: [Self; 2] = [Self::Api, Self::Metrics];

    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Metrics => "metrics",
        }
    }
}

/// Why weft closed a local HTTP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpClosed {
    /// Every slot was taken: the oldest connection made room for a new one.
    Limit = 0,
    /// No complete request head in time (a slow or idle client).
    Timeout = 1,
}

impl HttpClosed {
    /// Every reason, in label order.
    pub const ALL: [Self; 2] = [Self::Limit, Self::Timeout];

    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Timeout => "timeout",
        }
    }
}

/// A fastdp counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastdpCounter {
    /// A probe was sent.
    ProbeSent = 0,
    /// A probe was answered.
    ProbeAnswered = 1,
    /// A peer moved onto fastdp.
    SwitchToFastdp = 2,
    /// A peer moved to the sleeve.
    SwitchToSleeve = 3,
}

fn datapath_index(datapath: Datapath) -> usize {
    match datapath {
        Datapath::Fastdp => 0,
        Datapath::Sleeve => 1,
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value per the exposition format (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use super::*;

    fn rendered() -> String {
        let metrics = Metrics::new();
        metrics.add_gossip_bytes(GossipDirection::Sent, 1200);
        metrics.add_gossip_bytes(GossipDirection::Received, 800);
        metrics.inc_handshake_failure(HandshakeFailure::Auth);
        metrics.add_forwarded(Datapath::Sleeve, 3, 4500);
        metrics.add_dropped(DropReason::Replay, 2);
        let mut status = crate::status_text::tests::sample_status();
        status.ipam = Some(crate::status_text::tests::sample_ipam());
        metrics.render(&status)
    }

    #[test]
    fn counters_and_gauges_appear() {
        let text = rendered();
        for line in [
            "weft_connections{state=\"established\"} 2",
            "weft_connections{state=\"failed\"} 1",
            "weft_connections{state=\"pending\"} 0",
            "weft_peers 3",
            "weft_gossip_bytes_total{direction=\"sent\"} 1200",
            "weft_gossip_bytes_total{direction=\"received\"} 800",
            "weft_handshake_failures_total{reason=\"auth\"} 1",
            "weft_forwarded_frames_total{datapath=\"sleeve\"} 3",
            "weft_forwarded_bytes_total{datapath=\"sleeve\"} 4500",
            "weft_forwarded_frames_total{datapath=\"fastdp\"} 0",
            "weft_dropped_frames_total{reason=\"replay\"} 2",
            "weft_build_info{version=\"0.1.0\"} 1",
            "weft_ipam_conflicting_addresses 0",
            "weft_encryption_enabled 0",
            "weft_encryption_setting_version 0",
            "weft_encryption_connections{mode=\"sealed\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn every_sample_has_help_and_type() {
        let text = rendered();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// `promtool check metrics` must accept the output; CI installs promtool.
    #[test]
    fn promtool_accepts_output() {
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("note: promtool not on PATH; skipping `promtool check metrics`");
            }
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rendered().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
