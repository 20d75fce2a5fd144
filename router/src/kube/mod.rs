//! `weft router --kube-peers`: peer discovery from the Kubernetes API's Node objects.
//!
//! The I/O shell around [`topology::kube`]: a small HTTP/1.1 client (hyper, with rustls for the
//! in-cluster HTTPS endpoint and the service account's CA and token) that lists
//! `/api/v1/nodes`, then watches from the list's `resourceVersion` with bookmarks; a watch that
//! ends is resumed from the last version seen, and one the server answers with 410 Gone (or an
//! `ERROR` event with code 410) is replaced by a fresh list. After every change the pure
//! [`topology::kube::reconcile`] plans connect, forget and rmpeer actions, which reach the
//! daemon as [`ApiCommand`]s over the API's own command channel.
//!
//! Before the engine starts, [`initial_list`] lists the nodes once, so that the router starts
//! with every other node as a `--peers` target and IPAM's consensus quorum counts the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use topology::kube::{
    Action, Discovery, Node, NodeList, WatchEvent, decode_node_list, decode_watch_event, reconcile,
};
use tracing::{debug, info, warn};

use crate::api::{ApiCommand, CommandError, CommandErrorKind, Reply};
use crate::status::StatusReader;

/// Where and how to reach the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// `https://HOST:PORT` or `http://HOST:PORT` (e.g. `kubectl proxy`); `None`: in-cluster,
    /// from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub api: Option<String>,
    /// The service account token, re-read for every request (kubelet rotates it).
    pub token_file: PathBuf,
    /// The cluster CA bundle (PEM) that signs the API server's certificate.
    pub ca_file: PathBuf,
}

impl KubeSettings {
    /// The in-cluster defaults: the service account's files, the endpoint from the environment.
    pub fn in_cluster() -> Self {
        Self {
            api: None,
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
        }
    }
}

