//! The topology control messages: heartbeats, digests, summaries, requests and updates.
//!
//! This module owns the byte layout documented in `docs/PROTOCOL.md` ("Topology gossip"). It
//! does no I/O. [`Message::decode`] checks every length against the remaining input and against
//! fixed bounds before it allocates, and returns a cheap [`Error`] (a fieldless enum) for
//! anything malformed; a decoded message is structurally valid (non-zero names and uids,
//! canonical sorted connection lists, UTF-8 nicknames). Whether its content is *believable* is
//! the engine's business.
//!
//! Every message starts with `[version: u8 = 1][type: u8]`. Integers are big-endian.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::peer::{ConnectionSummary, PeerInfo, PeerName, PeerUid};

/// The protocol version byte that starts every message.
pub const VERSION: u8 = 0x01;
/// The largest message accepted or produced, in bytes.
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;
/// The largest nickname, in bytes of UTF-8.
pub const MAX_NICKNAME_LEN: usize = 255;
/// The most connections one record may list.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most entries (summary entries, names or records) in one message.
pub const MAX_ENTRIES: usize = 16_384;
/// The number of anti-entropy buckets a bucket digest carries.
pub const BUCKETS: usize = 64;
/// The encoded size of one summary entry (name, uid, version).
pub const ENTRY_LEN: usize = 6 + 8 + 8;

/// Why a message was rejected. Carries no data, so rejecting costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A bucket digest declared a bucket count other than [`BUCKETS`].
    #[error("bad bucket count")]
    BadBucketCount,
    /// Reserved flag bits were set.
    #[error("reserved flag bits set")]
    BadFlags,
    /// A nickname was not UTF-8.
    #[error("nickname is not UTF-8")]
    BadNickname,
    /// A record listed a connection to itself.
    #[error("record lists a connection to itself")]
    SelfConnection,
    /// A record's connections were not sorted strictly by remote name.
    #[error("connection list not sorted or has duplicates")]
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
    /// A peer name was all zeros.
    #[error("zero peer name")]
    ZeroName,
    /// A uid was zero.
    #[error("zero uid")]
    ZeroUid,
}

/// A name, uid and version triple: what a summary says about one peer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Entry {
    /// The peer.
    pub name: PeerName,
    /// Its incarnation.
    pub uid: PeerUid,
    /// Its version.
    pub version: u64,
}

/// A decoded topology control message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// Per-bucket view digests; asks the receiver for summaries of the buckets that differ.
    BucketDigest {
        /// True on connection setup: the receiver answers for every differing bucket at once.
        full: bool,
        /// The sender's bucket sums.
        buckets: Box<[u64; BUCKETS]>,
    },
    /// Liveness plus the sender's whole-view digest.
    Heartbeat {
        /// How many records the sender holds.
        count: u32,
        /// The sender's view digest.
        digest: u64,
    },
    /// A request for the current records of the named peers.
    Request {
        /// The peers wanted.
        names: Vec<PeerName>,
    },
    /// Version entries. With `complete == 0` an announcement of news (a delta); otherwise the
    /// complete list of the sender's records in every bucket whose bit is set.
    Summary {
        /// Bit `b` set: the entries include every record the sender holds in bucket `b`.
        complete: u64,
        /// The entries.
        entries: Vec<Entry>,
    },
    /// Full records.
    Update {
        /// The records.
        records: Vec<Arc<PeerInfo>>,
    },
}

/// The message type bytes (the second byte of every message).
pub mod kind {
    /// [`super::Message::Heartbeat`].
    pub const HEARTBEAT: u8 = 0x01;
    /// [`super::Message::BucketDigest`].
    pub const BUCKET_DIGEST: u8 = 0x02;
    /// [`super::Message::Summary`].
    pub const SUMMARY: u8 = 0x03;
    /// [`super::Message::Request`].
    pub const REQUEST: u8 = 0x04;
    /// [`super::Message::Update`].
    pub const UPDATE: u8 = 0x05;
}

mod conn_flags {
    pub(super) const OUTBOUND: u8 = 0x01;
    pub(super) const ESTABLISHED: u8 = 0x02;
    pub(super) const IPV6: u8 = 0x04;
    pub(super) const RESERVED: u8 = !0x07;
}

