//! Checked views and representations of a sleeve datagram: the outer [`Packet`] (version, type,
//! peers, hop limit) and the [`ChunkPacket`] it carries (frame id, offset, total, data).
//!
//! Two levels, as in smoltcp's `wire`: a zero-copy view over any `AsRef<[u8]>` whose accessors
//! never panic once [`Packet::new_checked`] has passed, and a `Repr` with `parse`/`emit`. Parsing
//! goes through `new_checked`; emitting writes through `new_unchecked` into a buffer the caller
//! has sized with `buffer_len`. Layout: `docs/PROTOCOL.md`, "Sleeve datagrams".

use super::Error;

/// The version byte of every sleeve datagram this module reads or writes.
pub const VERSION: u8 = 0x01;
/// Length of the outer header.
pub const HEADER_LEN: usize = field::BODY;
/// Length of the chunk header that starts a (plain or opened) chunk body.
pub const CHUNK_HEADER_LEN: usize = chunk_field::DATA;
/// The largest frame (virtio_net_hdr + Ethernet frame) a chunk may belong to: a 64 KiB GSO
/// super-frame plus its Ethernet and virtio headers.
pub const MAX_FRAME_LEN: usize = 65_536 + 14 + super::vnet::VNET_HDR_LEN;
/// The largest datagram accepted (the IPv4 UDP payload limit).
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// The largest hop limit a datagram may carry; relays decrement it and drop it at zero.
pub const MAX_HOP_LIMIT: u8 = 16;

/// What the body of a datagram holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// A plain chunk: the body is a [`ChunkPacket`].
    Chunk,
    /// A sealed chunk: the body is a crypto packet (header, ciphertext, tag) that opens to a
    /// [`ChunkPacket`].
    SealedChunk,
    /// A sealed path MTU probe: opens to a nonce and padding ([`super::pmtu`]).
    SealedPmtuProbe,
    /// A sealed acknowledgement of a path MTU probe ([`super::pmtu`]).
    SealedPmtuAck,
}

impl MessageType {
    /// Returns the wire code of the type.
    pub const fn code(self) -> u8 {
        match self {
            Self::Chunk => 0x01,
            Self::SealedChunk => 0x02,
            Self::SealedPmtuProbe => 0x03,
            Self::SealedPmtuAck => 0x04,
        }
    }

    /// Returns the type with wire code `code`, if it is known.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::Chunk),
            0x02 => Some(Self::SealedChunk),
            0x03 => Some(Self::SealedPmtuProbe),
            0x04 => Some(Self::SealedPmtuAck),
            _ => None,
        }
    }
}

/// A read/write view of a sleeve datagram's outer header and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

mod field {
    use std::ops::Range;

    pub(super) const VERSION: usize = 0;
    pub(super) const TYPE: usize = 1;
    pub(super) const SRC: Range<usize> = 2..8;
    pub(super) const DST: Range<usize> = 8..14;
    pub(super) const HOP_LIMIT: usize = 14;
    pub(super) const RESERVED: usize = 15;
    pub(super) const BODY: usize = 16;
}

mod chunk_field {
    use std::ops::Range;

    pub(super) const FRAME_ID: Range<usize> = 0..4;
    pub(super) const OFFSET: Range<usize> = 4..8;
    pub(super) const TOTAL: Range<usize> = 8..12;
    pub(super) const DATA: usize = 12;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::TooLong`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole header and no more than [`MAX_DATAGRAM_LEN`]
    /// bytes; after this no accessor panics.
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::TooLong`].
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Error::Truncated)
        } else if len > MAX_DATAGRAM_LEN {
            Err(Error::TooLong)
        } else {
            Ok(())
        }
    }

    /// Returns the inner buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Returns the version byte.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// Returns the raw type byte.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Returns the source peer.
    pub fn src(&self) -> [u8; 6] {
        let mut id = [0; 6];
        id.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        id
    }

    /// Returns the destination peer.
    pub fn dst(&self) -> [u8; 6] {
        let mut id = [0; 6];
        id.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        id
    }

    /// Returns the hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Returns the reserved byte (zero in every valid datagram).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED]
    }

    /// Returns the body: everything after the outer header.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[field::BODY..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version byte.
    pub fn set_version(&mut self, value: u8) {
        self.buffer.as_mut()[field::VERSION] = value;
    }

    /// Sets the type byte.
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Sets the source peer.
    pub fn set_src(&mut self, value: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&value);
    }

    /// Sets the destination peer.
    pub fn set_dst(&mut self, value: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&value);
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    /// Sets the reserved byte.
    pub fn set_reserved(&mut self, value: u8) {
        self.buffer.as_mut()[field::RESERVED] = value;
    }

    /// Returns the body, mutably (for opening a sealed body in place).
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::BODY..]
    }
}

