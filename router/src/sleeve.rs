//! The routed sleeve: pod frames between the node's TAP (`weft-tap`, on bridge `weft`) and
//! its peers over UDP, looked up in the MAC table, routed hop by hop along the mesh's routes,
//! chunked to fit the underlay and sealed with each connection's data-plane keys.
//!
//! Shell only: the forwarding rules (`topology::dataplane::Forwarder`), the sleeve codec
//! (`topology::sleeve`), the MAC table (`topology::mac`) and the sessions (`crypto::Session`)
//! decide; this module moves bytes between them, the TAP and the UDP socket. Two threads, one per direction, so both cores work (a TAP write runs the bridge
//! and the receiving pod's stack in the writer's context), and a third for path MTU probes
//! (`sleeve/pmtu.rs`):
//!
//! - TX (TAP → UDP, `sleeve/tx.rs`): per wakeup, up to [`FRAMES_PER_BATCH`] frames are read
//!   with `readv` straight into chunk slots; the forwarder decides each frame's destination
//!   peer and next hops (the MAC table locked once for the batch); each frame is chunked in
//!   place, each chunk sealed in place with the next hop's session, and the whole batch leaves
//!   in `sendmmsg` calls of UDP GSO trains, one call per run of frames with the same next hop.
//! - RX (UDP → TAP): `recvmmsg` of GRO-coalesced messages; each datagram's header is checked
//!   and it is opened with the session of the hop it came from (by source address); the
//!   forwarder then says deliver (reassemble, write to the TAP, learn the source MAC), relay
//!   (reseal for the next hop with the hop limit it gives), or both for a broadcast.
//!
//! Every datagram is authenticated: sealed (`--encryption on`) or authenticated-plain, per
//! the session's mode; a receiver accepts both. Shared state (peers, routes) is a
//! copy-on-write snapshot that each thread clones once per batch; each peer's session sits
//! behind its own mutex, locked per frame (TX) or per received message (RX). Buffers are
//! allocated at start; the loops allocate nothing per packet (a broadcast with several next
//! hops copies into a preallocated scratch buffer).

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use crypto::{DataKeys, Mode, OpenError, PacketBuf, Session, SessionConfig, TAG_LEN};
use socket2::SockAddr;
use topology::PeerName;
use topology::dataplane::{
    self, Arrived, Captured, FastdpView, Forwarder, ForwardingTable, NextHops,
};
use topology::mac::{Learned, MacAddr, MacTable};
use topology::sleeve::{
    ChunkLayout, Chunker, Chunks, HEADER_LEN, MAX_FRAME_LEN, Packet, ReassemblyConfig, Received,
    Receiver, VNET_HDR_LEN,
};
use tracing::debug;

mod pmtu;
mod tx;

pub use tx::FRAMES_PER_BATCH;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub use tx::{SentFrame, send_path};

use crate::metrics::{DropReason, Metrics};
use crate::netlink::Netlink;
use crate::status::Datapath;
use crate::tap::{Tap, TapOptions};
use crate::udp::{
    self, MAX_BATCH, MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD, RecvMeta, Transmit, UdpOptions, UdpSocket,
};

/// The sleeve's TAP device, a port of the bridge.
pub const TAP: &str = "weft-tap";

pub use crate::status::SleeveCounters;

/// The destination peer name of a broadcast datagram, as the codec carries it.
pub const BROADCAST: [u8; 6] = dataplane::BROADCAST.bytes();

/// Messages received per `recvmmsg`.
pub const RX_BATCH: usize = 8;

/// What [`Sleeve::start`] needs.
#[derive(Debug, Clone)]
pub struct SleeveConfig {
    /// This router's peer name.
    pub local: PeerName,
    /// The UDP address to bind (the control port's number).
    pub bind: SocketAddr,
    /// The TAP device's name (`weft-tap`).
    pub tap: String,
    /// The bridge the TAP joins.
    pub bridge_index: u32,
    /// The pod MTU, set on the TAP.
    pub mtu: u32,
    /// Seal payloads (`--encryption on`); authenticated-plain otherwise.
    pub encryption: bool,
    /// Largest UDP payload sent (underlay MTU − 28).
    pub max_datagram: usize,
}

