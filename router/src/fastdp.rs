//! The fastdp shell: the kernel VXLAN device `weft-vxlan` on bridge `weft`, the probe socket
//! and the AF_PACKET listener for probe answers, and the forwarding-database changes the
//! decision core (`topology::fastdp`) asks for.
//!
//! A probe is an ARP request (sender address 0.0.0.0, so the answering kernel creates no
//! neighbour entry) for the peer's underlay address, from this node's bridge MAC to the
//! peer's bridge MAC, in a VXLAN header with weft's VNI, sent from an ordinary UDP socket to
//! the peer's VXLAN port. The peer's kernel decapsulates it, its bridge hands it to its own
//! stack, and the stack answers through the bridge and the VXLAN device, back to this node's
//! VXLAN port; our bridge passes it up (it is addressed to the bridge's MAC). The answer is
//! read from an ARP-only AF_PACKET socket on the bridge device (a BPF filter passes replies
//! only), so the listener sits on no hot path: pod traffic never meets it. Nothing of weft's runs on the
//! answering side, so the probe answers while the peer's router is down, and fails exactly when
//! VXLAN between the two fails.
//!
//! The probe is padded to a full-size frame (the pod MTU of Ethernet payload, so the VXLAN
//! packet is as large as the underlay MTU) and sent with fragmentation forbidden: a path that
//! cannot carry full-size VXLAN packets loses the probe, and the peer stays on the sleeve.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;
use topology::PeerName;
use topology::channel::{Channel, envelope};
use topology::fastdp::fdb::{FdbOp, Pins, Port};
use topology::fastdp::probe::ETH_P_ARP;
use topology::fastdp::{
    Announcement, Announcements, Config as CoreConfig, Event, Fastdp, MacAddr, Mode, Path,
    PathEncryption, Probe, Reason, VNI,
};

use crate::metrics::{FastdpCounter, Metrics};
use crate::netlink::Netlink;
use crate::sleeve::Sleeve;
use topology::dataplane::FastdpView;

/// How often, while a peer is on fastdp, the forwarding entries are read for evidence of
/// traffic (which keeps its peer probed every round: `topology::fastdp::Fastdp::handle_traffic`).
pub const TRAFFIC_SAMPLE: std::time::Duration = std::time::Duration::from_millis(500);
/// A pod entry used this recently is traffic to its peer.
const TRAFFIC_RECENT: std::time::Duration = std::time::Duration::from_secs(1);

/// Least time between two of our announcements: while a mesh forms, every peer joining
/// fastdp changes our fastdp set, and each version reaches every router.
const ANNOUNCE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// How often the sleeve's path to a peer whose VXLAN probes go unanswered is verified again.
pub const RECHECK_UNANSWERED: std::time::Duration = std::time::Duration::from_secs(10);

/// The VXLAN device's name.
pub const VXLAN: &str = "weft-vxlan";
// The probe's wire format (build and parse) is pure and lives in the core.
pub use topology::fastdp::probe::{PROBE_LEN, VXLAN_HDR_LEN, parse_answer, probe_frame};

/// The probe socket and the answer listener.
#[derive(Debug)]
pub struct Prober {
    socket: UdpSocket,
    port: u16,
    our_mac: MacAddr,
    pod_mtu: u32,
    stop: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
}

