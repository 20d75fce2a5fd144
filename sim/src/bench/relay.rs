//! A bare relay between one TAP and one UDP socket, for a single static peer, for the
//! `sleeve-relay` bench row and `sim/tests/relay.rs`: TAP → chunk → UDP GSO, and UDP GRO →
//! reassemble → TAP, each direction on its own thread, over the router's own TAP and UDP layers
//! (`weft_router::tap`, `weft_router::udp`).
//!
//! It measures what those layers cost without routing, sealing or MAC lookup: every frame goes
//! to [`RelayConfig::peer`], and datagrams for other peers or sealed ones are counted and
//! dropped. The product's sleeve is `router/src/sleeve.rs`.
//!
//! Send path, per wakeup: up to [`RelayConfig::frames_per_batch`] frames are read from the TAP
//! with `readv` straight into the data areas of chunk slots (no copy in user space), the chunk
//! headers are written around them, and all their datagrams leave in one `sendmmsg`, each
//! message a GSO train of equal-size datagrams. Receive path, per wakeup: `recvmmsg` of up to
//! [`RX_BATCH`] GRO-coalesced messages, split at the reported segment size, reassembled, and
//! each complete frame written to the TAP with its virtio header unchanged.
//!
//! Separate threads, because a TAP write runs the bridge, veth and the receiving pod's TCP in
//! the writer's context (shared/probes/RESULTS.md): the two directions then use both cores.
//! Buffers are allocated once at start; the loops allocate nothing per packet.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use topology::sleeve::{
    ChunkLayout, Chunker, Chunks, MAX_FRAME_LEN, ReassemblyConfig, Received, Receiver, VNET_HDR_LEN,
};
use weft_router::tap::Tap;
use weft_router::udp::{
    self, MAX_BATCH, MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD, RecvMeta, Transmit, UdpSocket,
};

/// Messages received per `recvmmsg`.
pub const RX_BATCH: usize = 8;
/// The most frames one send wakeup reads before sending.
pub const MAX_FRAMES_PER_BATCH: usize = 16;
/// The most chunk slots one frame buffer has (bounds the datagram size from below).
const MAX_SLOTS: usize = 256;
/// A receive buffer: one GRO-coalesced message of up to 64 KiB.
const RX_BUF_LEN: usize = 65_536;
/// How long a loop sleeps in `poll` before checking the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// What a [`Relay`] needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// This peer's name (source of sent chunks; destination of accepted ones).
    pub local: [u8; 6],
    /// The peer every frame goes to.
    pub peer: [u8; 6],
    /// Largest UDP payload sent: underlay MTU − IP and UDP headers (1472 for 1500 over IPv4).
    pub max_datagram: usize,
    /// Frames read per send wakeup, `1..=MAX_FRAMES_PER_BATCH`.
    pub frames_per_batch: usize,
    /// The reassembly budget.
    pub reassembly: ReassemblyConfig,
    /// The first frame id (pick it at random).
    pub first_frame_id: u32,
    /// Nice value for both threads (`setpriority`); negative values need `CAP_SYS_NICE`. A
    /// raised priority lets a woken relay thread preempt bulk work sooner, which is what
    /// the added RTT is made of on a busy machine.
    pub nice: Option<i32>,
    /// `SCHED_FIFO` priority for both threads (needs `CAP_SYS_NICE`): a woken relay thread
    /// then preempts ordinary work at once, as the kernel's own softirq path does.
    pub fifo_priority: Option<i32>,
}

impl RelayConfig {
    /// A configuration with the defaults for a 1500-byte IPv4 underlay.
    pub fn new(local: [u8; 6], peer: [u8; 6]) -> Self {
        Self {
            local,
            peer,
            max_datagram: 1472,
            frames_per_batch: 8,
            reassembly: ReassemblyConfig::default(),
            first_frame_id: 0,
            nice: None,
            fifo_priority: None,
        }
    }
}

