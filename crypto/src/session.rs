//! Data-plane sessions: per-direction keys ratcheted by epoch, 64-bit counter nonces, the replay
//! window, the sealed/plain mode switch and the in-place batch API the sleeve calls.
//!
//! Pure: `now` comes in as an argument; nothing here reads a clock, allocates per packet or
//! touches I/O. The wire format is documented byte by byte in `docs/PROTOCOL.md`, section
//! "Data-plane sealing", and summarised on [`HEADER_LEN`].
//!
//! A [`Session`] is driven from one task. Sending and receiving are independent: each direction
//! rekeys on its sender's schedule ([`SessionConfig`]); the receiver follows the epoch number
//! in each packet and keeps the previous epoch's key for [`SessionConfig::previous_key_lifetime`]
//! so packets still in flight across a rekey are not lost.

use std::fmt;
use std::time::{Duration, Instant};

use crate::Authenticated;
use crate::aead::{Cipher, TAG_LEN};
use crate::kdf::ChainKey;
use crate::replay::{ReplayReject, ReplayWindow};

/// Whether a packet's payload is encrypted. Both modes authenticate the whole packet and run
/// the replay window; a receiver accepts both at all times, so a sender may switch at any
/// moment without losing packets in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Authenticated, not encrypted: the payload travels in clear, covered by the tag.
    Plain,
    /// Encrypted and authenticated.
    Sealed,
}

/// When a sending direction moves to a new key epoch, and how long a receiver honours the
/// previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Packets sealed under one key before the sender moves to the next epoch.
    pub rekey_after_packets: u64,
    /// Age of a send key after which the sender moves to the next epoch.
    pub rekey_after: Duration,
    /// How long a receiver keeps accepting the previous epoch after the sender moved on.
    pub previous_key_lifetime: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            // 2^28 packets of 1,400 bytes is about 2^34.5 AES blocks per key, the volume TLS 1.3
            // (RFC 8446 §5.5) allows an AES-GCM key.
            rekey_after_packets: 1 << 28,
            rekey_after: Duration::from_secs(120),
            previous_key_lifetime: Duration::from_secs(15),
        }
    }
}

/// The data-plane key material of one connection, from a completed handshake
/// ([`crate::Established::into_parts`]). Debug output is redacted.
pub struct DataKeys {
    pub(crate) send: ChainKey,
    pub(crate) recv: ChainKey,
}

impl fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKeys(<redacted>)")
    }
}

/// One packet in a caller-owned buffer, for [`Session::seal`], [`Session::open`] and the batch
/// calls.
///
/// The packet occupies `buf[offset..offset + len]`. Before sealing that range is the payload,
/// and the buffer needs [`HEADER_LEN`] bytes of headroom before it and [`TAG_LEN`] bytes of
/// tailroom after it; sealing moves `offset` back by [`HEADER_LEN`] and grows `len` by
/// [`OVERHEAD`]. Opening does the reverse on success and leaves the fields alone on failure.
#[derive(Debug, Clone)]
pub struct PacketBuf<B> {
    /// The caller's buffer.
    pub buf: B,
    /// Offset of the packet's first byte in `buf`.
    pub offset: usize,
    /// Length of the packet.
    pub len: usize,
    /// Outcome of the last seal or open of this packet.
    pub status: PacketStatus,
}

impl<B: AsRef<[u8]>> PacketBuf<B> {
    /// Wraps a buffer whose packet occupies `buf[offset..offset + len]`.
    pub fn new(buf: B, offset: usize, len: usize) -> Self {
        Self {
            buf,
            offset,
            len,
            status: PacketStatus::Pending,
        }
    }

    /// Returns the packet's bytes.
    ///
    /// # Panics
    ///
    /// Panics if `offset + len` lies outside `buf`; the session never leaves it so.
    pub fn bytes(&self) -> &[u8] {
        &self.buf.as_ref()[self.offset..self.offset + self.len]
    }
}

/// The outcome of the last operation on a [`PacketBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketStatus {
    /// Opening failed; the packet must be dropped.
    OpenFailed(OpenError),
    /// Opened and authenticated.
    Opened(Opened),
    /// Not processed yet.
    Pending,
    /// Sealing failed; nothing was sent.
    SealFailed(SealError),
    /// Sealed and ready to send.
    Sealed,
}

