//! The `weft` command line: `weft router` and the subcommands that talk to a router's API.
//!
//! Parsing is clap's, so a bad flag is named in the error. Output goes to the writer the
//! caller passes (stdout in `main`); errors come back as [`ClientError`]s for `main` to print
//! as one line.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::api::client::{ApiClient, ClientError};
use crate::api::{ApiAddr, DEFAULT_API};
use crate::config::{
    DEFAULT_API_SOCKET, DEFAULT_HTTP_ADDR, DEFAULT_METRICS_ADDR, DEFAULT_PORT, DEFAULT_STATE_DIR,
    DatapathMode, RouterConfig, hostname,
};

/// weft: a mesh overlay network for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, propagate_version = true)]
pub struct Cli {
    /// Where to find the router's API: unix:PATH or http://HOST:PORT.
    #[arg(long, env = "WEFT_API", global = true, default_value = DEFAULT_API,
          value_name = "unix:PATH|http://HOST:PORT")]
    pub api: ApiAddr,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a connection target to the router (persisted with its peers).
    Connect {
        /// `host` or `host:port`.
        addr: String,
    },
    /// Show or switch mesh encryption (for the whole mesh, at run time).
    Encryption {
        /// What to do.
        #[arg(value_enum)]
        action: EncryptionAction,
        /// The mesh password file: `disable` proves knowledge of the password with it, which
        /// routers that have a password require.
        #[arg(long, env = "WEFT_PASSWORD_FILE", value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Install the CNI plugin and write its conflist (the DaemonSet's init container).
    InstallCni(InstallCniArgs),
    /// Remove weft's conflist (and with --remove-plugin the plugin) from the node.
    UninstallCni {
        /// The node's CNI configuration directory.
        #[arg(long, default_value = "/etc/cni/net.d", value_name = "DIR")]
        conf_dir: PathBuf,
        /// The conflist's file name.
        #[arg(long, default_value = crate::cni_install::DEFAULT_CONF_NAME, value_name = "NAME")]
        conf_name: String,
        /// The node's CNI plugin directory.
        #[arg(long, default_value = "/opt/cni/bin", value_name = "DIR")]
        bin_dir: PathBuf,
        /// Remove the plugin too (only once no weft pod is left: DEL needs it).
        #[arg(long)]
        remove_plugin: bool,
        /// Remove weft's nftables table (`inet weft`: masquerade) from this network namespace
        /// too (only once the router is gone: a running router puts it back).
        #[arg(long)]
        remove_rules: bool,
        /// Then wait for SIGTERM (so a cleanup DaemonSet's pod stays up, and Ready, once done).
        #[arg(long)]
        wait: bool,
    },
    /// Remove a connection target (connections already up stay up).
    Forget {
        /// `host` or `host:port`, as given to connect.
        addr: String,
    },
    /// Print the router's full state as JSON.
    Report,
    /// Remove a peer that is gone for good and reclaim what it held.
    Rmpeer {
        /// The peer's name or nickname.
        name: String,
    },
    /// Run the router daemon.
    Router(Box<RouterArgs>),
    /// Print the router's status in the layout of `weave status`.
    Status {
        /// A part of the status to show instead of the summary.
        #[arg(value_enum)]
        view: Option<StatusView>,
    },
}

