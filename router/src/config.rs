//! The router's configuration, as `weft router`'s flags produce it.
//!
//! Holds paths and settings only: never key material. The password file is read by whoever
//! needs the password, and its contents never enter this struct, its `Debug` output or a log.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// Everything `weft router` was told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Addresses to connect to (`host` or `host:port`), from `--peers`.
    pub peers: Vec<String>,
    /// A file of more addresses, re-read when it changes.
    pub peers_file: Option<PathBuf>,
    /// TCP control and UDP sleeve port.
    pub port: u16,
    /// UDP port of the kernel VXLAN device (fastdp).
    pub vxlan_port: u16,
    /// A file holding the mesh password; only its path is kept here.
    pub password_file: Option<PathBuf>,
    /// Whether sleeve traffic is sealed.
    pub encryption: bool,
    /// Subnets whose peers may carry traffic unencrypted.
    pub trusted_subnets: Vec<IpNet>,
    /// The IPAM range.
    pub ipalloc_range: IpNet,
    /// How long a peer must be gone before its IP space is reclaimed automatically (once the
    /// other owners agree); `None` leaves it to `weft rmpeer`.
    pub ipalloc_reclaim_after: Option<Duration>,
    /// Which data paths the router may use.
    pub datapath: DatapathMode,
    /// The pod MTU; `None` means underlay MTU minus the VXLAN overhead.
    pub mtu: Option<u32>,
    /// Whether pod traffic leaving the pod range is masqueraded (`--masquerade`).
    pub masquerade: bool,
    /// Destinations pods reach without masquerade (`--no-masq-cidrs`).
    pub no_masq_cidrs: Vec<IpNet>,
    /// Where the node key, IPAM claims and persisted peers live.
    pub state_dir: PathBuf,
    /// Where the CNI plugin queues releases while the router is down.
    pub release_queue: PathBuf,
    /// The unix socket that serves every API route.
    pub api_socket: PathBuf,
    /// The TCP address that serves the read-only API routes.
    pub http_addr: SocketAddr,
    /// The TCP address that serves `/metrics`.
    pub metrics_addr: SocketAddr,
    /// This peer's nickname.
    pub nickname: String,
    /// Most connections the router keeps.
    pub conn_limit: u32,
    /// The local address to bind the control and sleeve sockets to; all addresses if `None`.
    pub bind_addr: Option<IpAddr>,
    /// Whether the router creates and manages the node's devices (bridge, tunnels). Off only
    /// for tests that run a router in the machine's own namespace.
    pub devices: bool,
    /// Peer discovery from the Kubernetes API's Node objects (`--kube-peers`).
    pub kube: Option<crate::kube::KubeSettings>,
    /// Enforce the cluster's NetworkPolicies (`--network-policy`; needs `kube`).
    pub network_policy: bool,
}

/// Which data paths the router may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathMode {
    /// fastdp where the VXLAN probe answers, sleeve elsewhere.
    Auto,
    /// fastdp only.
    Fastdp,
    /// sleeve only.
    Sleeve,
}

impl RouterConfig {
    /// Returns a configuration with every default and the given API and metrics addresses;
    /// for tests and embedders. It manages no devices and listens on an ephemeral control
    /// port, so it can run anywhere without touching the host's network.
    pub fn with_addrs(
        api_socket: PathBuf,
        http_addr: SocketAddr,
        metrics_addr: SocketAddr,
    ) -> Self {
        Self {
            peers: Vec::new(),
            peers_file: None,
            port: 0,
            vxlan_port: DEFAULT_PORT + 1,
            password_file: None,
            encryption: false,
            trusted_subnets: Vec::new(),
            ipalloc_range: default_ipalloc_range(),
            ipalloc_reclaim_after: Some(DEFAULT_RECLAIM_AFTER),
            datapath: DatapathMode::Auto,
            mtu: None,
            masquerade: true,
            no_masq_cidrs: Vec::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            release_queue: PathBuf::from(topology::api::release_queue::DEFAULT_DIR),
            api_socket,
            http_addr,
            metrics_addr,
            nickname: hostname(),
            conn_limit: 100,
            bind_addr: Some(IpAddr::from([127, 0, 0, 1])),
            devices: false,
            kube: None,
            network_policy: false,
        }
    }
}

/// Reads a peers file: addresses separated by whitespace or commas; `#` starts a comment.
///
/// # Errors
///
/// Returns the error of reading the file.
pub fn read_peers_file(path: &Path) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(parse_peers(&text))
}

/// Returns the host name of this machine, or `weft` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weft".to_owned())
}

/// The default of `--ipalloc-reclaim-after`: longer than Kubernetes' ~5 min eviction of an
/// unreachable node's pods, so a reclaimed node's pods are usually gone already.
pub const DEFAULT_RECLAIM_AFTER: Duration = Duration::from_secs(600);

/// Returns Weave's default IPAM range, 10.32.0.0/12.
pub fn default_ipalloc_range() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(10, 32, 0, 0),
        12,
    ))
}

/// Reads a peers file's text (see [`read_peers_file`]).
pub fn parse_peers(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The control and sleeve port.
pub const DEFAULT_PORT: u16 = 6783;
/// The state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// The API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";
/// The read-only HTTP API address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";
/// The metrics address.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:6782";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_file_syntax() {
        let text = "# mesh\n192.0.2.1, 192.0.2.2:6783\n\n  host3 # the third\n";
        assert_eq!(parse_peers(text), ["192.0.2.1", "192.0.2.2:6783", "host3"]);
    }

    proptest::proptest! {
        /// Addresses separated by any mix of commas, whitespace and comment lines read
        /// back in order; no entry is ever empty or holds a separator or `#`.
        #[test]
        fn peers_file_reads_back(
            addrs in proptest::collection::vec("[a-z0-9.:\\[\\]]{1,20}", 0..6),
            seps in proptest::collection::vec("[ ,\t\n]{1,3}|\n# [^\n]*\n", 6),
            text in "\\PC{0,80}",
        ) {
            let mut file = String::new();
            for (a, sep) in addrs.iter().zip(&seps) {
                file.push_str(a);
                file.push_str(sep);
            }
            proptest::prop_assert_eq!(parse_peers(&file), addrs);
            for entry in parse_peers(&text) {
                proptest::prop_assert!(!entry.is_empty());
                proptest::prop_assert!(!entry.contains(|c: char| c == ',' || c == '#' || c.is_whitespace()));
            }
        }
    }

    #[test]
    fn default_range_is_weaves() {
        assert_eq!(default_ipalloc_range().to_string(), "10.32.0.0/12");
    }
}