/// What [`Session::open`] learned about an authentic packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The packet's counter within its epoch.
    pub counter: u64,
    /// The sender's key epoch.
    pub epoch: u32,
    /// Whether the payload was encrypted on the wire.
    pub mode: Mode,
    /// Proof that the tag verified and the counter was fresh.
    pub proof: Authenticated,
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Fewer than [`HEADER_LEN`] bytes before the payload.
    #[error("no headroom for the data-plane header")]
    NoHeadroom,
    /// Fewer than [`TAG_LEN`] bytes after the payload.
    #[error("no tailroom for the authentication tag")]
    NoTailroom,
    /// Payload longer than [`MAX_PAYLOAD`].
    #[error("payload too long")]
    TooLong,
}

/// Why a received packet was rejected. Caused by peer traffic: count it and drop the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The authentication tag did not verify (forged, corrupted or wrong key).
    #[error("authentication tag mismatch")]
    BadTag,
    /// The counter was already accepted in this epoch.
    #[error("replayed packet")]
    Replayed,
    /// The packet's key epoch is neither current, previous (within its lifetime) nor next.
    #[error("unknown or expired key epoch")]
    StaleEpoch,
    /// The counter fell behind the replay window.
    #[error("packet older than the replay window")]
    TooOld,
    /// Shorter than a header and a tag.
    #[error("truncated packet")]
    Truncated,
    /// The header's version bits name a format this build does not know.
    #[error("unknown data-plane format version")]
    UnknownVersion,
}

/// One side of a data-plane session: a send direction and a receive direction.
pub struct Session {
    config: SessionConfig,
    mode: Mode,
    send: SendKey,
    recv: RecvState,
}

impl Session {
    /// Creates a session from a handshake's data keys, in `mode`.
    pub fn new(keys: DataKeys, config: SessionConfig, mode: Mode, now: Instant) -> Self {
        let DataKeys { send, recv } = keys;
        let next_chain = recv.next();
        Self {
            config,
            mode,
            send: SendKey::new(send, now),
            recv: RecvState {
                current: RecvKey::new(&recv),
                previous: None,
                next: RecvKey::new(&next_chain),
                next_chain,
            },
        }
    }

    /// Returns the mode new packets are sealed in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches the mode of packets sealed from now on. Received packets are accepted in
    /// either mode regardless.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Returns the current send epoch.
    pub fn send_epoch(&self) -> u32 {
        self.send.chain.epoch()
    }

    /// Returns the newest receive epoch seen from the peer.
    pub fn recv_epoch(&self) -> u32 {
        self.recv.current.epoch
    }

    /// Moves the send direction to the next key epoch now (the packet-count and age triggers
    /// in [`SessionConfig`] do this by themselves).
    pub fn rekey(&mut self, now: Instant) {
        let chain = self.send.chain.next();
        self.send = SendKey::new(chain, now);
    }

    /// Seals one packet in place (see [`PacketBuf`] for the layout) and sets its status.
    ///
    /// # Errors
    ///
    /// [`SealError`] if the buffer lacks headroom or tailroom or the payload is too long; the
    /// packet is left unchanged and no counter is used.
    pub fn seal<B: AsMut<[u8]>>(
        &mut self,
        now: Instant,
        packet: &mut PacketBuf<B>,
    ) -> Result<(), SealError> {
        let result = self.seal_inner(now, packet);
        packet.status = match result {
            Ok(()) => PacketStatus::Sealed,
            Err(e) => PacketStatus::SealFailed(e),
        };
        result
    }

    /// Opens one packet in place, checking its tag and the replay window, and sets its status.
    ///
    /// # Errors
    ///
    /// [`OpenError`] says why the packet was rejected; the packet and the session's receive
    /// state are left unchanged.
    pub fn open<B: AsMut<[u8]>>(
        &mut self,
        now: Instant,
        packet: &mut PacketBuf<B>,
    ) -> Result<Opened, OpenError> {
        let result = self.open_inner(now, packet);
        packet.status = match result {
            Ok(o) => PacketStatus::Opened(o),
            Err(e) => PacketStatus::OpenFailed(e),
        };
        result
    }

    /// Seals every packet of `packets` in place, in order, and returns how many succeeded; each
    /// packet's [`PacketBuf::status`] says how it fared. Allocates nothing.
    pub fn seal_batch<B: AsMut<[u8]>>(
        &mut self,
        now: Instant,
        packets: &mut [PacketBuf<B>],
    ) -> usize {
        let mut ok = 0;
        for p in packets.iter_mut() {
            ok += usize::from(self.seal(now, p).is_ok());
        }
        ok
    }

    /// Opens every packet of `packets` in place and returns how many were authentic; each
    /// packet's [`PacketBuf::status`] says how it fared. Allocates nothing.
    pub fn open_batch<B: AsMut<[u8]>>(
        &mut self,
        now: Instant,
        packets: &mut [PacketBuf<B>],
    ) -> usize {
        let mut ok = 0;
        for p in packets.iter_mut() {
            ok += usize::from(self.open(now, p).is_ok());
        }
        ok
    }

