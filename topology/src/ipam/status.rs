//! `weft status ipam` and the `Service: ipam` block of `weft status`, in weave's layout
//! (reference/weave.md §8.1 and §8.5).

use std::fmt::Write as _;

use crate::peer::PeerName;

/// What `weft status ipam` shows. JSON-friendly; the daemon fills in nicknames.
#[derive(Clone, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub struct IpamStatus {
    /// One line: `ready`, `awaiting consensus (quorum: 3, known: 2)`, `idle`, or what
    /// allocation waits for.
    pub status: String,
    /// The range, e.g. `10.32.0.0/12`.
    pub range: String,
    /// The default subnet (the range).
    pub default_subnet: String,
    /// Addresses in the range.
    pub range_num_ips: u64,
    /// Owners: this router first, then the others by name. Empty without a ring.
    pub owners: Vec<OwnerStatus>,
    /// Allocations waiting for space or consensus.
    pub pending: usize,
    /// Conflicts and refused peers, one sentence each.
    pub notes: Vec<String>,
    /// Our allocations that may be held twice: inside ranges another peer took over, or also
    /// held by a peer whose range was taken over (docs/IPAM.md, "Reclaiming").
    #[serde(default)]
    pub conflicting: u64,
}

/// One owner's share.
#[derive(Clone, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub struct OwnerStatus {
    /// The owner.
    pub name: PeerName,
    /// Its nickname, filled in by the daemon (empty if unknown).
    pub nickname: String,
    /// Addresses owned.
    pub ips: u64,
    /// Addresses in use; known for this router only.
    pub active: Option<u64>,
    /// False when the owner is not in the topology.
    pub reachable: bool,
}

/// Renders `weft status ipam`: `name(nick)` padded to 37, the count in 8 columns, the share
/// with one decimal, then `(N active)` for this router or `- unreachable!`. Notes follow,
/// each on a line starting with `! `.
pub fn render_status_ipam(status: &IpamStatus) -> String {
    let mut out = String::new();
    for o in &status.owners {
        let label = if o.nickname.is_empty() {
            o.name.to_string()
        } else {
            format!("{}({})", o.name, o.nickname)
        };
        // Precision loss above 2^52 addresses does not matter for a percentage.
        #[allow(clippy::cast_precision_loss)]
        let share = if status.range_num_ips == 0 {
            0.0
        } else {
            o.ips as f64 * 100.0 / status.range_num_ips as f64
        };
        let info = match (o.active, o.reachable) {
            (Some(n), _) => format!("({n} active)"),
            (None, false) => "- unreachable!".to_owned(),
            (None, true) => String::new(),
        };
        let _ = writeln!(
            out,
            "{label:<37} {:>8} IPs ({share:04.1}% of total) {info}",
            o.ips
        );
    }
    for n in &status.notes {
        let _ = writeln!(out, "! {n}");
    }
    out
}

/// Renders the `Service: ipam` block of `weft status` (labels with the colon in column 16).
pub fn render_service_lines(status: &IpamStatus) -> String {
    let mut out = String::new();
    for (label, value) in [
        ("Service", "ipam"),
        ("Status", status.status.as_str()),
        ("Range", status.range.as_str()),
        ("DefaultSubnet", status.default_subnet.as_str()),
    ] {
        let _ = writeln!(out, "{label:>15}: {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_weave_layout() {
        let st = IpamStatus {
            status: "ready".into(),
            range: "10.32.0.0/12".into(),
            default_subnet: "10.32.0.0/12".into(),
            range_num_ips: 1_048_576,
            owners: vec![
                OwnerStatus {
                    name: "0a:00:00:00:00:01".parse().unwrap(),
                    nickname: "wv-h1".into(),
                    ips: 524_288,
                    active: Some(1),
                    reachable: true,
                },
                OwnerStatus {
                    name: "0a:00:00:00:00:02".parse().unwrap(),
                    nickname: "wv-h2".into(),
                    ips: 524_288,
                    active: None,
                    reachable: true,
                },
                OwnerStatus {
                    name: "0a:00:00:00:00:03".parse().unwrap(),
                    nickname: String::new(),
                    ips: 0,
                    active: None,
                    reachable: false,
                },
            ],
            pending: 0,
            notes: vec![],
            conflicting: 0,
        };
        assert_eq!(
            render_status_ipam(&st),
            "0a:00:00:00:00:01(wv-h1)                524288 IPs (50.0% of total) (1 active)\n\
             0a:00:00:00:00:02(wv-h2)                524288 IPs (50.0% of total) \n\
             0a:00:00:00:00:03                            0 IPs (00.0% of total) - unreachable!\n"
        );
        assert_eq!(
            render_service_lines(&st),
            "        Service: ipam\n         Status: ready\n          Range: 10.32.0.0/12\n  \
             DefaultSubnet: 10.32.0.0/12\n"
        );
    }
}