impl Message {
    /// Parses one message.
    ///
    /// # Errors
    ///
    /// Returns the first problem found; nothing is partially applied.
    pub fn decode(buf: &[u8]) -> Result<Self, Error> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLong);
        }
        let mut r = Reader { buf };
        if r.u8()? != VERSION {
            return Err(Error::UnknownVersion);
        }
        let msg = match r.u8()? {
            kind::HEARTBEAT => Self::Heartbeat {
                count: r.u32()?,
                digest: r.u64()?,
            },
            kind::BUCKET_DIGEST => {
                let flags = r.u8()?;
                if flags & !1 != 0 {
                    return Err(Error::BadFlags);
                }
                if usize::from(r.u8()?) != BUCKETS {
                    return Err(Error::BadBucketCount);
                }
                let mut buckets = Box::new([0u64; BUCKETS]);
                for b in buckets.iter_mut() {
                    *b = r.u64()?;
                }
                Self::BucketDigest {
                    full: flags & 1 == 1,
                    buckets,
                }
            }
            kind::SUMMARY => {
                let complete = r.u64()?;
                let n = r.count(ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.name()?;
                    let uid = r.uid()?;
                    entries.push(Entry {
                        name,
                        uid,
                        version: r.u64()?,
                    });
                }
                Self::Summary { complete, entries }
            }
            kind::REQUEST => {
                let n = r.count(6)?;
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(r.name()?);
                }
                Self::Request { names }
            }
            kind::UPDATE => {
                let n = r.count(MIN_RECORD_LEN)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(Arc::new(r.record()?));
                }
                Self::Update { records }
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
    /// The caller keeps messages within [`MAX_MESSAGE_LEN`] and counts within [`MAX_ENTRIES`];
    /// the engine's encoders split long lists into several messages.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Heartbeat { count, digest } => encode_heartbeat(*count, *digest, out),
            Self::BucketDigest { full, buckets } => encode_bucket_digest(*full, buckets, out),
            Self::Summary { complete, entries } => encode_summary(*complete, entries, out),
            Self::Request { names } => encode_request(names, out),
            Self::Update { records } => encode_update(records.iter().map(|r| &**r), out),
        }
    }
}

/// An Update checked whole without allocating, whose records are decoded only on demand.
///
/// [`UpdateView::parse`] applies every check [`Message::decode`] applies to an Update and
/// fails with the same error, so a receiver may first look at each record's name, uid and
/// version and decode (allocate) only the records it will keep.
#[derive(Clone, Debug)]
pub struct UpdateView<'a> {
    records: Vec<RecordView<'a>>,
}

/// One checked record inside an [`UpdateView`].
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    /// The peer.
    pub name: PeerName,
    /// Its incarnation.
    pub uid: PeerUid,
    /// Its version.
    pub version: u64,
    bytes: &'a [u8],
}

impl<'a> UpdateView<'a> {
    /// Checks an Update message. Returns None when `buf` is not an Update (by its type byte).
    ///
    /// # Errors
    ///
    /// Returns the error [`Message::decode`] would return for the same bytes.
    pub fn parse(buf: &'a [u8]) -> Option<Result<Self, Error>> {
        if buf.len() < 2 || buf[0] != VERSION || buf[1] != kind::UPDATE {
            return None;
        }
        Some(Self::parse_checked(buf))
    }

    fn parse_checked(buf: &'a [u8]) -> Result<Self, Error> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLong);
        }
        let mut r = Reader { buf: &buf[2..] };
        let n = r.count(MIN_RECORD_LEN)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let start = r.buf;
            let (name, uid, version) = r.skip_record()?;
            let used = start.len() - r.buf.len();
            records.push(RecordView {
                name,
                uid,
                version,
                bytes: &start[..used],
            });
        }
        if !r.buf.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(Self { records })
    }

    /// Returns the records in message order.
    pub fn records(&self) -> &[RecordView<'a>] {
        &self.records
    }
}

impl<'a> RecordView<'a> {
    /// Returns the record's encoding (as inside an Update).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Decodes the record.
    pub fn decode(&self) -> PeerInfo {
        let mut r = Reader { buf: self.bytes };
        // The bytes passed the same checks when the view was parsed.
        r.record().unwrap_or_else(|_| {
            PeerInfo::new(self.name, self.uid, self.version, String::new(), Vec::new())
        })
    }
}

/// Appends the encoding of one record as an Update carries it.
pub fn encode_record_to(rec: &PeerInfo, out: &mut Vec<u8>) {
    encode_record(rec, out);
}

/// Appends a heartbeat.
pub fn encode_heartbeat(count: u32, digest: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, kind::HEARTBEAT]);
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&digest.to_be_bytes());
}

/// Appends a bucket digest.
pub fn encode_bucket_digest(full: bool, buckets: &[u64; BUCKETS], out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, kind::BUCKET_DIGEST, u8::from(full), BUCKETS as u8]);
    for b in buckets {
        out.extend_from_slice(&b.to_be_bytes());
    }
}

/// Appends a summary.
pub fn encode_summary(complete: u64, entries: &[Entry], out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, kind::SUMMARY]);
    out.extend_from_slice(&complete.to_be_bytes());
    out.extend_from_slice(&count_u16(entries.len()).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.name.bytes());
        out.extend_from_slice(&e.uid.0.to_be_bytes());
        out.extend_from_slice(&e.version.to_be_bytes());
    }
}