/// The decoded outer header of a sleeve datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// What the body holds.
    pub msg_type: MessageType,
    /// The peer whose router chunked the frame.
    pub src: [u8; 6],
    /// The peer whose TAP the frame is for.
    pub dst: [u8; 6],
    /// Relays left, `1..=MAX_HOP_LIMIT`.
    pub hop_limit: u8,
}

impl Repr {
    /// Parses and validates the outer header (version, type, hop limit, reserved byte).
    ///
    /// # Errors
    /// [`Error::UnknownVersion`], [`Error::UnknownType`] or [`Error::Malformed`].
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.version() != VERSION {
            return Err(Error::UnknownVersion);
        }
        let Some(msg_type) = MessageType::from_code(packet.msg_type()) else {
            return Err(Error::UnknownType);
        };
        let hop_limit = packet.hop_limit();
        if hop_limit == 0 || hop_limit > MAX_HOP_LIMIT || packet.reserved() != 0 {
            return Err(Error::Malformed);
        }
        Ok(Self {
            msg_type,
            src: packet.src(),
            dst: packet.dst(),
            hop_limit,
        })
    }

    /// Returns the length of the outer header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the outer header into the first [`HEADER_LEN`] bytes of `packet`.
    ///
    /// # Panics
    /// Panics if the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version(VERSION);
        packet.set_msg_type(self.msg_type.code());
        packet.set_src(self.src);
        packet.set_dst(self.dst);
        packet.set_hop_limit(self.hop_limit);
        packet.set_reserved(0);
    }
}

/// A read/write view of a chunk body: frame id, offset, total length and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ChunkPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    ///
    /// # Errors
    /// [`Error::Truncated`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a chunk header and at least one byte of data.
    ///
    /// # Errors
    /// [`Error::Truncated`].
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() <= CHUNK_HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the frame id.
    pub fn frame_id(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[chunk_field::FRAME_ID])
    }

    /// Returns the offset of the chunk's data within the frame.
    pub fn offset(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[chunk_field::OFFSET])
    }

    /// Returns the frame's total length.
    pub fn total(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[chunk_field::TOTAL])
    }

    /// Returns the chunk's data.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[chunk_field::DATA..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ChunkPacket<T> {
    /// Sets the frame id.
    pub fn set_frame_id(&mut self, value: u32) {
        self.buffer.as_mut()[chunk_field::FRAME_ID].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the offset.
    pub fn set_offset(&mut self, value: u32) {
        self.buffer.as_mut()[chunk_field::OFFSET].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the total length.
    pub fn set_total(&mut self, value: u32) {
        self.buffer.as_mut()[chunk_field::TOTAL].copy_from_slice(&value.to_be_bytes());
    }

    /// Returns the data, mutably.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[chunk_field::DATA..]
    }
}

/// The decoded header of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRepr {
    /// Identifies the frame among the source's frames in flight (wraps).
    pub frame_id: u32,
    /// Where the data goes in the frame.
    pub offset: u32,
    /// The frame's length, `1..=MAX_FRAME_LEN`.
    pub total: u32,
    /// Length of the data, `1..`; `offset + data_len <= total`.
    pub data_len: usize,
}