/// The flags of `weft install-cni`.
#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// The plugin binary to install as `weft`.
    #[arg(long, default_value = "/usr/local/bin/weft-cni", value_name = "FILE")]
    pub plugin: PathBuf,
    /// The node's CNI plugin directory.
    #[arg(long, default_value = "/opt/cni/bin", value_name = "DIR")]
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d", value_name = "DIR")]
    pub conf_dir: PathBuf,
    /// The conflist's file name.
    #[arg(long, default_value = crate::cni_install::DEFAULT_CONF_NAME, value_name = "NAME")]
    pub conf_name: String,
    /// The router's API socket as the plugin sees it on the node.
    #[arg(long, default_value = DEFAULT_API_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Pod MTU written into the conflist [default: the plugin takes the bridge's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(576..=65_535), env = "WEFT_MTU")]
    pub mtu: Option<u32>,
    /// Where the plugin queues releases while the router is down (the router's
    /// `--release-queue`).
    #[arg(
        long,
        default_value = topology::api::release_queue::DEFAULT_DIR,
        value_name = "DIR",
        env = "WEFT_RELEASE_QUEUE"
    )]
    pub release_queue: PathBuf,
    /// More plugins to install under their own names where the node has none (e.g. portmap).
    #[arg(long, value_delimiter = ',', value_name = "FILE,...")]
    pub if_missing: Vec<PathBuf>,
}

impl InstallCniArgs {
    /// The installation these flags describe.
    pub fn into_install(self) -> crate::cni_install::InstallCni {
        crate::cni_install::InstallCni {
            plugin: self.plugin,
            bin_dir: self.bin_dir,
            conf_dir: self.conf_dir,
            conf_name: self.conf_name,
            socket: self.socket,
            mtu: self.mtu,
            release_queue: self.release_queue,
            if_missing: self.if_missing,
        }
    }
}

/// The parts of `weft status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusView {
    /// One line per connection.
    Connections,
    /// Each owner's share of the IPAM range.
    Ipam,
    /// Every peer and the connections it reports.
    Peers,
    /// NetworkPolicy enforcement on this node.
    Policy,
    /// One connection target per line.
    Targets,
}

/// What `weft encryption` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncryptionAction {
    /// Switch mesh encryption off.
    Disable,
    /// Switch mesh encryption on.
    Enable,
    /// Print whether mesh encryption is on.
    Status,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Disabled.
    Off,
    /// Enabled.
    On,
}

/// `--ipalloc-reclaim-after`: a duration, or None for `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimAfter(pub Option<Duration>);

/// Parses `off` or a whole number with unit `s`, `m` or `h`, at least 10 s.
fn parse_reclaim_after(s: &str) -> Result<ReclaimAfter, String> {
    if s == "off" {
        return Ok(ReclaimAfter(None));
    }
    let (num, unit) = s.split_at(s.trim_end_matches(['s', 'm', 'h']).len());
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "{s:?}: expected off or a number with unit s, m or h (like 10m)"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected off or a number with unit s, m or h (like 10m)"))?;
    let secs = n.saturating_mul(scale);
    if secs < 10 {
        return Err(format!("{s:?}: at least 10s (or off)"));
    }
    Ok(ReclaimAfter(Some(Duration::from_secs(secs))))
}

