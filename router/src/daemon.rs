//! The daemon loop: one task owns the topology engine ([`Mesh`]) and drives it from control
//! connections, timers and API commands; one task per TCP connection runs the Noise handshake
//! and then moves sealed control messages between the socket and the engine.
//!
//! The loop holds no protocol logic of its own: it feeds inputs to the engine, then drains the
//! engine's outputs in quinn's order (`poll_transmit`, `poll_timeout`, `poll_event`) and carries
//! them out. Status is published as a snapshot the API reads without touching the engine.
//! By concern: `identity` (key and password), `connection` (dialling, admitting and one control connection's task),
//! `settings` (the encryption roll-out), `allocations` (IPAM and CNI allocations) and
//! `snapshot` (the published status).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use crypto::{
    ControlChannel, DataKeys, Handshake, HandshakeConfig, HandshakeError, MeshPassword, SettingsKey,
};
use rand::RngCore as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use topology::admission::{self, Verdict};
use topology::api::ipam as ipam_api;
use topology::channel::{self, Channel, Hello};
use topology::dataplane::NextHops;
use topology::fastdp::{Mode, Path as FastdpPath, PathEncryption, Reason as FastdpReason};
use topology::ipam::{self, Allocation, Ipam};
use topology::settings::{self as mesh_settings, EncryptionRecord, Settings};
use topology::{ConnId, Event, Mesh, PeerName};
use tracing::{debug, info, warn};

mod allocations;
mod connection;
mod identity;
mod settings;
mod snapshot;

use allocations::start_ipam;
use identity::Identity;

use crate::EngineHandles;
use crate::api::JsonReply;
use crate::api::{ApiCommand, CommandError, CommandOutcome};
use crate::config::RouterConfig;
use crate::encryption::{self, SealPolicy};
use crate::fastdp::{FastdpConfig, FastdpPlane};
use crate::ipam_store::IpamStore;
use crate::metrics::{DropReason, GossipDirection, HandshakeFailure, Metrics};
use crate::sleeve::{Sleeve, SleeveConfig, TAP};
use crate::status::{
    ConnectionEncryption, ConnectionState, ConnectionStatus, EncryptionMode, PeerConnStatus,
    PeerStatus, RouteStatus, RouterStatus, TargetState, TargetStatus,
};

