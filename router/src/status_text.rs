//! Renders a [`RouterStatus`] as text in the layout of `weave status`.
//!
//! A Weave user must find each line where they expect it (DESIGN.md, "Defaults that follow
//! Weave"; reference: weave.md §8). The rules kept from Weave:
//!
//! - `status`: labels right-aligned so that the colon sits in column 16, the same lines in the
//!   same order, `weft` where Weave says `weave`; connection states counted in the order
//!   established, pending, retrying, failed, connecting, zeros left out.
//! - `status connections`: arrow, address padded to 21, state padded to 11, then the info.
//! - `status peers`: each peer, then its connections as it reports them, indented by three.
//! - `status targets`: one address per line.
//! - `status ipam`: owner padded to 37, count `%8d`, share of the range `%04.1f`.
//!
//! Where weft differs on purpose: connection attributes are separated by spaces (not Weave's
//! run-together `encrypted=truemtu=`), the `encrypted`/`unencrypted` column is always present,
//! the reason a peer is on its data path is shown as `reason="…"`, retry times are relative
//! (`retry: in 4.0s`), peers are listed in a fixed order (this router first, then by name), and
//! no line carries trailing spaces.
//!
//! This module only formats; it never reads the engine.

use crate::policy::{PolicyState, PolicyStatus};
use std::fmt::Write as _;

use crate::status::{
    ConnectionState, ConnectionStatus, IPAM_NOT_AVAILABLE, IpamStatus, PeerStatus, RouterStatus,
};

/// Renders the body of `GET /status` (`weft status`).
pub fn render_status(status: &RouterStatus) -> String {
    let mut out = String::new();
    label(&mut out, "Version", &status.version);
    out.push('\n');
    label(&mut out, "Service", "router");
    label(&mut out, "Protocol", &protocol(status));
    label(
        &mut out,
        "Name",
        &peer_label(&status.name, &status.nickname),
    );
    label(&mut out, "Encryption", &encryption_line(&status.encryption));
    label(&mut out, "PeerDiscovery", enabled(status.peer_discovery));
    label(&mut out, "Targets", &status.targets.len().to_string());
    label(
        &mut out,
        "Connections",
        &connections_summary(&status.connections),
    );
    label(&mut out, "Peers", &peers_summary(&status.peers));
    let trusted = if status.trusted_subnets.is_empty() {
        "none".to_owned()
    } else {
        status.trusted_subnets.join(",")
    };
    label(&mut out, "TrustedSubnets", &trusted);
    out.push('\n');
    label(&mut out, "Service", "ipam");
    match &status.ipam {
        Some(ipam) => {
            label(&mut out, "Status", &ipam.status);
            label(&mut out, "Range", &ipam.range);
            label(&mut out, "DefaultSubnet", &ipam.default_subnet);
        }
        None => label(&mut out, "Status", IPAM_NOT_AVAILABLE),
    }
    if let Some(nf) = &status.netfilter {
        out.push('\n');
        label(&mut out, "Service", "node");
        label(&mut out, "Rules", &rules_line(nf));
        label(&mut out, "Masquerade", enabled(nf.masquerade));
        label(
            &mut out,
            "Tunnels",
            &format!(
                "open to {} peer addresses; {} datagrams from others dropped",
                nf.tunnel_peers, nf.tunnel_drops
            ),
        );
        for chain in &nf.forward_drop {
            label(
                &mut out,
                "Warning",
                &format!("{chain} drops forwarded traffic by policy: pod traffic may be lost"),
            );
        }
        for warning in &nf.sysctl_warnings {
            label(&mut out, "Warning", warning);
        }
        if let Some(p) = &nf.policy {
            label(&mut out, "NetworkPolicy", &policy_line(p));
        }
    }
    if let Some(k) = &status.kubernetes {
        out.push('\n');
        label(&mut out, "Service", "kubernetes");
        label(&mut out, "API", &k.api);
        for w in &k.watches {
            let kinds = match w.kind.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{}s", w.kind),
            };
            label(&mut out, &kinds, &watch_line(w));
        }
        if let Some(c) = &k.cluster {
            label(
                &mut out,
                "ClusterView",
                &format!(
                    "revision {}: {} namespaces, {} pods ({} here), {} {}",
                    c.revision,
                    c.namespaces,
                    c.pods,
                    c.local_pods.len(),
                    c.policies,
                    if c.policies == 1 {
                        "policy"
                    } else {
                        "policies"
                    }
                ),
            );
        }
        if let Some(c) = &k.node_condition {
            label(&mut out, "NodeCondition", c);
        }
    }
    out
}

