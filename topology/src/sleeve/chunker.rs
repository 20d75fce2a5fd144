//! Splitting a frame (virtio header + Ethernet frame, up to [`MAX_FRAME_LEN`]) into sleeve
//! datagrams that fit the underlay, written into a caller-owned buffer of fixed-size slots.
//!
//! One slot holds one datagram and room to seal it in place:
//!
//! ```text
//! | outer header (16) | headroom (crypto header) | chunk header (12) | data (payload) | tailroom (tag) |
//! ```
//!
//! The data areas sit at fixed offsets ([`ChunkLayout::data_range`]), so a shell can `readv` a
//! frame from the TAP straight into them and call [`Chunker::chunk_in_place`]: no copy in user
//! space. [`Chunker::chunk`] copies a frame that is already in memory. Every datagram of a frame
//! has the same length except the last, which is what UDP GSO (`UDP_SEGMENT`) needs.

use std::ops::Range;

use super::Error;
use super::packet::{
    CHUNK_HEADER_LEN, ChunkPacket, ChunkRepr, HEADER_LEN, MAX_DATAGRAM_LEN, MAX_FRAME_LEN,
    MAX_HOP_LIMIT, MessageType, Packet, Repr,
};

/// Where each part of each datagram goes in a chunk buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    msg_type: MessageType,
    headroom: usize,
    tailroom: usize,
    payload: usize,
}

impl ChunkLayout {
    /// Lays out plain chunks whose full datagrams are `max_datagram` bytes.
    ///
    /// # Errors
    /// [`Error::BadLayout`] when no data fits, or `max_datagram` exceeds [`MAX_DATAGRAM_LEN`].
    pub fn plain(max_datagram: usize) -> Result<Self, Error> {
        Self::new(MessageType::Chunk, max_datagram, 0, 0)
    }

    /// Lays out chunks to be sealed in place: `headroom` bytes for the crypto header before the
    /// chunk header and `tailroom` bytes for the tag after the data, all within `max_datagram`.
    ///
    /// # Errors
    /// [`Error::BadLayout`] when no data fits, or `max_datagram` exceeds [`MAX_DATAGRAM_LEN`].
    pub fn sealed(max_datagram: usize, headroom: usize, tailroom: usize) -> Result<Self, Error> {
        Self::new(MessageType::SealedChunk, max_datagram, headroom, tailroom)
    }

    fn new(
        msg_type: MessageType,
        max_datagram: usize,
        headroom: usize,
        tailroom: usize,
    ) -> Result<Self, Error> {
        if max_datagram > MAX_DATAGRAM_LEN {
            return Err(Error::BadLayout);
        }
        let overhead = HEADER_LEN + CHUNK_HEADER_LEN + headroom + tailroom;
        let Some(payload) = max_datagram.checked_sub(overhead).filter(|p| *p > 0) else {
            return Err(Error::BadLayout);
        };
        Ok(Self {
            msg_type,
            headroom,
            tailroom,
            payload,
        })
    }

    /// Returns the type the datagrams carry.
    pub const fn msg_type(&self) -> MessageType {
        self.msg_type
    }

    /// Returns the most frame bytes one chunk carries.
    pub const fn payload(&self) -> usize {
        self.payload
    }

    /// Returns the size of one slot (equal to a full datagram).
    pub const fn slot_len(&self) -> usize {
        HEADER_LEN + self.headroom + CHUNK_HEADER_LEN + self.payload + self.tailroom
    }

    /// Returns where the chunk body (chunk header) starts within a slot: the offset a crypto
    /// session seals from.
    pub const fn body_offset(&self) -> usize {
        HEADER_LEN + self.headroom
    }

    /// Returns where the data starts within a slot.
    pub const fn data_offset(&self) -> usize {
        HEADER_LEN + self.headroom + CHUNK_HEADER_LEN
    }

    /// Returns how many chunks a frame of `frame_len` bytes needs.
    pub const fn chunk_count(&self, frame_len: usize) -> usize {
        frame_len.div_ceil(self.payload)
    }

    /// Returns how many bytes of buffer a frame of `frame_len` bytes needs.
    pub const fn buffer_len(&self, frame_len: usize) -> usize {
        self.chunk_count(frame_len) * self.slot_len()
    }

    /// Returns the byte range of slot `i` in a chunk buffer.
    pub const fn slot(&self, i: usize) -> Range<usize> {
        let start = i * self.slot_len();
        start..start + self.slot_len()
    }

