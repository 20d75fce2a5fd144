//! The IPAM gossip messages and the snapshot encoding (docs/PROTOCOL.md, "IPAM gossip").
//!
//! No I/O. [`Message::decode`] checks every count against a fixed bound and against the bytes
//! left before allocating, rejects anything non-canonical (unsorted or duplicate lists, zero
//! names, bad range), and returns a cheap fieldless [`Error`]. Encoding a decoded message gives
//! back the same bytes. Integers are big-endian; every message starts with
//! `[version: u8 = 1][type: u8]`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::Range;
use super::paxos::{Ballot, Claims};
use super::ring::Entry;
use crate::peer::PeerName;

/// The protocol version byte that starts every message.
pub const VERSION: u8 = 0x01;
/// The largest message accepted or produced, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024 * 1024;
/// The most ring entries in one message.
pub const MAX_RING_ENTRIES: usize = 12_000;
/// The most seeds of one ring, peer records or Paxos nodes in one message.
pub const MAX_PEERS: usize = 8_192;
/// The most dead peers one reclaim vote names.
pub const MAX_VOTE_TARGETS: usize = 16;
/// The most held-foreign offsets one peer record lists.
pub const MAX_HELD: usize = 1_024;

/// Why a message was rejected. Carries no data, so rejecting costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Reserved flag bits were set.
    #[error("reserved flag bits set")]
    BadFlags,
    /// The range's prefix is outside 8..=30 or its base has host bits set.
    #[error("bad range")]
    BadRange,
    /// The ring is empty, does not start at 0, or has a token outside the range.
    #[error("bad ring")]
    BadRing,
    /// A list was not sorted strictly (duplicates or disorder).
    #[error("list not sorted or has duplicates")]
    NotCanonical,
    /// The input ended before the message did.
    #[error("truncated message")]
    Truncated,
    /// Bytes were left after the message.
    #[error("trailing bytes after message")]
    TrailingBytes,
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("message too long")]
    TooLong,
    /// A count exceeded its bound.
    #[error("count exceeds its bound")]
    TooMany,
    /// The message type byte is unknown.
    #[error("unknown message type")]
    UnknownType,
    /// The version byte is not [`VERSION`].
    #[error("unsupported protocol version")]
    UnknownVersion,
    /// A peer name was all zeros, or a ring entry had version 0.
    #[error("zero name or version")]
    Zero,
}

/// A ring as gossip carries it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RingState {
    /// The peers that seeded the ring, sorted; rings with different seeds never merge.
    pub seeds: Vec<PeerName>,
    /// Token → entry; the first token is 0.
    pub entries: BTreeMap<u32, Entry>,
}

/// A peer's reclaim vote: the owners it believes dead, under the owner set it sees.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Vote {
    /// A hash of the sorted owner names of the voter's ring ([`super::owners_hash`]).
    pub owners_hash: u64,
    /// Owners gone for longer than `reclaim_after`, sorted.
    pub dead: Vec<PeerName>,
}

/// What one peer says about itself; relayed by others, newest `seq` wins.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PeerRecord {
    /// Bumped by the peer on every change.
    pub seq: u64,
    /// Free addresses in the peer's ranges (a hint for choosing donors).
    pub free: u32,
    /// The peer's reclaim vote, if any.
    pub vote: Option<Vote>,
    /// Offsets the peer still has allocated inside ranges it no longer owns (its ranges were
    /// taken over while it was cut off), sorted. Owners treat them as in use.
    pub held: Vec<u32>,
}

