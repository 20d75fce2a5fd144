//! The sleeve's datagram codec: frames (virtio_net_hdr + Ethernet frame, TSO super-frames
//! included) split into chunks that fit the underlay, and put back together.
//!
//! Sans-IO. Nothing here reads a clock, touches a socket or allocates per packet: the
//! [`Chunker`] writes into a buffer the caller owns (with headroom and tailroom to seal each
//! chunk in place), and the [`Receiver`] checks a datagram, reassembles within the fixed budget
//! of its [`Reassembler`], and hands back borrowed frames. The router's sleeve (and the bench's relay, `sim/src/bench/relay.rs`) moves
//! the bytes between the TAP, these types and the UDP socket. Byte layout: `docs/PROTOCOL.md`,
//! "Sleeve datagrams".
//!
//! - [`packet`] holds checked views ([`Packet`], [`ChunkPacket`]) with [`Repr`] and [`ChunkRepr`].
//! - [`chunker`] holds [`ChunkLayout`] and [`Chunker`].
//! - [`reassembly`] holds [`Reassembler`].
//! - [`pmtu`] holds the path MTU search ([`pmtu::PmtuTable`]) and its probe bodies.
//! - [`vnet`] holds the safety check of the carried virtio_net_hdr.

pub mod chunker;
pub mod packet;
pub mod pmtu;
pub mod reassembly;
pub mod vnet;

use std::time::Instant;

pub use chunker::{ChunkLayout, Chunker, Chunks};
pub use packet::{
    CHUNK_HEADER_LEN, ChunkPacket, ChunkRepr, HEADER_LEN, MAX_DATAGRAM_LEN, MAX_FRAME_LEN,
    MessageType, Packet, Repr, VERSION,
};
pub use reassembly::{Reassembler, Reassembly, ReassemblyConfig};
pub use vnet::{VNET_HDR_LEN, VnetHdr};

/// Why a datagram, chunk or frame was rejected. Fieldless, so rejecting costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A chunk layout leaves no room for data or exceeds the datagram limit.
    #[error("chunk layout leaves no room for data")]
    BadLayout,
    /// The carried virtio_net_hdr is unknown or points outside its frame.
    #[error("bad virtio_net_hdr")]
    BadVnetHdr,
    /// The output buffer cannot hold the chunks.
    #[error("buffer too small")]
    BufferTooSmall,
    /// A header field is outside its bounds (hop limit, reserved byte).
    #[error("malformed header")]
    Malformed,
    /// A frame length, offset or total is outside its bounds.
    #[error("length or offset out of range")]
    OutOfRange,
    /// The datagram is longer than any valid datagram.
    #[error("datagram too long")]
    TooLong,
    /// The datagram or chunk is shorter than its header.
    #[error("truncated")]
    Truncated,
    /// The type byte is not a known message type.
    #[error("unknown message type")]
    UnknownType,
    /// The version byte is not [`VERSION`].
    #[error("unknown version")]
    UnknownVersion,
}

/// What the receiving side dropped and delivered, for status and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Datagrams handed to [`Receiver::handle_datagram`].
    pub datagrams: u64,
    /// Datagrams shorter than their headers.
    pub truncated: u64,
    /// Datagrams with a version other than [`VERSION`].
    pub unknown_version: u64,
    /// Datagrams with an unknown type.
    pub unknown_type: u64,
    /// Datagrams with a field out of bounds (hop limit, reserved byte, length).
    pub malformed: u64,
    /// Datagrams for another peer, handed back to be relayed.
    pub forward: u64,
    /// Sealed datagrams handed back to be opened.
    pub sealed: u64,
    /// Chunks whose offset, length or total lie outside the frame or the budget.
    pub chunks_out_of_range: u64,
    /// Chunks overlapping data already received (duplicates included).
    pub chunks_duplicate: u64,
    /// Chunks whose total disagrees with their frame's.
    pub chunks_inconsistent: u64,
    /// Frames completed.
    pub frames_complete: u64,
    /// Frames evicted to make room for newer ones.
    pub frames_evicted: u64,
    /// Frames purged incomplete after the timeout.
    pub frames_timed_out: u64,
    /// Frames split into more pieces than the reassembler tracks.
    pub frames_too_fragmented: u64,
    /// Completed frames whose virtio_net_hdr failed the safety check.
    pub frames_bad_vnet_hdr: u64,
}

