//! Peer discovery from Node objects (`--kube-peers`): the first list before the engine starts,
//! then [`Discoverer`] following the Nodes and carrying out what the pure
//! [`topology::kube::reconcile`] plans, over the daemon's command channel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use topology::kube::{Action, Discovery, Node, NodeError, reconcile};
use tracing::{debug, info, warn};

use super::KubeError;
use super::health::Health;
use super::watch::{Change, PAGE_SIZE, Skipped, follow};
use crate::api::{ApiCommand, CommandError, CommandErrorKind, Reply};
use crate::status::StatusReader;

/// weft's view of a Node object.
///
/// # Errors
///
/// [`NodeError`] when its name is not a DNS subdomain.
pub fn node(obj: &KubeNode) -> Result<Node, NodeError> {
    let addresses = obj
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    Node::from_status(
        obj.metadata.name.as_deref().unwrap_or_default(),
        addresses
            .iter()
            .map(|a| (a.type_.as_str(), a.address.as_str())),
    )
}

/// Lists every Node (in pages), retrying with back-off for at most `within`. Nodes of no use
/// (an invalid name) are skipped and logged.
///
/// # Errors
///
/// The last error, when no list succeeded in time.
pub async fn initial_list(
    client: &kube::Client,
    url: &str,
    within: Duration,
) -> Result<Vec<Node>, KubeError> {
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(500);
    loop {
        match list_once(client).await {
            Ok(nodes) => return Ok(nodes),
            Err(e) if Instant::now() + delay < deadline => {
                warn!(api = url, "listing nodes: {}; retrying", super::chain(&e));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(KubeError::Request {
                    url: url.to_owned(),
                    detail: format!("listing nodes: {}", super::chain(&e)),
                });
            }
        }
    }
}

async fn list_once(client: &kube::Client) -> Result<Vec<Node>, kube::Error> {
    let api: Api<KubeNode> = Api::all(client.clone());
    let mut nodes = Vec::new();
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await?;
        for obj in &page.items {
            match node(obj) {
                Ok(n) => nodes.push(n),
                Err(e) => warn!("skipping a Node: {e}"),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(nodes),
        }
    }
}

/// The addresses of every other node, as `--peers` entries.
pub fn peer_addrs(nodes: &[Node], me: &str, port: u16) -> Vec<String> {
    nodes
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
pub struct Discoverer {
    /// The API client.
    pub client: kube::Client,
    /// The API's URL, for messages.
    pub url: String,
    /// Whether the watch is in sync, for status.
    pub health: Health,
    /// Node objects skipped because they were of no use.
    pub skipped: Skipped,
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

impl std::fmt::Debug for Discoverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discoverer")
            .field("url", &self.url)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Discoverer {
    /// Runs until shutdown, starting from `initial` (whose other nodes the router already
    /// dials, as `--peers`).
    pub async fn run(mut self, initial: Vec<Node>) {
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
        let changes = follow(
            self.client.clone(),
            watcher::Config::default().page_size(PAGE_SIZE),
            node,
            self.skipped.clone(),
        );
        let mut changes = std::pin::pin!(changes);
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let change = tokio::select! {
                c = changes.next() => c,
                _ = retry.tick() => {
                    // Retry what failed (an rmpeer refused while the peer was connected).
                    self.apply(&mut state).await;
                    continue;
                }
                () = stopped(&mut self.shutdown) => break,
            };
            match change {
                Some(Ok(change)) => {
                    let changed = state.change(change);
                    self.health.ok(state.nodes.len(), self.skipped.get());
                    if changed {
                        self.apply(&mut state).await;
                    }
                }
                Some(Err(e)) => {
                    let e = super::chain(&e);
                    warn!(api = %self.url, "watching nodes: {e}; retrying");
                    self.health.failed(e);
                }
                None => break,
            }
        }
        debug!("node discovery stopped");
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
        match tokio::time::timeout(super::REQUEST_TIMEOUT, rx).await {
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

    /// Writes the file atomically and durably: a temporary file, synced, renamed into place,
    /// and the directory synced, so a crash leaves the old state or the new, never neither.
    fn store(&self, path: &Path) -> Result<(), String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        written.map_err(|e| format!("saving node discovery state {}: {e}", path.display()))
    }
}

impl State {
    /// The first list: its other nodes are already `--peers` targets.
    fn load(&mut self, me: &str, port: u16, nodes: Vec<Node>) {
        self.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        for n in self.nodes.values().filter(|n| n.name != me) {
            if let Some(ip) = n.internal_ip {
                self.discovery.connected(&n.name, SocketAddr::new(ip, port));
            }
        }
        self.discovery.observe(me, &self.nodes);
    }

    /// Applies one change; true when the nodes changed.
    fn change(&mut self, change: Change<Node>) -> bool {
        match change {
            Change::Restarted(nodes) => {
                let nodes: BTreeMap<String, Node> =
                    nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
                let changed = nodes != self.nodes;
                self.nodes = nodes;
                changed
            }
            Change::Applied(node) => {
                let changed = self.nodes.get(&node.name) != Some(&node);
                self.nodes.insert(node.name.clone(), node);
                changed
            }
            Change::Deleted { name, .. } => self.nodes.remove(&name).is_some(),
            Change::Skipped => false,
        }
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// How often failed actions (refused rmpeers) are planned again.
const RETRY: Duration = Duration::from_secs(10);