/// A decoded IPAM message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// Asks the receiver to donate about `want` addresses (unicast).
    SpaceRequest {
        /// Addresses wanted.
        want: u32,
    },
    /// A digest of the sender's ring and records (broadcast every gossip interval). A
    /// receiver whose own digest differs answers with its [`Message::State`] (`answer` set).
    Digest {
        /// The allocation range; digests for other ranges are refused.
        range: Range,
        /// Whether the sender holds a ring.
        ring: bool,
        /// The digest ([`super::Ipam::digest`]).
        digest: u64,
    },
    /// The sender's whole IPAM state (broadcast on change; unicast to answer a digest that
    /// differs from ours, or a peer without a ring).
    State {
        /// The allocation range; states for other ranges are refused.
        range: Range,
        /// The ring, once one exists.
        ring: Option<RingState>,
        /// Per-peer records, by name.
        peers: BTreeMap<PeerName, PeerRecord>,
        /// Seeding consensus claims, while no ring exists.
        paxos: Option<BTreeMap<PeerName, Claims>>,
        /// Set when this State answers a digest that differed: the receiver sends its own
        /// State back if it holds something this one lacks (push-pull).
        answer: bool,
        /// Set when this State carries only the records that changed (no ring, no claims,
        /// though the sender may hold a ring): what a change that left the ring alone gossips.
        delta: bool,
    },
}

mod kind {
    pub(super) const STATE: u8 = 0x01;
    pub(super) const SPACE_REQUEST: u8 = 0x02;
    pub(super) const DIGEST: u8 = 0x03;
}

mod record {
    pub(super) const VOTE: u8 = 0x01;
    pub(super) const HELD: u8 = 0x02;
}

mod flags {
    pub(super) const RING: u8 = 0x01;
    pub(super) const PAXOS: u8 = 0x02;
    pub(super) const ANSWER: u8 = 0x04;
    pub(super) const DELTA: u8 = 0x08;
    pub(super) const RESERVED: u8 = !0x0f;
}

const ENTRY_LEN: usize = 4 + 6 + 4;
const PEER_MIN_LEN: usize = 6 + 8 + 4 + 1;
const CLAIMS_MIN_LEN: usize = 6 + 10 + 10 + 2;