fn watch_line(w: &crate::kube::health::WatchStatus) -> String {
    let mut line = match (&w.error, w.synced) {
        (Some(e), _) => format!("{} (last view kept; retrying: {e})", w.objects),
        (None, true) => format!("{} (watching)", w.objects),
        (None, false) => "listing".to_owned(),
    };
    if w.skipped > 0 {
        line.push_str(&format!("; {} skipped as unusable", w.skipped));
    }
    line
}

/// One line for NetworkPolicy enforcement.
fn policy_line(p: &PolicyStatus) -> String {
    match p.state {
        PolicyState::Holding => {
            "holding: new pod connections dropped until the cluster view is listed".to_owned()
        }
        PolicyState::Kept => {
            "keeping the previous router's rules until the cluster view is listed".to_owned()
        }
        PolicyState::Enforcing => format!(
            "enforcing {} {} on {} of {} local pods",
            p.policies,
            if p.policies == 1 {
                "policy"
            } else {
                "policies"
            },
            p.isolated_pods,
            p.local_pods
        ),
        PolicyState::NotEnforced => format!(
            "NOT ENFORCED: {}",
            p.error.as_deref().unwrap_or("unknown reason")
        ),
    }
}

/// Renders the body of `GET /status/policy`: NetworkPolicy enforcement on this node.
pub fn render_policy(status: &RouterStatus) -> String {
    let Some(p) = status.netfilter.as_ref().and_then(|n| n.policy.as_ref()) else {
        return "NetworkPolicy: off (--network-policy off, or no Kubernetes API)\n".to_owned();
    };
    let mut out = String::new();
    label(&mut out, "NetworkPolicy", &policy_line(p));
    if let Some(revision) = p.revision {
        label(&mut out, "Revision", &revision.to_string());
    }
    label(
        &mut out,
        "Rules",
        &format!("{} rules, {} address sets", p.rules, p.sets),
    );
    if let Some(at) = p.last_sync_unix_ms {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ago = now.saturating_sub(at) / 1000;
        let lag = p
            .last_sync_lag_ms
            .map_or_else(String::new, |l| format!(", {l} ms after the change"));
        label(&mut out, "LastSync", &format!("{ago} s ago{lag}"));
    }
    label(
        &mut out,
        "Dropped",
        &format!(
            "{} egress, {} ingress, {} held (packets of new connections)",
            p.dropped_egress, p.dropped_ingress, p.dropped_held
        ),
    );
    out
}

fn rules_line(nf: &crate::nft::NetfilterStatus) -> String {
    let rules = match nf.rules {
        1 => "1 rule".to_owned(),
        n => format!("{n} rules"),
    };
    match (&nf.error, nf.in_place) {
        (Some(e), _) => format!("not in place ({rules} wanted): {e}"),
        (None, true) => format!("in place ({rules})"),
        (None, false) => format!("pending ({rules} wanted)"),
    }
}

/// Renders the body of `GET /status/connections`: one line per connection.
pub fn render_connections(status: &RouterStatus) -> String {
    let mut out = String::new();
    for conn in &status.connections {
        connection_line(&mut out, conn);
    }
    out
}