/// The flags of `weft router`.
#[derive(Debug, Args)]
pub struct RouterArgs {
    /// Peers to connect to, comma-separated (`host` or `host:port`).
    #[arg(long, value_delimiter = ',', value_name = "ADDR,...")]
    pub peers: Vec<String>,
    /// A file of more peers (whitespace- or comma-separated, `#` comments), re-read on change.
    #[arg(long, value_name = "FILE")]
    pub peers_file: Option<PathBuf>,
    /// TCP control and UDP sleeve port.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// UDP port of the kernel VXLAN device [default: --port + 1].
    #[arg(long)]
    pub vxlan_port: Option<u16>,
    /// File holding the mesh password; peers without it are refused.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Like --password-file, but a missing file means no password (for a Kubernetes Secret
    /// mounted as optional).
    #[arg(long, value_name = "FILE", conflicts_with = "password_file")]
    pub password_file_if_present: Option<PathBuf>,
    /// Seal sleeve traffic.
    #[arg(long, value_enum, default_value = "off", env = "WEFT_ENCRYPTION")]
    pub encryption: OnOff,
    /// Subnets whose peers may carry traffic unencrypted, comma-separated CIDRs.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR,...",
        env = "WEFT_TRUSTED_SUBNETS"
    )]
    pub trusted_subnets: Vec<IpNet>,
    /// The IPAM range.
    #[arg(
        long,
        default_value = "10.32.0.0/12",
        value_name = "CIDR",
        env = "WEFT_IPALLOC_RANGE"
    )]
    pub ipalloc_range: IpNet,
    /// Reclaim the IP space of a peer gone this long once the other owners agree (`30s`,
    /// `10m`, `2h`; at least 10 s), or `off` to leave it to `weft rmpeer`.
    #[arg(long, default_value = "10m", value_name = "DURATION|off", value_parser = parse_reclaim_after)]
    pub ipalloc_reclaim_after: ReclaimAfter,
    /// Which data paths to use.
    #[arg(long, value_enum, default_value = "auto", env = "WEFT_DATAPATH")]
    pub datapath: DatapathMode,
    /// Pod MTU [default: the underlay's MTU toward the peers (or of the default route's
    /// interface) - 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(576..=65_535), env = "WEFT_MTU")]
    pub mtu: Option<u32>,
    /// Masquerade pod traffic to destinations outside the pod range (other nodes, the world)
    /// with the node's address.
    #[arg(long, value_enum, default_value = "on", env = "WEFT_MASQUERADE")]
    pub masquerade: OnOff,
    /// Destinations pods reach without masquerade, comma-separated CIDRs (like ip-masq-agent's
    /// nonMasqueradeCIDRs).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR,...",
        env = "WEFT_NO_MASQ_CIDRS"
    )]
    pub no_masq_cidrs: Vec<IpNet>,
    /// State directory: node key, IPAM claims, persisted peers.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Releases the CNI plugin queued while the router was down, applied at start and every
    /// 2 s (the conflist's `releaseQueue`).
    #[arg(
        long,
        default_value = topology::api::release_queue::DEFAULT_DIR,
        value_name = "DIR",
        env = "WEFT_RELEASE_QUEUE"
    )]
    pub release_queue: PathBuf,
    /// Unix socket serving every API route.
    #[arg(long, default_value = DEFAULT_API_SOCKET, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Address serving the read-only API routes.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR, value_name = "ADDR:PORT")]
    pub http_addr: SocketAddr,
    /// Address serving Prometheus metrics at /metrics.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR, value_name = "ADDR:PORT")]
    pub metrics_addr: SocketAddr,
    /// This peer's nickname [default: $NODE_NAME (the Kubernetes node name), else the host name].
    #[arg(long, env = "NODE_NAME")]
    pub nickname: Option<String>,
    /// Most connections to keep.
    #[arg(long, default_value_t = 100)]
    pub conn_limit: u32,
    /// Local address for the control and sleeve sockets, and the source of outgoing control
    /// connections [default: all; the kernel picks the source].
    #[arg(long, value_name = "IP")]
    pub bind_addr: Option<IpAddr>,
    /// Discover peers from the Kubernetes API's Node objects: dial every node's InternalIP,
    /// forget deleted nodes and reclaim their IP space. The nickname must be the node name.
    #[arg(long)]
    pub kube_peers: bool,
    /// The Kubernetes API, https://HOST:PORT or http://HOST:PORT; given (or with --kube-peers)
    /// the router uses the API: it sets its Node's NetworkUnavailable condition once ready
    /// [default with --kube-peers: in-cluster, https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT].
    #[arg(long, value_name = "URL", env = "WEFT_KUBE_API")]
    pub kube_api: Option<String>,
    /// The bearer token file for the Kubernetes API, re-read about once a minute (kubelet
    /// rotates it); required over HTTPS.
    #[arg(long, value_name = "FILE", default_value = crate::kube::DEFAULT_TOKEN_FILE, env = "WEFT_KUBE_TOKEN_FILE")]
    pub kube_token_file: PathBuf,
    /// The CA bundle (PEM) that signs the Kubernetes API server's certificate.
    #[arg(long, value_name = "FILE", default_value = crate::kube::DEFAULT_CA_FILE, env = "WEFT_KUBE_CA_FILE")]
    pub kube_ca_file: PathBuf,
    /// Enforce the cluster's NetworkPolicies in this node's kernel (needs the Kubernetes API)
    /// [default: on with --kube-api or --kube-peers, else off].
    #[arg(long, value_enum, value_name = "on|off", env = "WEFT_NETWORK_POLICY")]
    pub network_policy: Option<OnOff>,
}