impl Message {
    /// Parses one message.
    ///
    /// # Errors
    ///
    /// Returns the first problem found.
    pub fn decode(buf: &[u8]) -> Result<Self, Error> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLong);
        }
        let mut r = Reader { buf };
        if r.u8()? != VERSION {
            return Err(Error::UnknownVersion);
        }
        let msg = match r.u8()? {
            kind::SPACE_REQUEST => Self::SpaceRequest { want: r.u32()? },
            kind::DIGEST => {
                let fl = r.u8()?;
                if fl & !flags::RING != 0 {
                    return Err(Error::BadFlags);
                }
                let base = Ipv4Addr::from(r.u32()?);
                let range = Range::new(base, r.u8()?).ok_or(Error::BadRange)?;
                Self::Digest {
                    range,
                    ring: fl & flags::RING != 0,
                    digest: r.u64()?,
                }
            }
            kind::STATE => {
                let fl = r.u8()?;
                if fl & flags::RESERVED != 0
                    || (fl & flags::DELTA != 0 && fl & (flags::RING | flags::PAXOS) != 0)
                {
                    return Err(Error::BadFlags);
                }
                let base = Ipv4Addr::from(r.u32()?);
                let range = Range::new(base, r.u8()?).ok_or(Error::BadRange)?;
                let ring = if fl & flags::RING != 0 {
                    Some(r.ring(range.size())?)
                } else {
                    None
                };
                let n = r.count(PEER_MIN_LEN, MAX_PEERS)?;
                let mut peers = BTreeMap::new();
                let mut last = None;
                for _ in 0..n {
                    let name = r.sorted_name(&mut last)?;
                    let seq = r.u64()?;
                    let free = r.u32()?;
                    let rec_flags = r.u8()?;
                    if rec_flags & !(record::VOTE | record::HELD) != 0 {
                        return Err(Error::BadFlags);
                    }
                    let vote = match rec_flags & record::VOTE {
                        0 => None,
                        _ => {
                            let owners_hash = r.u64()?;
                            let k = usize::from(r.u8()?);
                            if k > MAX_VOTE_TARGETS {
                                return Err(Error::TooMany);
                            }
                            Some(Vote {
                                owners_hash,
                                dead: r.names(k)?,
                            })
                        }
                    };
                    let held = if rec_flags & record::HELD != 0 {
                        r.held(range.size())?
                    } else {
                        Vec::new()
                    };
                    peers.insert(
                        name,
                        PeerRecord {
                            seq,
                            free,
                            vote,
                            held,
                        },
                    );
                }
                let paxos = if fl & flags::PAXOS != 0 {
                    let n = r.count(CLAIMS_MIN_LEN, MAX_PEERS)?;
                    let mut m = BTreeMap::new();
                    let mut last = None;
                    for _ in 0..n {
                        let node = r.sorted_name(&mut last)?;
                        let promise = r.ballot()?;
                        let accepted = r.ballot()?;
                        let k = r.count(6, MAX_PEERS)?;
                        let value = r.names(k)?;
                        m.insert(
                            node,
                            Claims {
                                promise,
                                accepted,
                                value,
                            },
                        );
                    }
                    Some(m)
                } else {
                    None
                };
                Self::State {
                    range,
                    ring,
                    peers,
                    paxos,
                    answer: fl & flags::ANSWER != 0,
                    delta: fl & flags::DELTA != 0,
                }
            }
            _ => return Err(Error::UnknownType),
        };
        if !r.buf.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(msg)
    }

    /// Appends the encoding of this message to `out`.
    ///
    /// The caller keeps lists within their bounds (the engine never builds larger ones).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        match self {
            Self::SpaceRequest { want } => {
                out.push(kind::SPACE_REQUEST);
                out.extend_from_slice(&want.to_be_bytes());
            }
            Self::Digest {
                range,
                ring,
                digest,
            } => {
                out.push(kind::DIGEST);
                out.push(if *ring { flags::RING } else { 0 });
                out.extend_from_slice(&range.base().octets());
                out.push(range.prefix());
                out.extend_from_slice(&digest.to_be_bytes());
            }
            Self::State {
                range,
                ring,
                peers,
                paxos,
                answer,
                delta,
            } => {
                out.push(kind::STATE);
                let mut fl = 0;
                if *answer {
                    fl |= flags::ANSWER;
                }
                if *delta {
                    fl |= flags::DELTA;
                }
                if ring.is_some() {
                    fl |= flags::RING;
                }
                if paxos.is_some() {
                    fl |= flags::PAXOS;
                }
                out.push(fl);
                out.extend_from_slice(&range.base().octets());
                out.push(range.prefix());
                if let Some(ring) = ring {
                    encode_ring(ring, out);
                }
                put_u16(out, peers.len());
                for (name, p) in peers {
                    out.extend_from_slice(&name.bytes());
                    out.extend_from_slice(&p.seq.to_be_bytes());
                    out.extend_from_slice(&p.free.to_be_bytes());
                    let mut rf = 0;
                    if p.vote.is_some() {
                        rf |= record::VOTE;
                    }
                    if !p.held.is_empty() {
                        rf |= record::HELD;
                    }
                    out.push(rf);
                    if let Some(v) = &p.vote {
                        out.extend_from_slice(&v.owners_hash.to_be_bytes());
                        out.push(u8::try_from(v.dead.len()).unwrap_or(u8::MAX));
                        for d in &v.dead {
                            out.extend_from_slice(&d.bytes());
                        }
                    }
                    if !p.held.is_empty() {
                        put_u16(out, p.held.len());
                        for o in &p.held {
                            out.extend_from_slice(&o.to_be_bytes());
                        }
                    }
                }
                if let Some(paxos) = paxos {
                    put_u16(out, paxos.len());
                    for (node, c) in paxos {
                        out.extend_from_slice(&node.bytes());
                        put_ballot(out, c.promise);
                        put_ballot(out, c.accepted);
                        put_u16(out, c.value.len());
                        for v in &c.value {
                            out.extend_from_slice(&v.bytes());
                        }
                    }
                }
            }
        }
    }

    /// Returns the encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Appends a ring: seeds, then entries.