/// Renders the body of `GET /status/peers`: every peer, then its connections as it reports
/// them. This router comes first, then the others by name.
pub fn render_peers(status: &RouterStatus) -> String {
    let mut peers: Vec<&PeerStatus> = status.peers.iter().collect();
    peers.sort_by(|a, b| (a.name != status.name, &a.name).cmp(&(b.name != status.name, &b.name)));
    let mut out = String::new();
    for peer in peers {
        out.push_str(&peer_label(&peer.name, &peer.nickname));
        out.push('\n');
        for conn in &peer.connections {
            let remote = peer_label(&conn.remote_name, &conn.remote_nickname);
            let state = if conn.established {
                "established"
            } else {
                "pending"
            };
            // Formatting into a String cannot fail.
            let _ = writeln!(
                out,
                "   {} {:<21} {:<37} {}",
                arrow(conn.outbound),
                conn.addr,
                remote,
                state
            );
        }
    }
    out
}

/// Renders the body of `GET /status/targets`: one address per line, as given.
pub fn render_targets(status: &RouterStatus) -> String {
    let mut out = String::new();
    for target in &status.targets {
        out.push_str(&target.addr);
        out.push('\n');
    }
    out
}

/// Renders the body of `GET /status/ipam`: each owner's share of the range, this router first.
pub fn render_ipam(ipam: &IpamStatus) -> String {
    let mut out = String::new();
    for owner in &ipam.owners {
        let share = if ipam.range_num_ips == 0 {
            0.0
        } else {
            // Precision loss above 2^52 addresses does not matter for a percentage.
            #[allow(clippy::cast_precision_loss)]
            let share = owner.ips as f64 * 100.0 / ipam.range_num_ips as f64;
            share
        };
        let info = match (owner.active, owner.reachable) {
            (Some(active), _) => format!(" ({active} active)"),
            (None, false) => " - unreachable!".to_owned(),
            (None, true) => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<37} {:>8} IPs ({:04.1}% of total){}",
            peer_label(&owner.name, &owner.nickname),
            owner.ips,
            share,
            info
        );
    }
    for note in &ipam.notes {
        let _ = writeln!(out, "! {note}");
    }
    out
}

/// Formats a peer as `aa:bb:cc:dd:ee:ff(nickname)`, or the bare name without a nickname.
pub fn peer_label(name: &str, nickname: &str) -> String {
    if nickname.is_empty() {
        name.to_owned()
    } else {
        format!("{name}({nickname})")
    }
}

/// Writes `label: value` with the colon in column 16.
fn label(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "{label:>LABEL_WIDTH$}: {value}");
}

fn protocol(status: &RouterStatus) -> String {
    let p = &status.protocol;
    if p.min_version == p.max_version {
        format!("{} {}", p.name, p.min_version)
    } else {
        format!("{} {}..{}", p.name, p.min_version, p.max_version)
    }
}

/// `enabled` or `disabled` as Weave prints it, plus the change-over while one is under way.
fn encryption_line(enc: &crate::status::EncryptionStatus) -> String {
    let word = enabled(enc.enabled);
    let changing = enc
        .connections
        .iter()
        .filter(|c| c.mode == crate::status::EncryptionMode::Changing)
        .count();
    if changing == 0 {
        word.to_owned()
    } else {
        format!(
            "{word} (changing over: {changing} of {} connections)",
            enc.connections.len()
        )
    }
}

fn enabled(on: bool) -> &'static str {
    if on { "enabled" } else { "disabled" }
}

fn arrow(outbound: bool) -> &'static str {
    if outbound { "->" } else { "<-" }
}

fn connections_summary(connections: &[ConnectionStatus]) -> String {
    let counts: Vec<String> = ConnectionState::STATUS_ORDER
        .iter()
        .filter_map(|&state| {
            let n = connections.iter().filter(|c| c.state == state).count();
            (n > 0).then(|| format!("{n} {}", state.as_str()))
        })
        .collect();
    if counts.is_empty() {
        connections.len().to_string()
    } else {
        format!("{} ({})", connections.len(), counts.join(", "))
    }
}