impl RouterArgs {
    /// Checks the flags against each other and builds the configuration.
    ///
    /// # Errors
    ///
    /// Returns a message naming the flags that conflict.
    pub fn into_config(self) -> Result<RouterConfig, String> {
        let vxlan_port = match self.vxlan_port {
            Some(p) => p,
            None => self.port.checked_add(1).ok_or_else(|| {
                format!(
                    "--port {} leaves no room for the default --vxlan-port (port + 1); \
                     give --vxlan-port",
                    self.port
                )
            })?,
        };
        if vxlan_port == self.port {
            return Err(format!(
                "--vxlan-port {vxlan_port} must differ from --port (the sleeve uses UDP --port)"
            ));
        }
        let nickname = self.nickname.unwrap_or_else(hostname);
        if nickname.is_empty()
            || nickname
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "--nickname {nickname:?} must be non-empty without spaces"
            ));
        }
        if self.kube_peers && self.port == 0 {
            return Err(
                "--kube-peers needs a fixed --port: every node is dialled on the same port"
                    .to_owned(),
            );
        }
        // A Secret mounted as optional is an empty directory when the Secret does not exist.
        let password_file = self
            .password_file
            .or_else(|| self.password_file_if_present.filter(|p| p.exists()));
        let kube =
            (self.kube_peers || self.kube_api.is_some()).then_some(crate::kube::KubeSettings {
                api: self.kube_api,
                token_file: self.kube_token_file,
                ca_file: self.kube_ca_file,
                discover_peers: self.kube_peers,
            });
        let network_policy = match (self.network_policy, &kube) {
            (Some(OnOff::On), None) => {
                return Err(
                    "--network-policy on needs the Kubernetes API: give --kube-api \
                     or --kube-peers"
                        .to_owned(),
                );
            }
            (Some(setting), _) => setting == OnOff::On,
            (None, kube) => kube.is_some(),
        };
        Ok(RouterConfig {
            peers: self.peers.into_iter().filter(|p| !p.is_empty()).collect(),
            peers_file: self.peers_file,
            port: self.port,
            vxlan_port,
            password_file,
            encryption: self.encryption == OnOff::On,
            trusted_subnets: self.trusted_subnets,
            ipalloc_range: self.ipalloc_range,
            ipalloc_reclaim_after: self.ipalloc_reclaim_after.0,
            datapath: self.datapath,
            mtu: self.mtu,
            masquerade: self.masquerade == OnOff::On,
            no_masq_cidrs: self.no_masq_cidrs,
            state_dir: self.state_dir,
            release_queue: self.release_queue,
            api_socket: self.api_socket,
            http_addr: self.http_addr,
            metrics_addr: self.metrics_addr,
            nickname,
            conn_limit: self.conn_limit,
            bind_addr: self.bind_addr,
            devices: true,
            kube,
            network_policy,
        })
    }
}