/// Appends a request.
pub fn encode_request(names: &[PeerName], out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, kind::REQUEST]);
    out.extend_from_slice(&count_u16(names.len()).to_be_bytes());
    for n in names {
        out.extend_from_slice(&n.bytes());
    }
}

/// Appends an update carrying `records`.
pub fn encode_update<'a>(records: impl ExactSizeIterator<Item = &'a PeerInfo>, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, kind::UPDATE]);
    out.extend_from_slice(&count_u16(records.len()).to_be_bytes());
    for rec in records {
        out.extend_from_slice(rec.encoding());
    }
}

/// Returns the encoded length of one record inside an update.
pub fn record_len(rec: &PeerInfo) -> usize {
    let conns: usize = rec
        .connections
        .iter()
        .map(|c| 6 + 1 + if c.addr.is_ipv4() { 4 } else { 16 } + 2)
        .sum();
    6 + 8 + 8 + 1 + rec.nickname.len().min(MAX_NICKNAME_LEN) + 2 + conns
}

/// The fixed part of a message before its list: version, type, count.
pub const LIST_HEADER_LEN: usize = 4;
/// The fixed part of a summary: version, type, complete mask, count.
pub const SUMMARY_HEADER_LEN: usize = 12;

const MIN_RECORD_LEN: usize = 6 + 8 + 8 + 1 + 2;

