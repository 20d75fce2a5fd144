//! The sleeve's TX thread: frames read from the TAP straight into chunk slots, their
//! destination and next hops decided by the forwarder, chunked, sealed for the next hop and
//! sent as UDP GSO trains. It chunks to the datagram size the path MTU thread publishes, rebuilding its
//! buffers when that changes.

use super::*;
#[cfg(any(test, fuzzing))]
use topology::dataplane::ethernet::Ethernet;
#[cfg(any(test, fuzzing))]
use topology::sleeve::{MessageType, Repr};

/// Frames read per TX wakeup.
pub const FRAMES_PER_BATCH: usize = 8;
/// How long the sleeve waits for room in a full UDP socket before it drops what it has.
const SEND_PATIENCE: Duration = Duration::from_millis(250);
/// The most chunk slots one frame buffer has.
const MAX_SLOTS: usize = 256;

/// One frame of a TX batch, ready to send.
struct Ready {
    chunks: Chunks,
    link: Arc<PeerLink>,
}

pub(super) fn tx_loop(
    tap: &Tap,
    socket: &UdpSocket,
    shared: &Shared,
    layout: ChunkLayout,
    first_id: u32,
) {
    let mut datagram = shared.datagram.load(Ordering::Relaxed);
    let mut tx = TxBuffers::new(
        layout,
        Chunker::new(layout, shared.local, BROADCAST, first_id),
    );
    let c = &shared.counters;
    let forwarder = Forwarder::new(PeerName::from_bytes(shared.local));
    while !shared.stop.load(Ordering::Relaxed) {
        // The path MTU search settled on another datagram size: chunk to it from now on.
        let want = shared.datagram.load(Ordering::Relaxed);
        if want != datagram
            && let Ok(layout) = ChunkLayout::sealed(want, crypto::HEADER_LEN, TAG_LEN)
        {
            let next_id = tx.chunker.next_frame_id();
            tx = TxBuffers::new(
                layout,
                Chunker::new(layout, shared.local, BROADCAST, next_id),
            );
            debug!(
                from = datagram,
                to = want,
                "sleeve TX chunks to a new datagram size"
            );
            datagram = want;
        }
        let TxBuffers {
            layout,
            slots,
            ref mut bufs,
            ref mut scratch,
            ref mut chunker,
            data_offset,
            per_message,
        } = tx;
        let mut lens = [0usize; FRAMES_PER_BATCH];
        match tap.wait_readable(POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        }
        // Read a batch of frames straight into chunk slots.
        let mut n = 0;
        while n < FRAMES_PER_BATCH {
            let mut areas = slot_areas(&mut bufs[n], layout).map(IoSliceMut::new);
            let mut iov: [IoSliceMut<'_>; MAX_SLOTS] =
                std::array::from_fn(|_| areas.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
            let len = match tap.read_vectored(&mut iov[..slots.min(MAX_SLOTS)]) {
                Ok(0) => break,
                Ok(len) => len,
                Err(_) => break,
            };
            c.tap_frames.fetch_add(1, Ordering::Relaxed);
            if !frame_len_ok(len) {
                shared.drop_datagram(DropReason::TooBig);
                continue;
            }
            lens[n] = len;
            n += 1;
        }
        if n == 0 {
            continue;
        }
        let state = shared.snapshot();
        // Each frame's destination: one MAC-table lock per batch.
        let mut decisions = [Captured::Local; FRAMES_PER_BATCH];
        {
            let macs = lock(&shared.macs);
            let head = layout.payload();
            for (i, decision) in decisions.iter_mut().enumerate().take(n) {
                let frame = &bufs[i][data_offset..data_offset + lens[i].min(head)];
                *decision = forwarder.handle_captured(&state.table, &macs, frame);
            }
        }
        let mut ready: [Option<Ready>; FRAMES_PER_BATCH] = Default::default();
        let now = Instant::now();
        for (i, decision) in decisions.into_iter().enumerate().take(n) {
            let len = lens[i];
            let buf = &mut bufs[i];
            let one_hop: [PeerName; 1];
            let (dst, hops, unicast) = match decision {
                Captured::Local => {
                    // Ours: the bridge delivers it locally; nothing to send.
                    c.tap_unicast.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Captured::Drop(reason) => {
                    shared.drop_forwarding(reason);
                    continue;
                }
                Captured::Unicast {
                    dst,
                    hop,
                    late_for_fastdp,
                } => {
                    if late_for_fastdp {
                        c.late_for_fastdp.fetch_add(1, Ordering::Relaxed);
                    }
                    one_hop = [hop];
                    (dst.bytes(), &one_hop[..], true)
                }
                Captured::Broadcast {
                    hops,
                    unknown_unicast,
                } => {
                    c.tx_broadcast.fetch_add(1, Ordering::Relaxed);
                    (BROADCAST, hops, unknown_unicast)
                }
            };
            if unicast {
                c.tap_unicast.fetch_add(1, Ordering::Relaxed);
            }
            chunker.set_dst(dst);
            let Ok(chunks) = chunker.chunk_in_place(len, buf) else {
                shared.drop_datagram(DropReason::TooBig);
                continue;
            };
            let mut links = hops.iter().filter_map(|hop| state.link(*hop));
            // The first hop's copy is sealed in place and sent with the batch; further hops
            // (a broadcast) get a sealed copy each, sent at once.
            let Some(first) = links.next() else {
                continue;
            };
            for link in links {
                let wire = chunks.wire_len();
                scratch[..wire].copy_from_slice(&buf[..wire]);
                seal_chunks(&link.session, now, scratch, &chunks, layout);
                send_frame(socket, shared, scratch, &chunks, &link.dest, per_message);
                shared
                    .metrics
                    .add_forwarded(Datapath::Sleeve, 1, len as u64);
            }
            seal_chunks(&first.session, now, buf, &chunks, layout);
            ready[i] = Some(Ready {
                chunks,
                link: first.clone(),
            });
        }
        send_ready(socket, shared, bufs, &ready[..n], per_message, &lens[..n]);
    }
}

/// The TX thread's buffers, laid out for one datagram size.
struct TxBuffers {
    layout: ChunkLayout,
    /// Slots per frame buffer: one more than the largest frame needs, so a longer frame
    /// shows as oversize.
    slots: usize,
    bufs: Vec<Box<[u8]>>,
    scratch: Box<[u8]>,
    chunker: Chunker,
    data_offset: usize,
    per_message: usize,
}

impl TxBuffers {
    fn new(layout: ChunkLayout, chunker: Chunker) -> Self {
        let slots = slots_per_frame(layout);
        let len = slots * layout.slot_len();
        Self {
            layout,
            slots,
            bufs: (0..FRAMES_PER_BATCH)
                .map(|_| vec![0u8; len].into_boxed_slice())
                .collect(),
            scratch: vec![0u8; len].into_boxed_slice(),
            chunker,
            data_offset: layout.data_offset(),
            per_message: per_message(layout),
        }
    }
}

/// Slots per frame buffer: one more than the largest frame needs, so a longer read shows.
fn slots_per_frame(layout: ChunkLayout) -> usize {
    layout.chunk_count(MAX_FRAME_LEN) + 1
}

/// Datagrams per GSO train.
fn per_message(layout: ChunkLayout) -> usize {
    (MAX_UDP_PAYLOAD / layout.slot_len()).min(MAX_GSO_SEGMENTS)
}

/// The data areas of `buf`'s slots, in order: where `readv` lays a frame read from the TAP.
fn slot_areas(buf: &mut [u8], layout: ChunkLayout) -> impl Iterator<Item = &mut [u8]> {
    let data = layout.data_offset()..layout.data_offset() + layout.payload();
    buf.chunks_exact_mut(layout.slot_len())
        .map(move |slot| &mut slot[data.clone()])
}

/// Whether a read of `len` bytes is a frame the sleeve carries: a virtio_net_hdr and an
/// Ethernet header at least, [`MAX_FRAME_LEN`] at most.
fn frame_len_ok(len: usize) -> bool {
    (VNET_HDR_LEN + 14..=MAX_FRAME_LEN).contains(&len)
}

/// Seals every chunk of a frame in place with one session lock.
fn seal_chunks(
    session: &Mutex<Session>,
    now: Instant,
    buf: &mut [u8],
    chunks: &Chunks,
    layout: ChunkLayout,
) {
    let mut session = lock(session);
    let slot_len = layout.slot_len();
    let body_offset = layout.body_offset();
    for i in 0..chunks.count {
        let body = chunks.body(i);
        let start = i * slot_len;
        let slot = &mut buf[start..start + slot_len];
        let mut packet = PacketBuf::new(slot, body_offset, body.len());
        // The layout reserves the headroom and tailroom, so sealing cannot fail.
        let _ = session.seal(now, &mut packet);
    }
}

/// Sends one frame's datagrams to `dest` as GSO trains.
fn send_frame(
    socket: &UdpSocket,
    shared: &Shared,
    buf: &[u8],
    chunks: &Chunks,
    dest: &SockAddr,
    per_message: usize,
) {
    let mut iov = [IoSlice::new(&[]); MAX_BATCH];
    let mut segs = [None; MAX_BATCH];
    let m = trains(buf, chunks, per_message, &mut iov, &mut segs, 0);
    send_all(socket, shared, dest, &iov[..m], &segs[..m]);
}

/// Adds a frame's GSO trains to `iov`/`segs` from index `m`; returns the new count (stops
/// at [`MAX_BATCH`]).
fn trains<'a>(
    buf: &'a [u8],
    chunks: &Chunks,
    per_message: usize,
    iov: &mut [IoSlice<'a>; MAX_BATCH],
    segs: &mut [Option<u16>; MAX_BATCH],
    mut m: usize,
) -> usize {
    let mut first = 0;
    while first < chunks.count && m < MAX_BATCH {
        let last = (first + per_message).min(chunks.count) - 1;
        let start = chunks.datagram(first).start;
        let end = chunks.datagram(last).end;
        iov[m] = IoSlice::new(&buf[start..end]);
        segs[m] = (last > first).then_some(chunks.segment_len() as u16);
        m += 1;
        first = last + 1;
    }
    m
}

/// Sends the batch: one `sendmmsg` per run of frames with the same next hop.
fn send_ready(
    socket: &UdpSocket,
    shared: &Shared,
    bufs: &[Box<[u8]>],
    ready: &[Option<Ready>],
    per_message: usize,
    lens: &[usize],
) {
    let mut iov = [IoSlice::new(&[]); MAX_BATCH];
    let mut segs = [None; MAX_BATCH];
    let mut m = 0;
    let mut current: Option<&Arc<PeerLink>> = None;
    let (mut frames, mut bytes) = (0u64, 0u64);
    for ((buf, r), len) in bufs.iter().zip(ready).zip(lens) {
        let Some(r) = r else { continue };
        frames += 1;
        bytes += *len as u64;
        let needed = r.chunks.count.div_ceil(per_message);
        if let Some(cur) = current
            && (!Arc::ptr_eq(cur, &r.link) || m + needed > MAX_BATCH)
        {
            send_all(socket, shared, &cur.dest, &iov[..m], &segs[..m]);
            m = 0;
        }
        current = Some(&r.link);
        m = trains(buf, &r.chunks, per_message, &mut iov, &mut segs, m);
    }
    if let Some(cur) = current {
        send_all(socket, shared, &cur.dest, &iov[..m], &segs[..m]);
    }
    shared
        .metrics
        .add_forwarded(Datapath::Sleeve, frames, bytes);
}

/// Sends messages to `dest`, waiting out a full socket for up to [`SEND_PATIENCE`]; what is
/// left after that is dropped and counted. The RX thread's relaying sends through it too.
pub(super) fn send_all(
    socket: &UdpSocket,
    shared: &Shared,
    dest: &SockAddr,
    iov: &[IoSlice<'_>],
    segs: &[Option<u16>],
) {
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
    let datagrams: u64 = iov.iter().zip(segs).map(|(b, s)| datagrams_in(b, *s)).sum();
    add(&shared.counters.tx_datagrams, datagrams);
    let mut done = 0;
    // A full socket means the receiving side is behind (on one host: starved of CPU for a
    // moment). Wait for room rather than drop: the TAP's queue holds what the pods send
    // meanwhile. Give up only after SEND_PATIENCE without progress.
    let mut deadline = Instant::now() + SEND_PATIENCE;
    while done < iov.len() {
        let stalled = match socket.send_batch(Some(dest), &msgs[done..iov.len()]) {
            Ok(0) => true,
            Ok(k) => {
                done += k;
                deadline = Instant::now() + SEND_PATIENCE;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => {
                if !udp::is_refused(&e) {
                    debug!("sleeve send: {e}");
                }
                shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                done += 1;
                false
            }
        };
        if stalled {
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    // Still no room after all the waiting: what is left is dropped, and counted.
    for (b, s) in iov.iter().zip(segs).skip(done) {
        for _ in 0..datagrams_in(b, *s) {
            shared.drop_datagram(DropReason::QueueFull);
        }
    }
}

/// The datagrams one message makes on the wire: one, or one per GSO segment.
fn datagrams_in(buf: &[u8], segment_size: Option<u16>) -> u64 {
    segment_size.map_or(1, |s| buf.len().div_ceil(usize::from(s).max(1))) as u64
}

/// What [`send_path`] saw: the TX thread's choice of destination, and the peer's side.
#[cfg(any(test, fuzzing))]
#[derive(Debug)]
pub struct SentFrame {
    /// The peer the frame went to: the one given for a unicast MAC, else [`BROADCAST`].
    pub dst: [u8; 6],
    /// Datagrams on the wire.
    pub datagrams: usize,
    /// What the peer's receiver handed out to write to its TAP.
    pub delivered: Vec<Vec<u8>>,
}

/// The TX thread's work on one frame, without the TAP and the socket, then the peer's RX
/// work on what it sent. `frame` (virtio_net_hdr first) is laid into chunk slots as `readv`
/// lays it, its destination MAC read, and it is chunked for datagrams of `datagram` bytes
/// (held within what the path MTU search allows) from `src` toward `peer` (for a unicast MAC)
/// or [`BROADCAST`]; each chunk is sealed with `tx` and the chunks cut into GSO trains. The
/// trains are cut into datagrams as GSO does, and each is checked, opened with `rx` and
/// reassembled as the peer's RX thread does.
///
/// # Errors
///
/// What the peer refused of what was sent (a bug either side).
#[cfg(any(test, fuzzing))]
pub fn send_path(
    frame: &[u8],
    datagram: usize,
    src: [u8; 6],
    peer: [u8; 6],
    tx: &Mutex<Session>,
    rx: &mut Session,
    now: Instant,
) -> Result<Option<SentFrame>, String> {
    let datagram = datagram.clamp(pmtu::MIN_DATAGRAM, MAX_UDP_PAYLOAD);
    let layout = ChunkLayout::sealed(datagram, crypto::HEADER_LEN, TAG_LEN)
        .map_err(|e| format!("layout for {datagram}: {e}"))?;
    let slots = slots_per_frame(layout);
    let mut buf = vec![0u8; slots * layout.slot_len()];
    // readv: as much of the frame as the slots' data areas hold, in order.
    let mut len = 0;
    for area in slot_areas(&mut buf, layout).take(slots.min(MAX_SLOTS)) {
        let n = area.len().min(frame.len() - len);
        area[..n].copy_from_slice(&frame[len..len + n]);
        len += n;
    }
    if !frame_len_ok(len) {
        return Ok(None);
    }
    let head = &buf[layout.data_offset()..layout.data_offset() + len.min(layout.payload())];
    let dst = match Ethernet::from_tap(head) {
        Some(eth) if !eth.dst().is_group() => peer,
        _ => BROADCAST,
    };
    let mut chunker = Chunker::new(layout, src, dst, 1);
    let Ok(chunks) = chunker.chunk_in_place(len, &mut buf) else {
        return Ok(None);
    };
    seal_chunks(tx, now, &mut buf, &chunks, layout);
    let mut iov = [IoSlice::new(&[]); MAX_BATCH];
    let mut segs = [None; MAX_BATCH];
    let m = trains(&buf, &chunks, per_message(layout), &mut iov, &mut segs, 0);
    let mut receiver = Receiver::new(
        dst,
        ReassemblyConfig {
            slots: 1,
            max_per_source: 1,
            ..ReassemblyConfig::default()
        },
    );
    let mut sent = SentFrame {
        dst,
        datagrams: 0,
        delivered: Vec::new(),
    };
    for (train, seg) in iov[..m].iter().zip(&segs[..m]) {
        let seg = seg.map_or(train.len(), usize::from);
        for d in train.chunks(seg) {
            sent.datagrams += 1;
            let mut d = d.to_vec();
            let repr = Packet::new_checked(&d[..])
                .and_then(|p| Repr::parse(&p))
                .map_err(|e| format!("datagram {}: {e}", sent.datagrams))?;
            if repr.msg_type != MessageType::SealedChunk || (repr.src, repr.dst) != (src, dst) {
                return Err(format!("datagram {}: {repr:?}", sent.datagrams));
            }
            let n = d.len();
            let mut packet = PacketBuf::new(&mut d[..], HEADER_LEN, n - HEADER_LEN);
            rx.open(now, &mut packet)
                .map_err(|e| format!("datagram {}: {e:?}", sent.datagrams))?;
            let (at, body_len) = (packet.offset, packet.len);
            if let Received::Inject { frame, .. } =
                receiver.handle_chunk(now, src, &d[at..at + body_len])
            {
                sent.delivered.push(frame.to_vec());
            }
        }
    }
    Ok(Some(sent))
}

#[cfg(test)]
mod tests {
    use crypto::{Handshake, HandshakeConfig, NodeKey};
    use proptest::prelude::*;
    use topology::sleeve::VnetHdr;

    use super::*;

    const SRC: [u8; 6] = [0x0a, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];

    /// Two sessions from a handshake in memory: (sender, receiver).
    fn sessions(mode: Mode) -> (Mutex<Session>, Session) {
        let mut rng = rand::rngs::OsRng;
        let a = HandshakeConfig::new(NodeKey::from_bytes([1; 32]), None);
        let b = HandshakeConfig::new(NodeKey::from_bytes([2; 32]), None);
        let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
        let mut i = Handshake::initiate(&a, &mut rng, &mut to_r);
        let mut r = Handshake::respond(&b, &mut rng, &mut to_i);
        let (mut ie, mut re) = (None, None);
        while ie.is_none() || re.is_none() {
            if re.is_none() {
                re = r
                    .handle_input(&std::mem::take(&mut to_r), &mut to_i)
                    .unwrap();
            }
            if ie.is_none() {
                ie = i
                    .handle_input(&std::mem::take(&mut to_i), &mut to_r)
                    .unwrap();
            }
        }
        let now = Instant::now();
        let (_, ik) = ie.unwrap().into_parts();
        let (_, rk) = re.unwrap().into_parts();
        (
            Mutex::new(Session::new(ik, SessionConfig::default(), mode, now)),
            Session::new(rk, SessionConfig::default(), mode, now),
        )
    }

    /// A TAP frame: an all-zero virtio_net_hdr (nothing offloaded), then Ethernet.
    fn frame(dst: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len.max(VNET_HDR_LEN + 14)];
        f[..VNET_HDR_LEN].fill(0);
        f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst);
        f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&[0x02, 0, 0, 0, 0, 7]);
        f
    }

    #[test]
    fn oversize_and_runt_reads_are_dropped() {
        let (tx, mut rx) = sessions(Mode::Sealed);
        let now = Instant::now();
        let dst = [0x02, 0, 0, 0, 0, 9];
        for len in [
            0,
            VNET_HDR_LEN + 13,
            MAX_FRAME_LEN + 1,
            MAX_FRAME_LEN + 4000,
        ] {
            let mut f = frame(dst, len, 1);
            f.truncate(len);
            let sent = send_path(&f, 1472, SRC, PEER, &tx, &mut rx, now).unwrap();
            assert!(sent.is_none(), "{len}-byte read");
        }
        let f = frame(dst, MAX_FRAME_LEN, 1);
        let sent = send_path(&f, 1472, SRC, PEER, &tx, &mut rx, now)
            .unwrap()
            .unwrap();
        assert_eq!(sent.delivered, [f]);
    }

    /// The forwarder reads a frame's header where `readv` laid it: the first slot's data
    /// area, from the data offset on.
    #[test]
    fn the_first_slot_holds_the_frames_header() {
        let f = frame([0x02, 1, 2, 3, 4, 5], 60, 0);
        let mut buf = vec![0u8; 2048];
        let layout = ChunkLayout::sealed(1472, crypto::HEADER_LEN, TAG_LEN).unwrap();
        let area = slot_areas(&mut buf, layout).next().unwrap();
        area[..f.len()].copy_from_slice(&f);
        let eth = Ethernet::from_tap(&buf[layout.data_offset()..]).unwrap();
        assert_eq!(eth.dst(), MacAddr::from_bytes([0x02, 1, 2, 3, 4, 5]));
        assert_eq!(eth.src(), MacAddr::from_bytes([0x02, 0, 0, 0, 0, 7]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any frame the TX thread takes crosses whole, in one or more datagrams, to the
        /// peer its MAC names (a group MAC: to everyone), sealed or plain, for any datagram
        /// size; one the peer's receiver would not write to a TAP (a bad virtio_net_hdr) is
        /// the only one not delivered.
        #[test]
        fn frames_cross_whole(
            len in 0usize..20_000,
            fill in any::<u8>(),
            hdr in any::<[u8; VNET_HDR_LEN]>(),
            odd_hdr in proptest::bool::weighted(0.2),
            group in any::<bool>(),
            datagram in 0usize..70_000,
            sealed in any::<bool>(),
        ) {
            let (tx, mut rx) = sessions(if sealed { Mode::Sealed } else { Mode::Plain });
            let dst = if group { [0x01, 0, 0x5e, 0, 0, 1] } else { [0x02, 0, 0, 0, 0, 9] };
            let mut f = frame(dst, len, fill);
            if odd_hdr {
                f[..VNET_HDR_LEN].copy_from_slice(&hdr);
            }
            let sent = send_path(&f, datagram, SRC, PEER, &tx, &mut rx, Instant::now())
                .unwrap()
                .unwrap();
            prop_assert_eq!(sent.dst, if group { BROADCAST } else { PEER });
            prop_assert!(sent.datagrams >= 1);
            if VnetHdr::parse(&f).is_ok() {
                prop_assert_eq!(sent.delivered, vec![f]);
            } else {
                prop_assert!(sent.delivered.is_empty());
            }
        }
    }
}