/// Counters of the TAP → UDP thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TxStats {
    /// Poll wakeups that found frames.
    pub wakeups: u64,
    /// Frames read from the TAP.
    pub frames: u64,
    /// Bytes read from the TAP (virtio headers included).
    pub bytes: u64,
    /// Frames whose virtio header announced GSO (super-frames).
    pub gso_frames: u64,
    /// Longest frame read (virtio header included).
    pub max_frame: u64,
    /// Frames dropped for exceeding the sleeve's frame limit.
    pub oversize: u64,
    /// TAP read errors other than `WouldBlock`.
    pub read_errors: u64,
    /// Datagrams handed to the kernel.
    pub datagrams: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// Messages (GSO trains) sent.
    pub messages: u64,
    /// Sends refused after an ICMP port-unreachable.
    pub refused: u64,
    /// Other send errors (the batch's remaining messages are dropped).
    pub send_errors: u64,
}

/// Counters of the UDP → TAP thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RxStats {
    /// Poll wakeups that found data.
    pub wakeups: u64,
    /// `recvmmsg` calls that returned messages.
    pub recv_calls: u64,
    /// Messages received (each up to one GRO train).
    pub messages: u64,
    /// Messages cut because they did not fit the buffer.
    pub truncated: u64,
    /// Receives refused after an ICMP port-unreachable.
    pub refused: u64,
    /// Other receive errors.
    pub recv_errors: u64,
    /// Frames written to the TAP.
    pub injected: u64,
    /// Bytes written to the TAP.
    pub injected_bytes: u64,
    /// TAP write errors.
    pub tap_write_errors: u64,
    /// Datagrams for other peers or sealed, dropped (no routing or crypto in this layer).
    pub unsupported: u64,
    /// The codec's counters (malformed, duplicates, timeouts, ...).
    pub codec: topology::sleeve::Counters,
}

/// Both directions' counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    /// TAP → UDP.
    pub tx: TxStats,
    /// UDP → TAP.
    pub rx: RxStats,
}

/// A running relay: two threads, stopped by [`Relay::stop`] (or on drop).
#[derive(Debug)]
pub struct Relay {
    stop: Arc<AtomicBool>,
    tx: Option<JoinHandle<TxStats>>,
    rx: Option<JoinHandle<RxStats>>,
    tids: [i32; 2],
}

impl Relay {
    /// Starts the two threads on an open TAP (with virtio headers) and a UDP socket connected
    /// to the peer.
    ///
    /// # Errors
    /// `InvalidInput` for a TAP without virtio headers or a datagram size that leaves too little
    /// room; otherwise as thread creation.
    pub fn start(tap: Tap, socket: UdpSocket, config: RelayConfig) -> io::Result<Self> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        let layout = ChunkLayout::plain(config.max_datagram).map_err(|_| invalid())?;
        if !tap.vnet_hdr()
            || layout.chunk_count(MAX_FRAME_LEN) + 1 > MAX_SLOTS
            || !(1..=MAX_FRAMES_PER_BATCH).contains(&config.frames_per_batch)
        {
            return Err(invalid());
        }
        let tap = Arc::new(tap);
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let tx = {
            let (tap, socket, stop, tids) =
                (tap.clone(), socket.clone(), stop.clone(), tid_tx.clone());
            std::thread::Builder::new()
                .name("sleeve-tx".into())
                .spawn(move || {
                    let _ = tids.send((0, gettid()));
                    set_priority(config.nice, config.fifo_priority);
                    send_loop(&tap, &socket, layout, &config, &stop)
                })?
        };
        let rx = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("sleeve-rx".into())
                .spawn(move || {
                    let _ = tid_tx.send((1, gettid()));
                    set_priority(config.nice, config.fifo_priority);
                    recv_loop(&tap, &socket, &config, &stop)
                })?
        };
        let mut tids = [0; 2];
        for _ in 0..2 {
            if let Ok((i, tid)) = tid_rx.recv_timeout(Duration::from_secs(5)) {
                tids[i] = tid;
            }
        }
        Ok(Self {
            stop,
            tx: Some(tx),
            rx: Some(rx),
            tids,
        })
    }

    /// Returns the kernel thread ids of the send and receive threads (for per-thread CPU time
    /// from `/proc/self/task/TID/stat`).
    pub fn thread_ids(&self) -> [i32; 2] {
        self.tids
    }

    /// Stops both threads and returns their counters (zero for a thread that panicked).
    pub fn stop(mut self) -> RelayStats {
        self.stop.store(true, Ordering::Relaxed);
        RelayStats {
            tx: self
                .tx
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            rx: self
                .rx
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.tx.take() {
            let _ = h.join();
        }
        if let Some(h) = self.rx.take() {
            let _ = h.join();
        }
    }
}