    /// Returns the byte range of slot `i`'s data area in a chunk buffer (full payload size).
    pub const fn data_range(&self, i: usize) -> Range<usize> {
        let start = i * self.slot_len() + self.data_offset();
        start..start + self.payload
    }
}

/// The datagrams [`Chunker`] wrote for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunks {
    /// The frame id the chunks carry.
    pub frame_id: u32,
    /// Number of datagrams (slots used, from slot 0).
    pub count: usize,
    /// Data bytes in the last chunk.
    pub last_data_len: usize,
    layout: ChunkLayout,
}

impl Chunks {
    /// Returns the length of every datagram but the last (the GSO segment size).
    pub const fn segment_len(&self) -> usize {
        self.layout.slot_len()
    }

    /// Returns the length of datagram `i` once sealed (or as is, for plain chunks).
    pub const fn datagram_len(&self, i: usize) -> usize {
        if i + 1 == self.count {
            self.layout.slot_len() - self.layout.payload + self.last_data_len
        } else {
            self.layout.slot_len()
        }
    }

    /// Returns the range of datagram `i` in the chunk buffer.
    pub const fn datagram(&self, i: usize) -> Range<usize> {
        let start = i * self.layout.slot_len();
        start..start + self.datagram_len(i)
    }

    /// Returns the range of chunk `i`'s body (chunk header and data) in the chunk buffer: what
    /// a crypto session seals in place, with the headroom before it and the tailroom after it.
    pub const fn body(&self, i: usize) -> Range<usize> {
        let start = i * self.layout.slot_len() + self.layout.body_offset();
        let data = if i + 1 == self.count {
            self.last_data_len
        } else {
            self.layout.payload
        };
        start..start + CHUNK_HEADER_LEN + data
    }

    /// Returns the total number of bytes the datagrams take on the wire (UDP payload).
    pub const fn wire_len(&self) -> usize {
        (self.count - 1) * self.layout.slot_len() + self.datagram_len(self.count - 1)
    }
}

/// Writes the chunks of successive frames from one source to one destination.
#[derive(Debug, Clone)]
pub struct Chunker {
    layout: ChunkLayout,
    src: [u8; 6],
    dst: [u8; 6],
    hop_limit: u8,
    next_frame_id: u32,
}

impl Chunker {
    /// Builds a chunker whose first frame gets id `first_frame_id` (callers pick it at random,
    /// so a restarted sender does not reuse ids still in flight).
    pub const fn new(layout: ChunkLayout, src: [u8; 6], dst: [u8; 6], first_frame_id: u32) -> Self {
        Self {
            layout,
            src,
            dst,
            hop_limit: MAX_HOP_LIMIT,
            next_frame_id: first_frame_id,
        }
    }

    /// Returns the layout.
    pub const fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    /// The id the next frame gets (a chunker made for a new layout continues from it).
    pub const fn next_frame_id(&self) -> u32 {
        self.next_frame_id
    }

    /// Sets the destination peer of the frames chunked next.
    pub fn set_dst(&mut self, dst: [u8; 6]) {
        self.dst = dst;
    }

    /// Copies `frame` into the data areas of `out` and writes the headers.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] for an empty frame or one above [`MAX_FRAME_LEN`];
    /// [`Error::BufferTooSmall`] when `out` is shorter than [`ChunkLayout::buffer_len`].
    pub fn chunk(&mut self, frame: &[u8], out: &mut [u8]) -> Result<Chunks, Error> {
        self.check(frame.len(), out.len())?;
        for (i, piece) in frame.chunks(self.layout.payload).enumerate() {
            let range = self.layout.data_range(i);
            out[range.start..range.start + piece.len()].copy_from_slice(piece);
        }
        self.chunk_in_place(frame.len(), out)
    }

    /// Writes the headers around a frame of `frame_len` bytes whose data already sits in the
    /// data areas of `out` ([`ChunkLayout::data_range`], filled in slot order).
    ///
    /// # Errors
    /// As [`Self::chunk`].
    pub fn chunk_in_place(&mut self, frame_len: usize, out: &mut [u8]) -> Result<Chunks, Error> {
        self.check(frame_len, out.len())?;
        let frame_id = self.next_frame_id;
        self.next_frame_id = frame_id.wrapping_add(1);
        let repr = Repr {
            msg_type: self.layout.msg_type,
            src: self.src,
            dst: self.dst,
            hop_limit: self.hop_limit,
        };
        let count = self.layout.chunk_count(frame_len);
        let payload = self.layout.payload;
        let body = self.layout.body_offset();
        // `check` bounded frame_len by MAX_FRAME_LEN, which fits a u32.
        let total = frame_len as u32;
        for i in 0..count {
            let slot = &mut out[self.layout.slot(i)];
            repr.emit(&mut Packet::new_unchecked(&mut *slot));
            let chunk = ChunkRepr {
                frame_id,
                offset: (i * payload) as u32,
                total,
                data_len: payload.min(frame_len - i * payload),
            };
            chunk.emit(&mut ChunkPacket::new_unchecked(&mut slot[body..]));
        }
        Ok(Chunks {
            frame_id,
            count,
            last_data_len: frame_len - (count - 1) * payload,
            layout: self.layout,
        })
    }