/// A running sleeve; stops its threads on [`Sleeve::stop`] or drop.
#[derive(Debug)]
pub struct Sleeve {
    shared: Arc<Shared>,
    tx: Option<JoinHandle<()>>,
    rx: Option<JoinHandle<()>>,
    pmtu: Option<JoinHandle<()>>,
    mtu: u32,
}

impl Sleeve {
    /// Creates the TAP, attaches it to the bridge with the pod MTU and brings it up, binds
    /// the UDP socket (GSO/GRO) and starts the two threads.
    ///
    /// # Errors
    /// Fails when the TAP, the netlink calls, the socket or a thread cannot be set up.
    pub async fn start(config: SleeveConfig, netlink: &Netlink, metrics: Metrics) -> Result<Self> {
        let layout = ChunkLayout::sealed(config.max_datagram, crypto::HEADER_LEN, TAG_LEN)
            .map_err(|e| anyhow::anyhow!("sleeve datagram size {}: {e}", config.max_datagram))?;
        let tap = Tap::open(&config.tap, &TapOptions::default())
            .with_context(|| format!("opening TAP {}", config.tap))?;
        let index = netlink
            .link_index(&config.tap)
            .await?
            .with_context(|| format!("TAP {} has no link index", config.tap))?;
        netlink.set_mtu(index, config.mtu).await?;
        netlink.set_master(index, config.bridge_index).await?;
        netlink.set_up(index).await?;
        let socket = UdpSocket::bind(config.bind, &UdpOptions::default())
            .with_context(|| format!("binding the sleeve's UDP port {}", config.bind))?;
        let shared = Arc::new(Shared {
            local: config.local.bytes(),
            start: Instant::now(),
            state: RwLock::new(Arc::new(State::new(config.local))),
            macs: Mutex::new(MacTable::new(
                MacTable::DEFAULT_CAPACITY,
                MacTable::DEFAULT_MAX_AGE,
            )),
            encryption: AtomicBool::new(config.encryption),
            stop: AtomicBool::new(false),
            metrics,
            counters: AtomicCounters::default(),
            pmtu: pmtu::table(config.max_datagram),
            datagram: AtomicUsize::new(config.max_datagram),
            pmtu_thread: OnceLock::new(),
        });
        let tap = Arc::new(tap);
        let socket = Arc::new(socket);
        let first_frame_id = rand::random::<u32>();
        let tx = {
            let (tap, socket, shared) = (tap.clone(), socket.clone(), shared.clone());
            std::thread::Builder::new()
                .name("sleeve-tx".into())
                .spawn(move || tx::tx_loop(&tap, &socket, &shared, layout, first_frame_id))?
        };
        let path_mtu = {
            let (socket, shared) = (socket.clone(), shared.clone());
            std::thread::Builder::new()
                .name("sleeve-pmtu".into())
                .spawn(move || pmtu::pmtu_loop(&socket, &shared))?
        };
        let _ = shared.pmtu_thread.set(path_mtu.thread().clone());
        let rx = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sleeve-rx".into())
                .spawn(move || rx_loop(&tap, &socket, &shared))?
        };
        Ok(Self {
            shared,
            tx: Some(tx),
            rx: Some(rx),
            pmtu: Some(path_mtu),
            mtu: config.mtu,
        })
    }

    /// Returns the pod MTU the sleeve carries.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Runs the path MTU search toward `peer` again (its path may have changed).
    pub fn recheck_path(&self, peer: PeerName) {
        if self.has_peer(peer) {
            pmtu::peer_added(&self.shared, peer.bytes());
        }
    }

    /// What the path MTU search toward `peer` found so far.
    pub fn path_mtu(&self, peer: PeerName) -> Option<topology::sleeve::pmtu::PathView> {
        pmtu::view(&self.shared, peer.bytes())
    }

    /// Returns whether new datagrams are sealed.
    pub fn encryption(&self) -> bool {
        self.shared.encryption.load(Ordering::Relaxed)
    }

    /// Adds (or replaces) the link to `peer` reached at `addr` (its sleeve UDP address),
    /// sealing with `keys` from connection `conn`; `seal` picks the mode of the datagrams it
    /// sends (received ones are accepted in either mode).
    pub fn add_peer(
        &self,
        conn: u64,
        peer: PeerName,
        addr: SocketAddr,
        keys: DataKeys,
        seal: bool,
    ) {
        let link = Arc::new(PeerLink {
            conn,
            name: peer.bytes(),
            dest: SockAddr::from(addr),
            session: Mutex::new(Session::new(
                keys,
                SessionConfig::default(),
                mode_of(seal),
                Instant::now(),
            )),
            rx: LinkRx::default(),
            switched_at_ms: AtomicU64::new(NEVER),
        });
        // A peer may briefly hold two connections (both sides dialled); the mesh closes one.
        // Until then the newest link sends, and receiving tries every link of the address.
        self.update(|s| {
            s.peers.retain(|_, links| {
                links.retain(|l| l.name != link.name || l.conn != link.conn);
                !links.is_empty()
            });
            s.peers.entry(addr).or_default().push(link.clone());
            s.by_name.insert(peer, link);
            s.table.set_link(peer, true);
        });
        pmtu::peer_added(&self.shared, peer.bytes());
    }

    /// Removes the link of connection `conn`, if it is still the one in use.
    pub fn remove_conn(&self, conn: u64) {
        let mut gone = None;
        self.update(|s| {
            s.peers.retain(|_, links| {
                links.retain(|l| {
                    let keep = l.conn != conn;
                    if !keep {
                        gone = Some(PeerName::from_bytes(l.name));
                    }
                    keep
                });
                !links.is_empty()
            });
            let Some(name) = gone else { return };
            if s.by_name.get(&name).is_some_and(|l| l.conn != conn) {
                return;
            }
            // The link that sent is gone: the peer's newest other link, if any, takes over.
            let other = (s.peers.values().flatten())
                .filter(|l| l.name == name.bytes())
                .max_by_key(|l| l.conn);
            match other {
                Some(other) => {
                    s.by_name.insert(name, other.clone());
                }
                None => {
                    s.by_name.remove(&name);
                    s.table.set_link(name, false);
                }
            }
        });
        if let Some(name) = gone
            && self.snapshot().link(name).is_none()
        {
            lock(&self.shared.macs).remove_peer(name);
            pmtu::peer_removed(&self.shared, name.bytes());
        }
    }

    /// Binds `macs` (the ones `peer` announced) to `peer`: it is leaving fastdp, and its pods'
    /// traffic must take the sleeve as unicast from the first frame, not as a sleeve broadcast
    /// the peer still leaves to fastdp until it hears of the change.
    pub fn learn_macs_of(&self, peer: PeerName, macs: impl IntoIterator<Item = MacAddr>) {
        let now = Instant::now();
        let mut table = lock(&self.shared.macs);
        for mac in macs {
            table.learn(now, mac, peer);
        }
    }

    /// The MACs learned behind `peer`.
    pub fn macs_of(&self, peer: PeerName) -> Vec<MacAddr> {
        lock(&self.shared.macs).macs_of(peer)
    }

    /// Forgets the MACs learned behind `peer` (it moved onto fastdp).
    pub fn forget_macs_of(&self, peer: PeerName) {
        lock(&self.shared.macs).remove_peer(peer);
    }

    /// Returns whether a link to `peer` is up.
    pub fn has_peer(&self, peer: PeerName) -> bool {
        self.snapshot().link(peer).is_some()
    }

    /// Replaces the routes.
    pub fn set_routes(&self, hops: NextHops) {
        let hops = Arc::new(hops);
        self.update(|s| s.table.set_hops(hops));
    }

    /// Replaces what the sleeve leaves to fastdp.
    pub fn set_fastdp(&self, fastdp: FastdpView) {
        let view = Arc::new(fastdp);
        self.update(|s| s.table.set_fastdp(view));
    }

    /// Switches sealing on or off for datagrams sent from now on, on every link.
    pub fn set_encryption(&self, on: bool) {
        self.shared.encryption.store(on, Ordering::Relaxed);
        for link in self.snapshot().peers.values().flatten() {
            self.switch(link, on);
        }
    }

    /// Records the mesh-wide setting (what [`Self::encryption`] answers) without touching
    /// any link; the daemon then sets each link with [`Self::set_link_seal`].
    pub fn set_mesh_encryption(&self, on: bool) {
        self.shared.encryption.store(on, Ordering::Relaxed);
    }

    /// Switches the link of connection `conn` to sealing (or authenticated-plain) for
    /// datagrams sent from now on. Datagrams in flight in the old mode are still accepted by
    /// the peer, which opens both modes at all times: that is the change-over's overlap.
    pub fn set_link_seal(&self, conn: u64, seal: bool) {
        for link in self.snapshot().peers.values().flatten() {
            if link.conn == conn {
                self.switch(link, seal);
            }
        }
    }

    fn switch(&self, link: &PeerLink, seal: bool) {
        let mut session = lock(&link.session);
        if session.mode() != mode_of(seal) {
            session.set_mode(mode_of(seal));
            link.switched_at_ms.store(
                self.shared.ms_since_start(Instant::now()),
                Ordering::Relaxed,
            );
        }
    }

    /// The encryption state of connection `conn`'s link, if it is up.
    pub fn link_encryption(&self, conn: u64) -> Option<LinkEncryption> {
        let state = self.snapshot();
        let link = state.peers.values().flatten().find(|l| l.conn == conn)?;
        let now = self.shared.ms_since_start(Instant::now());
        let ago = |ms: u64| (ms != NEVER).then(|| Duration::from_millis(now.saturating_sub(ms)));
        let rx_mode = match link.rx.mode.load(Ordering::Relaxed) {
            RX_SEALED => Some(Mode::Sealed),
            RX_PLAIN => Some(Mode::Plain),
            _ => None,
        };
        Some(LinkEncryption {
            sending: lock(&link.session).mode(),
            received: rx_mode.zip(ago(link.rx.at_ms.load(Ordering::Relaxed))),
            switched: ago(link.switched_at_ms.load(Ordering::Relaxed)),
        })
    }

    /// Returns the counters.
    pub fn counters(&self) -> SleeveCounters {
        self.shared.counters.snapshot()
    }

    /// Stops both threads.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        pmtu::wake(&self.shared);
        for h in [self.tx.take(), self.rx.take(), self.pmtu.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }

    fn snapshot(&self) -> Arc<State> {
        self.shared.snapshot()
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        // Writers (the daemon) are rare; readers clone the Arc once per batch.
        let mut guard = self
            .shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = State::clone(&guard);
        f(&mut next);
        *guard = Arc::new(next);
    }
}