fn send_loop(
    tap: &Tap,
    socket: &UdpSocket,
    layout: ChunkLayout,
    config: &RelayConfig,
    stop: &AtomicBool,
) -> TxStats {
    let mut stats = TxStats::default();
    let slot_len = layout.slot_len();
    // One slot more than the largest frame needs, so a longer frame shows as oversize.
    let slots = layout.chunk_count(MAX_FRAME_LEN) + 1;
    let mut bufs: Vec<Box<[u8]>> = (0..config.frames_per_batch)
        .map(|_| vec![0u8; slots * slot_len].into_boxed_slice())
        .collect();
    let mut chunker = Chunker::new(layout, config.local, config.peer, config.first_frame_id);
    let mut sent: [Option<Chunks>; MAX_FRAMES_PER_BATCH] = [None; MAX_FRAMES_PER_BATCH];
    let per_message = (MAX_UDP_PAYLOAD / slot_len).min(MAX_GSO_SEGMENTS);
    let data_offset = layout.data_offset();
    let payload = layout.payload();
    while !stop.load(Ordering::Relaxed) {
        match tap.wait_readable(POLL) {
            Ok(true) => stats.wakeups += 1,
            Ok(false) => continue,
            Err(_) => {
                stats.read_errors += 1;
                std::thread::sleep(POLL);
                continue;
            }
        }
        let mut n = 0;
        while n < config.frames_per_batch {
            let buf = &mut bufs[n];
            let mut areas = buf
                .chunks_exact_mut(slot_len)
                .map(|s| IoSliceMut::new(&mut s[data_offset..data_offset + payload]));
            let mut iov: [IoSliceMut<'_>; MAX_SLOTS] =
                std::array::from_fn(|_| areas.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
            let len = match tap.read_vectored(&mut iov[..slots]) {
                Ok(0) => break,
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    stats.read_errors += 1;
                    break;
                }
            };
            stats.frames += 1;
            stats.bytes += len as u64;
            stats.max_frame = stats.max_frame.max(len as u64);
            if len > MAX_FRAME_LEN {
                stats.oversize += 1;
                continue;
            }
            // gso_type is the second byte of the virtio header, at the start of slot 0's data.
            if len > VNET_HDR_LEN && buf[data_offset + 1] != 0 {
                stats.gso_frames += 1;
            }
            match chunker.chunk_in_place(len, buf) {
                Ok(chunks) => {
                    sent[n] = Some(chunks);
                    n += 1;
                }
                Err(_) => stats.oversize += 1,
            }
        }
        if n == 0 {
            continue;
        }
        // One message per GSO train of at most `per_message` datagrams; all full-size but a
        // frame's last, which ends its train.
        let mut iov = [IoSlice::new(&[]); MAX_BATCH];
        let mut segs = [None; MAX_BATCH];
        let mut m = 0;
        for (buf, chunks) in bufs.iter().zip(&sent[..n]) {
            let Some(chunks) = chunks else { continue };
            stats.datagrams += chunks.count as u64;
            let mut first = 0;
            while first < chunks.count {
                let last = (first + per_message).min(chunks.count) - 1;
                let start = chunks.datagram(first).start;
                let end = chunks.datagram(last).end;
                iov[m] = IoSlice::new(&buf[start..end]);
                segs[m] = (last > first).then_some(slot_len as u16);
                m += 1;
                first = last + 1;
                if m == MAX_BATCH {
                    send_all(socket, &iov[..m], &segs[..m], &mut stats);
                    m = 0;
                }
            }
        }
        send_all(socket, &iov[..m], &segs[..m], &mut stats);
    }
    stats
}

fn send_all(socket: &UdpSocket, iov: &[IoSlice<'_>], segs: &[Option<u16>], stats: &mut TxStats) {
    let mut msgs = [Transmit {
        bufs: &[],
        segment_size: None,
    }; MAX_BATCH];
    for (i, (m, seg)) in msgs.iter_mut().zip(segs).enumerate().take(iov.len()) {
        *m = Transmit {
            bufs: std::slice::from_ref(&iov[i]),
            segment_size: *seg,
        };
    }
    let mut done = 0;
    while done < iov.len() {
        stats.send_calls += 1;
        match socket.send_batch(None, &msgs[done..iov.len()]) {
            Ok(k) => {
                stats.messages += k as u64;
                done += k;
            }
            Err(e) => {
                if udp::is_refused(&e) {
                    stats.refused += 1;
                } else if e.kind() != io::ErrorKind::Interrupted {
                    stats.send_errors += 1;
                } else {
                    continue;
                }
                // The kernel reports the error for the first unsent message; drop it and go on.
                done += 1;
            }
        }
    }
}

fn recv_loop(tap: &Tap, socket: &UdpSocket, config: &RelayConfig, stop: &AtomicBool) -> RxStats {
    let mut stats = RxStats::default();
    let mut receiver = Receiver::new(config.local, config.reassembly);
    let mut bufs: Vec<Box<[u8]>> = (0..RX_BATCH)
        .map(|_| vec![0u8; RX_BUF_LEN].into_boxed_slice())
        .collect();
    let mut meta = [RecvMeta::default(); RX_BATCH];
    let mut next_purge = Instant::now() + POLL;
    while !stop.load(Ordering::Relaxed) {
        let readable = socket.wait_readable(POLL).unwrap_or(false);
        let now = Instant::now();
        if now >= next_purge {
            receiver.handle_timeout(now);
            next_purge = now + POLL;
        }
        if !readable {
            continue;
        }
        stats.wakeups += 1;
        // Drain what is queued, a bounded number of batches per wakeup.
        for _ in 0..8 {
            let mut it = bufs.iter_mut();
            let mut slices: [&mut [u8]; RX_BATCH] =
                std::array::from_fn(|_| it.next().map_or(&mut [][..], |b| &mut b[..]));
            let got = match socket.recv_batch(&mut slices, &mut meta) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if udp::is_refused(&e) {
                        stats.refused += 1;
                    } else {
                        stats.recv_errors += 1;
                    }
                    continue;
                }
            };
            stats.recv_calls += 1;
            stats.messages += got as u64;
            let now = Instant::now();
            for (buf, m) in bufs.iter().zip(&meta).take(got) {
                if m.truncated {
                    stats.truncated += 1;
                    continue;
                }
                for datagram in buf[..m.len].chunks(m.segment_size) {
                    match receiver.handle_datagram(now, datagram) {
                        Received::Inject { frame, .. } => match tap.write(frame) {
                            Ok(_) => {
                                stats.injected += 1;
                                stats.injected_bytes += frame.len() as u64;
                            }
                            Err(_) => stats.tap_write_errors += 1,
                        },
                        Received::Forward { .. } | Received::Open { .. } => stats.unsupported += 1,
                        Received::Drop | Received::Pending => {}
                    }
                }
            }
            if got < RX_BATCH {
                break;
            }
        }
    }
    stats.codec = *receiver.counters();
    stats
}

/// Sets the calling thread's nice value and/or real-time priority; failure (no privilege)
/// leaves the thread as it was.
fn set_priority(nice: Option<i32>, fifo: Option<i32>) {
    if let Some(n) = nice {
        // SAFETY: setpriority on this thread's own id (PRIO_PROCESS with a tid applies to
        // that thread on Linux); no memory is passed.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, n) };
    }
    if let Some(p) = fifo {
        let param = libc::sched_param { sched_priority: p };
        // SAFETY: pid 0 is the calling thread; `param` lives for the call.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