fn peers_summary(peers: &[PeerStatus]) -> String {
    let all = peers.iter().flat_map(|p| p.connections.iter());
    let established = all.clone().filter(|c| c.established).count();
    let pending = all.filter(|c| !c.established).count();
    let counts: Vec<String> = [(established, "established"), (pending, "pending")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, word)| format!("{n} {word}"))
        .collect();
    if counts.is_empty() {
        peers.len().to_string()
    } else {
        format!("{} (with {} connections)", peers.len(), counts.join(", "))
    }
}

fn connection_line(out: &mut String, conn: &ConnectionStatus) {
    let mut line = String::new();
    connection_fields(&mut line, conn);
    out.push_str(line.trim_end());
    out.push('\n');
}

fn connection_fields(out: &mut String, conn: &ConnectionStatus) {
    let _ = write!(
        out,
        "{} {:<21} {:<11}",
        arrow(conn.outbound),
        conn.remote_addr,
        conn.state.as_str()
    );
    let live = matches!(
        conn.state,
        ConnectionState::Established | ConnectionState::Pending
    );
    if live {
        let name = conn.remote_name.as_deref().unwrap_or("unknown");
        let nickname = conn.remote_nickname.as_deref().unwrap_or("");
        let datapath = conn.datapath.map_or("none", |d| d.as_str());
        let encryption = if conn.encrypted {
            "encrypted"
        } else {
            "unencrypted"
        };
        let _ = write!(
            out,
            " {encryption:<11} {datapath:<6} {}",
            peer_label(name, nickname)
        );
        if let Some(mtu) = conn.mtu {
            let _ = write!(out, " mtu={mtu}");
        }
        if let Some(reason) = &conn.datapath_reason {
            let _ = write!(out, " reason=\"{reason}\"");
        }
    } else {
        let mut info = conn.last_error.clone().unwrap_or_default();
        if conn.state == ConnectionState::Failed {
            let retry = match conn.next_attempt_in_ms {
                Some(ms) => format!("retry: in {}", seconds(ms)),
                None => "retry: never".to_owned(),
            };
            info = if info.is_empty() {
                retry
            } else {
                format!("{info}, {retry}")
            };
        }
        if !info.is_empty() {
            out.push(' ');
            out.push_str(&info);
        }
    }
}

/// Formats milliseconds as seconds with one decimal, `4.0s`.
fn seconds(ms: u64) -> String {
    format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
}

/// Width of the right-aligned labels: the colon lands in column 16 (1-based).
const LABEL_WIDTH: usize = 15;

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
pub(crate) mod tests {
    use super::*;
    use crate::status::{
        Datapath, EncryptionStatus, IpamOwner, PeerConnStatus, ProtocolStatus, RouteStatus,
        TargetState, TargetStatus,
    };

    /// The sample committed as docs/status-sample.txt.
    const SAMPLE: &str = include_str!("../../docs/status-sample.txt");