impl ChunkRepr {
    /// Parses and bounds-checks a chunk header against its data.
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::OutOfRange`].
    pub fn parse<T: AsRef<[u8]>>(packet: &ChunkPacket<T>) -> Result<Self, Error> {
        packet.check_len()?;
        let total = packet.total();
        let offset = packet.offset();
        let data_len = packet.data().len();
        let end = u64::from(offset) + data_len as u64;
        if total == 0 || total as usize > MAX_FRAME_LEN || end > u64::from(total) {
            return Err(Error::OutOfRange);
        }
        Ok(Self {
            frame_id: packet.frame_id(),
            offset,
            total,
            data_len,
        })
    }

    /// Returns the length of the chunk header plus data.
    pub const fn buffer_len(&self) -> usize {
        CHUNK_HEADER_LEN + self.data_len
    }

    /// Writes the chunk header (not the data).
    ///
    /// # Panics
    /// Panics if the buffer is shorter than [`CHUNK_HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ChunkPacket<T>) {
        packet.set_frame_id(self.frame_id);
        packet.set_offset(self.offset);
        packet.set_total(self.total);
    }
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(bytes);
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    // version 1, plain chunk, src 02:..:01, dst 02:..:02, hop limit 1, then a chunk of frame
    // 0x01020304 at offset 8 of a 12-byte frame, data "abcd".
    static DATAGRAM: [u8; 32] = [
        0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01,
        0x00, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x0c, b'a', b'b',
        b'c', b'd',
    ];

    fn repr() -> (Repr, ChunkRepr) {
        (
            Repr {
                msg_type: MessageType::Chunk,
                src: [2, 0, 0, 0, 0, 1],
                dst: [2, 0, 0, 0, 0, 2],
                hop_limit: 1,
            },
            ChunkRepr {
                frame_id: 0x0102_0304,
                offset: 8,
                total: 12,
                data_len: 4,
            },
        )
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(packet.version(), 1);
        assert_eq!(packet.msg_type(), 1);
        assert_eq!(packet.src(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(packet.dst(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(packet.hop_limit(), 1);
        let chunk = ChunkPacket::new_checked(packet.body()).unwrap();
        assert_eq!(chunk.frame_id(), 0x0102_0304);
        assert_eq!(chunk.offset(), 8);
        assert_eq!(chunk.total(), 12);
        assert_eq!(chunk.data(), b"abcd");
        let (r, c) = repr();
        assert_eq!(Repr::parse(&packet), Ok(r));
        assert_eq!(ChunkRepr::parse(&chunk), Ok(c));
    }

    #[test]
    fn construct() {
        let (r, c) = repr();
        let mut bytes = [0xa5u8; 32];
        r.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        let mut chunk = ChunkPacket::new_unchecked(&mut bytes[HEADER_LEN..]);
        c.emit(&mut chunk);
        chunk.data_mut().copy_from_slice(b"abcd");
        assert_eq!(bytes, DATAGRAM);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..15]).err(),
            Some(Error::Truncated)
        );
        let mut bad = DATAGRAM;
        bad[0] = 2;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])),
            Err(Error::UnknownVersion)
        );
        let mut bad = DATAGRAM;
        bad[1] = 9;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])),
            Err(Error::UnknownType)
        );
        for (at, value) in [(14, 0), (14, MAX_HOP_LIMIT + 1), (15, 1)] {
            let mut bad = DATAGRAM;
            bad[at] = value;
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&bad[..])),
                Err(Error::Malformed)
            );
        }
        // Offset 9 + 4 bytes overruns the 12-byte frame.
        let mut bad = DATAGRAM;
        bad[23] = 9;
        let chunk = ChunkPacket::new_checked(&bad[HEADER_LEN..]).unwrap();
        assert_eq!(ChunkRepr::parse(&chunk), Err(Error::OutOfRange));
        // A zero total, and a total above MAX_FRAME_LEN.
        for total in [0u32, MAX_FRAME_LEN as u32 + 1] {
            let mut bad = DATAGRAM;
            bad[24..28].copy_from_slice(&total.to_be_bytes());
            let chunk = ChunkPacket::new_checked(&bad[HEADER_LEN..]).unwrap();
            assert_eq!(ChunkRepr::parse(&chunk), Err(Error::OutOfRange));
        }
        // A chunk without data.
        assert_eq!(
            ChunkPacket::new_checked(&DATAGRAM[HEADER_LEN..HEADER_LEN + CHUNK_HEADER_LEN]).err(),
            Some(Error::Truncated)
        );
    }
}