/// The service account token kubelet mounts into every pod.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA kubelet mounts into every pod.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Why a request to the Kubernetes API failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The settings or the environment do not say where the API is, or a file is unusable.
    #[error("{0}")]
    Config(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{url}: {detail}")]
    Transport {
        /// The API endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The resource version is too old: list again.
    #[error("410 Gone: {0}")]
    Gone(String),
    /// Any other error status.
    #[error("{url}: HTTP {code}: {body}")]
    Status {
        /// The API endpoint.
        url: String,
        /// The status code.
        code: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer did not decode.
    #[error("decoding the API's answer: {0}")]
    Decode(#[from] topology::kube::DecodeError),
}

/// A client of the Kubernetes API: one HTTP/1.1 request per connection.
#[derive(Clone)]
pub struct KubeClient {
    url: String,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    token_file: PathBuf,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// Builds the client: the endpoint from `settings.api` or the environment, the CA for
    /// HTTPS.
    ///
    /// # Errors
    ///
    /// [`KubeError::Config`] naming the variable, URL or file at fault.
    pub fn new(settings: &KubeSettings) -> Result<Self, KubeError> {
        let url = match &settings.api {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let var = |name: &str| {
                    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
                        KubeError::Config(format!(
                            "--kube-peers: {name} is not set (not running in a pod?); give --kube-api"
                        ))
                    })
                };
                let host = var("KUBERNETES_SERVICE_HOST")?;
                let port = var("KUBERNETES_SERVICE_PORT")?;
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("https://{host}:{port}")
            }
        };
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(KubeError::Config(format!(
                "--kube-api {url:?}: expected https://HOST:PORT or http://HOST:PORT"
            )));
        };
        let bad = || KubeError::Config(format!("--kube-api {url:?}: expected HOST:PORT"));
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        let tls = if https {
            let roots = load_roots(&settings.ca_file)?;
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| KubeError::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = match bare.parse::<IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
                Err(_) => rustls::pki_types::ServerName::try_from(bare.to_owned())
                    .map_err(|e| KubeError::Config(format!("--kube-api host {bare:?}: {e}")))?,
            };
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            url,
            tls,
            token_file: settings.token_file.clone(),
        })
    }

    /// Returns the API endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET /api/v1/nodes`.
    ///
    /// # Errors
    ///
    /// Transport, status or decoding errors.
    pub async fn list_nodes(&self) -> Result<NodeList, KubeError> {
        let resp = self.get("/api/v1/nodes").await?;
        let resp = self.check(resp).await?;
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(resp.into_body(), MAX_LIST).collect(),
        )
        .await
        .map_err(|_| self.transport("reading the node list timed out"))?
        .map_err(|e| self.transport(format!("reading the node list: {e}")))?
        .to_bytes();
        Ok(decode_node_list(&body)?)
    }

    /// `GET /api/v1/nodes?watch=1` from `resource_version`, with bookmarks.
    ///
    /// # Errors
    ///
    /// [`KubeError::Gone`] when the version is too old; transport or status errors.
    pub async fn watch_nodes(&self, resource_version: &str) -> Result<NodeWatch, KubeError> {
        let path = format!(
            "/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={}",
            WATCH_TIMEOUT.as_secs(),
            percent_encode(resource_version)
        );
        let resp = self.get(&path).await?;
        let resp = self.check(resp).await?;
        Ok(NodeWatch {
            body: resp.into_body(),
            buf: Vec::new(),
            url: self.url.clone(),
        })
    }

    async fn check(&self, resp: Response<Incoming>) -> Result<Response<Incoming>, KubeError> {
        let code = resp.status();
        if code == StatusCode::OK {
            return Ok(resp);
        }
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(resp.into_body(), MAX_ERROR_BODY).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).trim().to_owned())
        .unwrap_or_default();
        if code == StatusCode::GONE {
            return Err(KubeError::Gone(body));
        }
        Err(KubeError::Status {
            url: self.url.clone(),
            code: code.as_u16(),
            body,
        })
    }

    async fn get(&self, path: &str) -> Result<Response<Incoming>, KubeError> {
        let token = match std::fs::read_to_string(&self.token_file) {
            Ok(t) => Some(t.trim().to_owned()),
            // Plain HTTP (kubectl proxy) needs no token.
            Err(_) if self.tls.is_none() => None,
            Err(e) => {
                return Err(KubeError::Config(format!(
                    "service account token {}: {e}",
                    self.token_file.display()
                )));
            }
        };
        let tcp = tokio::time::timeout(
            REQUEST_TIMEOUT,
            TcpStream::connect((
                self.host.trim_start_matches('[').trim_end_matches(']'),
                self.port,
            )),
        )
        .await
        .map_err(|_| self.transport("connect timed out"))?
        .map_err(|e| self.transport(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::get(path)
            .header(HOST, format!("{}:{}", self.host, self.port))
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("weft/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.transport(format!("building the request: {e}")))?;
        match &self.tls {
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(REQUEST_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| self.transport("TLS handshake timed out"))?
                        .map_err(|e| self.transport(format!("TLS: {e}")))?;
                self.send(tls, req).await
            }
            None => self.send(tcp, req).await,
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, KubeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.transport(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("Kubernetes API connection: {e}");
            }
        });
        tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| self.transport("no answer in time"))?
            .map_err(|e| self.transport(format!("HTTP: {e}")))
    }

    fn transport(&self, detail: impl Into<String>) -> KubeError {
        KubeError::Transport {
            url: self.url.clone(),
            detail: detail.into(),
        }
    }
}

/// An open node watch: newline-delimited JSON events.
#[derive(Debug)]
pub struct NodeWatch {
    body: Incoming,
    buf: Vec<u8>,
    url: String,
}