fn count_u16(n: usize) -> u16 {
    // Encoders are fed at most MAX_ENTRIES (< 65536) items; saturate rather than wrap if not.
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn encode_record(rec: &PeerInfo, out: &mut Vec<u8>) {
    out.extend_from_slice(&rec.name.bytes());
    out.extend_from_slice(&rec.uid.0.to_be_bytes());
    out.extend_from_slice(&rec.version.to_be_bytes());
    let nick = truncate_utf8(&rec.nickname, MAX_NICKNAME_LEN);
    out.push(nick.len() as u8);
    out.extend_from_slice(nick.as_bytes());
    out.extend_from_slice(&count_u16(rec.connections.len()).to_be_bytes());
    for c in &rec.connections {
        out.extend_from_slice(&c.remote.bytes());
        let mut flags = 0;
        if c.outbound {
            flags |= conn_flags::OUTBOUND;
        }
        if c.established {
            flags |= conn_flags::ESTABLISHED;
        }
        match c.addr.ip() {
            IpAddr::V4(ip) => {
                out.push(flags);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(flags | conn_flags::IPV6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&c.addr.port().to_be_bytes());
    }
}

/// Returns the longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
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

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn name(&mut self) -> Result<PeerName, Error> {
        let n = PeerName::from_bytes(self.array()?);
        if n.is_zero() {
            return Err(Error::ZeroName);
        }
        Ok(n)
    }

    fn uid(&mut self) -> Result<PeerUid, Error> {
        match self.u64()? {
            0 => Err(Error::ZeroUid),
            u => Ok(PeerUid(u)),
        }
    }

    /// Reads a u16 count of items at least `min_item` bytes each, checked against the bound
    /// and against the bytes left, so a hostile count cannot make us reserve memory.
    fn count(&mut self, min_item: usize) -> Result<usize, Error> {
        let n = usize::from(self.u16()?);
        if n > MAX_ENTRIES {
            return Err(Error::TooMany);
        }
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(Error::Truncated);
        }
        Ok(n)
    }

    /// Checks one record as [`Reader::record`] does, without allocating.
    fn skip_record(&mut self) -> Result<(PeerName, PeerUid, u64), Error> {
        let name = self.name()?;
        let uid = self.uid()?;
        let version = self.u64()?;
        let nick_len = usize::from(self.u8()?);
        std::str::from_utf8(self.take(nick_len)?).map_err(|_| Error::BadNickname)?;
        let n = usize::from(self.u16()?);
        if n > MAX_CONNECTIONS {
            return Err(Error::TooMany);
        }
        if n.saturating_mul(6 + 1 + 4 + 2) > self.buf.len() {
            return Err(Error::Truncated);
        }
        let mut prev: Option<PeerName> = None;
        for _ in 0..n {
            let remote = self.name()?;
            if remote == name {
                return Err(Error::SelfConnection);
            }
            if prev.is_some_and(|p| p >= remote) {
                return Err(Error::NotCanonical);
            }
            prev = Some(remote);
            let flags = self.u8()?;
            if flags & conn_flags::RESERVED != 0 {
                return Err(Error::BadFlags);
            }
            self.take(if flags & conn_flags::IPV6 != 0 { 16 } else { 4 })?;
            self.u16()?;
        }
        Ok((name, uid, version))
    }

    fn record(&mut self) -> Result<PeerInfo, Error> {
        let name = self.name()?;
        let uid = self.uid()?;
        let version = self.u64()?;
        let nick_len = usize::from(self.u8()?);
        let nickname = std::str::from_utf8(self.take(nick_len)?)
            .map_err(|_| Error::BadNickname)?
            .to_owned();
        let n = usize::from(self.u16()?);
        if n > MAX_CONNECTIONS {
            return Err(Error::TooMany);
        }
        if n.saturating_mul(6 + 1 + 4 + 2) > self.buf.len() {
            return Err(Error::Truncated);
        }
        let mut connections: Vec<ConnectionSummary> = Vec::with_capacity(n);
        for _ in 0..n {
            let remote = self.name()?;
            if remote == name {
                return Err(Error::SelfConnection);
            }
            if connections.last().is_some_and(|prev| prev.remote >= remote) {
                return Err(Error::NotCanonical);
            }
            let flags = self.u8()?;
            if flags & conn_flags::RESERVED != 0 {
                return Err(Error::BadFlags);
            }
            let ip = if flags & conn_flags::IPV6 != 0 {
                IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))
            } else {
                IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))
            };
            let port = self.u16()?;
            connections.push(ConnectionSummary {
                remote,
                addr: SocketAddr::new(ip, port),
                outbound: flags & conn_flags::OUTBOUND != 0,
                established: flags & conn_flags::ESTABLISHED != 0,
            });
        }
        Ok(PeerInfo::new(name, uid, version, nickname, connections))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(b: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, b])
    }

    #[test]
    fn heartbeat_bytes_are_exact() {
        let mut out = Vec::new();
        encode_heartbeat(3, 0x0102_0304_0506_0708, &mut out);
        assert_eq!(out, [1, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            Message::decode(&out),
            Ok(Message::Heartbeat {
                count: 3,
                digest: 0x0102_0304_0506_0708
            })
        );
    }

    #[test]
    fn update_bytes_are_exact() {
        let rec = PeerInfo::new(
            name(1),
            PeerUid(2),
            3,
            "h1".into(),
            vec![ConnectionSummary {
                remote: name(2),
                addr: "192.0.2.7:6783".parse().unwrap(),
                outbound: true,
                established: true,
            }],
        );
        let msg = Message::Update {
            records: vec![Arc::new(rec.clone())],
        };
        let mut out = Vec::new();
        msg.encode(&mut out);
        #[rustfmt::skip]
        let expect = [
            1, 5, 0, 1,
            0, 0, 0, 0, 0, 1,  0, 0, 0, 0, 0, 0, 0, 2,  0, 0, 0, 0, 0, 0, 0, 3,
            2, b'h', b'1',
            0, 1,
            0, 0, 0, 0, 0, 2,  0x03,  192, 0, 2, 7,  0x1a, 0x7f,
        ];
        assert_eq!(out, expect);
        assert_eq!(record_len(&rec) + LIST_HEADER_LEN, out.len());
        assert_eq!(Message::decode(&out), Ok(msg));
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(Message::decode(&[]), Err(Error::Truncated));
        assert_eq!(Message::decode(&[2, 1]), Err(Error::UnknownVersion));
        assert_eq!(Message::decode(&[1, 9]), Err(Error::UnknownType));
        assert_eq!(Message::decode(&[1, 4, 0xff, 0xff]), Err(Error::TooMany));
        assert_eq!(
            Message::decode(&[1, 4, 0, 2, 0, 0, 0, 0, 0, 1]),
            Err(Error::Truncated)
        );
        assert_eq!(
            Message::decode(&[1, 4, 0, 1, 0, 0, 0, 0, 0, 0]),
            Err(Error::ZeroName)
        );
        assert_eq!(Message::decode(&[1, 4, 0, 0, 9]), Err(Error::TrailingBytes));
        let mut hb = Vec::new();
        encode_heartbeat(1, 1, &mut hb);
        assert_eq!(Message::decode(&hb[..hb.len() - 1]), Err(Error::Truncated));
        assert_eq!(
            Message::decode(&vec![1; MAX_MESSAGE_LEN + 1]),
            Err(Error::TooLong)
        );
    }

    #[test]
    fn rejects_unsorted_connections() {
        let conn = |b| ConnectionSummary {
            remote: name(b),
            addr: "[2001:db8::1]:1".parse().unwrap(),
            outbound: false,
            established: true,
        };
        let rec = PeerInfo::new(
            name(1),
            PeerUid(1),
            1,
            String::new(),
            vec![conn(3), conn(2)],
        );
        let mut out = Vec::new();
        encode_update([&rec].into_iter(), &mut out);
        assert_eq!(Message::decode(&out), Err(Error::NotCanonical));
    }
}