impl Drop for Sleeve {
    fn drop(&mut self) {
        self.join();
    }
}

/// One link's encryption state, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkEncryption {
    /// The mode datagrams are sent in now.
    pub sending: Mode,
    /// The mode of the last datagram received from the peer, and how long ago it came.
    pub received: Option<(Mode, Duration)>,
    /// How long ago the sending mode last switched, if it ever did.
    pub switched: Option<Duration>,
}

/// What both threads share.
#[derive(Debug)]
struct Shared {
    local: [u8; 6],
    /// The origin of the links' millisecond timestamps.
    start: Instant,
    state: RwLock<Arc<State>>,
    macs: Mutex<MacTable>,
    encryption: AtomicBool,
    stop: AtomicBool,
    metrics: Metrics,
    counters: AtomicCounters,
    /// The path MTU search toward every peer.
    pmtu: Mutex<topology::sleeve::pmtu::PmtuTable<[u8; 6]>>,
    /// The datagram size the TX thread chunks to (the search's verdict).
    datagram: AtomicUsize,
    /// The PMTU thread, to wake it.
    pmtu_thread: OnceLock<std::thread::Thread>,
}

impl Shared {
    fn ms_since_start(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(NEVER - 1)
    }

    fn snapshot(&self) -> Arc<State> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn drop_forwarding(&self, reason: dataplane::DropReason) {
        self.drop_datagram(match reason {
            dataplane::DropReason::Malformed => DropReason::Malformed,
            dataplane::DropReason::NoRoute
            | dataplane::DropReason::HopLimit
            | dataplane::DropReason::Loop => DropReason::NoRoute,
        });
    }