    fn check(&self, frame_len: usize, out_len: usize) -> Result<(), Error> {
        if frame_len == 0 || frame_len > MAX_FRAME_LEN {
            Err(Error::OutOfRange)
        } else if out_len < self.layout.buffer_len(frame_len) {
            Err(Error::BufferTooSmall)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn layout_sizes() {
        let l = ChunkLayout::plain(1472).unwrap();
        assert_eq!(l.payload(), 1472 - 28);
        assert_eq!(l.slot_len(), 1472);
        assert_eq!(l.chunk_count(65_236), 46);
        let s = ChunkLayout::sealed(1472, 9, 16).unwrap();
        assert_eq!(s.payload(), 1472 - 28 - 25);
        assert_eq!(s.slot_len(), 1472);
        assert_eq!(s.body_offset(), 25);
        assert_eq!(s.data_offset(), 37);
        assert_eq!(ChunkLayout::plain(28), Err(Error::BadLayout));
        assert_eq!(ChunkLayout::plain(65_508), Err(Error::BadLayout));
    }

    #[test]
    fn chunks_bytes() {
        // Payload 4: a 10-byte frame becomes 3 chunks of 4, 4 and 2 bytes.
        let mut c = Chunker::new(ChunkLayout::plain(32).unwrap(), A, B, 7);
        let mut out = [0u8; 96];
        let chunks = c.chunk(b"0123456789", &mut out).unwrap();
        assert_eq!(
            (chunks.frame_id, chunks.count, chunks.last_data_len),
            (7, 3, 2)
        );
        assert_eq!(chunks.segment_len(), 32);
        assert_eq!(chunks.datagram(2), 64..94);
        assert_eq!(chunks.wire_len(), 94);
        #[rustfmt::skip]
        let expected_last: [u8; 30] = [
            0x01, 0x01, 2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, MAX_HOP_LIMIT, 0,
            0, 0, 0, 7, 0, 0, 0, 8, 0, 0, 0, 10, b'8', b'9',
        ];
        assert_eq!(&out[chunks.datagram(2)], &expected_last);
        assert_eq!(
            &out[chunks.datagram(0)][16..],
            &[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 10, b'0', b'1', b'2', b'3']
        );
        let next = c.chunk(b"x", &mut out).unwrap();
        assert_eq!((next.frame_id, next.count), (8, 1));
    }

    #[test]
    fn sealed_layout_leaves_room() {
        let layout = ChunkLayout::sealed(64, 4, 16).unwrap();
        let mut c = Chunker::new(layout, A, B, 0);
        let mut out = [0xeeu8; 128];
        assert_eq!(layout.payload(), 16);
        let chunks = c.chunk(&[0x55; 16], &mut out).unwrap();
        assert_eq!(chunks.count, 1);
        assert_eq!(out[1], MessageType::SealedChunk.code());
        // Headroom untouched, chunk header right after it, tailroom untouched.
        assert_eq!(&out[16..20], &[0xee; 4]);
        assert_eq!(chunks.body(0), 20..48);
        assert_eq!(&out[20..32], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16]);
        assert_eq!(&out[48..64], &[0xee; 16]);
        assert_eq!(chunks.datagram_len(0), 64);
    }

    #[test]
    fn rejects_bad_input() {
        let mut c = Chunker::new(ChunkLayout::plain(32).unwrap(), A, B, 0);
        let mut out = [0u8; 64];
        assert_eq!(c.chunk(b"", &mut out), Err(Error::OutOfRange));
        assert_eq!(c.chunk(&[0; 9], &mut out), Err(Error::BufferTooSmall));
        let mut big = vec![0u8; 70_000 * 2];
        let mut c = Chunker::new(ChunkLayout::plain(1472).unwrap(), A, B, 0);
        assert_eq!(
            c.chunk(&vec![0; MAX_FRAME_LEN + 1], &mut big),
            Err(Error::OutOfRange)
        );
        assert!(c.chunk(&vec![0; MAX_FRAME_LEN], &mut big).is_ok());
    }
}