/// What [`Receiver::handle_datagram`] made of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Malformed, unknown, duplicate or otherwise unusable; counted.
    Drop,
    /// A datagram for another peer: relay it (the caller decrements the hop limit and drops it
    /// at zero).
    Forward {
        /// The peer it is for.
        dst: [u8; 6],
    },
    /// A complete frame for the local TAP: virtio_net_hdr followed by the Ethernet frame,
    /// valid until the next call.
    Inject {
        /// The peer whose router chunked it.
        src: [u8; 6],
        /// The frame.
        frame: &'a [u8],
    },
    /// A sealed chunk: open `datagram[HEADER_LEN..]` in place, then pass the opened chunk to
    /// [`Receiver::handle_chunk`].
    Open {
        /// The peer whose session opens it.
        src: [u8; 6],
    },
    /// Stored; the frame is not complete yet.
    Pending,
}

/// The receiving half of the sleeve for one local peer: datagram checks, reassembly, frame
/// checks and counters.
#[derive(Debug)]
pub struct Receiver {
    local: [u8; 6],
    reassembler: Reassembler,
    counters: Counters,
}

impl Receiver {
    /// Builds a receiver for the local peer `local`; allocates the reassembly budget.
    pub fn new(local: [u8; 6], config: ReassemblyConfig) -> Self {
        Self {
            local,
            reassembler: Reassembler::new(config),
            counters: Counters::default(),
        }
    }

    /// Returns the counters.
    pub const fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Returns the reassembler.
    pub const fn reassembler(&self) -> &Reassembler {
        &self.reassembler
    }

    /// Takes one datagram from the underlay.
    pub fn handle_datagram<'a>(&'a mut self, now: Instant, datagram: &'a [u8]) -> Received<'a> {
        self.counters.datagrams += 1;
        let repr = match Packet::new_checked(datagram).and_then(|p| Repr::parse(&p)) {
            Ok(repr) => repr,
            Err(e) => {
                self.count(e);
                return Received::Drop;
            }
        };
        if repr.dst != self.local {
            self.counters.forward += 1;
            return Received::Forward { dst: repr.dst };
        }
        match repr.msg_type {
            MessageType::Chunk => self.handle_chunk(now, repr.src, &datagram[HEADER_LEN..]),
            MessageType::SealedChunk
            | MessageType::SealedPmtuProbe
            | MessageType::SealedPmtuAck => {
                self.counters.sealed += 1;
                Received::Open { src: repr.src }
            }
        }
    }

    /// Takes one chunk body (chunk header + data) from `src`: the body of a plain datagram, or
    /// a sealed one after opening.
    pub fn handle_chunk<'a>(
        &'a mut self,
        now: Instant,
        src: [u8; 6],
        body: &'a [u8],
    ) -> Received<'a> {
        let parsed = ChunkPacket::new_checked(body).and_then(|p| ChunkRepr::parse(&p));
        let chunk = match parsed {
            Ok(chunk) => chunk,
            Err(e) => {
                self.count(e);
                return Received::Drop;
            }
        };
        let data = &body[CHUNK_HEADER_LEN..];
        match self
            .reassembler
            .handle_chunk(now, src, &chunk, data, &mut self.counters)
        {
            Reassembly::Complete(frame) => {
                if VnetHdr::parse(frame).is_err() {
                    self.counters.frames_bad_vnet_hdr += 1;
                    return Received::Drop;
                }
                Received::Inject { src, frame }
            }
            Reassembly::Drop => Received::Drop,
            Reassembly::Pending => Received::Pending,
        }
    }

    /// Purges incomplete frames older than the reassembly timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reassembler.handle_timeout(now, &mut self.counters);
    }

    /// Returns when [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.reassembler
            .poll_timeout()
            .map(|t| (t, "sleeve reassembly timeout"))
    }

    fn count(&mut self, e: Error) {
        let c = &mut self.counters;
        match e {
            Error::Truncated => c.truncated += 1,
            Error::UnknownVersion => c.unknown_version += 1,
            Error::UnknownType => c.unknown_type += 1,
            Error::OutOfRange => c.chunks_out_of_range += 1,
            Error::BadVnetHdr => c.frames_bad_vnet_hdr += 1,
            Error::BadLayout | Error::BufferTooSmall | Error::Malformed | Error::TooLong => {
                c.malformed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
