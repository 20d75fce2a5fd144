//! The weft router: the daemon and the `weft` command.
//!
//! This crate is the I/O shell around the sans-IO `topology` and `crypto` cores (STYLE.md §1):
//! sockets, devices, the local API, metrics and state on disk. Layers:
//!
//! - [`cli`] and [`config`]: the command line and the [`RouterConfig`] it produces.
//! - [`api`]: the local API server (unix socket for everything, HTTP for read-only routes) and
//!   the client the subcommands use; commands reach the daemon loop as [`ApiCommand`]s.
//! - [`status`] and [`status_text`]: the published status snapshot and its `weave status`-style
//!   rendering.
//! - [`metrics`]: counters bumped through atomics and rendered for Prometheus.
//! - [`node_net`], [`nft`] and [`underlay`]: the node's sysctls, weft's nftables table
//!   (masquerade) through netlink, and the underlay MTU the pod MTU follows.
//! - [`daemon`]: the engine loop that owns the mesh, IPAM and settings cores and carries out
//!   their outputs; [`encryption`]: the mesh setting's password proofs; [`ipam_store`]: IPAM
//!   state on disk; [`kube`]: peer discovery from Kubernetes Node objects.
//! - [`sleeve`] (with [`tap`] and [`udp`]): the sleeve's threads, asking
//!   `topology::dataplane` what to do with each frame; [`fastdp`]: the VXLAN device, its
//!   probe and the forwarding-database changes `topology::fastdp` asks for; [`netlink`]: the
//!   rtnetlink calls both make.
//! - [`cni_install`]: `weft install-cni|uninstall-cni`.
//!
//! [`start_router`] binds the API and metrics listeners, then hands the engine an
//! [`EngineHandles`]: the status publisher, the command receiver, the metrics handle and the
//! shutdown signal. The engine (the daemon loop) owns all protocol state; nothing else locks it.

pub mod api;
pub mod cli;
pub mod cni_install;
pub mod config;
pub mod daemon;
pub mod encryption;
pub mod fastdp;
pub mod ipam_store;
pub mod kube;
pub mod metrics;
pub mod netlink;
pub mod nft;
pub mod node_net;
pub mod policy;
pub mod sleeve;
pub mod status;
pub mod status_text;
pub mod tap;
pub mod udp;
pub mod underlay;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

pub use crate::api::ApiCommand;
use crate::api::server::{ApiServer, ApiState, MetricsServer};
pub use crate::config::RouterConfig;
pub use crate::metrics::Metrics;
use crate::status::{RouterStatus, StatusPublisher, status_channel};

/// What the engine (the daemon loop) gets from the shell.
#[derive(Debug)]
pub struct EngineHandles {
    /// Publish a fresh [`RouterStatus`] after each tick; the API and metrics read it.
    pub status: StatusPublisher,
    /// Commands from the API; answer each through its `reply`.
    pub commands: mpsc::Receiver<ApiCommand>,
    /// Counters for the data and control planes.
    pub metrics: Metrics,
    /// Becomes `true` when the router must stop (SIGTERM/SIGINT or [`RunningRouter::shutdown`]).
    pub shutdown: watch::Receiver<bool>,
    /// Every address of the cluster's Nodes, kept current by discovery (`--kube-peers`);
    /// `None` without discovery. Without a password, only these and named peers may connect.
    pub node_addrs: Option<watch::Receiver<BTreeSet<IpAddr>>>,
    /// The Kubernetes section of the status (watches, the node condition), with Kubernetes
    /// settings.
    pub kube: Option<watch::Receiver<kube::health::KubeStatus>>,
    /// The cluster view, with `--network-policy on`: `None` inside until it is listed.
    pub cluster_view: Option<policy::ViewFeed>,
}

/// What the start made of the Kubernetes settings, for the tasks that follow.
struct KubeStart {
    client: ::kube::Client,
    url: String,
    health: kube::health::KubeHealth,
    health_rx: watch::Receiver<kube::health::KubeStatus>,
    /// The first list of Nodes, with discovery on.
    nodes: Option<Vec<topology::kube::Node>>,
}

/// A router whose listeners are bound and whose engine runs.
#[derive(Debug)]
pub struct RunningRouter {
    http_addr: SocketAddr,
    metrics_addr: SocketAddr,
    api_socket: PathBuf,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    api: JoinHandle<()>,
    metrics_task: JoinHandle<()>,
    engine: JoinHandle<anyhow::Result<()>>,
    /// The Kubernetes tasks (node discovery, the node condition), with Kubernetes settings.
    kube_tasks: Vec<JoinHandle<()>>,
}

impl RunningRouter {
    /// Returns the bound read-only HTTP API address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Returns the bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Returns the API socket path.
    pub fn api_socket(&self) -> &std::path::Path {
        &self.api_socket
    }

    /// Returns the metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops the engine and the servers and removes the API socket.
    ///
    /// # Errors
    ///
    /// Returns the engine's error, if it failed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let engine = self.engine.await.context("engine task panicked")?;
        self.api.await.context("API task panicked")?;
        self.metrics_task.await.context("metrics task panicked")?;
        for task in self.kube_tasks {
            task.await.context("a Kubernetes task panicked")?;
        }
        engine
    }
}