    fn drop_datagram(&self, reason: DropReason) {
        self.metrics.add_dropped(reason, 1);
        let c = &self.counters;
        c.dropped.fetch_add(1, Ordering::Relaxed);
        let which = match reason {
            DropReason::Decrypt => &c.dropped_decrypt,
            DropReason::Replay => &c.dropped_replay,
            DropReason::UnknownPeer => &c.dropped_unknown_peer,
            DropReason::NoRoute => &c.dropped_no_route,
            DropReason::Malformed | DropReason::QueueFull | DropReason::TooBig => {
                &c.dropped_malformed
            }
        };
        which.fetch_add(1, Ordering::Relaxed);
    }
}

/// Links and the forwarding table, replaced as a whole.
#[derive(Debug, Clone)]
struct State {
    /// Links by the peer's sleeve address, oldest first.
    peers: HashMap<SocketAddr, Vec<Arc<PeerLink>>>,
    /// The link each peer is sent to by (its newest).
    by_name: HashMap<PeerName, Arc<PeerLink>>,
    table: ForwardingTable,
}

impl State {
    fn new(local: PeerName) -> Self {
        Self {
            peers: HashMap::new(),
            by_name: HashMap::new(),
            table: ForwardingTable::new(local),
        }
    }

    /// The link to peer `name`.
    fn link(&self, name: PeerName) -> Option<&Arc<PeerLink>> {
        self.by_name.get(&name)
    }
}

