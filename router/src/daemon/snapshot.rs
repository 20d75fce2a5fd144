//! The status snapshot the daemon publishes: the engine's, IPAM's, the data planes' and the
//! node rules' state, translated into the API's [`RouterStatus`]. Read-only: it changes
//! nothing but the tunnel-peer list it derives from the mesh (a watch the rules task follows).

use topology::sleeve::pmtu::PathView;

use super::*;

impl Daemon {
    /// Publishes a fresh status snapshot at most every [`PUBLISH_INTERVAL`] (more in big meshes; or now, if
    /// forced), and only when what it shows may have changed: a turn of the loop that moved
    /// nothing status shows (a heartbeat, a probe answered, a timer that only sent) builds no
    /// snapshot until [`STATUS_REFRESH`] has passed, which refreshes counters and ages. A
    /// snapshot lists every peer's connections, so building one per turn cost a router
    /// O(peers²) per heartbeat received.
    pub(super) fn maybe_publish(&mut self, force: bool) {
        let now = Instant::now();
        // A snapshot lists every peer's connections, so it costs O(peers²) to build: in a big
        // mesh forming (everything changing) it is rebuilt less often.
        let peers = self.mesh.view_digest().0;
        let interval = PUBLISH_INTERVAL.max(PUBLISH_PER_PEER * peers);
        if !force && self.last_check.is_some_and(|t| now - t < interval) {
            // Looked moments ago: look again when the interval is over, so the last change
            // before a quiet spell is never left out of the snapshot.
            self.publish_due = self.last_check.map(|t| t + interval);
            return;
        }
        self.last_check = Some(now);
        self.publish_due = None;
        let digest = self.status_digest();
        let watched = self
            .netfilter
            .as_ref()
            .is_some_and(|rx| rx.has_changed().unwrap_or(false))
            || self
                .handles
                .kube
                .as_ref()
                .is_some_and(|rx| rx.has_changed().unwrap_or(false));
        let stale = self.last_publish.is_none_or(|t| now - t >= STATUS_REFRESH);
        if !force && !stale && !watched && digest == self.published_digest {
            return;
        }
        self.last_publish = Some(now);
        self.published_digest = digest;
        if let Some(rx) = &mut self.netfilter {
            rx.mark_unchanged();
        }
        if let Some(rx) = &mut self.handles.kube {
            rx.mark_unchanged();
        }
        let status = self.status(now);
        self.handles.status.publish(status);
    }