impl Prober {
    /// Binds the probe socket, opens the AF_PACKET listener on the bridge `bridge_index` and
    /// starts its thread, which passes the sender address of each answer to `answers`.
    ///
    /// # Errors
    /// Fails when a socket cannot be opened or the thread cannot start.
    pub fn start(
        bridge_index: u32,
        port: u16,
        our_mac: MacAddr,
        pod_mtu: u32,
        answers: mpsc::UnboundedSender<IpAddr>,
    ) -> Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            .context("binding the fastdp probe socket")?;
        socket.set_nonblocking(true)?;
        forbid_fragmentation(&socket).context("setting IP_PMTUDISC_DO on the probe socket")?;
        let fd = packet_socket(bridge_index).context("opening the AF_PACKET probe listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let listener = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("fastdp-probe".into())
                .spawn(move || listen(&fd, our_mac, &answers, &stop))?
        };
        Ok(Self {
            socket,
            port,
            our_mac,
            pod_mtu,
            stop,
            listener: Some(listener),
        })
    }

    /// Sends `probe`; IPv6 peers are not probed (ARP is IPv4's).
    pub fn send(&self, probe: &Probe) {
        let IpAddr::V4(target) = probe.addr else {
            return;
        };
        let frame = probe_frame(self.our_mac, probe.mac, target, self.pod_mtu);
        // A full socket buffer, an unreachable peer or a route MTU too small for a full-size
        // probe (EMSGSIZE) is a lost probe, which the core counts.
        let _ = self
            .socket
            .send_to(&frame, SocketAddr::new(probe.addr, self.port));
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
    }
}

fn listen(
    fd: &OwnedFd,
    our_mac: MacAddr,
    answers: &mpsc::UnboundedSender<IpAddr>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is valid for its length; the fd is ours and open.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            // Timeout (SO_RCVTIMEO) or EINTR: check the stop flag and wait again.
            continue;
        };
        // The bridge passes answers up as its own, so the port they came in by is not known
        // here; it need not be: an answer exists only if our request crossed VXLAN, and it
        // comes back by VXLAN because the peer's bridge and VXLAN device learned our bridge
        // MAC from that very request.
        if let Some(addr) = parse_answer(&buf[..n], &our_mac)
            && answers.send(addr).is_err()
        {
            return;
        }
    }
}