    fn seal_inner<B: AsMut<[u8]>>(
        &mut self,
        now: Instant,
        packet: &mut PacketBuf<B>,
    ) -> Result<(), SealError> {
        let len = packet.len;
        if len > MAX_PAYLOAD {
            return Err(SealError::TooLong);
        }
        let Some(start) = packet.offset.checked_sub(HEADER_LEN) else {
            return Err(SealError::NoHeadroom);
        };
        let buf = packet.buf.as_mut();
        let end = packet.offset + len + TAG_LEN;
        if end > buf.len() {
            return Err(SealError::NoTailroom);
        }
        if self.send.counter >= self.config.rekey_after_packets.min(MAX_COUNTER)
            || now.saturating_duration_since(self.send.started) >= self.config.rekey_after
        {
            self.rekey(now);
        }
        let counter = self.send.counter;
        let epoch = self.send.chain.epoch();
        let region = &mut buf[start..end];
        region[0] = header_byte(self.mode, epoch);
        region[1..HEADER_LEN].copy_from_slice(&counter.to_be_bytes());
        let (body, tag_out) = region.split_at_mut(HEADER_LEN + len);
        let tag = match self.mode {
            Mode::Sealed => {
                let (header, payload) = body.split_at_mut(HEADER_LEN);
                self.send.cipher.seal(counter, header, payload)
            }
            Mode::Plain => self.send.cipher.seal(counter, body, &mut []),
        }
        .map_err(|_| SealError::TooLong)?;
        tag_out.copy_from_slice(&tag);
        self.send.counter += 1;
        packet.offset = start;
        packet.len = len + OVERHEAD;
        Ok(())
    }

    fn open_inner<B: AsMut<[u8]>>(
        &mut self,
        now: Instant,
        packet: &mut PacketBuf<B>,
    ) -> Result<Opened, OpenError> {
        let buf = packet.buf.as_mut();
        let Some(region) = buf.get_mut(packet.offset..packet.offset.saturating_add(packet.len))
        else {
            return Err(OpenError::Truncated);
        };
        let header = Header::parse(region)?;
        if let Some((_, expires)) = &self.recv.previous
            && now >= *expires
        {
            self.recv.previous = None;
        }
        let (body, tag) = region.split_at_mut(region.len() - TAG_LEN);
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(tag);
        let distance = header.epoch.wrapping_sub(self.recv.current.epoch as u8) & EPOCH_MASK;
        let epoch = match distance {
            0 => open_with(&mut self.recv.current, &header, body, &tag_bytes)?,
            1 => {
                let epoch = open_with(&mut self.recv.next, &header, body, &tag_bytes)?;
                self.recv.advance(now, self.config.previous_key_lifetime);
                epoch
            }
            2 | 3 => {
                // The sender rekeyed more than once while every packet of the epochs between
                // was lost. Verify with a derived key before moving the ratchet.
                let mut chain = self.recv.next_chain.next();
                for _ in 2..distance {
                    chain = chain.next();
                }
                let mut probe = RecvKey::new(&chain);
                let epoch = open_with(&mut probe, &header, body, &tag_bytes)?;
                for _ in 0..distance {
                    self.recv.advance(now, self.config.previous_key_lifetime);
                }
                // `current` is now the probe's epoch with a fresh window; record the counter.
                self.recv
                    .current
                    .window
                    .mark(header.counter)
                    .map_err(replay_error)?;
                epoch
            }
            EPOCH_PREVIOUS => match &mut self.recv.previous {
                Some((key, _)) => open_with(key, &header, body, &tag_bytes)?,
                None => return Err(OpenError::StaleEpoch),
            },
            _ => return Err(OpenError::StaleEpoch),
        };
        packet.offset += HEADER_LEN;
        packet.len -= OVERHEAD;
        Ok(Opened {
            counter: header.counter,
            epoch,
            mode: header.mode,
            proof: Authenticated::new(),
        })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("mode", &self.mode)
            .field("send_epoch", &self.send.chain.epoch())
            .field("send_counter", &self.send.counter)
            .field("recv_epoch", &self.recv.current.epoch)
            .field("recv_next_counter", &self.recv.current.window.next())
            .finish_non_exhaustive()
    }
}

/// A parsed data-plane header. See [`HEADER_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) mode: Mode,
    /// The low four bits of the sender's epoch.
    pub(crate) epoch: u8,
    pub(crate) counter: u64,
}