    /// A fixed three-peer status with every connection state, used for the committed sample.
    pub(crate) fn sample_status() -> RouterStatus {
        let h1 = "0a:00:00:00:00:01";
        let h2 = "0a:00:00:00:00:02";
        let h3 = "0a:00:00:00:00:03";
        let conn = |name: &str, nick: &str, addr: &str, outbound: bool| PeerConnStatus {
            remote_name: name.to_owned(),
            remote_nickname: nick.to_owned(),
            addr: addr.to_owned(),
            outbound,
            established: true,
        };
        let target = |addr: &str, state, err: Option<&str>, attempts, next| TargetStatus {
            addr: addr.to_owned(),
            state,
            last_error: err.map(str::to_owned),
            attempts,
            next_attempt_in_ms: next,
        };
        let dialling = |addr: &str, state, err: Option<&str>, next| ConnectionStatus {
            outbound: true,
            remote_addr: addr.to_owned(),
            remote_name: None,
            remote_nickname: None,
            state,
            last_error: err.map(str::to_owned),
            next_attempt_in_ms: next,
            datapath: None,
            datapath_reason: None,
            encrypted: false,
            mtu: None,
            path_mtu: None,
        };
        let refused = "dial tcp 192.0.2.14:6783: connection refused";
        let unreachable = "dial tcp 192.0.2.15:6783: no route to host";
        RouterStatus {
            version: "0.1.0".to_owned(),
            ready: true,
            not_ready_reason: None,
            name: h1.to_owned(),
            nickname: "h1".to_owned(),
            protocol: ProtocolStatus {
                name: "weft".to_owned(),
                min_version: 1,
                max_version: 1,
            },
            port: 6783,
            encryption: EncryptionStatus {
                enabled: false,
                password_set: false,
                version: 0,
                origin: String::new(),
                local_origin: String::new(),
                changes: 0,
                rejected: 0,
                connections: Vec::new(),
            },
            peer_discovery: true,
            trusted_subnets: Vec::new(),
            targets: vec![
                target("198.51.100.3", TargetState::Pending, None, 1, None),
                target(
                    "192.0.2.14:6783",
                    TargetState::Failed,
                    Some(refused),
                    3,
                    Some(4000),
                ),
                target(
                    "192.0.2.15:6783",
                    TargetState::Retrying,
                    Some(unreachable),
                    2,
                    None,
                ),
                target("192.0.2.16:6783", TargetState::Connecting, None, 1, None),
            ],
            connections: vec![
                ConnectionStatus {
                    outbound: false,
                    remote_addr: "198.51.100.2:39775".to_owned(),
                    remote_name: Some(h2.to_owned()),
                    remote_nickname: Some("h2".to_owned()),
                    state: ConnectionState::Established,
                    last_error: None,
                    next_attempt_in_ms: None,
                    datapath: Some(Datapath::Sleeve),
                    datapath_reason: Some("no answer to VXLAN probes on UDP 6784".to_owned()),
                    encrypted: false,
                    mtu: Some(1376),
                    path_mtu: None,
                },
                ConnectionStatus {
                    outbound: true,
                    remote_addr: "198.51.100.3:6783".to_owned(),
                    remote_name: Some(h3.to_owned()),
                    remote_nickname: Some("h3".to_owned()),
                    state: ConnectionState::Established,
                    last_error: None,
                    next_attempt_in_ms: None,
                    datapath: Some(Datapath::Fastdp),
                    datapath_reason: None,
                    encrypted: false,
                    mtu: Some(1376),
                    path_mtu: None,
                },
                dialling(
                    "192.0.2.14:6783",
                    ConnectionState::Failed,
                    Some(refused),
                    Some(4000),
                ),
                dialling(
                    "192.0.2.15:6783",
                    ConnectionState::Retrying,
                    Some(unreachable),
                    None,
                ),
                dialling("192.0.2.16:6783", ConnectionState::Connecting, None, None),
            ],
            peers: vec![
                PeerStatus {
                    name: h3.to_owned(),
                    nickname: "h3".to_owned(),
                    uid: 3,
                    version: 4,
                    connections: vec![conn(h1, "h1", "198.51.100.1:41234", false)],
                },
                PeerStatus {
                    name: h1.to_owned(),
                    nickname: "h1".to_owned(),
                    uid: 1,
                    version: 5,
                    connections: vec![
                        conn(h2, "h2", "198.51.100.2:39775", false),
                        conn(h3, "h3", "198.51.100.3:6783", true),
                    ],
                },
                PeerStatus {
                    name: h2.to_owned(),
                    nickname: "h2".to_owned(),
                    uid: 2,
                    version: 3,
                    connections: vec![PeerConnStatus {
                        established: false,
                        ..conn(h1, "h1", "198.51.100.1:6783", true)
                    }],
                },
            ],
            routes: vec![
                RouteStatus {
                    destination: h2.to_owned(),
                    next_hop: h2.to_owned(),
                },
                RouteStatus {
                    destination: h3.to_owned(),
                    next_hop: h3.to_owned(),
                },
            ],
            ipam: None,
            datapaths: None,
            sleeve: None,
            netfilter: None,
            kubernetes: None,
        }
    }