/// Runs the router's engine until `handles.shutdown` turns true.
///
/// # Errors
/// Fails when the node key, password or state directory cannot be used, or the control port
/// cannot be bound; the message names the file or address.
pub async fn run(config: RouterConfig, handles: EngineHandles) -> Result<()> {
    let identity = Identity::load(&config)?;
    // The pod MTU and the sleeve's datagram size, from the underlay when not given.
    let mut pod_mtu = config.mtu.unwrap_or(DEFAULT_POD_MTU);
    let mut max_datagram = UNDERLAY_MAX_DATAGRAM;
    let mut netfilter = None;
    let (tunnel_peers, tunnel_peers_rx) = watch::channel(BTreeSet::new());
    let bridge = if config.devices {
        let netlink = crate::netlink::Netlink::connect()?;
        let underlay =
            crate::underlay::detect(netlink.handle(), &config.peers, config.bind_addr).await;
        pod_mtu = config.mtu.unwrap_or_else(|| underlay.pod_mtu());
        max_datagram = underlay.max_datagram();
        info!(
            underlay_mtu = underlay.mtu,
            from = %underlay.source,
            pod_mtu,
            given = config.mtu.is_some(),
            "MTU"
        );
        let warnings = crate::node_net::ensure_sysctls(Path::new("/proc/sys"));
        let policy = match handles.cluster_view.clone() {
            Some(view) => Some(crate::policy::PolicyFeed {
                view,
                node: config.nickname.clone(),
                node_ips: crate::underlay::local_addresses(netlink.handle()).await,
            }),
            None => None,
        };
        netfilter = Some(crate::node_net::spawn_rules(
            crate::node_net::RuleSettings {
                pod_range: config.ipalloc_range,
                masquerade: config.masquerade,
                no_masq_cidrs: config.no_masq_cidrs.clone(),
                sleeve_port: config.port,
                vxlan_port: config.vxlan_port,
            },
            tunnel_peers_rx,
            policy,
            warnings,
            handles.metrics.clone(),
            handles.shutdown.clone(),
        ));
        let index = netlink.ensure_bridge(BRIDGE, pod_mtu).await?;
        info!(bridge = BRIDGE, index, "bridge ready");
        Some((netlink, index))
    } else {
        None
    };
    let bind = SocketAddr::new(
        config
            .bind_addr
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        config.port,
    );
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the control port {bind}"))?;
    let port = listener.local_addr()?.port();
    let sleeve = match &bridge {
        Some((netlink, index)) => {
            let sleeve_config = SleeveConfig {
                local: identity.name,
                // The sleeve shares the control port's number (UDP).
                bind: SocketAddr::new(bind.ip(), port),
                tap: TAP.to_owned(),
                bridge_index: *index,
                mtu: pod_mtu,
                encryption: config.encryption,
                max_datagram,
            };
            let sleeve = Sleeve::start(sleeve_config, netlink, handles.metrics.clone())
                .await
                .context("starting the sleeve")?;
            info!(
                tap = TAP,
                port,
                encryption = config.encryption,
                "sleeve running"
            );
            Some(sleeve)
        }
        None => None,
    };
    let fastdp = match &bridge {
        Some((netlink, index)) => {
            let fastdp_config = FastdpConfig {
                local: identity.name,
                mode: match config.datapath {
                    crate::config::DatapathMode::Auto => Mode::Auto,
                    crate::config::DatapathMode::Fastdp => Mode::Fastdp,
                    crate::config::DatapathMode::Sleeve => Mode::Sleeve,
                },
                vxlan_port: config.vxlan_port,
                mtu: pod_mtu,
                bridge: *index,
                // No kernel ESP here: encrypted traffic takes the sealed sleeve.
                encryption_required: config.encryption,
            };
            let (plane, answers) =
                FastdpPlane::start(&fastdp_config, netlink, handles.metrics.clone())
                    .await
                    .context("starting fastdp")?;
            Some((plane, answers))
        }
        None => None,
    };
    let ipam = start_ipam(&config, identity.name)?;
    let mut daemon = Daemon::new(config, identity, handles, port, ipam, bridge);
    daemon.sleeve = sleeve;
    daemon.netfilter = netfilter;
    daemon.tunnel_peers = tunnel_peers;
    if let Some((plane, answers)) = fastdp {
        daemon.fastdp = Some(plane);
        daemon.fastdp_answers = Some(answers);
    }
    daemon.add_initial_targets().await;
    daemon.apply_release_queue();
    info!(name = %daemon.mesh.name(), port, "mesh engine running");
    daemon.run(listener).await
}

/// What connection tasks tell the engine.
enum Input {
    /// A handshake and hello finished: the connection carries control messages now.
    Up {
        conn: ConnId,
        remote: PeerName,
        hello: Hello,
        addr: SocketAddr,
        /// This router's end of the TCP connection (its underlay address toward the peer).
        local: SocketAddr,
        outbound: bool,
        tx: mpsc::Sender<Vec<u8>>,
        /// The connection's data-plane keys, for the sleeve.
        keys: DataKeys,
    },
    /// One control message arrived.
    Control { conn: ConnId, msg: Vec<u8> },
    /// An established connection closed.
    Down { conn: ConnId, reason: String },
    /// Dialling or the handshake of an outbound connection failed.
    DialFailed { addr: SocketAddr, reason: String },
}