/// Binds the API socket, the HTTP API and the metrics address, then starts the engine.
///
/// # Errors
///
/// Fails when a listener cannot be bound; the message names the path or address.
pub async fn start_router(mut config: RouterConfig) -> anyhow::Result<RunningRouter> {
    // With --kube-peers, the cluster's other nodes are the first targets, so IPAM's consensus
    // quorum counts them (as Weave's launch script does with its peer list).
    let kube = match &config.kube {
        Some(settings) => {
            let (client, url) = kube::client(settings)?;
            let (health, health_rx) = kube::health::KubeHealth::new(&url);
            let nodes = if settings.discover_peers {
                let nodes = kube::nodes::initial_list(&client, &url, KUBE_INITIAL_LIST)
                    .await
                    .context("--kube-peers")?;
                let peers = kube::nodes::peer_addrs(&nodes, &config.nickname, config.port);
                info!(
                    nodes = nodes.len(),
                    peers = peers.len(),
                    "listed Kubernetes nodes"
                );
                config.peers.extend(peers);
                Some(nodes)
            } else {
                None
            };
            Some(KubeStart {
                client,
                url,
                health,
                health_rx,
                nodes,
            })
        }
        None => None,
    };
    let api = ApiServer::bind(&config.api_socket, config.http_addr).await?;
    let http_addr = api.http_addr()?;
    let metrics_server = MetricsServer::bind(config.metrics_addr).await?;
    let metrics_addr = metrics_server.local_addr()?;

    let (publisher, reader) = status_channel(RouterStatus::starting(
        UNKNOWN_NAME,
        &config.nickname,
        config.port,
    ));
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Metrics::new();

    let mut node_addrs_rx = None;
    let mut kube_status = None;
    let mut cluster_view = None;
    let mut kube_tasks = Vec::new();
    if let Some(start) = kube {
        kube_status = Some(start.health_rx);
        // Nodes first in the status, then the cluster view's kinds.
        let node_health = start.nodes.is_some().then(|| start.health.watch("Node"));
        // The cluster view; NetworkPolicy enforcement subscribes to it.
        let (view_tx, view_rx) = watch::channel(None);
        if config.network_policy {
            cluster_view = Some(view_rx);
        }
        kube_tasks.push(tokio::spawn(kube::cluster::run(
            start.client.clone(),
            config.nickname.clone(),
            start.health.clone(),
            view_tx,
            stop_rx.clone(),
        )));
        kube_tasks.push(tokio::spawn(kube::condition::set_when_ready(
            start.client.clone(),
            config.nickname.clone(),
            reader.clone(),
            start.health.clone(),
            stop_rx.clone(),
        )));
        if let Some(nodes) = start.nodes {
            let (node_addrs, rx) = watch::channel(kube::nodes::node_addrs(&nodes));
            node_addrs_rx = Some(rx);
            let discoverer = kube::nodes::Discoverer {
                client: start.client,
                url: start.url,
                health: node_health.unwrap_or_else(|| start.health.watch("Node")),
                skipped: kube::watch::Skipped::default(),
                node_addrs,
                me: config.nickname.clone(),
                port: config.port,
                commands: commands_tx.clone(),
                status: reader.clone(),
                shutdown: stop_rx.clone(),
                state_file: Some(config.state_dir.join(KUBE_STATE_FILE)),
            };
            kube_tasks.push(tokio::spawn(discoverer.run(nodes)));
        }
    }
    let api_task = tokio::spawn(api.serve(
        ApiState {
            status: reader.clone(),
            commands: commands_tx,
            metrics: metrics.clone(),
        },
        stopped(stop_rx.clone()),
    ));
    let metrics_task =
        tokio::spawn(metrics_server.serve(metrics.clone(), reader, stopped(stop_rx.clone())));

    let handles = EngineHandles {
        status: publisher,
        commands: commands_rx,
        metrics: metrics.clone(),
        shutdown: stop_rx,
        node_addrs: node_addrs_rx,
        kube: kube_status,
        cluster_view,
    };
    // The engine owns all protocol state and returns once `handles.shutdown` turns true.
    let engine = tokio::spawn(daemon::run(config.clone(), handles));

    info!(
        api_socket = %config.api_socket.display(),
        %http_addr,
        %metrics_addr,
        port = config.port,
        nickname = %config.nickname,
        "router started"
    );
    Ok(RunningRouter {
        http_addr,
        metrics_addr,
        api_socket: config.api_socket,
        metrics,
        stop,
        api: api_task,
        metrics_task,
        engine,
        kube_tasks,
    })
}

/// Runs the router until SIGTERM or SIGINT.
///
/// # Errors
///
/// Fails when a listener cannot be bound, signals cannot be watched, or the engine fails.
pub async fn run_router(config: RouterConfig) -> anyhow::Result<()> {
    let router = start_router(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.context("watching SIGINT")?;
            info!("SIGINT: shutting down");
        }
    }
    router.shutdown().await?;
    info!("router stopped");
    Ok(())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The peer name shown until the engine publishes the real one (derived from the node key).
const UNKNOWN_NAME: &str = "00:00:00:00:00:00";
/// How long `--kube-peers` retries the first node list before the router gives up.
const KUBE_INITIAL_LIST: std::time::Duration = std::time::Duration::from_secs(60);
/// What `--kube-peers` keeps in the state directory across restarts.
const KUBE_STATE_FILE: &str = "kube-nodes.json";
/// Commands queued for the engine before senders wait.
const COMMAND_QUEUE: usize = 64;