impl Header {
    /// Checks the length and version of a whole sealed packet and parses its header. Never
    /// panics: every index is checked against the length first.
    pub(crate) fn parse(packet: &[u8]) -> Result<Self, OpenError> {
        if packet.len() < OVERHEAD {
            return Err(OpenError::Truncated);
        }
        let first = packet[0];
        if first & VERSION_MASK != VERSION_1 {
            return Err(OpenError::UnknownVersion);
        }
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&packet[1..HEADER_LEN]);
        Ok(Self {
            mode: if first & PLAIN_FLAG != 0 {
                Mode::Plain
            } else {
                Mode::Sealed
            },
            epoch: first & EPOCH_MASK,
            counter: u64::from_be_bytes(counter),
        })
    }
}

/// Checks the window, verifies (and in sealed mode decrypts) in place, then records the counter.
fn open_with(
    key: &mut RecvKey,
    header: &Header,
    body: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<u32, OpenError> {
    key.window.check(header.counter).map_err(replay_error)?;
    verify(key, header, body, tag)?;
    key.window.mark(header.counter).map_err(replay_error)?;
    Ok(key.epoch)
}

fn verify(
    key: &mut RecvKey,
    header: &Header,
    body: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), OpenError> {
    match header.mode {
        Mode::Sealed => {
            let (hdr, payload) = body.split_at_mut(HEADER_LEN);
            key.cipher.open(header.counter, hdr, payload, tag)
        }
        Mode::Plain => key.cipher.open(header.counter, body, &mut [], tag),
    }
    .map_err(|_| OpenError::BadTag)
}

fn replay_error(r: ReplayReject) -> OpenError {
    match r {
        ReplayReject::Duplicate => OpenError::Replayed,
        ReplayReject::TooOld => OpenError::TooOld,
    }
}

fn header_byte(mode: Mode, epoch: u32) -> u8 {
    // Only the low four bits of the epoch go on the wire; the mask makes the cast lossless.
    let e = (epoch & u32::from(EPOCH_MASK)) as u8;
    VERSION_1 | e | if mode == Mode::Plain { PLAIN_FLAG } else { 0 }
}

struct SendKey {
    chain: ChainKey,
    cipher: Cipher,
    counter: u64,
    started: Instant,
}

impl SendKey {
    fn new(chain: ChainKey, now: Instant) -> Self {
        let cipher = Cipher::new(&chain.key());
        Self {
            chain,
            cipher,
            counter: 0,
            started: now,
        }
    }
}

struct RecvKey {
    epoch: u32,
    cipher: Cipher,
    window: ReplayWindow,
}

impl RecvKey {
    fn new(chain: &ChainKey) -> Self {
        Self {
            epoch: chain.epoch(),
            cipher: Cipher::new(&chain.key()),
            window: ReplayWindow::new(),
        }
    }
}

struct RecvState {
    current: RecvKey,
    /// The epoch before `current`, and when it stops being accepted.
    previous: Option<(RecvKey, Instant)>,
    /// The epoch after `current`, ready for the sender's next rekey.
    next: RecvKey,
    /// The chain of `next`'s epoch, from which later epochs are derived.
    next_chain: ChainKey,
}

impl RecvState {
    /// Makes `next` current, keeping the old current as previous for `lifetime`.
    fn advance(&mut self, now: Instant, lifetime: Duration) {
        let chain = self.next_chain.next();
        let next = RecvKey::new(&chain);
        self.next_chain = chain;
        let current = std::mem::replace(&mut self.next, next);
        let old = std::mem::replace(&mut self.current, current);
        self.previous = Some((old, now + lifetime));
    }
}

/// Length of the data-plane header: one byte `0b001P_EEEE` (version 1 in bits 7..5, bit 4 set
/// for [`Mode::Plain`], the low four bits of the key epoch in bits 3..0), then the 64-bit
/// packet counter big-endian.
pub const HEADER_LEN: usize = 9;
/// Bytes a sealed packet adds to its payload: the header and the tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Longest payload [`Session::seal`] accepts (fits a UDP datagram with the overhead).
pub const MAX_PAYLOAD: usize = 65_535 - OVERHEAD;
/// Sealing moves to a new epoch before the counter reaches this, whatever the config says.
const MAX_COUNTER: u64 = u64::MAX - (1 << 16);
const VERSION_MASK: u8 = 0b1110_0000;
const VERSION_1: u8 = 0b0010_0000;
const PLAIN_FLAG: u8 = 0b0001_0000;
const EPOCH_MASK: u8 = 0b0000_1111;
/// `(previous - current) mod 16`.
const EPOCH_PREVIOUS: u8 = EPOCH_MASK;
