//! IPAM as the daemon carries it out: persisting and sending what the engine asks for, CNI
//! allocations waiting for the ring or for space, and the bridge's gateway address.

use topology::api::release_queue;

use super::*;

impl Daemon {
    /// Applies the releases the CNI plugin queued while this router was down or not ready
    /// (`topology::api::release_queue`), then removes them. An entry that does not decode is
    /// renamed `*.bad` and left for the operator.
    pub(super) fn apply_release_queue(&mut self) {
        let dir = self.config.release_queue.clone();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                debug!(dir = %dir.display(), "reading the release queue: {e}");
                return;
            }
        };
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            // Hidden files are the plugin's writes in progress.
            if name.starts_with('.') || !name.ends_with(release_queue::SUFFIX) {
                continue;
            }
            let decoded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| release_queue::decode(&bytes));
            match decoded {
                Ok(req) => {
                    let released = self.ipam.release(&req.container_id, &req.ifname);
                    self.drain_ipam();
                    info!(
                        container = %req.container_id,
                        ifname = %req.ifname,
                        released = ?released,
                        "applied a release the CNI plugin queued while the router was down"
                    );
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(file = %path.display(), "removing a queued release: {e}");
                    }
                }
                Err(e) => {
                    warn!(file = %path.display(), "queued release set aside as .bad: {e}");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
    }

    /// Carries out what IPAM asked for, in its order: persist, send, report. Pending CNI
    /// allocations are retried afterwards, so an answer is never sent before its state is on
    /// disk.
    pub(super) fn drain_ipam(&mut self) {
        if let Some(snap) = self.ipam.poll_snapshot()
            && let Err(e) = self.ipam_store.save(&snap)
        {
            warn!("saving IPAM state: {e}");
        }
        while let Some((dest, body)) = self.ipam.poll_transmit() {
            let msg = channel::envelope(Channel::Ipam, &body);
            let conns: Vec<ConnId> = match dest {
                ipam::Destination::Broadcast => self.conns.keys().copied().collect(),
                // IPAM retries unanswered requests, so a peer we hold no connection to is
                // simply skipped.
                ipam::Destination::Peer(peer) => self
                    .conn_peer
                    .iter()
                    .filter(|&(_, &p)| p == peer)
                    .map(|(&c, _)| c)
                    .collect(),
            };
            for conn in conns {
                self.send_to(conn, msg.clone());
            }
        }
        while let Some(event) = self.ipam.poll_event() {
            match event {
                ipam::Event::Allocated { key, address } => {
                    debug!(container = %key.container_id, addr = %address.addr, "allocated");
                }
                ipam::Event::Conflict { addresses } => {
                    warn!(
                        ?addresses,
                        "IPAM conflict: another peer owns ranges holding our allocations"
                    );
                }
                ipam::Event::Reclaimed { peer, addresses } => {
                    info!(%peer, addresses, "reclaimed a dead peer's IP space");
                }
            }
        }
        self.retry_pending_allocs();
    }

    /// Answers the pending allocations IPAM can now serve, and fails the expired ones.
    pub(super) fn retry_pending_allocs(&mut self) {
        if self.pending_allocs.is_empty() {
            return;
        }
        let now = Instant::now();
        let pending = std::mem::take(&mut self.pending_allocs);
        for p in pending {
            match self.try_allocate(now, &p.request) {
                Ok(Some(resp)) => {
                    // Persist before answering: a crash must not forget a given address.
                    if let Some(snap) = self.ipam.poll_snapshot()
                        && let Err(e) = self.ipam_store.save(&snap)
                    {
                        warn!("saving IPAM state: {e}");
                    }
                    p.reply.send(Ok(resp));
                }
                Ok(None) if now < p.deadline => self.pending_allocs.push(p),
                Ok(None) => {
                    let why = self.ipam.status(now).status;
                    self.ipam
                        .release(&p.request.container_id, &p.request.ifname);
                    p.reply
                        .send::<()>(Err(CommandError::engine_unavailable(format!(
                            "no address for {} within {}s: IPAM is {why}",
                            p.request.container_id,
                            ALLOC_TIMEOUT.as_secs()
                        ))));
                }
                Err(e) => p.reply.send::<()>(Err(e)),
            }
        }
    }

    /// Allocates the pod's address and makes sure the gateway exists; `None` while waiting.
    pub(super) fn try_allocate(
        &mut self,
        now: Instant,
        request: &ipam_api::AllocateRequest,
    ) -> Result<Option<ipam_api::AllocateResponse>, CommandError> {
        let gateway = match self.ipam.gateway(now) {
            Allocation::Allocated(gw) => gw,
            Allocation::Pending(_) => return Ok(None),
        };
        match self
            .ipam
            .allocate(now, &request.container_id, &request.ifname)
        {
            Ok(Allocation::Allocated(a)) => Ok(Some(ipam_api::AllocateResponse {
                ip: format!("{}/{}", a.addr, a.prefix_len),
                gateway: gateway.addr.to_string(),
            })),
            Ok(Allocation::Pending(_)) => Ok(None),
            Err(e) => Err(CommandError::bad_request(format!("cannot allocate: {e}"))),
        }
    }

    /// Puts IPAM's gateway address on the bridge once IPAM has one.
    pub(super) async fn ensure_gateway(&mut self) {
        if self.gateway.is_some() {
            return;
        }
        let now = Instant::now();
        let Allocation::Allocated(gw) = self.ipam.gateway(now) else {
            return;
        };
        self.drain_ipam();
        if let Some((netlink, index)) = &self.bridge
            && let Err(e) = netlink.ensure_address(*index, gw.addr, gw.prefix_len).await
        {
            warn!(addr = %gw.addr, "putting the gateway address on the bridge: {e:#}");
            return;
        }
        info!(gateway = %gw.addr, prefix = gw.prefix_len, "bridge gateway address set");
        self.gateway = Some(gw);
    }
}

/// Builds the IPAM engine from its persisted state, or afresh.
pub(super) fn start_ipam(config: &RouterConfig, name: PeerName) -> Result<(Ipam, IpamStore)> {
    let net = config.ipalloc_range;
    let IpAddr::V4(base) = net.network() else {
        anyhow::bail!("--ipalloc-range {net}: only IPv4 ranges are supported so far");
    };
    let range = ipam::Range::new(base, net.prefix_len())
        .with_context(|| format!("--ipalloc-range {net}: the prefix must be between /8 and /30"))?;
    let mut ipam_config = ipam::Config::new(name);
    ipam_config.range = range;
    ipam_config.init = ipam::Init::default_for_targets(config.peers.len());
    ipam_config.reclaim_after = config.ipalloc_reclaim_after;
    // Routers that start together all propose at their first allocation; a short retry (with
    // the engine's jitter) settles such duels well inside a CNI request's wait, where the 5 s
    // default did not always.
    ipam_config.propose_interval = Duration::from_secs(1);
    let store = IpamStore::new(&config.state_dir);
    let now = Instant::now();
    let seed = rand::rngs::OsRng.next_u64();
    let snapshot = store
        .load()
        .with_context(|| format!("IPAM state {}", store.path().display()))?;
    let engine = match snapshot {
        Some(snap) => match Ipam::restore(ipam_config.clone(), now, seed, &snap) {
            Ok(engine) => {
                info!(
                    allocations = engine.allocations().count(),
                    "IPAM state restored"
                );
                engine
            }
            Err(e) => {
                warn!(file = %store.path().display(), "IPAM state not used ({e}); starting afresh");
                Ipam::new(ipam_config, now, seed)
            }
        },
        None => Ipam::new(ipam_config, now, seed),
    };
    Ok((engine, store))
}