/// An AF_PACKET socket on link `index` (the bridge) for ARP frames, of which it keeps replies
/// only (classic BPF filter); reads time out every 100 ms.
fn packet_socket(index: u32) -> io::Result<OwnedFd> {
    let proto = ETH_P_ARP.to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Filter first, so nothing unfiltered queues between bind and attach.
    let mut code = [
        bpf(0x28, 0, 0, 12),     // ldh [12]       ethertype
        bpf(0x15, 0, 3, 0x0806), // jeq ARP
        bpf(0x28, 0, 0, 20),     // ldh [20]       ARP opcode
        bpf(0x15, 0, 1, 2),      // jeq reply
        bpf(0x06, 0, 0, 256),    // ret 256
        bpf(0x06, 0, 0, 0),      // ret 0
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a valid T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The VXLAN device and the forwarding-database changes on it.
#[derive(Debug, Clone)]
pub struct Fdb {
    netlink: Netlink,
    /// `weft-vxlan`'s index.
    pub vxlan: u32,
}

impl Fdb {
    /// Wraps the device.
    pub fn new(netlink: Netlink, vxlan: u32) -> Self {
        Self { netlink, vxlan }
    }

    /// The remotes that entries for pods' MACs (not the flood entries, not `bridge_macs`:
    /// probe answers use those) sent frames to within [`TRAFFIC_RECENT`].
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn busy_remotes(&self, bridge_macs: &BTreeSet<MacAddr>) -> Result<BTreeSet<IpAddr>> {
        Ok(self
            .netlink
            .fdb_dump()
            .await?
            .into_iter()
            .filter(|e| e.ifindex == self.vxlan && !e.master && e.mac != MacAddr::ZERO)
            .filter(|e| !bridge_macs.contains(&e.mac))
            .filter(|e| e.used_ago.is_some_and(|u| u <= TRAFFIC_RECENT))
            .filter_map(|e| e.dst)
            .collect())
    }

    /// The remotes of the flood entries on the device (left by an earlier run, or ours).
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn flood_remotes(&self) -> Result<BTreeSet<IpAddr>> {
        Ok(self
            .netlink
            .fdb_dump()
            .await?
            .into_iter()
            .filter(|e| e.ifindex == self.vxlan && !e.master && e.mac == MacAddr::ZERO)
            .filter_map(|e| e.dst)
            .collect())
    }

    /// `addr` joined fastdp: its flood entry and its announced MACs.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn join(&self, addr: IpAddr, macs: &BTreeSet<MacAddr>) -> Result<()> {
        self.netlink
            .fdb_append(self.vxlan, MacAddr::ZERO, addr)
            .await?;
        for mac in macs {
            self.netlink.fdb_append(self.vxlan, *mac, addr).await?;
        }
        Ok(())
    }

    /// Adds MAC entries for a fastdp peer at `addr`.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn add_macs(&self, addr: IpAddr, macs: &BTreeSet<MacAddr>) -> Result<()> {
        for mac in macs {
            self.netlink.fdb_append(self.vxlan, *mac, addr).await?;
        }
        Ok(())
    }

    /// Removes the MAC entries `macs` of the peer at `addr` (withdrawn MACs) from the device.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn remove_macs(&self, addr: IpAddr, macs: &BTreeSet<MacAddr>) -> Result<()> {
        for mac in macs {
            self.netlink.fdb_del_vxlan(self.vxlan, *mac, addr).await?;
        }
        Ok(())
    }

    /// `addr` left fastdp: every entry of the device pointing at it (flood, announced and
    /// learned MACs) goes, and so do the bridge's unpinned entries on the VXLAN port for those
    /// MACs and for `announced`, so the bridge floods to the sleeve until it learns them again.
    /// (The caller pins the announced MACs to the TAP first.)
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn leave(&self, addr: IpAddr, announced: &BTreeSet<MacAddr>) -> Result<()> {
        let entries = self.netlink.fdb_dump().await?;
        let mut macs: BTreeSet<MacAddr> = announced.clone();
        for e in &entries {
            if e.ifindex == self.vxlan && !e.master && e.dst == Some(addr) {
                self.netlink.fdb_del_vxlan(self.vxlan, e.mac, addr).await?;
                if e.mac != MacAddr::ZERO {
                    macs.insert(e.mac);
                }
            }
        }
        for e in &entries {
            if e.ifindex == self.vxlan
                && e.master
                && !e.permanent
                && !e.sticky
                && macs.contains(&e.mac)
            {
                self.netlink.fdb_del_bridge(self.vxlan, e.mac).await?;
            }
        }
        Ok(())
    }

    /// The MACs of this node's pods: the bridge's learned entries on its other ports (pod
    /// veths), not the tunnel ports, not local addresses.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn local_pod_macs(&self, bridge: u32, tap: Option<u32>) -> Result<BTreeSet<MacAddr>> {
        let entries = self.netlink.fdb_dump().await?;
        let ports = self.netlink.bridge_ports(bridge).await?;
        Ok(entries
            .into_iter()
            .filter(|e| {
                e.master
                    && !e.permanent
                    && e.ifindex != self.vxlan
                    && Some(e.ifindex) != tap
                    && ports.contains(&e.ifindex)
                    && !e.mac.is_group()
            })
            .map(|e| e.mac)
            .collect())
    }
}