pub(super) fn encode_ring(ring: &RingState, out: &mut Vec<u8>) {
    put_u16(out, ring.seeds.len());
    for s in &ring.seeds {
        out.extend_from_slice(&s.bytes());
    }
    put_u16(out, ring.entries.len());
    for (token, e) in &ring.entries {
        out.extend_from_slice(&token.to_be_bytes());
        out.extend_from_slice(&e.owner.bytes());
        out.extend_from_slice(&e.version.to_be_bytes());
    }
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

fn put_ballot(out: &mut Vec<u8>, b: Ballot) {
    out.extend_from_slice(&b.round.to_be_bytes());
    out.extend_from_slice(&b.proposer.bytes());
}

/// A bounds-checked cursor over input bytes.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn name(&mut self) -> Result<PeerName, Error> {
        let n = PeerName::from_bytes(self.array()?);
        if n.is_zero() {
            return Err(Error::Zero);
        }
        Ok(n)
    }

    fn sorted_name(&mut self, last: &mut Option<PeerName>) -> Result<PeerName, Error> {
        let n = self.name()?;
        if last.is_some_and(|l| l >= n) {
            return Err(Error::NotCanonical);
        }
        *last = Some(n);
        Ok(n)
    }

    /// Reads `k` strictly sorted names.
    pub(super) fn names(&mut self, k: usize) -> Result<Vec<PeerName>, Error> {
        if k.saturating_mul(6) > self.buf.len() {
            return Err(Error::Truncated);
        }
        let mut out = Vec::with_capacity(k);
        let mut last = None;
        for _ in 0..k {
            out.push(self.sorted_name(&mut last)?);
        }
        Ok(out)
    }

    fn ballot(&mut self) -> Result<Ballot, Error> {
        let round = self.u32()?;
        let raw = PeerName::from_bytes(self.array()?);
        // Round 0 means "none" and must carry the zero name, so the encoding is canonical.
        if (round == 0) != raw.is_zero() {
            return Err(Error::Zero);
        }
        Ok(Ballot {
            round,
            proposer: raw,
        })
    }

    /// Reads a u16 count of items at least `min_item` bytes each, checked against `max` and
    /// against the bytes left, so a hostile count cannot make us reserve memory.
    pub(super) fn count(&mut self, min_item: usize, max: usize) -> Result<usize, Error> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(Error::TooMany);
        }
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(Error::Truncated);
        }
        Ok(n)
    }

    /// Reads a held-offsets list: count 1..=[`MAX_HELD`], strictly increasing, below `size`.
    fn held(&mut self, size: u32) -> Result<Vec<u32>, Error> {
        let n = self.count(4, MAX_HELD)?;
        if n == 0 {
            return Err(Error::NotCanonical);
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let o = self.u32()?;
            if o >= size {
                return Err(Error::BadRange);
            }
            if out.last().is_some_and(|&l| l >= o) {
                return Err(Error::NotCanonical);
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Reads a ring over `size` offsets.
    pub(super) fn ring(&mut self, size: u32) -> Result<RingState, Error> {
        let k = self.count(6, MAX_PEERS)?;
        let seeds = self.names(k)?;
        let n = self.count(ENTRY_LEN, MAX_RING_ENTRIES)?;
        let mut entries = BTreeMap::new();
        let mut last: Option<u32> = None;
        for _ in 0..n {
            let token = self.u32()?;
            let owner = self.name()?;
            let version = self.u32()?;
            if last.is_some_and(|l| l >= token) {
                return Err(Error::NotCanonical);
            }
            if (last.is_none() && token != 0) || token >= size {
                return Err(Error::BadRing);
            }
            if version == 0 {
                return Err(Error::Zero);
            }
            last = Some(token);
            entries.insert(token, Entry { version, owner });
        }
        if entries.is_empty() || seeds.is_empty() {
            return Err(Error::BadRing);
        }
        Ok(RingState { seeds, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, b])
    }

    #[test]
    fn space_request_bytes() {
        let m = Message::SpaceRequest { want: 0x0102_0304 };
        let b = m.to_bytes();
        assert_eq!(b, [0x01, 0x02, 0x01, 0x02, 0x03, 0x04]);
        assert_eq!(Message::decode(&b), Ok(m));
    }

    #[test]
    fn state_bytes_round_trip() {
        let range: Range = "10.32.0.0/12".parse().unwrap();
        let mut entries = BTreeMap::new();
        entries.insert(
            0,
            Entry {
                version: 1,
                owner: n(1),
            },
        );
        let mut peers = BTreeMap::new();
        peers.insert(
            n(1),
            PeerRecord {
                seq: 7,
                free: 5,
                vote: Some(Vote {
                    owners_hash: 9,
                    dead: vec![n(2)],
                }),
                held: vec![3, 0x0102],
            },
        );
        let m = Message::State {
            range,
            ring: Some(RingState {
                seeds: vec![n(1)],
                entries,
            }),
            peers,
            paxos: None,
            answer: false,
            delta: false,
        };
        let b = m.to_bytes();
        #[rustfmt::skip]
        let want = [
            0x01, 0x01, 0x01,             // version, State, flags = ring
            10, 32, 0, 0, 12,             // range
            0, 1, 0, 0, 0, 0, 0, 1,       // 1 seed
            0, 1, 0, 0, 0, 0,  0, 0, 0, 0, 0, 1,  0, 0, 0, 1, // 1 entry
            0, 1, 0, 0, 0, 0, 0, 1,       // 1 peer record: name
            0, 0, 0, 0, 0, 0, 0, 7,  0, 0, 0, 5, // seq, free
            3, 0, 0, 0, 0, 0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 2, // flags = vote|held, vote
            0, 2, 0, 0, 0, 3, 0, 0, 1, 2, // 2 held offsets
        ];
        assert_eq!(b, want);
        assert_eq!(Message::decode(&b), Ok(m));
    }

    #[test]
    fn held_list_is_canonical() {
        // State for 10.0.0.0/24 (256 offsets), no ring, one record with flags = held.
        let msg = |held: &[u8]| {
            let mut b = vec![1, 1, 0, 10, 0, 0, 0, 24, 0, 1, 0, 0, 0, 0, 0, 1];
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2]);
            b.extend_from_slice(held);
            b
        };
        let ok = msg(&[0, 2, 0, 0, 0, 3, 0, 0, 0, 255]);
        let Ok(Message::State { peers, .. }) = Message::decode(&ok) else {
            panic!("valid held list refused")
        };
        assert_eq!(peers[&n(1)].held, vec![3, 255]);
        assert_eq!(
            Message::decode(&msg(&[0, 0])),
            Err(Error::NotCanonical),
            "flag set, empty list"
        );
        assert_eq!(
            Message::decode(&msg(&[0, 2, 0, 0, 0, 5, 0, 0, 0, 3])),
            Err(Error::NotCanonical)
        );
        assert_eq!(
            Message::decode(&msg(&[0, 1, 0, 0, 1, 0])),
            Err(Error::BadRange),
            "offset 256 outside a /24"
        );
        assert_eq!(Message::decode(&msg(&[0, 4, 0, 0])), Err(Error::Truncated));
        let mut bad_flag = ok;
        bad_flag[28] = 0x04;
        assert_eq!(Message::decode(&bad_flag), Err(Error::BadFlags));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Message::decode(&[]), Err(Error::Truncated));
        assert_eq!(Message::decode(&[2, 1]), Err(Error::UnknownVersion));
        assert_eq!(Message::decode(&[1, 9]), Err(Error::UnknownType));
        assert_eq!(
            Message::decode(&[1, 2, 0, 0, 0, 0, 0]),
            Err(Error::TrailingBytes)
        );
        // Host bits set in the base.
        assert_eq!(
            Message::decode(&[1, 1, 0, 10, 32, 0, 1, 12, 0, 0]),
            Err(Error::BadRange)
        );
        // Hostile count.
        assert_eq!(
            Message::decode(&[1, 1, 0, 10, 32, 0, 0, 12, 0x07, 0xff]),
            Err(Error::Truncated)
        );
    }
}