struct Daemon {
    config: RouterConfig,
    mesh: Mesh,
    identity: Identity,
    handles: EngineHandles,
    inputs_tx: mpsc::Sender<Input>,
    inputs_rx: mpsc::Receiver<Input>,
    conns: BTreeMap<ConnId, mpsc::Sender<Vec<u8>>>,
    next_conn: u64,
    peers_file_mtime: Option<SystemTime>,
    persisted: BTreeSet<SocketAddr>,
    last_publish: Option<Instant>,
    /// The control port actually bound (`--port 0` picks one).
    port: u16,
    /// When a throttled status snapshot is to be published.
    publish_due: Option<Instant>,
    /// [`Daemon::status_digest`] when the last snapshot was built.
    published_digest: u64,
    /// When [`Daemon::maybe_publish`] last looked for changes.
    last_check: Option<Instant>,
    ipam: Ipam,
    ipam_store: IpamStore,
    /// The bridge's netlink handle and index, when the router manages devices.
    bridge: Option<(crate::netlink::Netlink, u32)>,
    /// The bridge's gateway address, once IPAM gave it and it is on the bridge.
    gateway: Option<ipam::Address>,
    /// CNI allocations waiting for the ring or for space.
    pending_allocs: Vec<PendingAlloc>,
    /// Which peer each established connection leads to.
    conn_peer: BTreeMap<ConnId, PeerName>,
    /// The sleeve data plane, when the router manages devices.
    sleeve: Option<Sleeve>,
    /// The mesh-wide encryption setting.
    settings: Settings,
    /// The underlay addresses (local, remote) of each established connection.
    conn_addrs: BTreeMap<ConnId, (IpAddr, IpAddr)>,
    /// The effective encryption rule, for data paths that follow it (fastdp).
    seal_policy: watch::Sender<SealPolicy>,
    /// Setting records refused for a missing or wrong proof.
    settings_rejected: u64,
    /// The fastdp data plane, when the router manages devices.
    fastdp: Option<FastdpPlane>,
    /// Probe answers (sender addresses) from the fastdp listener.
    fastdp_answers: Option<mpsc::UnboundedReceiver<IpAddr>>,
    /// fastdp announcements received, handled in [`Daemon::drain_fastdp`].
    fastdp_inbox: Vec<(ConnId, Vec<u8>)>,
    /// What the nftables task last found, when the router manages devices.
    netfilter: Option<watch::Receiver<crate::nft::NetfilterStatus>>,
    /// The underlay addresses of the peers this router knows (connected or gossiped): the
    /// only sources the tunnel ports accept.
    tunnel_peers: watch::Sender<BTreeSet<IpAddr>>,
}

/// An allocation request answered once IPAM can, or with an error at its deadline.
struct PendingAlloc {
    request: ipam_api::AllocateRequest,
    deadline: Instant,
    reply: JsonReply,
}