/// Sets DF on every datagram and never fragments (`IP_PMTUDISC_DO`).
fn forbid_fragmentation(socket: &UdpSocket) -> io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: a plain setsockopt with a valid int on a socket this process owns.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            std::ptr::from_ref(&value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The fastdp data plane as the daemon drives it: the decision core, the probe I/O, the
/// forwarding database and the announcements.
#[derive(Debug)]
pub struct FastdpPlane {
    core: Fastdp,
    fdb: Fdb,
    prober: Prober,
    local: PeerName,
    bridge: u32,
    tap: Option<u32>,
    bridge_mac: MacAddr,
    own: Announcement,
    own_dirty: bool,
    /// Peers whose probes go unanswered, with when their sleeve path was last rechecked.
    unanswered: BTreeMap<PeerName, Instant>,
    table: Announcements,
    /// Flood remotes left by an earlier run; kept for their peers until probed.
    inherited: BTreeSet<IpAddr>,
    started: Instant,
    inherited_checked: bool,
    /// The bridge entries pinned for each peer's announced MACs (and its bridge's).
    pins: Pins,
    /// Peers whose pins are to be brought in line at the next drain.
    pins_dirty: BTreeSet<PeerName>,
    /// When the forwarding entries are next read for traffic evidence.
    next_traffic_sample: Instant,
    /// When our announcement last went out.
    own_sent: Option<Instant>,
    metrics: Metrics,
}

/// What [`FastdpPlane::start`] needs.
#[derive(Debug, Clone)]
pub struct FastdpConfig {
    /// This router.
    pub local: PeerName,
    /// `--datapath`.
    pub mode: Mode,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
    /// The pod MTU.
    pub mtu: u32,
    /// The bridge's index.
    pub bridge: u32,
    /// Whether traffic must be encrypted now.
    pub encryption_required: bool,
}

impl FastdpPlane {
    /// Makes sure `weft-vxlan` exists on the bridge (reusing one left by an earlier run),
    /// isolates it and the TAP (if any) on the bridge, pins the bridge's MAC (the probe
    /// target), reads the flood entries left behind, and starts the prober.
    ///
    /// # Errors
    /// Fails when a device, socket or thread cannot be set up.
    pub async fn start(
        config: &FastdpConfig,
        netlink: &Netlink,
        metrics: Metrics,
    ) -> Result<(Self, mpsc::UnboundedReceiver<IpAddr>)> {
        let vxlan = netlink
            .ensure_vxlan(VXLAN, VNI, config.vxlan_port, config.mtu, config.bridge)
            .await?;
        netlink.set_isolated(vxlan).await?;
        let tap = netlink.link_index(crate::sleeve::TAP).await?;
        if let Some(tap) = tap {
            netlink.set_isolated(tap).await?;
        }
        // A bridge takes its lowest port's MAC unless one was set: set it, so the address
        // peers probe stays the same as pods come and go.
        let bridge_mac = netlink.link_mac(config.bridge).await?;
        netlink.set_mac(config.bridge, bridge_mac).await?;
        let fdb = Fdb::new(netlink.clone(), vxlan);
        let inherited = fdb.flood_remotes().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let prober = Prober::start(config.bridge, config.vxlan_port, bridge_mac, config.mtu, tx)?;
        let mut core = Fastdp::new(CoreConfig::new(config.mode, config.vxlan_port));
        core.set_encryption_required(config.encryption_required);
        let seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let own = Announcement {
            origin: config.local,
            seq,
            bridge_mac,
            fastdp_peers: BTreeSet::new(),
            macs: BTreeSet::new(),
        };
        tracing::info!(
            vxlan = VXLAN,
            vni = VNI,
            port = config.vxlan_port,
            inherited = inherited.len(),
            "fastdp ready"
        );
        Ok((
            Self {
                core,
                fdb,
                prober,
                local: config.local,
                bridge: config.bridge,
                tap,
                bridge_mac,
                own,
                own_dirty: true,
                unanswered: BTreeMap::new(),
                table: Announcements::new(),
                inherited,
                started: Instant::now(),
                inherited_checked: false,
                pins: Pins::new(tap.is_some()),
                pins_dirty: BTreeSet::new(),
                next_traffic_sample: Instant::now(),
                own_sent: None,
                metrics,
            },
            rx,
        ))
    }

    /// A hash of every peer's address, path and reason (see `Fastdp::paths_digest`).
    pub fn paths_digest(&self) -> u64 {
        self.core.paths_digest()
    }

    /// The path `peer`'s traffic takes.
    pub fn path(&self, peer: PeerName) -> Option<Path> {
        self.core.path(peer)
    }

    /// What the data paths mean for the encryption of the traffic with `peer` (`seal`: it
    /// must be sealed), from this router's path and the peer's latest announcement.
    pub fn path_encryption(&self, peer: PeerName, seal: bool) -> PathEncryption {
        let theirs = self
            .table
            .get(peer)
            .is_some_and(|a| a.fastdp_peers.contains(&self.local));
        self.core.path_encryption(peer, seal, theirs)
    }

    /// Sets whether traffic must be encrypted (no kernel ESP: the sealed sleeve carries it).
    pub fn set_encryption_required(&mut self, required: bool) {
        self.core.set_encryption_required(required);
    }

    /// Sets whether `peer` is outside the mesh encryption (trusted subnet).
    pub fn set_encryption_exempt(&mut self, peer: PeerName, exempt: bool) {
        self.core.set_encryption_exempt(peer, exempt);
    }

    /// When the core wants its timeout, or the next traffic sample is due (while a peer is
    /// on fastdp).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let core = self.core.poll_timeout().map(|(t, _)| t);
        let sample = self.sampling().then_some(self.next_traffic_sample);
        let announce = self
            .own_dirty
            .then(|| self.own_sent.map(|t| t + ANNOUNCE_INTERVAL))
            .flatten();
        core.into_iter().chain(sample).chain(announce).min()
    }

    fn sampling(&self) -> bool {
        self.core.any_on_fastdp()
    }

    /// Reads the forwarding entries for traffic evidence when a sample is due.
    async fn sample_traffic(&mut self) {
        let now = Instant::now();
        if now < self.next_traffic_sample || !self.sampling() {
            return;
        }
        self.next_traffic_sample = now + TRAFFIC_SAMPLE;
        let bridge_macs: BTreeSet<MacAddr> = self.table.iter().map(|a| a.bridge_mac).collect();
        match self.fdb.busy_remotes(&bridge_macs).await {
            Ok(busy) => {
                for addr in busy {
                    self.core.handle_traffic(now, addr);
                }
            }
            Err(e) => tracing::debug!("reading forwarding entries for traffic: {e:#}"),
        }
    }

    /// Runs the core's timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    /// A probe answer from `addr`.
    pub fn handle_answer(&mut self, addr: IpAddr) {
        self.metrics.inc_fastdp(FastdpCounter::ProbeAnswered);
        self.core.handle_probe_answer(addr);
    }

    /// A connection to `peer` at `addr` came up; returns the announcements to send it (ours
    /// and every one held).
    pub fn peer_up(&mut self, now: Instant, peer: PeerName, addr: IpAddr) -> Vec<Vec<u8>> {
        let inherited = self.inherited.remove(&addr);
        self.core.handle_peer_up(now, peer, addr, inherited);
        self.pins_dirty.insert(peer);
        if let Some(a) = self.table.get(peer) {
            self.core.handle_bridge_mac(peer, a.bridge_mac);
        }
        std::iter::once(&self.own)
            .chain(self.table.iter())
            .map(|a| envelope(Channel::Fastdp, &a.encode()))
            .collect()
    }

    /// The connection to `peer` closed.
    pub fn peer_down(&mut self, peer: PeerName) {
        self.core.handle_peer_down(peer);
        self.pins_dirty.insert(peer);
    }

    /// `weft rmpeer`: forget the peer at once.
    pub fn forget(&mut self, peer: PeerName) {
        self.core.forget(peer);
        self.table.remove(peer);
        self.pins_dirty.insert(peer);
    }

    /// An announcement arrived; returns the message to pass on to the other connections
    /// when it was news.
    ///
    /// # Errors
    /// The decoder's, for a malformed body (the caller counts and drops it).
    pub async fn handle_announcement(
        &mut self,
        body: &[u8],
        sleeve: Option<&Sleeve>,
    ) -> Result<Option<(PeerName, Vec<u8>)>, topology::fastdp::AnnounceError> {
        let a = Announcement::decode(body)?;
        if a.origin == self.local {
            return Ok(None);
        }
        let old = self.table.get(a.origin).cloned();
        if !self.table.merge(a.clone()) {
            return Ok(None);
        }
        self.core.handle_bridge_mac(a.origin, a.bridge_mac);
        let (path, addr) = (self.core.path(a.origin), self.addr_of(a.origin));
        let ops = self
            .pins
            .handle_announcement(old.as_ref(), &a, path, addr, &self.own);
        self.apply(Some(a.origin), ops).await;
        self.update_sleeve(sleeve);
        Ok(Some((a.origin, envelope(Channel::Fastdp, body))))
    }

    /// Sends the probes the core asks for and applies its decisions to the forwarding
    /// database and the sleeve; returns our announcement when it changed (for every
    /// connection).
    pub async fn drain(&mut self, sleeve: Option<&Sleeve>) -> Option<Vec<u8>> {
        self.sample_traffic().await;
        let mut probed = false;
        while let Some(probe) = self.core.poll_probe() {
            self.metrics.inc_fastdp(FastdpCounter::ProbeSent);
            self.prober.send(&probe);
            probed = true;
        }
        if probed && let Some(s) = sleeve {
            self.recheck_unanswered(s);
        }
        let mut changed = false;
        while let Some(event) = self.core.poll_event() {
            changed = true;
            match event {
                Event::Joined { peer, addr } => {
                    self.metrics.inc_fastdp(FastdpCounter::SwitchToFastdp);
                    tracing::info!(%peer, %addr, "peer on fastdp");
                    // The device's entries, then the pins move to the VXLAN port.
                    let ops = self.pins.handle_joined(
                        peer,
                        addr,
                        self.core.path(peer),
                        self.table.get(peer),
                        &self.own,
                    );
                    self.apply(Some(peer), ops).await;
                    // MACs behind the peer it has not announced (yet): the bridge learned them
                    // on the TAP, and the sleeve is about to forget them and leave the peer
                    // to fastdp, so frames to them would be lost. The bridge forgets them
                    // too and floods until it learns them on the VXLAN port.
                    if let (Some(s), Some(_)) = (sleeve, self.tap) {
                        let ops = self.pins.forget_on_tap(peer, s.macs_of(peer));
                        self.apply(Some(peer), ops).await;
                    }
                    if let Some(s) = sleeve {
                        s.forget_macs_of(peer);
                    }
                }
                Event::Left { peer, addr, reason } => {
                    self.metrics.inc_fastdp(FastdpCounter::SwitchToSleeve);
                    tracing::info!(%peer, %addr, %reason, "peer on the sleeve");
                    // The sleeve takes over first (knowing where the peer's pods are), then
                    // the kernel's entries go.
                    self.own.fastdp_peers.remove(&peer);
                    self.own_dirty = true;
                    let macs = self
                        .table
                        .get(peer)
                        .map(|a| a.macs.clone())
                        .unwrap_or_default();
                    if let Some(s) = sleeve {
                        s.learn_macs_of(peer, macs.iter().copied());
                    }
                    self.update_sleeve(sleeve);
                    // The pins move to the TAP before the device's entries go (this
                    // router's answers would otherwise cross in clear).
                    let ops = self.pins.handle_left(
                        peer,
                        addr,
                        self.core.path(peer),
                        self.table.get(peer),
                        &self.own,
                    );
                    self.apply(Some(peer), ops).await;
                }
            }
        }
        for peer in std::mem::take(&mut self.pins_dirty) {
            self.sync_pins(peer).await;
        }
        if changed {
            let peers = self.core.fastdp_peers();
            if peers != self.own.fastdp_peers {
                self.own.fastdp_peers = peers;
                self.own_dirty = true;
            }
            self.update_sleeve(sleeve);
        }
        self.take_own()
    }

    /// Slow periodic work: our pods' MACs, the bridge's MAC, flood entries of an earlier run
    /// whose peers never came back. Returns our announcement when it changed.
    pub async fn housekeeping(&mut self, sleeve: Option<&Sleeve>) -> Option<Vec<u8>> {
        match self.fdb.local_pod_macs(self.bridge, self.tap).await {
            Ok(macs) if macs != self.own.macs => {
                self.own.macs = macs;
                self.own_dirty = true;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("fastdp: listing pod MACs: {e:#}"),
        }
        if let Ok(mac) = self.fdb.netlink.link_mac(self.bridge).await
            && mac != self.bridge_mac
        {
            self.bridge_mac = mac;
            self.own.bridge_mac = mac;
            self.own_dirty = true;
        }
        if !self.inherited_checked && self.started.elapsed() > INHERITED_GRACE {
            self.inherited_checked = true;
            for addr in std::mem::take(&mut self.inherited) {
                tracing::info!(%addr, "fastdp: removing a flood entry no peer claimed");
                if let Err(e) = self.fdb.leave(addr, &BTreeSet::new()).await {
                    tracing::warn!("fastdp: {e:#}");
                }
            }
            self.remove_stale_pins().await;
        }
        self.update_sleeve(sleeve);
        self.take_own()
    }

    /// Brings the bridge's pinned entries for `peer`'s MACs in line with its path and its
    /// latest announcement.
    async fn sync_pins(&mut self, peer: PeerName) {
        let ops = self
            .pins
            .sync(peer, self.core.path(peer), self.table.get(peer), &self.own);
        self.apply(Some(peer), ops).await;
    }

    /// Removes the pinned bridge entries an earlier run left on the tunnel ports for MACs
    /// no peer announces now.
    async fn remove_stale_pins(&mut self) {
        let entries = match self.fdb.netlink.fdb_dump().await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("fastdp: listing forwarding entries: {e:#}");
                return;
            }
        };
        // Only weft's pins (sticky, on a tunnel port) are candidates.
        let pinned = entries
            .into_iter()
            .filter(|e| e.master && e.sticky)
            .filter_map(|e| Some((self.port_of(e.ifindex)?, e.mac)));
        for op in self.pins.stale(pinned) {
            if let FdbOp::Unpin { mac, .. } = &op {
                tracing::info!(mac = %mac, "fastdp: removing a pinned entry no peer claims");
            }
            self.apply_op(None, op).await;
        }
    }

    /// Applies the core's forwarding-database changes in their order; a failure is logged
    /// and the rest still go.
    async fn apply(&mut self, peer: Option<PeerName>, ops: Vec<FdbOp>) {
        for op in ops {
            self.apply_op(peer, op).await;
        }
    }

    async fn apply_op(&mut self, peer: Option<PeerName>, op: FdbOp) {
        let peer = peer.map(tracing::field::display);
        let fdb = &self.fdb;
        match op {
            FdbOp::AddMacs { addr, macs } => {
                if let Err(e) = fdb.add_macs(addr, &macs).await {
                    tracing::warn!(peer, "fastdp: adding MAC entries: {e:#}");
                }
            }
            FdbOp::Flush { addr, macs } => {
                if let Err(e) = fdb.leave(addr, &macs).await {
                    tracing::warn!(
                        peer,
                        "fastdp: flushing entries learned from a peer leaving fastdp: {e:#}"
                    );
                }
            }
            FdbOp::ForgetOnTap { mac } => {
                if let Some(tap) = self.tap
                    && let Err(e) = fdb.netlink.fdb_del_bridge(tap, mac).await
                {
                    tracing::warn!(peer, "fastdp: {e:#}");
                }
            }
            FdbOp::Join { addr, macs } => {
                if let Err(e) = fdb.join(addr, &macs).await {
                    tracing::warn!(peer, "fastdp: adding forwarding entries: {e:#}");
                }
            }
            FdbOp::Leave { addr, macs } => {
                if let Err(e) = fdb.leave(addr, &macs).await {
                    tracing::warn!(peer, "fastdp: removing forwarding entries: {e:#}");
                }
            }
            FdbOp::Pin {
                peer: owner,
                port,
                mac,
            } => {
                let result = match self.ifindex(port) {
                    Some(index) => fdb.netlink.fdb_pin_bridge(index, mac).await,
                    None => Err(anyhow::anyhow!("no TAP to pin {} to", mac)),
                };
                if let Err(e) = result {
                    tracing::warn!(peer, "fastdp: {e:#}");
                    self.pins.handle_pin_failed(owner, port, mac);
                }
            }
            FdbOp::RemoveMacs { addr, macs } => {
                if let Err(e) = fdb.remove_macs(addr, &macs).await {
                    tracing::warn!(peer, "fastdp: removing withdrawn MAC entries: {e:#}");
                }
            }
            FdbOp::Unpin { port, mac } => {
                if let Some(index) = self.ifindex(port)
                    && let Err(e) = fdb.netlink.fdb_del_bridge(index, mac).await
                {
                    tracing::warn!(peer, "fastdp: unpinning a bridge entry: {e:#}");
                }
            }
        }
    }

    /// The kernel index of a tunnel port (`None`: no TAP).
    fn ifindex(&self, port: Port) -> Option<u32> {
        match port {
            Port::Tap => self.tap,
            Port::Vxlan => Some(self.fdb.vxlan),
        }
    }

    /// The tunnel port a kernel index names, if it is one.
    fn port_of(&self, index: u32) -> Option<Port> {
        if index == self.fdb.vxlan {
            Some(Port::Vxlan)
        } else if Some(index) == self.tap {
            Some(Port::Tap)
        } else {
            None
        }
    }

    fn take_own(&mut self) -> Option<Vec<u8>> {
        let now = Instant::now();
        if !self.own_dirty || self.own_sent.is_some_and(|t| now < t + ANNOUNCE_INTERVAL) {
            return None;
        }
        self.own_dirty = false;
        self.own_sent = Some(now);
        self.own.seq += 1;
        Some(envelope(Channel::Fastdp, &self.own.encode()))
    }

    fn addr_of(&self, peer: PeerName) -> Option<IpAddr> {
        self.core
            .views()
            .into_iter()
            .find(|v| v.peer == peer)
            .map(|v| v.addr)
    }

    /// A peer whose full-size probes go unanswered may sit behind a path that shrank (or was
    /// always small): the sleeve verifies its datagram size toward it again, at once and every
    /// [`RECHECK_UNANSWERED`] while the probes stay unanswered.
    fn recheck_unanswered(&mut self, sleeve: &Sleeve) {
        let now = Instant::now();
        let unanswered: BTreeSet<PeerName> = self
            .core
            .views()
            .into_iter()
            .filter(|v| matches!(v.path, Path::Sleeve(Reason::NoAnswer { .. })))
            .map(|v| v.peer)
            .collect();
        self.unanswered.retain(|p, _| unanswered.contains(p));
        for peer in unanswered {
            let due = self
                .unanswered
                .get(&peer)
                .is_none_or(|last| now >= *last + RECHECK_UNANSWERED);
            if due {
                sleeve.recheck_path(peer);
                self.unanswered.insert(peer, now);
            }
        }
    }

    /// Tells the sleeve what to leave to fastdp: the traffic of peers on fastdp both ways.
    /// A peer this router just moved onto fastdp may still send over the sleeve until it hears
    /// of the change; while it does, the bridge learns its pods on the TAP, so the sleeve
    /// keeps carrying to it (a duplicate at worst) rather than drop what the bridge hands it.
    fn update_sleeve(&self, sleeve: Option<&Sleeve>) {
        let Some(sleeve) = sleeve else { return };
        let local: HashSet<PeerName> = self
            .core
            .fastdp_peers()
            .iter()
            .filter(|p| {
                self.table
                    .get(**p)
                    .is_some_and(|a| a.fastdp_peers.contains(&self.local))
            })
            .copied()
            .collect();
        let macs = self
            .table
            .iter()
            .filter(|a| local.contains(&a.origin))
            .flat_map(|a| a.macs.iter().map(|m| (*m, a.origin)))
            .collect();
        let by_origin = self
            .table
            .iter()
            .map(|a| (a.origin, a.fastdp_peers.iter().copied().collect()))
            .collect();
        sleeve.set_fastdp(FastdpView {
            local,
            macs,
            by_origin,
        });
    }

    /// Per-peer probe figures, for status.
    pub fn views(&self) -> Vec<topology::fastdp::PeerView> {
        self.core.views()
    }
}

/// How long flood entries left by an earlier run wait for their peer to reconnect.
const INHERITED_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