    /// Renders what the committed sample holds: each command's output under a `$` line.
    fn sample_text(status: &RouterStatus) -> String {
        let sections = [
            ("weft status", format!("\n{}\n", render_status(status))),
            ("weft status connections", render_connections(status)),
            ("weft status peers", render_peers(status)),
            ("weft status targets", render_targets(status)),
        ];
        let mut out = String::from(SAMPLE_HEADER);
        for (cmd, body) in sections {
            let _ = write!(out, "\n$ {cmd}\n{body}");
        }
        out
    }

    const SAMPLE_HEADER: &str = "\
# Output of weft's status commands for a fixed three-peer status (router/src/status_text.rs,
# `sample_status`). The unit test `sample_matches_committed_file` compares it byte for byte;
# regenerate with WEFT_UPDATE_SAMPLE=1 cargo test -p weft-router sample_matches.
";

    #[test]
    fn sample_matches_committed_file() {
        let text = sample_text(&sample_status());
        if std::env::var_os("WEFT_UPDATE_SAMPLE").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/status-sample.txt");
            std::fs::write(path, &text).unwrap();
            return;
        }
        assert_eq!(text, SAMPLE, "docs/status-sample.txt is out of date");
    }

    #[test]
    fn every_label_has_its_colon_in_column_16() {
        let mut status = sample_status();
        for text in [render_status(&status), {
            status.trusted_subnets = vec!["10.0.0.0/8".to_owned(), "192.0.2.0/24".to_owned()];
            status.ipam = Some(sample_ipam());
            render_status(&status)
        }] {
            let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            assert!(lines.len() >= 12, "{text}");
            for line in lines {
                assert_eq!(line.find(':'), Some(15), "colon not in column 16: {line:?}");
                assert_eq!(&line[16..17], " ", "{line:?}");
            }
        }
    }

    #[test]
    fn status_has_weaves_lines_in_weaves_order() {
        let text = render_status(&sample_status());
        let labels: Vec<&str> = text
            .lines()
            .map(|l| l.split(':').next().unwrap().trim())
            .collect();
        assert_eq!(
            labels,
            [
                "Version",
                "",
                "Service",
                "Protocol",
                "Name",
                "Encryption",
                "PeerDiscovery",
                "Targets",
                "Connections",
                "Peers",
                "TrustedSubnets",
                "",
                "Service",
                "Status"
            ]
        );
        assert!(
            text.contains(
                "    Connections: 5 (2 established, 1 retrying, 1 failed, 1 connecting)\n"
            )
        );
        assert!(text.contains("          Peers: 3 (with 3 established, 1 pending connections)\n"));
        assert!(text.contains("         Status: not available yet: provided by the IPAM work\n"));
    }

    #[test]
    fn empty_router_has_bare_counts() {
        let text = render_status(&RouterStatus::starting("0a:00:00:00:00:09", "", 6783));
        assert!(text.contains("           Name: 0a:00:00:00:00:09\n"));
        assert!(text.contains("       Protocol: weft 1\n"));
        assert!(text.contains("    Connections: 0\n"));
        assert!(text.contains("          Peers: 0\n"));
        assert!(text.contains(" TrustedSubnets: none\n"));
        assert!(render_connections(&RouterStatus::starting("x", "", 1)).is_empty());
    }

    /// weave's own peers output (weave-status-samples.txt, wv-h1) renders identically.
    #[test]
    fn peers_match_weave_layout() {
        let weave = "\
0a:00:00:00:00:01(wv-h1)
   <- 198.51.100.2:39775    0a:00:00:00:00:02(wv-h2)              established
0a:00:00:00:00:02(wv-h2)
   -> 198.51.100.1:6783     0a:00:00:00:00:01(wv-h1)              established
";
        let peer = |me: u8, other: u8, addr: &str, outbound| PeerStatus {
            name: format!("0a:00:00:00:00:0{me}"),
            nickname: format!("wv-h{me}"),
            uid: 0,
            version: 0,
            connections: vec![PeerConnStatus {
                remote_name: format!("0a:00:00:00:00:0{other}"),
                remote_nickname: format!("wv-h{other}"),
                addr: addr.to_owned(),
                outbound,
                established: true,
            }],
        };
        let mut status = RouterStatus::starting("0a:00:00:00:00:01", "wv-h1", 6783);
        status.peers = vec![
            peer(2, 1, "198.51.100.1:6783", true),
            peer(1, 2, "198.51.100.2:39775", false),
        ];
        assert_eq!(render_peers(&status), weave);
    }

    /// weave's connection line without a password differs only by the encryption column.
    #[test]
    fn connection_line_keeps_weave_columns() {
        let status = sample_status();
        let line = render_connections(&status)
            .lines()
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            line,
            "<- 198.51.100.2:39775    established unencrypted sleeve 0a:00:00:00:00:02(h2) \
             mtu=1376 reason=\"no answer to VXLAN probes on UDP 6784\""
        );
        let weave = "<- 198.51.100.2:39775    established sleeve";
        assert_eq!(line.replace("unencrypted ", "")[..weave.len()], *weave);
    }

    pub(crate) fn sample_ipam() -> IpamStatus {
        IpamStatus {
            status: "ready".to_owned(),
            range: "10.32.0.0/12".to_owned(),
            default_subnet: "10.32.0.0/12".to_owned(),
            range_num_ips: 1_048_576,
            owners: vec![
                IpamOwner {
                    name: "0a:00:00:00:00:01".to_owned(),
                    nickname: "wv-h1".to_owned(),
                    ips: 524_288,
                    active: Some(1),
                    reachable: true,
                },
                IpamOwner {
                    name: "0a:00:00:00:00:02".to_owned(),
                    nickname: "wv-h2".to_owned(),
                    ips: 471_859,
                    active: None,
                    reachable: true,
                },
                IpamOwner {
                    name: "0a:00:00:00:00:03".to_owned(),
                    nickname: "wv-h3".to_owned(),
                    ips: 52_429,
                    active: None,
                    reachable: false,
                },
            ],
            notes: Vec::new(),
            conflicting: 0,
        }
    }

    #[test]
    fn ipam_matches_weave_layout() {
        assert_eq!(
            render_ipam(&sample_ipam()),
            "\
0a:00:00:00:00:01(wv-h1)                524288 IPs (50.0% of total) (1 active)
0a:00:00:00:00:02(wv-h2)                471859 IPs (45.0% of total)
0a:00:00:00:00:03(wv-h3)                 52429 IPs (05.0% of total) - unreachable!
"
        );
        let mut with_notes = sample_ipam();
        with_notes.notes =
            vec!["2 allocated address(es) now in ranges another peer took over".to_owned()];
        assert!(render_ipam(&with_notes).ends_with(
            "unreachable!\n! 2 allocated address(es) now in ranges another peer took over\n"
        ));
    }

    #[test]
    fn protocol_range_and_trusted_subnets() {
        let mut status = sample_status();
        status.protocol.max_version = 2;
        status.trusted_subnets = vec!["10.0.0.0/8".to_owned(), "192.0.2.0/24".to_owned()];
        status.encryption.enabled = true;
        let text = render_status(&status);
        assert!(text.contains("       Protocol: weft 1..2\n"));
        assert!(text.contains(" TrustedSubnets: 10.0.0.0/8,192.0.2.0/24\n"));
        assert!(text.contains("     Encryption: enabled\n"));
    }

    #[test]
    fn no_line_has_trailing_space() {
        let text = sample_text(&sample_status());
        for line in text.lines() {
            assert_eq!(line, line.trim_end(), "trailing space: {line:?}");
        }
    }

    #[test]
    fn seconds_formats_tenths() {
        assert_eq!(seconds(4000), "4.0s");
        assert_eq!(seconds(1250), "1.2s");
        assert_eq!(seconds(99), "0.0s");
    }
}