impl Daemon {
    fn new(
        config: RouterConfig,
        identity: Identity,
        handles: EngineHandles,
        port: u16,
        (ipam, ipam_store): (Ipam, IpamStore),
        bridge: Option<(crate::netlink::Netlink, u32)>,
    ) -> Self {
        let mut mesh_config = topology::Config::new(identity.name, config.nickname.clone());
        mesh_config.listen_port = port;
        mesh_config.conn_limit = config.conn_limit as usize;
        mesh_config.dial_timeout = DIAL_TIMEOUT;
        // The kernel's keepalive finds dead links (see `connection::set_liveness`); heartbeats
        // only carry the view digest and catch a hung router, so they can be rare: at 100
        // peers, 500 ms heartbeats cost each router 400 messages a second.
        mesh_config.heartbeat_interval = HEARTBEAT_INTERVAL;
        mesh_config.heartbeat_timeout = HEARTBEAT_INTERVAL * 3;
        // Each incarnation's records outrank the last one's, so a restarted router is taken
        // back at once (not after a neighbour's 10 s tombstone of its last record).
        mesh_config.initial_version = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2));
        let mesh = Mesh::new(mesh_config, Instant::now(), rand::rngs::OsRng.next_u64());
        let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE);
        let initial = encryption::sign(
            identity.settings_key.as_ref(),
            EncryptionRecord::initial(config.encryption, mesh.uid()),
        );
        let settings = Settings::new(mesh.uid(), initial);
        let (seal_policy, _) = watch::channel(SealPolicy {
            enabled: config.encryption,
            version: 0,
            trusted: config.trusted_subnets.clone(),
        });
        Self {
            config,
            mesh,
            identity,
            handles,
            inputs_tx,
            inputs_rx,
            conns: BTreeMap::new(),
            next_conn: 1,
            peers_file_mtime: None,
            persisted: BTreeSet::new(),
            last_publish: None,
            port,
            publish_due: None,
            published_digest: 0,
            last_check: None,
            ipam,
            ipam_store,
            bridge,
            gateway: None,
            pending_allocs: Vec::new(),
            conn_peer: BTreeMap::new(),
            sleeve: None,
            settings,
            conn_addrs: BTreeMap::new(),
            seal_policy,
            settings_rejected: 0,
            fastdp: None,
            fastdp_answers: None,
            fastdp_inbox: Vec::new(),
            netfilter: None,
            tunnel_peers: watch::channel(BTreeSet::new()).0,
        }
    }

    /// Targets from `--peers`, the peers file and the persisted peers of an earlier run.
    async fn add_initial_targets(&mut self) {
        let port = self.config.port;
        for peer in self.config.peers.clone() {
            match resolve(&peer, port).await {
                Some(addr) => self.mesh.add_target(addr),
                None => warn!(peer = %peer, "--peers: cannot resolve this address; skipped"),
            }
        }
        self.reread_peers_file().await;
        match load_persisted_peers(&self.persisted_path()) {
            Ok(addrs) => {
                for addr in &addrs {
                    self.mesh.add_target(*addr);
                }
                self.persisted = addrs;
            }
            Err(e) => warn!("persisted peers ignored: {e:#}"),
        }
    }

    async fn run(mut self, listener: TcpListener) -> Result<()> {
        self.maybe_publish(true);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = [
                self.mesh.poll_timeout().map(|(t, _)| t),
                self.ipam.poll_timeout().map(|(t, _)| t),
                self.pending_allocs.iter().map(|p| p.deadline).min(),
                self.publish_due,
                self.fastdp.as_ref().and_then(FastdpPlane::poll_timeout),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + HOUSEKEEPING);
            tokio::select! {
                input = self.inputs_rx.recv() => {
                    // The daemon holds a sender itself, so the channel never closes.
                    if let Some(input) = input {
                        self.handle_input(input);
                    }
                    // What else has arrived is handled in the same turn (bounded, so the
                    // other branches still get theirs): one drain and status check for a
                    // burst of heartbeats, not one each.
                    for _ in 1..BURST {
                        let Ok(input) = self.inputs_rx.try_recv() else { break };
                        self.handle_input(input);
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => self.admit(stream, addr),
                    Err(e) => warn!("accepting a control connection: {e}"),
                },
                cmd = self.handles.commands.recv() => {
                    if let Some(cmd) = cmd {
                        self.handle_command(cmd).await;
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    self.mesh.handle_timeout(now);
                    self.ipam.handle_timeout(now);
                    if let Some(f) = &mut self.fastdp {
                        f.handle_timeout(now);
                    }
                }
                addr = next_answer(&mut self.fastdp_answers) => {
                    if let Some(f) = &mut self.fastdp {
                        f.handle_answer(addr);
                        // A round's answers come back together.
                        if let Some(rx) = &mut self.fastdp_answers {
                            for _ in 1..BURST {
                                let Ok(addr) = rx.try_recv() else { break };
                                f.handle_answer(addr);
                            }
                        }
                    }
                }
                _ = housekeeping.tick() => self.housekeeping().await,
                changed = self.handles.shutdown.changed() => {
                    if changed.is_err() || *self.handles.shutdown.borrow() {
                        info!("engine stopping");
                        return Ok(());
                    }
                }
            }
            self.drain();
            self.drain_fastdp().await;
            self.ensure_gateway().await;
            self.maybe_publish(false);
        }
    }

    fn handle_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Up {
                conn,
                remote,
                hello,
                addr,
                local,
                outbound,
                tx,
                keys,
            } => {
                info!(peer = %remote, nickname = %hello.nickname, %addr, outbound, "connection established");
                self.conn_addrs.insert(conn, (local.ip(), addr.ip()));
                // Before the peer's first probe or datagram can arrive.
                self.tunnel_peers
                    .send_if_modified(|peers| peers.insert(addr.ip()));
                let seal = self.seal_decision(conn).is_some_and(|d| d.seal);
                if let Some(sleeve) = &self.sleeve {
                    let dest = SocketAddr::new(addr.ip(), hello.port);
                    sleeve.add_peer(conn.0, remote, dest, keys, seal);
                }
                self.settings.handle_connection_up(conn);
                let mut announcements = Vec::new();
                if let Some(f) = &mut self.fastdp {
                    let exempt = self.seal_policy.borrow().enabled && !seal;
                    f.set_encryption_exempt(remote, exempt);
                    announcements = f.peer_up(now, remote, addr.ip());
                }
                self.conns.insert(conn, tx);
                for msg in announcements {
                    self.send_to(conn, msg);
                }
                self.conn_peer.insert(conn, remote);
                self.mesh.handle_connection_up(
                    now,
                    conn,
                    remote,
                    hello.uid,
                    &hello.nickname,
                    addr,
                    outbound,
                );
            }
            Input::Control { conn, msg } => {
                self.handles
                    .metrics
                    .add_gossip_bytes(GossipDirection::Received, msg.len() as u64);
                match channel::split(&msg) {
                    Ok((Channel::Topology, body)) => {
                        if let Err(e) = self.mesh.handle_control(now, conn, body) {
                            debug!(conn = conn.0, "malformed topology message: {e}");
                            self.handles.metrics.add_dropped(DropReason::Malformed, 1);
                        }
                    }
                    Ok((Channel::Ipam, body)) => {
                        let Some(&from) = self.conn_peer.get(&conn) else {
                            return;
                        };
                        if let Err(e) = self.ipam.handle_gossip(now, from, body) {
                            debug!(conn = conn.0, "malformed IPAM message: {e}");
                            self.handles.metrics.add_dropped(DropReason::Malformed, 1);
                        }
                    }
                    Ok((Channel::Settings, body)) => {
                        let key = self.identity.settings_key.as_ref();
                        match self
                            .settings
                            .handle_message(conn, body, |r| encryption::verify(key, r))
                        {
                            Ok(mesh_settings::Outcome::Adopted) => {
                                let r = self.settings.record();
                                info!(
                                    enabled = r.enabled,
                                    version = r.version,
                                    "mesh encryption changed by gossip"
                                );
                                self.apply_encryption();
                            }
                            Ok(mesh_settings::Outcome::Known | mesh_settings::Outcome::Stale) => {}
                            Err(mesh_settings::Error::BadProof) => {
                                self.settings_rejected += 1;
                                warn!(
                                    conn = conn.0,
                                    "refused a mesh encryption record: its password proof is missing or wrong"
                                );
                            }
                            Err(e) => {
                                debug!(conn = conn.0, "malformed settings message: {e}");
                                self.handles.metrics.add_dropped(DropReason::Malformed, 1);
                            }
                        }
                    }
                    Ok((Channel::Fastdp, body)) => self.fastdp_inbox.push((conn, body.to_vec())),
                    // A second hello is harmless.
                    Ok((Channel::Hello, _)) => {}
                    Err(e) => {
                        debug!(conn = conn.0, "malformed control message: {e}");
                        self.handles.metrics.add_dropped(DropReason::Malformed, 1);
                    }
                }
            }
            Input::Down { conn, reason } => {
                self.fastdp_peer_down(conn);
                self.conn_peer.remove(&conn);
                self.conn_addrs.remove(&conn);
                if let Some(sleeve) = &self.sleeve {
                    sleeve.remove_conn(conn.0);
                }
                if self.conns.remove(&conn).is_some() {
                    info!(conn = conn.0, %reason, "connection closed");
                    self.mesh.handle_connection_down(now, conn, &reason);
                }
            }
            Input::DialFailed { addr, reason } => {
                info!(%addr, %reason, "connecting failed");
                self.mesh.handle_dial_failed(now, addr, &reason);
            }
        }
    }

    /// Carries out what the engine asked for: messages to send, dials, closes.
    fn drain(&mut self) {
        while let Some((conn, body)) = self.mesh.poll_transmit() {
            self.send_to(conn, channel::envelope(Channel::Topology, &body));
        }
        while let Some(event) = self.mesh.poll_event() {
            let now = Instant::now();
            match event {
                Event::Dial(addr) => {
                    self.mesh.handle_dial_started(now, addr);
                    self.spawn_dial(addr);
                }
                Event::CloseConnection { conn, reason } => {
                    debug!(
                        conn = conn.0,
                        reason = reason.as_str(),
                        "closing connection"
                    );
                    // Dropping the sender ends the connection's task, which closes the socket.
                    self.fastdp_peer_down(conn);
                    self.conns.remove(&conn);
                    self.conn_peer.remove(&conn);
                    self.conn_addrs.remove(&conn);
                    if let Some(sleeve) = &self.sleeve {
                        sleeve.remove_conn(conn.0);
                    }
                    self.mesh.handle_connection_down(now, conn, reason.as_str());
                }
                Event::PeerAdded(peer) => {
                    info!(%peer, "peer added");
                    self.ipam.handle_peer_seen(now, peer);
                }
                Event::PeerRemoved(peer) => {
                    info!(%peer, "peer removed");
                    self.ipam.handle_peer_gone(now, peer);
                }
                // IPAM follows reachability: a peer cut off by a split is gone for it at once,
                // though the mesh keeps its record for a while.
                Event::PeerCutOff(peer) => {
                    info!(%peer, "peer cut off");
                    self.ipam.handle_peer_gone(now, peer);
                }
                Event::PeerBack(peer) => {
                    info!(%peer, "peer back");
                    self.ipam.handle_peer_seen(now, peer);
                }
                Event::RoutesChanged => {
                    debug!("routes changed");
                    if let Some(sleeve) = &self.sleeve {
                        sleeve.set_routes(NextHops::from_routes(self.mesh.routes()));
                    }
                }
            }
        }
        self.drain_ipam();
        self.drain_settings();
    }

    async fn handle_command(&mut self, cmd: ApiCommand) {
        match cmd {
            ApiCommand::Connect { addr, reply } => {
                let outcome = match resolve(&addr, self.config.port).await {
                    Some(sock) if self.mesh.targets().get(sock).is_some() => {
                        Ok(CommandOutcome::new(format!("already a target: {addr}")))
                    }
                    Some(sock) => {
                        self.mesh.add_target(sock);
                        Ok(CommandOutcome::new(format!("added {addr}")))
                    }
                    None => Err(CommandError::bad_request(format!(
                        "cannot resolve {addr:?}: give an IP address or host, with an optional :port"
                    ))),
                };
                reply.send(outcome);
            }
            ApiCommand::Forget { addr, reply } => {
                let outcome = match resolve(&addr, self.config.port).await {
                    Some(sock) if self.mesh.targets().get(sock).is_some() => {
                        self.mesh.forget_target(sock);
                        self.persisted.remove(&sock);
                        self.save_persisted();
                        Ok(CommandOutcome::new(format!("forgot {addr}")))
                    }
                    _ => Err(CommandError::not_found(format!("{addr} is not a target"))),
                };
                reply.send(outcome);
            }
            ApiCommand::RmPeer { name, reply } => {
                let now = Instant::now();
                let outcome = match self.find_peer(&name) {
                    Some(peer) if peer == self.mesh.name() => Err(CommandError::bad_request(
                        "cannot remove this router itself",
                    )),
                    Some(peer) if self.mesh.connection_to(peer).is_some() => {
                        Err(CommandError::bad_request(format!(
                            "{name} is connected to this router: stop it first"
                        )))
                    }
                    Some(peer) => {
                        if let Some(f) = &mut self.fastdp {
                            f.forget(peer);
                        }
                        self.mesh.remove_peer(now, peer);
                        self.ipam.handle_peer_gone(now, peer);
                        Ok(self.reclaim(now, peer))
                    }
                    // A peer already collected from the topology may still own IP space.
                    None => match name.parse::<PeerName>() {
                        Ok(peer) if peer != self.mesh.name() => Ok(self.reclaim(now, peer)),
                        _ => Err(CommandError::not_found(format!("no peer named {name}"))),
                    },
                };
                reply.send(outcome);
            }
            ApiCommand::IpamAllocate { request, reply } => {
                let now = Instant::now();
                match self.try_allocate(now, &request) {
                    Ok(Some(resp)) => {
                        self.drain_ipam();
                        reply.send(Ok(resp));
                    }
                    Ok(None) => self.pending_allocs.push(PendingAlloc {
                        request,
                        deadline: now + ALLOC_TIMEOUT,
                        reply,
                    }),
                    Err(e) => reply.send::<()>(Err(e)),
                }
            }
            ApiCommand::IpamLookup { request, reply } => {
                reply.send(
                    match self.ipam.lookup(&request.container_id, &request.ifname) {
                        Some(a) => Ok(ipam_api::LookupResponse {
                            ip: format!("{}/{}", a.addr, a.prefix_len),
                        }),
                        None => Err(CommandError::not_found(format!(
                            "no address held for {}/{}",
                            request.container_id, request.ifname
                        ))),
                    },
                );
            }
            ApiCommand::IpamRelease { request, reply } => {
                let released = self.ipam.release(&request.container_id, &request.ifname);
                self.drain_ipam();
                let prefix = self.ipam.range().prefix();
                reply.send(Ok(ipam_api::ReleaseResponse {
                    released: released.iter().map(|a| format!("{a}/{prefix}")).collect(),
                }));
            }
            ApiCommand::IpamGc { request, reply } => {
                let valid: Vec<(String, String)> = request
                    .valid
                    .into_iter()
                    .map(|a| (a.container_id, a.ifname))
                    .collect();
                let released = self.ipam.gc(&valid);
                self.drain_ipam();
                let prefix = self.ipam.range().prefix();
                reply.send(Ok(ipam_api::ReleaseResponse {
                    released: released
                        .iter()
                        .map(|(_, a)| format!("{a}/{prefix}"))
                        .collect(),
                }));
            }
            ApiCommand::SetEncryption {
                enabled,
                version,
                proof,
                reply,
            } => {
                let outcome = self.set_encryption(enabled, version, proof);
                reply.send(outcome);
            }
        }
        self.drain();
        self.maybe_publish(true);
    }

    /// Takes a dead peer's IP space over; says what happened.
    fn reclaim(&mut self, now: Instant, peer: PeerName) -> CommandOutcome {
        let outcome = match self.ipam.rmpeer(now, peer) {
            Ok(n) => CommandOutcome::new(format!("removed peer {peer}; reclaimed {n} addresses")),
            Err(e) => {
                CommandOutcome::new(format!("removed peer {peer}; IP space not reclaimed: {e}"))
            }
        };
        self.drain_ipam();
        outcome
    }

    fn find_peer(&self, name: &str) -> Option<PeerName> {
        let records = self.mesh.peers().records();
        records
            .iter()
            .find(|r| r.name.to_string() == name || r.nickname == name)
            .map(|r| r.name)
    }

    /// The connection `conn` closed: fastdp keeps its peer only while the probe answers.
    fn fastdp_peer_down(&mut self, conn: ConnId) {
        let Some(&peer) = self.conn_peer.get(&conn) else {
            return;
        };
        // Another connection to the same peer may remain (both sides dialled).
        let others = self.conn_peer.iter().any(|(&c, &p)| p == peer && c != conn);
        if let Some(f) = &mut self.fastdp
            && !others
        {
            f.peer_down(peer);
        }
    }

    /// Handles fastdp announcements, sends probes, applies path changes; passes news on.
    async fn drain_fastdp(&mut self) {
        let Some(f) = &mut self.fastdp else {
            return;
        };
        let mut out: Vec<(Option<ConnId>, Vec<u8>)> = Vec::new();
        let mut relayed: Vec<(ConnId, PeerName, Vec<u8>)> = Vec::new();
        for (conn, body) in std::mem::take(&mut self.fastdp_inbox) {
            match f.handle_announcement(&body, self.sleeve.as_ref()).await {
                Ok(Some((origin, msg))) => relayed.push((conn, origin, msg)),
                Ok(None) => {}
                Err(e) => {
                    debug!(conn = conn.0, "malformed fastdp announcement: {e}");
                    self.handles.metrics.add_dropped(DropReason::Malformed, 1);
                }
            }
        }
        if let Some(msg) = f.drain(self.sleeve.as_ref()).await {
            out.push((None, msg));
        }
        for (except, msg) in out {
            self.send_to_all(&msg, except);
        }
        for (from, origin, msg) in relayed {
            self.relay_announcement(from, origin, &msg);
        }
    }

    /// Passes a peer's announcement on to the connections whose peers the origin is not
    /// connected to (by the topology): the origin sends it to its own neighbours, and sends
    /// every one it holds to a connection that comes up, so in a full mesh a version costs N
    /// messages, not N² (each router re-flooding it to all its connections).
    fn relay_announcement(&self, from: ConnId, origin: PeerName, msg: &[u8]) {
        let routes = self.mesh.routes();
        let graph = routes.graph();
        let neighbours: BTreeSet<PeerName> = graph
            .index(origin)
            .map(|i| {
                graph
                    .neighbours(i)
                    .iter()
                    .map(|&j| graph.names()[j as usize])
                    .collect()
            })
            .unwrap_or_default();
        for (&conn, peer) in &self.conn_peer {
            if conn != from && *peer != origin && !neighbours.contains(peer) {
                self.send_to(conn, msg.to_vec());
            }
        }
    }

    /// Sends a control message to every connection but `except`.
    fn send_to_all(&self, msg: &[u8], except: Option<ConnId>) {
        for &conn in self.conns.keys() {
            if Some(conn) != except {
                self.send_to(conn, msg.to_vec());
            }
        }
    }

    /// Queues a control message on connection `conn` (gone: nothing to do) and counts it.
    /// A full queue drops it, counted: the engines bound their own queues, so a full one means
    /// a stalled peer, which the heartbeat timeout will close.
    fn send_to(&self, conn: ConnId, msg: Vec<u8>) {
        let Some(tx) = self.conns.get(&conn) else {
            return;
        };
        let len = msg.len() as u64;
        if tx.try_send(msg).is_ok() {
            self.handles
                .metrics
                .add_gossip_bytes(GossipDirection::Sent, len);
        } else {
            self.handles.metrics.add_dropped(DropReason::QueueFull, 1);
        }
    }

    /// Slow periodic work: the peers file, persisted peers, fastdp's MAC list.
    async fn housekeeping(&mut self) {
        if let Some(f) = &mut self.fastdp
            && let Some(msg) = f.housekeeping(self.sleeve.as_ref()).await
        {
            self.send_to_all(&msg, None);
        }
        self.reread_peers_file().await;
        self.apply_release_queue();
        let established: BTreeSet<SocketAddr> = self
            .mesh
            .targets()
            .iter()
            .filter(|t| t.is_established())
            .map(|t| t.addr)
            .collect();
        let new: Vec<SocketAddr> = established.difference(&self.persisted).copied().collect();
        if !new.is_empty() {
            self.persisted.extend(new);
            self.save_persisted();
        }
    }

    async fn reread_peers_file(&mut self) {
        let Some(path) = self.config.peers_file.clone() else {
            return;
        };
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime.is_none() || mtime == self.peers_file_mtime {
            return;
        }
        self.peers_file_mtime = mtime;
        match crate::config::read_peers_file(&path) {
            Ok(peers) => {
                for peer in peers {
                    match resolve(&peer, self.config.port).await {
                        Some(addr) => self.mesh.add_target(addr),
                        None => warn!(file = %path.display(), peer = %peer, "cannot resolve"),
                    }
                }
            }
            Err(e) => warn!(file = %path.display(), "reading the peers file: {e}"),
        }
    }

    fn persisted_path(&self) -> PathBuf {
        self.config.state_dir.join(PEERS_FILE)
    }

    fn save_persisted(&self) {
        if let Err(e) = save_persisted_peers(&self.persisted_path(), &self.persisted) {
            warn!("saving persisted peers: {e:#}");
        }
    }
}