impl NodeWatch {
    /// The next event; `None` when the server ended the watch.
    ///
    /// # Errors
    ///
    /// Transport errors (including silence longer than the watch's own timeout), an event line
    /// that is too long, or one that does not decode.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, KubeError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(decode_watch_event(line)?));
            }
            if self.buf.len() > MAX_EVENT {
                return Err(KubeError::Transport {
                    url: self.url.clone(),
                    detail: format!("a watch event longer than {MAX_EVENT} bytes"),
                });
            }
            let frame = tokio::time::timeout(WATCH_TIMEOUT + WATCH_GRACE, self.body.frame())
                .await
                .map_err(|_| KubeError::Transport {
                    url: self.url.clone(),
                    detail: "the watch went silent".to_owned(),
                })?;
            match frame {
                None => {
                    let rest = std::mem::take(&mut self.buf);
                    let rest = rest.trim_ascii();
                    return if rest.is_empty() {
                        Ok(None)
                    } else {
                        Ok(Some(decode_watch_event(rest)?))
                    };
                }
                Some(Err(e)) => {
                    return Err(KubeError::Transport {
                        url: self.url.clone(),
                        detail: format!("reading the watch: {e}"),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Lists the nodes, retrying with back-off for at most `within`.
///
/// # Errors
///
/// The last error, when no list succeeded in time.
pub async fn initial_list(client: &KubeClient, within: Duration) -> Result<NodeList, KubeError> {
    let deadline = Instant::now() + within;
    let mut backoff = Backoff::new();
    loop {
        match client.list_nodes().await {
            Ok(list) => return Ok(list),
            Err(e) if Instant::now() + backoff.peek() < deadline => {
                warn!(api = client.url(), "listing nodes: {e}; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The addresses of every other node in `list`, as `--peers` entries.
pub fn peer_addrs(list: &NodeList, me: &str, port: u16) -> Vec<String> {
    list.nodes
        .iter()
        .filter(|n| n.name != me)
        .filter_map(|n| {
            n.internal_ip
                .map(|ip| SocketAddr::new(ip, port).to_string())
        })
        .collect()
}

/// Every address of the given nodes: who may open a control connection without a password.
pub fn node_addrs<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeSet<IpAddr> {
    nodes
        .into_iter()
        .flat_map(|n| n.addresses.iter().copied())
        .collect()
}

/// The discovery task: everything it needs.
#[derive(Debug)]
pub struct Discoverer {
    /// The API client.
    pub client: KubeClient,
    /// This node's name (the router's nickname).
    pub me: String,
    /// The mesh port every router listens on.
    pub port: u16,
    /// The daemon's command queue.
    pub commands: mpsc::Sender<ApiCommand>,
    /// Every address of every Node, for the control port's admission.
    pub node_addrs: watch::Sender<BTreeSet<IpAddr>>,
    /// The published status, for the peer names behind nicknames.
    pub status: StatusReader,
    /// Becomes true when the router stops.
    pub shutdown: watch::Receiver<bool>,
    /// Where what discovery knows is kept across restarts (in the state directory), so a node
    /// deleted while the router was down is still forgotten and reclaimed; `None`: not kept.
    pub state_file: Option<PathBuf>,
}

impl Discoverer {
    /// Runs until shutdown, starting from `initial` (whose other nodes the router already
    /// dials, as `--peers`).
    pub async fn run(mut self, initial: NodeList) {
        let mut state = State::default();
        if let Some(path) = &self.state_file {
            match Saved::load(path) {
                Ok(saved) => saved.restore(&mut state),
                Err(e) => warn!("{e}; starting without it"),
            }
        }
        state.load(&self.me, self.port, initial);
        self.apply(&mut state).await;
        if !state.nodes.contains_key(&self.me) {
            warn!(
                nickname = %self.me,
                "no Node has this router's nickname: set --nickname to the node name (the \
                 DaemonSet passes NODE_NAME); this node is dialled like any other"
            );
        }
        let mut backoff = Backoff::new();
        let mut relist = false;
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'outer: loop {
            if relist {
                let listed = tokio::select! {
                    r = self.client.list_nodes() => r,
                    () = stopped(&mut self.shutdown) => break 'outer,
                };
                match listed {
                    Ok(list) => {
                        info!(nodes = list.nodes.len(), "listed nodes again");
                        state.replace(list);
                        relist = false;
                        self.apply(&mut state).await;
                    }
                    Err(e) => {
                        warn!(api = self.client.url(), "listing nodes: {e}");
                        if self.pause(backoff.next_delay()).await {
                            break 'outer;
                        }
                        continue;
                    }
                }
            }
            let opened = tokio::select! {
                r = self.client.watch_nodes(&state.resource_version) => r,
                () = stopped(&mut self.shutdown) => break 'outer,
            };
            let mut watch = match opened {
                Ok(w) => w,
                Err(KubeError::Gone(why)) => {
                    info!("node watch: resource version too old ({why}); listing again");
                    relist = true;
                    continue;
                }
                Err(e) => {
                    warn!(api = self.client.url(), "watching nodes: {e}");
                    if self.pause(backoff.next_delay()).await {
                        break 'outer;
                    }
                    continue;
                }
            };
            let started = Instant::now();
            loop {
                let next = tokio::select! {
                    r = watch.next() => r,
                    _ = retry.tick() => {
                        // Retry what failed (an rmpeer refused while the peer was connected).
                        self.apply(&mut state).await;
                        continue;
                    }
                    () = stopped(&mut self.shutdown) => break 'outer,
                };
                match next {
                    Ok(Some(WatchEvent::Error { code: 410, message })) => {
                        info!("node watch: {message}; listing again");
                        relist = true;
                        break;
                    }
                    Ok(Some(WatchEvent::Error { code, message })) => {
                        warn!(code, "node watch ended by the server: {message}");
                        break;
                    }
                    Ok(Some(event)) => {
                        if state.event(event) {
                            self.apply(&mut state).await;
                        }
                        backoff.reset();
                    }
                    Ok(None) => {
                        debug!("node watch ended; watching again");
                        break;
                    }
                    // An event that does not decode is lost if we resume after it: list again,
                    // which recovers the whole state.
                    Err(e @ KubeError::Decode(_)) => {
                        warn!("node watch: {e}; listing again");
                        relist = true;
                        break;
                    }
                    Err(e) => {
                        warn!("node watch: {e}");
                        break;
                    }
                }
            }
            // A watch that ended at once (server trouble) waits before the next; one that ran
            // a while resumes right away.
            if started.elapsed() < MIN_WATCH && self.pause(backoff.next_delay()).await {
                break 'outer;
            }
        }
        debug!("node discovery stopped");
    }

    /// Sleeps; true when the router is stopping.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => false,
            () = stopped(&mut self.shutdown) => true,
        }
    }

    /// Plans and carries out what brings the router in line with the nodes.
    async fn apply(&self, state: &mut State) {
        // Admission first: a node just added may already be dialling this router.
        let addrs = node_addrs(state.nodes.values());
        self.node_addrs.send_if_modified(|old| {
            let changed = *old != addrs;
            *old = addrs;
            changed
        });
        state.discovery.observe(&self.me, &state.nodes);
        // Learn the peer names behind nicknames while the peers are in the mesh, so a node
        // deleted after its peer left the topology can still be reclaimed by name.
        for p in &self.status.current().peers {
            if state.nodes.contains_key(&p.nickname) {
                state.peer_names.insert(p.nickname.clone(), p.name.clone());
            }
        }
        for action in reconcile(&self.me, self.port, &state.nodes, &state.discovery) {
            match &action {
                Action::Connect { node, addr } => {
                    match self
                        .ask(|reply| ApiCommand::Connect {
                            addr: addr.to_string(),
                            reply,
                        })
                        .await
                    {
                        Ok(msg) => {
                            info!(%node, %addr, "node discovered: {msg}");
                            state.discovery.connected(node, *addr);
                        }
                        Err(e) => warn!(%node, %addr, "connecting a discovered node: {e}"),
                    }
                }
                Action::Forget { node, addr } => {
                    match self
                        .ask(|reply| ApiCommand::Forget {
                            addr: addr.to_string(),
                            reply,
                        })
                        .await
                    {
                        Ok(_) => {
                            info!(%node, %addr, "node gone or moved: forgot its address");
                            state.discovery.forgotten(node, *addr);
                        }
                        // Not a target any more (forgotten by hand): that is what we wanted.
                        Err(e) if e.kind == CommandErrorKind::NotFound => {
                            state.discovery.forgotten(node, *addr);
                        }
                        Err(e) => warn!(%node, %addr, "forgetting a node: {e}"),
                    }
                }
                Action::RmPeer { node } => {
                    let name = state
                        .peer_names
                        .get(node)
                        .cloned()
                        .unwrap_or_else(|| node.clone());
                    match self
                        .ask(|reply| ApiCommand::RmPeer {
                            name: name.clone(),
                            reply,
                        })
                        .await
                    {
                        Ok(msg) => {
                            info!(%node, "node deleted: {msg}");
                            state.discovery.reclaimed(node);
                            state.peer_names.remove(node);
                        }
                        Err(e) if e.kind == CommandErrorKind::NotFound => {
                            info!(%node, "node deleted; no peer of that name to remove ({e})");
                            state.discovery.reclaimed(node);
                            state.peer_names.remove(node);
                        }
                        // Still connected: try again at the next retry tick.
                        Err(e) => debug!(%node, "removing a deleted node's peer: {e}; will retry"),
                    }
                }
            }
        }
        self.save(state);
    }

    /// Keeps what discovery knows in the state file, when it changed.
    fn save(&self, state: &mut State) {
        let Some(path) = &self.state_file else {
            return;
        };
        // The engine creates the state directory as it starts; until then, save later.
        if path.parent().is_some_and(|d| !d.is_dir()) {
            return;
        }
        let saved = Saved::of(state);
        if state.saved.as_ref() == Some(&saved) {
            return;
        }
        match saved.store(path) {
            Ok(()) => state.saved = Some(saved),
            Err(e) => warn!("{e}"),
        }
    }

    async fn ask(&self, make: impl FnOnce(Reply) -> ApiCommand) -> Result<String, CommandError> {
        let (reply, rx) = Reply::new();
        let gone = || CommandError::engine_unavailable("router engine not running");
        self.commands.send(make(reply)).await.map_err(|_| gone())?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => outcome.map(|o| o.message),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(CommandError::engine_unavailable(
                "router engine did not answer",
            )),
        }
    }
}

/// The nodes as last seen, the watch position and what discovery has done.
#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    resource_version: String,
    discovery: Discovery,
    /// Node name → peer name, learned from status.
    peer_names: BTreeMap<String, String>,
    /// What the state file holds.
    saved: Option<Saved>,
}

/// What discovery keeps across restarts: the nodes it knew, the addresses it had the router
/// dial, the deleted nodes not reclaimed yet, and the peer names behind node names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    known: Vec<String>,
    dialled: BTreeMap<String, SocketAddr>,
    unreclaimed: Vec<String>,
    peer_names: BTreeMap<String, String>,
}

impl Saved {
    fn of(state: &State) -> Self {
        Self {
            known: state.discovery.known.iter().cloned().collect(),
            dialled: state.discovery.dialled.clone(),
            unreclaimed: state.discovery.unreclaimed.iter().cloned().collect(),
            peer_names: state.peer_names.clone(),
        }
    }

    fn restore(self, state: &mut State) {
        state.discovery.known = self.known.iter().cloned().collect();
        state.discovery.dialled = self.dialled.clone();
        state.discovery.unreclaimed = self.unreclaimed.iter().cloned().collect();
        state.peer_names = self.peer_names.clone();
        state.saved = Some(self);
    }

    /// Reads the file; an absent file is an empty state.
    fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => Self::decode(&bytes)
                .map_err(|e| format!("{}: not weft's node discovery state: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                known: Vec::new(),
                dialled: BTreeMap::new(),
                unreclaimed: Vec::new(),
                peer_names: BTreeMap::new(),
            }),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// Decodes the file's bytes.
    ///
    /// # Errors
    ///
    /// The JSON decoder's, when the bytes are not this state.
    pub fn decode(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    /// Writes the file atomically (temporary file, rename).
    fn store(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("saving node discovery state {}: {e}", path.display()))
    }
}

impl State {
    /// The first list: its other nodes are already `--peers` targets.
    fn load(&mut self, me: &str, port: u16, list: NodeList) {
        self.replace(list);
        for n in self.nodes.values().filter(|n| n.name != me) {
            if let Some(ip) = n.internal_ip {
                self.discovery.connected(&n.name, SocketAddr::new(ip, port));
            }
        }
        self.discovery.observe(me, &self.nodes);
    }

    fn replace(&mut self, list: NodeList) {
        if list.skipped > 0 {
            warn!(skipped = list.skipped, "nodes without a valid name ignored");
        }
        self.nodes = list
            .nodes
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        self.resource_version = list.resource_version;
    }

    /// Applies one event; true when the nodes changed.
    fn event(&mut self, event: WatchEvent) -> bool {
        match event {
            WatchEvent::Added {
                node,
                resource_version,
            }
            | WatchEvent::Modified {
                node,
                resource_version,
            } => {
                self.resource_version = resource_version;
                let changed = self.nodes.get(&node.name) != Some(&node);
                self.nodes.insert(node.name.clone(), node);
                changed
            }
            WatchEvent::Deleted {
                node,
                resource_version,
            } => {
                self.resource_version = resource_version;
                self.nodes.remove(&node.name).is_some()
            }
            WatchEvent::Bookmark { resource_version } => {
                self.resource_version = resource_version;
                false
            }
            WatchEvent::Error { .. } => false,
        }
    }
}

/// Exponential back-off between failed API calls.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    fn peek(&self) -> Duration {
        self.next
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Reads every certificate of a PEM bundle into a root store.
fn load_roots(path: &Path) -> Result<RootCertStore, KubeError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let named = |e: &dyn std::fmt::Display| {
        KubeError::Config(format!("cluster CA {}: {e}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| named(&e))? {
        let cert = cert.map_err(|e| named(&e))?;
        roots.add(cert).map_err(|e| named(&e))?;
    }
    if roots.is_empty() {
        return Err(named(&"no certificate in the file"));
    }
    Ok(roots)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long one request (connect, TLS, answer head, a list's body) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The server ends each watch after this long; the client then watches again.
const WATCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Silence beyond the watch's timeout after which the client gives the watch up.
const WATCH_GRACE: Duration = Duration::from_secs(30);
/// A watch shorter than this is followed by a back-off pause.
const MIN_WATCH: Duration = Duration::from_secs(5);
/// How often failed actions (refused rmpeers) are planned again.
const RETRY: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest node list read (a 5000-node cluster's list is some tens of MiB).
const MAX_LIST: usize = 256 * 1024 * 1024;
/// Largest single watch event.
const MAX_EVENT: usize = 4 * 1024 * 1024;
/// Largest error body kept.
const MAX_ERROR_BODY: usize = 4096;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_settings() {
        let s = |api: &str| KubeSettings {
            api: Some(api.to_owned()),
            ..KubeSettings::in_cluster()
        };
        let c = KubeClient::new(&s("http://127.0.0.1:8001/")).unwrap();
        assert_eq!(
            (c.url(), c.port, c.tls.is_none()),
            ("http://127.0.0.1:8001", 8001, true)
        );
        for bad in ["ftp://x:1", "http://x", "http://:1", "http://x:y"] {
            let e = KubeClient::new(&s(bad)).unwrap_err().to_string();
            assert!(e.contains("--kube-api"), "{bad}: {e}");
        }
        // HTTPS needs the CA file, and says which.
        let e = KubeClient::new(&KubeSettings {
            ca_file: PathBuf::from("/nonexistent/ca.crt"),
            ..s("https://10.96.0.1:443")
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
    }

    #[test]
    fn resource_versions_are_escaped() {
        assert_eq!(percent_encode("123"), "123");
        assert_eq!(percent_encode("a&b=c d"), "a%26b%3Dc%20d");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