/// One connected peer's sleeve link.
struct PeerLink {
    conn: u64,
    name: [u8; 6],
    dest: SockAddr,
    session: Mutex<Session>,
    rx: LinkRx,
    /// When the sending mode last switched (ms since the sleeve started), or [`NEVER`].
    switched_at_ms: AtomicU64,
}

/// What the last datagram opened on a link was.
#[derive(Debug)]
struct LinkRx {
    /// [`RX_NONE`], [`RX_PLAIN`] or [`RX_SEALED`].
    mode: AtomicU8,
    /// When it came (ms since the sleeve started).
    at_ms: AtomicU64,
}

impl Default for LinkRx {
    fn default() -> Self {
        Self {
            mode: AtomicU8::new(RX_NONE),
            at_ms: AtomicU64::new(NEVER),
        }
    }
}

const RX_NONE: u8 = 0;
const RX_PLAIN: u8 = 1;
const RX_SEALED: u8 = 2;
const NEVER: u64 = u64::MAX;

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink")
            .field("conn", &self.conn)
            .field("name", &PeerName::from_bytes(self.name))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct AtomicCounters {
    tap_frames: AtomicU64,
    tap_unicast: AtomicU64,
    late_for_fastdp: AtomicU64,
    rx_left_to_fastdp: AtomicU64,
    tx_broadcast: AtomicU64,
    tx_datagrams: AtomicU64,
    rx_datagrams: AtomicU64,
    delivered: AtomicU64,
    relayed: AtomicU64,
    dropped: AtomicU64,
    dropped_decrypt: AtomicU64,
    dropped_replay: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_unknown_peer: AtomicU64,
    dropped_no_route: AtomicU64,
    mac_moves: AtomicU64,
    send_errors: AtomicU64,
    tap_write_errors: AtomicU64,
}

impl AtomicCounters {
    fn snapshot(&self) -> SleeveCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SleeveCounters {
            tap_frames: g(&self.tap_frames),
            tap_unicast: g(&self.tap_unicast),
            late_for_fastdp: g(&self.late_for_fastdp),
            rx_left_to_fastdp: g(&self.rx_left_to_fastdp),
            tx_broadcast: g(&self.tx_broadcast),
            tx_datagrams: g(&self.tx_datagrams),
            rx_datagrams: g(&self.rx_datagrams),
            delivered: g(&self.delivered),
            relayed: g(&self.relayed),
            dropped: g(&self.dropped),
            dropped_decrypt: g(&self.dropped_decrypt),
            dropped_replay: g(&self.dropped_replay),
            dropped_malformed: g(&self.dropped_malformed),
            dropped_unknown_peer: g(&self.dropped_unknown_peer),
            dropped_no_route: g(&self.dropped_no_route),
            mac_moves: g(&self.mac_moves),
            send_errors: g(&self.send_errors),
            tap_write_errors: g(&self.tap_write_errors),
        }
    }
}