    /// A hash of the engines' state that the status snapshot shows, counters and ages left
    /// out: records (the view digest), our connections and targets, routes, fastdp paths,
    /// IPAM's ring, records and allocations, the gateway and the mesh setting. Cheap next to
    /// building the snapshot: no allocation per peer's connection.
    pub(super) fn status_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.mesh.view_digest().hash(&mut h);
        for c in self.mesh.connections() {
            (c.id.0, c.remote, c.addr, c.outbound).hash(&mut h);
        }
        for t in self.mesh.targets().iter() {
            let state = std::mem::discriminant(&t.state);
            (t.addr, state, t.attempts, t.peer).hash(&mut h);
        }
        self.mesh.routes().unicast().hash(&mut h);
        if let Some(f) = &self.fastdp {
            f.paths_digest().hash(&mut h);
        }
        (
            self.ipam.digest(),
            self.ipam.pending(),
            self.ipam.allocations().count(),
        )
            .hash(&mut h);
        self.gateway.is_some().hash(&mut h);
        let record = self.settings.record();
        (record.enabled, record.version, self.settings_rejected).hash(&mut h);
        h.finish()
    }

    /// The peers connected for less than [`READY_GRACE`] that the topology has no route to
    /// yet (nicknames): the data plane cannot carry a pod's first frame to them. A connection
    /// still unrouted after the grace (a peer that never lists it) no longer holds readiness
    /// back; the connection list shows it.
    fn unrouted(&self, ms: &topology::api::MeshStatus) -> Vec<String> {
        let mut names: Vec<String> = ms
            .connections
            .iter()
            .filter(|c| c.up_s < READY_GRACE.as_secs_f64())
            .filter(|c| self.mesh.unicast_next_hop(c.name).is_none())
            .map(|c| c.nickname.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub(super) fn status(&self, now: Instant) -> RouterStatus {
        let ms = self.mesh.status(now);
        let mut status = self.handles.status.current().as_ref().clone();
        status.name = ms.name.to_string();
        status.nickname = ms.nickname.clone();
        status.port = self.port;
        status.netfilter = self.netfilter.as_ref().map(|rx| rx.borrow().clone());
        status.kubernetes = self
            .handles
            .kube
            .as_ref()
            .map(|rx| rx.borrow().clone().at(now));
        let known = tunnel_peers(&ms, self.conn_addrs.values().map(|(_, remote)| *remote));
        self.tunnel_peers.send_if_modified(|peers| {
            let changed = *peers != known;
            if changed {
                *peers = known;
            }
            changed
        });
        let record = self.settings.record();
        status.encryption.enabled = record.enabled;
        status.encryption.password_set = self.identity.password_set;
        status.encryption.version = record.version;
        status.encryption.origin = encryption::uid_text(record.origin);
        status.encryption.local_origin = encryption::uid_text(self.mesh.uid());
        status.encryption.changes = self.settings.changes();
        status.encryption.rejected = self.settings_rejected;
        status.peer_discovery = self.mesh.config().discovery;
        status.trusted_subnets = self
            .config
            .trusted_subnets
            .iter()
            .map(ToString::to_string)
            .collect();
        let nick: BTreeMap<PeerName, String> = ms
            .peers
            .iter()
            .map(|p| (p.name, p.nickname.clone()))
            .collect();
        let nick_of = |n: &PeerName| nick.get(n).cloned().unwrap_or_default();
        status.peers = ms
            .peers
            .iter()
            .map(|p| PeerStatus {
                name: p.name.to_string(),
                nickname: p.nickname.clone(),
                uid: p.uid,
                version: p.version,
                connections: p
                    .connections
                    .iter()
                    .map(|c| PeerConnStatus {
                        remote_name: c.name.to_string(),
                        remote_nickname: nick_of(&c.name),
                        addr: c.address.clone(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let sleeve = self.sleeve.as_ref();
        status.encryption.connections = ms
            .connections
            .iter()
            .map(|c| {
                let decision = self.seal_decision(ConnId(c.conn_id));
                let link = sleeve.and_then(|s| s.link_encryption(c.conn_id));
                let seal = decision.is_some_and(|d| d.seal);
                let paths = self
                    .fastdp
                    .as_ref()
                    .map_or(PathEncryption::Sleeve, |f| f.path_encryption(c.name, seal));
                let (mode, extra) = match (paths, link, decision) {
                    // An end still sends over fastdp, in clear: not sealed yet.
                    (PathEncryption::LeavingFastdp { .. }, _, _) => {
                        (EncryptionMode::Changing, paths.note())
                    }
                    // Both ends on fastdp: plain, whatever the sleeve link last received.
                    (PathEncryption::Fastdp, _, _) => (EncryptionMode::Plain, paths.note()),
                    (_, Some(link), _) => match encryption::link_mode(&link) {
                        (m, None) => (m, paths.note()),
                        other => other,
                    },
                    (_, None, Some(d)) if d.seal => (EncryptionMode::Sealed, paths.note()),
                    (_, None, _) => (EncryptionMode::Plain, None),
                };
                let mut reason = decision.map_or_else(String::new, |d| d.reason.to_string());
                if let Some(extra) = extra {
                    reason = format!("{reason}; {extra}");
                }
                ConnectionEncryption {
                    remote_name: c.name.to_string(),
                    remote_nickname: c.nickname.clone(),
                    remote_addr: c.address.clone(),
                    mode,
                    reason,
                }
            })
            .collect();
        status.connections = ms
            .connections
            .iter()
            .map(|c| {
                let on_sleeve = sleeve.filter(|s| s.has_peer(c.name));
                let link = sleeve.and_then(|s| s.link_encryption(c.conn_id));
                let path = self.fastdp.as_ref().map(|f| {
                    f.path(c.name)
                        .unwrap_or(FastdpPath::Sleeve(FastdpReason::Probing))
                });
                let path_mtu = on_sleeve.and_then(|s| s.path_mtu(c.name));
                let (datapath, reason) = match (path, on_sleeve) {
                    (Some(FastdpPath::Fastdp), _) => (Some(crate::status::Datapath::Fastdp), None),
                    (Some(FastdpPath::Sleeve(r)), Some(s)) => (
                        Some(crate::status::Datapath::Sleeve),
                        Some(sleeve_reason(r, s.mtu(), path_mtu)),
                    ),
                    (None, Some(_)) => (Some(crate::status::Datapath::Sleeve), None),
                    (_, None) => (None, None),
                };
                let sleeve_used = datapath == Some(crate::status::Datapath::Sleeve);
                ConnectionStatus {
                    outbound: c.outbound,
                    remote_addr: c.address.clone(),
                    remote_name: Some(c.name.to_string()),
                    remote_nickname: Some(c.nickname.clone()),
                    state: ConnectionState::Established,
                    last_error: None,
                    next_attempt_in_ms: None,
                    datapath,
                    datapath_reason: reason,
                    encrypted: sleeve_used
                        && link.is_some_and(|l| l.sending == crypto::Mode::Sealed),
                    mtu: on_sleeve.map(Sleeve::mtu),
                    path_mtu: path_mtu.and_then(|p| packet_size(p.verified)),
                }
            })
            .collect();
        status.sleeve = sleeve.map(Sleeve::counters);
        if sleeve.is_some() {
            status.datapaths = Some(
                crate::status::Datapath::ALL
                    .iter()
                    .map(|&d| {
                        let (frames, bytes) = self.handles.metrics.forwarded(d);
                        crate::status::DatapathCounters {
                            datapath: d,
                            frames,
                            bytes,
                        }
                    })
                    .collect(),
            );
        }
        status.targets = Vec::new();
        for t in &ms.targets {
            let next_ms = t.next_attempt_in_s.map(|s| (s * 1000.0) as u64);
            let (target_state, conn_state) = match t.state.as_str() {
                "established" => {
                    status.targets.push(TargetStatus {
                        addr: t.address.clone(),
                        state: TargetState::Established,
                        last_error: None,
                        attempts: t.attempts,
                        next_attempt_in_ms: None,
                    });
                    continue;
                }
                "connecting" if t.attempts > 0 => {
                    (TargetState::Retrying, ConnectionState::Retrying)
                }
                "connecting" => (TargetState::Connecting, ConnectionState::Connecting),
                "failed" => (TargetState::Failed, ConnectionState::Failed),
                "retrying" => (TargetState::Failed, ConnectionState::Failed),
                _ => (TargetState::Pending, ConnectionState::Pending),
            };
            status.targets.push(TargetStatus {
                addr: t.address.clone(),
                state: target_state,
                last_error: t.last_error.clone(),
                attempts: t.attempts,
                next_attempt_in_ms: next_ms,
            });
            status.connections.push(ConnectionStatus {
                outbound: true,
                remote_addr: t.address.clone(),
                remote_name: t.peer.map(|p| p.to_string()),
                remote_nickname: t.peer.map(|p| nick_of(&p)),
                state: conn_state,
                last_error: t.last_error.clone(),
                next_attempt_in_ms: next_ms,
                datapath: None,
                datapath_reason: None,
                encrypted: false,
                mtu: None,
                path_mtu: None,
            });
        }
        let ipam = self.ipam.status(now);
        (status.ready, status.not_ready_reason) =
            crate::status::readiness(self.gateway.is_some(), &ipam.status, &self.unrouted(&ms));
        status.ipam = Some(crate::status::IpamStatus {
            status: ipam.status,
            range: ipam.range,
            default_subnet: ipam.default_subnet,
            range_num_ips: ipam.range_num_ips,
            owners: ipam
                .owners
                .iter()
                .map(|o| crate::status::IpamOwner {
                    name: o.name.to_string(),
                    nickname: nick_of(&o.name),
                    ips: o.ips,
                    active: o.active,
                    reachable: o.reachable,
                })
                .collect(),
            notes: ipam.notes,
            conflicting: ipam.conflicting,
        });
        status.routes = ms
            .routes
            .iter()
            .map(|r| RouteStatus {
                destination: r.destination.to_string(),
                next_hop: r.next_hop.to_string(),
            })
            .collect();
        status
    }
}

/// The underlay addresses of every peer known: connected ones, and the addresses other peers
/// announce for their connections to peers (gossip), but this router's own.
fn tunnel_peers(
    ms: &topology::api::MeshStatus,
    connected: impl Iterator<Item = IpAddr>,
) -> BTreeSet<IpAddr> {
    let mut peers: BTreeSet<IpAddr> = connected.collect();
    for p in &ms.peers {
        for c in &p.connections {
            if c.name == ms.name {
                continue;
            }
            if let Ok(addr) = c.address.parse::<SocketAddr>() {
                peers.insert(addr.ip());
            }
        }
    }
    peers
}

/// Why a peer is on the sleeve; when its VXLAN probes go unanswered and the sleeve found the
/// path to it smaller than a full-size VXLAN packet, says so with the figures.
fn sleeve_reason(reason: FastdpReason, pod_mtu: u32, path: Option<PathView>) -> String {
    let full = pod_mtu + crate::underlay::VXLAN_OVERHEAD;
    let path = path
        .filter(|p| p.failed.is_some())
        .and_then(|p| packet_size(p.verified));
    match (reason, path) {
        (FastdpReason::NoAnswer { port }, Some(path)) if path < full => format!(
            "no answer to full-size VXLAN probes on UDP {port}: the path to this peer carries \
             {path}-byte packets (found by the sleeve), full-size VXLAN needs {full}"
        ),
        (r, _) => r.to_string(),
    }
}

/// The underlay packet a verified sleeve datagram size makes (IP and UDP headers added).
fn packet_size(datagram: Option<usize>) -> Option<u32> {
    datagram.map(|v| v as u32 + crate::underlay::UDP_OVERHEAD)
}

/// How long a new connection without a route holds readiness back.
const READY_GRACE: Duration = Duration::from_secs(10);

/// The least time between two status snapshots.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// The least time between snapshots grows by this per peer known (1 s at 100 peers).
const PUBLISH_PER_PEER: Duration = Duration::from_millis(10);
/// The longest a published status goes without being rebuilt (its counters and ages).
const STATUS_REFRESH: Duration = Duration::from_secs(1);