/// Runs one API subcommand (anything but `router`) and writes its output to `out`.
///
/// # Errors
///
/// Returns the client's error (unreachable router, error status, ...), an output error, or
/// [`CommandFailure::Usage`] for `router`, which is not an API subcommand.
pub async fn run_client_command(
    api: &ApiAddr,
    command: &Command,
    out: &mut dyn Write,
) -> Result<(), CommandFailure> {
    let client = ApiClient::new(api.clone());
    match command {
        Command::Connect { addr } => line(out, &client.connect(addr).await?)?,
        Command::Encryption {
            action,
            password_file,
        } => match action {
            EncryptionAction::Disable => {
                let key = password_file
                    .as_deref()
                    .map(crate::encryption::settings_key_from_file)
                    .transpose()
                    .map_err(|e| CommandFailure::Usage(format!("--password-file: {e:#}")))?;
                let message = disable(&client, key.as_ref()).await?;
                line(out, &settled(&client, message).await)?;
            }
            EncryptionAction::Enable => {
                let message = client.set_encryption(true, None, None).await?;
                line(out, &settled(&client, message).await)?;
            }
            EncryptionAction::Status => encryption_status(out, &client.encryption().await?)?,
        },
        Command::Forget { addr } => line(out, &client.forget(addr).await?)?,
        Command::Report => {
            // The server already pretty-prints; pass it through unchanged so fields this
            // client does not know yet still show.
            out.write_all(client.text("/report").await?.as_bytes())?;
        }
        Command::Rmpeer { name } => line(out, &client.rmpeer(name).await?)?,
        Command::Router(_) | Command::InstallCni(_) | Command::UninstallCni { .. } => {
            return Err(CommandFailure::Usage(
                "`weft router`, `install-cni` and `uninstall-cni` are not API subcommands"
                    .to_owned(),
            ));
        }
        Command::Status { view } => {
            let path = match view {
                None => "/status",
                Some(StatusView::Connections) => "/status/connections",
                Some(StatusView::Ipam) => "/status/ipam",
                Some(StatusView::Peers) => "/status/peers",
                Some(StatusView::Policy) => "/status/policy",
                Some(StatusView::Targets) => "/status/targets",
            };
            let body = client.text(path).await?;
            if view.is_none() {
                // Like `weave status`: an empty line before and after the summary.
                write!(out, "\n{body}\n")?;
            } else {
                out.write_all(body.as_bytes())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Why an API subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailure {
    /// The API request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
    /// The subcommand cannot run this way.
    #[error("{0}")]
    Usage(String),
}

/// Asks for encryption off, with a proof of the password when given one; retries when
/// another change landed between reading the version and asking.
async fn disable(
    client: &ApiClient,
    key: Option<&crypto::SettingsKey>,
) -> Result<String, CommandFailure> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (version, proof) = match key {
            Some(key) => {
                let enc = client.encryption().await?;
                let origin = crate::encryption::parse_uid(&enc.local_origin).ok_or_else(|| {
                    CommandFailure::Usage(format!(
                        "the router reported no usable local_origin ({:?}); is it older than this weft?",
                        enc.local_origin
                    ))
                })?;
                let version = enc.version + 1;
                let proof = crate::encryption::prove_record(key, false, version, origin);
                (Some(version), Some(proof))
            }
            None => (None, None),
        };
        match client.set_encryption(false, version, proof).await {
            Err(ClientError::Api { status: 409, .. }) if attempt < 3 => {}
            other => return Ok(other?),
        }
    }
}

/// Waits (up to [`SETTLE_WAIT`]) until no connection of the router is changing over, and
/// adds what it saw to the command's message.
async fn settled(client: &ApiClient, message: String) -> String {
    use crate::status::EncryptionMode;
    let start = std::time::Instant::now();
    loop {
        let Ok(enc) = client.encryption().await else {
            return message;
        };
        let total = enc.connections.len();
        let changing = enc
            .connections
            .iter()
            .filter(|c| c.mode == EncryptionMode::Changing)
            .count();
        if total == 0 {
            return message;
        }
        let waited = start.elapsed();
        if changing == 0 {
            return format!(
                "{message}; all {total} connections of this router changed over within {:.1} s",
                waited.as_secs_f64()
            );
        }
        if waited >= SETTLE_WAIT {
            return format!(
                "{message}; {changing} of {total} connections of this router still changing over after {} s (see `weft encryption status`)",
                SETTLE_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long `enable`/`disable` wait for the change-over before they return.
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// `weft encryption status`: the mesh-wide setting, then one line per connection.
fn encryption_status(out: &mut dyn Write, enc: &crate::status::EncryptionStatus) -> io::Result<()> {
    line(out, if enc.enabled { "enabled" } else { "disabled" })?;
    writeln!(
        out,
        "        Version: {} (set by {})",
        enc.version,
        if enc.origin.is_empty() {
            "-"
        } else {
            &enc.origin
        }
    )?;
    let password = if enc.password_set {
        "set (disable needs --password-file)"
    } else {
        "not set (disable needs socket access only)"
    };
    writeln!(out, "       Password: {password}")?;
    for c in &enc.connections {
        writeln!(
            out,
            "{:<21} {:<8} {:<9} {}",
            c.remote_addr,
            c.remote_nickname,
            c.mode.as_str(),
            c.reason
        )?;
    }
    Ok(())
}

fn line(out: &mut dyn Write, text: &str) -> io::Result<()> {
    writeln!(out, "{}", text.trim_end())
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weft").chain(args.iter().copied()))
    }

    fn router(args: &[&str]) -> RouterConfig {
        let cli = parse(&[&["router"], args].concat()).unwrap();
        let Command::Router(args) = cli.command else {
            panic!("not router")
        };
        args.into_config().unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn router_defaults() {
        let c = router(&["--nickname", "h1"]);
        assert_eq!(c.port, 6783);
        assert_eq!(c.vxlan_port, 6784);
        assert!(!c.encryption);
        assert_eq!(c.ipalloc_range.to_string(), "10.32.0.0/12");
        assert_eq!(c.datapath, DatapathMode::Auto);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/weft"));
        assert_eq!(c.api_socket, PathBuf::from("/run/weft/weft.sock"));
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:6784");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:6782");
        assert_eq!(c.conn_limit, 100);
        assert_eq!(c.ipalloc_reclaim_after, Some(Duration::from_secs(600)));
        assert_eq!(c.nickname, "h1");
        assert!(c.peers.is_empty() && c.mtu.is_none() && c.bind_addr.is_none());
    }

    #[test]
    fn router_flags() {
        let c = router(&[
            "--peers=192.0.2.1,192.0.2.2:7000",
            "--port=7000",
            "--encryption=on",
            "--trusted-subnets=10.0.0.0/8,192.0.2.0/24",
            "--datapath=sleeve",
            "--mtu=1376",
            "--bind-addr=192.0.2.9",
            "--password-file=/etc/weft/password",
        ]);
        assert_eq!(c.peers, ["192.0.2.1", "192.0.2.2:7000"]);
        assert_eq!((c.port, c.vxlan_port), (7000, 7001));
        assert!(c.encryption);
        assert_eq!(c.trusted_subnets.len(), 2);
        assert_eq!(c.datapath, DatapathMode::Sleeve);
        assert_eq!(c.mtu, Some(1376));
        assert!(
            c.masquerade && c.no_masq_cidrs.is_empty(),
            "masquerade on by default"
        );
        let m = router(&[
            "--masquerade",
            "off",
            "--no-masq-cidrs",
            "10.0.0.0/8,192.168.0.0/16",
        ]);
        assert!(!m.masquerade);
        assert_eq!(m.no_masq_cidrs.len(), 2);
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/weft/password")));
        for (v, want) in [
            ("off", None),
            ("90s", Some(90)),
            ("15m", Some(900)),
            ("2h", Some(7200)),
        ] {
            let arg = format!("--ipalloc-reclaim-after={v}");
            let c = router(&[arg.as_str()]);
            assert_eq!(
                c.ipalloc_reclaim_after,
                want.map(Duration::from_secs),
                "{v}"
            );
        }
    }

    #[test]
    fn bad_flags_are_named() {
        for (args, flag) in [
            (&["router", "--port", "x"][..], "--port"),
            (&["router", "--datapath", "warp"], "--datapath"),
            (
                &["router", "--ipalloc-range", "10.32.0.0/40"],
                "--ipalloc-range",
            ),
            (&["router", "--mtu", "100"], "--mtu"),
            (
                &["router", "--ipalloc-reclaim-after", "5s"],
                "--ipalloc-reclaim-after",
            ),
            (
                &["router", "--ipalloc-reclaim-after", "10"],
                "--ipalloc-reclaim-after",
            ),
            (&["router", "--encryption", "maybe"], "--encryption"),
            (&["router", "--masquerade", "sometimes"], "--masquerade"),
            (
                &["router", "--no-masq-cidrs", "10.0.0.0/8,192.168.0.0/33"],
                "--no-masq-cidrs",
            ),
            (
                &["router", "--no-masq-cidrs", "not-a-cidr"],
                "--no-masq-cidrs",
            ),
            (&["--api", "tcp://x", "status"], "--api"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        let cli = parse(&["router", "--port", "65535"]).unwrap();
        let Command::Router(args) = cli.command else {
            panic!("not router")
        };
        assert!(args.into_config().unwrap_err().contains("--vxlan-port"));
    }

    #[test]
    fn optional_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        let flag = format!("--password-file-if-present={}", file.display());
        assert_eq!(router(&[&flag]).password_file, None);
        std::fs::write(&file, "secret").unwrap();
        assert_eq!(router(&[&flag]).password_file, Some(file));
        let both = parse(&["router", &flag, "--password-file=/x"])
            .unwrap_err()
            .to_string();
        assert!(both.contains("--password-file"), "{both}");
    }

    #[test]
    fn kube_flags() {
        let c = router(&["--nickname=n1", "--kube-peers"]);
        let kube = c.kube.unwrap();
        assert_eq!(kube.api, None);
        assert_eq!(
            kube.token_file,
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        let c = router(&["--kube-peers", "--kube-api=http://127.0.0.1:8001"]);
        assert_eq!(
            c.kube.as_ref().unwrap().api.as_deref(),
            Some("http://127.0.0.1:8001")
        );
        assert!(c.kube.as_ref().unwrap().discover_peers);
        assert!(router(&["--nickname=n1"]).kube.is_none());
        // --kube-api alone: the API without peer discovery.
        let kube = router(&["--kube-api=http://x:1"]).kube.unwrap();
        assert_eq!(
            (kube.api.as_deref(), kube.discover_peers),
            (Some("http://x:1"), false)
        );
        let cli = parse(&["router", "--kube-peers", "--port=0", "--vxlan-port=1"]).unwrap();
        let Command::Router(args) = cli.command else {
            panic!("not router")
        };
        assert!(args.into_config().unwrap_err().contains("--kube-peers"));
    }

    #[test]
    fn subcommands_parse() {
        let cli = parse(&["--api", "http://127.0.0.1:6784", "status", "peers"]).unwrap();
        assert_eq!(
            cli.api,
            ApiAddr::Http {
                host: "127.0.0.1".to_owned(),
                port: 6784
            }
        );
        assert!(matches!(
            cli.command,
            Command::Status {
                view: Some(StatusView::Peers)
            }
        ));
        let cli = parse(&["encryption", "enable", "--api=unix:/tmp/x.sock"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Encryption {
                action: EncryptionAction::Enable,
                ..
            }
        ));
        assert_eq!(cli.api, ApiAddr::Unix(PathBuf::from("/tmp/x.sock")));
        let cli = parse(&["encryption", "disable", "--password-file", "/etc/pw"]).unwrap();
        let Command::Encryption {
            action: EncryptionAction::Disable,
            password_file: Some(file),
        } = cli.command
        else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(file, PathBuf::from("/etc/pw"));
        assert!(parse(&["status", "dns"]).is_err());
        assert!(matches!(
            parse(&["rmpeer", "h3"]).unwrap().command,
            Command::Rmpeer { .. }
        ));
    }
}