fn add(a: &AtomicU64, n: u64) {
    if n > 0 {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

fn mode_of(encryption: bool) -> Mode {
    if encryption {
        Mode::Sealed
    } else {
        Mode::Plain
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn rx_loop(tap: &Tap, socket: &UdpSocket, shared: &Shared) {
    let mut receiver = Receiver::new(shared.local, ReassemblyConfig::default());
    let mut forwarder = Forwarder::new(PeerName::from_bytes(shared.local));
    let mut bufs: Vec<Box<[u8]>> = (0..RX_BATCH)
        .map(|_| vec![0u8; RX_BUF_LEN].into_boxed_slice())
        .collect();
    let mut scratch = vec![0u8; RX_BUF_LEN].into_boxed_slice();
    let mut meta = [RecvMeta::default(); RX_BATCH];
    let mut next_purge = Instant::now() + POLL;
    while !shared.stop.load(Ordering::Relaxed) {
        let readable = socket.wait_readable(POLL).unwrap_or(false);
        let now = Instant::now();
        if now >= next_purge {
            receiver.handle_timeout(now);
            lock(&shared.macs).expire(now);
            next_purge = now + POLL;
        }
        if !readable {
            continue;
        }
        for _ in 0..8 {
            let mut it = bufs.iter_mut();
            let mut slices: [&mut [u8]; RX_BATCH] =
                std::array::from_fn(|_| it.next().map_or(&mut [][..], |b| &mut b[..]));
            let got = match socket.recv_batch(&mut slices, &mut meta) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let state = shared.snapshot();
            let now = Instant::now();
            for (buf, m) in bufs.iter_mut().zip(&meta).take(got) {
                let datagrams = m.len.div_ceil(m.segment_size.max(1)) as u64;
                add(&shared.counters.rx_datagrams, datagrams);
                let hop = m.src.and_then(|a| state.peers.get(&a));
                let Some(hop) = hop.filter(|links| !links.is_empty()) else {
                    for _ in 0..datagrams {
                        shared.drop_datagram(DropReason::UnknownPeer);
                    }
                    continue;
                };
                if m.truncated {
                    shared.drop_datagram(DropReason::Malformed);
                    continue;
                }
                let mut ctx = RxCtx {
                    tap,
                    socket,
                    shared,
                    state: &state,
                    hop,
                    receiver: &mut receiver,
                    forwarder: &mut forwarder,
                    scratch: &mut scratch,
                    now,
                };
                for datagram in buf[..m.len].chunks_mut(m.segment_size.max(1)) {
                    ctx.handle(datagram);
                }
            }
            if got < RX_BATCH {
                break;
            }
        }
    }
}

/// What handling one received datagram needs.
struct RxCtx<'a> {
    tap: &'a Tap,
    socket: &'a UdpSocket,
    shared: &'a Shared,
    state: &'a State,
    /// The links of the address the datagrams came from, newest last.
    hop: &'a [Arc<PeerLink>],
    receiver: &'a mut Receiver,
    forwarder: &'a mut Forwarder,
    scratch: &'a mut [u8],
    now: Instant,
}

impl RxCtx<'_> {
    fn handle(&mut self, datagram: &mut [u8]) {
        let shared = self.shared;
        let repr = match Forwarder::check(datagram) {
            Ok(repr) => repr,
            Err(reason) => {
                shared.drop_forwarding(reason);
                return;
            }
        };
        let len = datagram.len();
        let mut packet = PacketBuf::new(&mut *datagram, HEADER_LEN, len - HEADER_LEN);
        // Newest link first. Any error moves on to the next link: a datagram sealed by the
        // other of two connections (both sides dialled) fails this link's replay window or
        // epoch as readily as its tag, and a failed open leaves the session unchanged. When
        // every link refuses it, the newest link's reason counts.
        let mut result = Err(OpenError::BadTag);
        let mut from = None;
        for (i, link) in self.hop.iter().rev().enumerate() {
            let opened = lock(&link.session).open(self.now, &mut packet);
            if opened.is_ok() {
                from = Some(link);
                result = opened;
                break;
            }
            if i == 0 {
                result = opened;
            }
        }
        let link = match (result, from) {
            (Ok(opened), Some(link)) => {
                let mode = match opened.mode {
                    Mode::Sealed => RX_SEALED,
                    Mode::Plain => RX_PLAIN,
                };
                link.rx.mode.store(mode, Ordering::Relaxed);
                link.rx
                    .at_ms
                    .store(shared.ms_since_start(self.now), Ordering::Relaxed);
                link
            }
            (Err(OpenError::Replayed | OpenError::TooOld), _) => {
                shared.drop_datagram(DropReason::Replay);
                return;
            }
            _ => {
                shared.drop_datagram(DropReason::Decrypt);
                return;
            }
        };
        let (body_at, body_len) = (packet.offset, packet.len);
        let from = PeerName::from_bytes(link.name);
        let state = self.state;
        match self.forwarder.handle_opened(&state.table, from, &repr) {
            Arrived::Drop(reason) => shared.drop_forwarding(reason),
            Arrived::Deliver => self.deliver(repr.src, &datagram[body_at..body_at + body_len]),
            Arrived::Relay { hop, hop_limit } => {
                let n = datagram.len();
                self.scratch[..n].copy_from_slice(datagram);
                self.relay(hop, hop_limit, n, body_at, body_len);
            }
            Arrived::Broadcast {
                relay,
                hop_limit,
                deliver,
                hop_limit_spent,
            } => {
                if hop_limit_spent {
                    shared.drop_forwarding(dataplane::DropReason::HopLimit);
                }
                for hop in relay {
                    let n = datagram.len();
                    self.scratch[..n].copy_from_slice(datagram);
                    self.relay(hop, hop_limit, n, body_at, body_len);
                }
                if deliver {
                    self.deliver(repr.src, &datagram[body_at..body_at + body_len]);
                } else {
                    // The origin's VXLAN device delivered this one here already.
                    shared
                        .counters
                        .rx_left_to_fastdp
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Arrived::PmtuProbe => {
                let body = &datagram[body_at..body_at + body_len];
                if !pmtu::answer_probe(self.socket, shared, link, body, len) {
                    shared.drop_datagram(DropReason::Malformed);
                }
            }
            Arrived::PmtuAck => {
                let body = &datagram[body_at..body_at + body_len];
                if !pmtu::take_ack(shared, link.name, body) {
                    shared.drop_datagram(DropReason::Malformed);
                }
            }
        }
    }

    /// Reseals the opened datagram in `scratch[..n]` for next hop `hop`, with its hop limit
    /// set to `hop_limit`, and sends it.
    fn relay(&mut self, hop: PeerName, hop_limit: u8, n: usize, body_at: usize, body_len: usize) {
        let shared = self.shared;
        // The forwarding table and the links are one snapshot: a hop it names has a link.
        let Some(link) = self.state.link(hop) else {
            shared.drop_datagram(DropReason::NoRoute);
            return;
        };
        let buf = &mut self.scratch[..n];
        Packet::new_unchecked(&mut *buf).set_hop_limit(hop_limit);
        let mut packet = PacketBuf::new(&mut *buf, body_at, body_len);
        if lock(&link.session).seal(self.now, &mut packet).is_err() {
            shared.drop_datagram(DropReason::TooBig);
            return;
        }
        let iov = [IoSlice::new(&self.scratch[..n])];
        tx::send_all(self.socket, shared, &link.dest, &iov, &[None]);
        shared.counters.relayed.fetch_add(1, Ordering::Relaxed);
        shared.metrics.add_forwarded(Datapath::Sleeve, 1, n as u64);
    }

    /// Reassembles an opened chunk body from `src`; a complete frame is written to the TAP,
    /// and its source MAC learned when the forwarder says so.
    fn deliver(&mut self, src: [u8; 6], body: &[u8]) {
        let shared = self.shared;
        let Received::Inject { frame, .. } = self.receiver.handle_chunk(self.now, src, body) else {
            return;
        };
        let origin = PeerName::from_bytes(src);
        if let Some(learn) = self.forwarder.handle_delivered(self.now, origin, frame)
            && let Learned::Moved { .. } = lock(&shared.macs).learn(self.now, learn.mac, learn.peer)
        {
            shared.counters.mac_moves.fetch_add(1, Ordering::Relaxed);
        }
        match self.tap.write(frame) {
            Ok(_) => {
                shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared
                    .counters
                    .tap_write_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A receive buffer: one GRO-coalesced message of up to 64 KiB.
const RX_BUF_LEN: usize = 65_536;
/// How long a loop sleeps in `poll` before checking the stop flag and timers.
const POLL: Duration = Duration::from_millis(50);