/// The next fastdp probe answer; never ready without a listener.
async fn next_answer(rx: &mut Option<mpsc::UnboundedReceiver<IpAddr>>) -> IpAddr {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(addr) => addr,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Resolves `host`, `ip`, `ip:port` or `host:port` with `default_port` where none is given.
async fn resolve(peer: &str, default_port: u16) -> Option<SocketAddr> {
    let peer = peer.trim();
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return Some(addr);
    }
    if let Ok(ip) = peer.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, default_port));
    }
    let with_port = if peer.contains(':') {
        peer.to_owned()
    } else {
        format!("{peer}:{default_port}")
    };
    tokio::net::lookup_host(with_port).await.ok()?.next()
}

fn load_persisted_peers(path: &Path) -> Result<BTreeSet<SocketAddr>> {
    match std::fs::read(path) {
        Ok(bytes) => decode_persisted_peers(&bytes)
            .with_context(|| format!("{} is not a JSON list of addresses", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Decodes `peers.json`: a JSON list of socket addresses.
///
/// # Errors
///
/// The JSON decoder's, when the bytes are not such a list.
pub fn decode_persisted_peers(bytes: &[u8]) -> serde_json::Result<BTreeSet<SocketAddr>> {
    serde_json::from_slice::<Vec<SocketAddr>>(bytes).map(|v| v.into_iter().collect())
}

/// Writes the peers atomically: a crash leaves the old list or the new one, never half.
fn save_persisted_peers(path: &Path, peers: &BTreeSet<SocketAddr>) -> Result<()> {
    let list: Vec<&SocketAddr> = peers.iter().collect();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&list)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// The node's bridge.
pub const BRIDGE: &str = "weft";
/// The largest sleeve datagram: a 1500-byte IPv4 underlay less the IP and UDP headers.
const UNDERLAY_MAX_DATAGRAM: usize = 1472;
/// Pod MTU when `--mtu` is not given: a 1500-byte underlay less the VXLAN overhead.
pub const DEFAULT_POD_MTU: u32 = 1450;
/// The node key's file in the state directory.
const KEY_FILE: &str = "node.key";
/// The persisted peers' file in the state directory.
const PEERS_FILE: &str = "peers.json";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const HOUSEKEEPING: Duration = Duration::from_secs(2);
/// Most inputs (or probe answers) one turn of the loop handles.
const BURST: usize = 64;
/// Application heartbeats on every control connection; silence for three closes it.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence on a control connection after which the kernel sends keepalive probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
/// How long a control connection may go unanswered (keepalive or data) before the kernel
/// fails it.
const USER_TIMEOUT: Duration = Duration::from_secs(3);
const INPUT_QUEUE: usize = 1024;
const CONN_QUEUE: usize = 256;
const READ_BUF: usize = 64 * 1024;
/// How long a CNI allocation may wait for the ring or for space before it fails.
const ALLOC_TIMEOUT: Duration = Duration::from_secs(8);
