//! The sleeve's path MTU probes on the wire: a thread that sends the probes the core
//! (`topology::sleeve::pmtu`) asks for and publishes the datagram size it settles on, and the
//! receive side's handling of probes and acknowledgements. Probes and acknowledgements are
//! sealed with the link's session like data, so they are authenticated and replay-checked;
//! they travel one hop (a relay never forwards them).

use std::io::IoSlice;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crypto::{PacketBuf, TAG_LEN};
use topology::sleeve::pmtu::{self, PmtuTable, ProbeRequest};
use topology::sleeve::{HEADER_LEN, MessageType, Packet, Repr};
use tracing::info;

use super::{PeerLink, Shared, lock};
use crate::udp::{Transmit, UdpSocket};

/// The smallest datagram probed: what a 576-byte IPv4 path carries.
pub(super) const MIN_DATAGRAM: usize = 576 - 28;
/// The longest the thread sleeps with nothing to do (it is woken for new peers and acks).
const IDLE: Duration = Duration::from_secs(5);

/// Overhead of a sealed datagram around its body.
const SEALED_OVERHEAD: usize = HEADER_LEN + crypto::HEADER_LEN + TAG_LEN;

/// Runs the search until the sleeve stops.
pub(super) fn pmtu_loop(socket: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0_u8; pmtu_table(shared).max()];
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let (probes, next, size) = {
            let mut table = pmtu_table(shared);
            table.handle_timeout(now);
            let probes: Vec<ProbeRequest<[u8; 6]>> =
                std::iter::from_fn(|| table.poll_probe()).collect();
            (probes, table.poll_timeout(), table.datagram_size())
        };
        let before = shared.datagram.swap(size, Ordering::Relaxed);
        if before != size {
            info!(
                from = before,
                to = size,
                "sleeve datagram size changed (path MTU)"
            );
        }
        let state = shared.snapshot();
        for p in probes {
            if let Some(link) = state.link(topology::PeerName::from_bytes(p.peer)) {
                send_probe(socket, shared, link, p, &mut buf);
            }
        }
        let wait = next
            .map_or(IDLE, |t| t.saturating_duration_since(now))
            .min(IDLE);
        std::thread::park_timeout(wait);
    }
}

fn pmtu_table(shared: &Shared) -> std::sync::MutexGuard<'_, PmtuTable<[u8; 6]>> {
    lock(&shared.pmtu)
}

/// Wakes the PMTU thread (a new peer, an acknowledgement, or the stop).
pub(super) fn wake(shared: &Shared) {
    if let Some(t) = shared.pmtu_thread.get() {
        t.unpark();
    }
}

/// Seals `body` (at `buf[HEADER_LEN + crypto::HEADER_LEN..][..body_len]`) for `link` behind
/// an outer header of type `kind`, and sends the datagram of `body_len + SEALED_OVERHEAD`.
fn seal_and_send(
    socket: &UdpSocket,
    shared: &Shared,
    link: &PeerLink,
    kind: MessageType,
    buf: &mut [u8],
    body_len: usize,
) {
    let total = body_len + SEALED_OVERHEAD;
    let Some(datagram) = buf.get_mut(..total) else {
        return;
    };
    Repr {
        msg_type: kind,
        src: shared.local,
        dst: link.name,
        hop_limit: 1,
    }
    .emit(&mut Packet::new_unchecked(&mut *datagram));
    let mut packet = PacketBuf::new(&mut datagram[HEADER_LEN..], crypto::HEADER_LEN, body_len);
    if lock(&link.session)
        .seal(Instant::now(), &mut packet)
        .is_err()
    {
        return;
    }
    let bufs = [IoSlice::new(datagram)];
    // A probe too large for the local route fails here (EMSGSIZE): a lost probe, as intended.
    let _ = socket.send_batch(
        Some(&link.dest),
        &[Transmit {
            bufs: &bufs,
            segment_size: None,
        }],
    );
}

fn send_probe(
    socket: &UdpSocket,
    shared: &Shared,
    link: &PeerLink,
    probe: ProbeRequest<[u8; 6]>,
    buf: &mut [u8],
) {
    let Some(body_len) = probe.size.checked_sub(SEALED_OVERHEAD) else {
        return;
    };
    let at = HEADER_LEN + crypto::HEADER_LEN;
    let Some(body) = buf.get_mut(at..at + body_len) else {
        return;
    };
    if pmtu::emit_probe(probe.nonce, body_len, body).is_err() {
        return;
    }
    seal_and_send(
        socket,
        shared,
        link,
        MessageType::SealedPmtuProbe,
        buf,
        body_len,
    );
}

/// Answers an opened probe body that came in a datagram of `received` bytes from `link`.
pub(super) fn answer_probe(
    socket: &UdpSocket,
    shared: &Shared,
    link: &PeerLink,
    body: &[u8],
    received: usize,
) -> bool {
    let Ok(nonce) = pmtu::parse_probe(body) else {
        return false;
    };
    let ack = pmtu::emit_ack(nonce, received);
    let mut buf = [0_u8; SEALED_OVERHEAD + pmtu::ACK_BODY_LEN];
    let at = HEADER_LEN + crypto::HEADER_LEN;
    buf[at..at + ack.len()].copy_from_slice(&ack);
    seal_and_send(
        socket,
        shared,
        link,
        MessageType::SealedPmtuAck,
        &mut buf,
        ack.len(),
    );
    true
}

/// Takes an opened acknowledgement body from `peer`.
pub(super) fn take_ack(shared: &Shared, peer: [u8; 6], body: &[u8]) -> bool {
    let Ok((nonce, _received)) = pmtu::parse_ack(body) else {
        return false;
    };
    let answered = pmtu_table(shared).handle_ack(Instant::now(), peer, nonce);
    if answered {
        wake(shared);
    }
    true
}

/// Starts the search toward a new link's peer.
pub(super) fn peer_added(shared: &Shared, peer: [u8; 6]) {
    pmtu_table(shared).add(Instant::now(), peer);
    wake(shared);
}

/// Ends the search toward a peer with no link left.
pub(super) fn peer_removed(shared: &Shared, peer: [u8; 6]) {
    pmtu_table(shared).remove(peer);
    wake(shared);
}

/// A new table for datagrams of up to `max` bytes.
pub(super) fn table(max: usize) -> Mutex<PmtuTable<[u8; 6]>> {
    Mutex::new(PmtuTable::new(MIN_DATAGRAM, max, rand::random()))
}

/// What the search toward `peer` found, for status.
pub(super) fn view(shared: &Shared, peer: [u8; 6]) -> Option<pmtu::PathView> {
    pmtu_table(shared).view(peer)
}
