//! The persistent IPAM state: our name, the range, the ring and our allocations.
//!
//! Binary, versioned, checked like the wire format (docs/IPAM.md, "Snapshot"); the router's
//! store wraps it in a file with a magic and a checksum and replaces the file atomically.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::wire::{self, Reader, RingState};
use super::{AllocKey, MAX_CONTAINER_ID_LEN, MAX_IFNAME_LEN, Range};
use crate::peer::PeerName;

/// The snapshot format version.
pub const SNAPSHOT_VERSION: u8 = 0x01;

/// Everything a restarted router needs to keep its claims.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Snapshot {
    /// The peer the state belongs to.
    pub name: PeerName,
    /// The range.
    pub range: Range,
    /// Our record's sequence number (so a restart's gossip still wins).
    pub seq: u64,
    /// The ring, once there is one.
    pub ring: Option<RingState>,
    /// Our allocations, sorted by offset.
    pub allocations: Vec<(AllocKey, u32)>,
}

/// Why a snapshot could not be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes do not decode (truncated, bad lengths, unsorted, out of range).
    #[error("corrupt IPAM snapshot")]
    Corrupt,
    /// The snapshot belongs to another peer name.
    #[error("IPAM snapshot belongs to another peer name")]
    NameMismatch,
    /// The snapshot is for another range.
    #[error("IPAM snapshot is for another --ipalloc-range")]
    RangeMismatch,
    /// The format version is unknown.
    #[error("unknown IPAM snapshot version")]
    UnknownVersion,
}

impl Snapshot {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&self.name.bytes());
        out.extend_from_slice(&self.range.base().octets());
        out.push(self.range.prefix());
        out.extend_from_slice(&self.seq.to_be_bytes());
        match &self.ring {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                wire::encode_ring(r, out);
            }
        }
        out.extend_from_slice(
            &u32::try_from(self.allocations.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (key, off) in &self.allocations {
            out.extend_from_slice(&off.to_be_bytes());
            let cid = key.container_id.as_bytes();
            out.extend_from_slice(&u16::try_from(cid.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(cid);
            let ifn = key.ifname.as_bytes();
            out.push(u8::try_from(ifn.len()).unwrap_or(0));
            out.extend_from_slice(ifn);
        }
    }

    /// Returns the encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Parses a snapshot.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Corrupt`] or [`SnapshotError::UnknownVersion`].
    pub fn decode(buf: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader { buf };
        let c = |_| SnapshotError::Corrupt;
        if r.u8().map_err(c)? != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion);
        }
        let name = r.name().map_err(c)?;
        let base = Ipv4Addr::from(r.u32().map_err(c)?);
        let range = Range::new(base, r.u8().map_err(c)?).ok_or(SnapshotError::Corrupt)?;
        let seq = r.u64().map_err(c)?;
        let ring = match r.u8().map_err(c)? {
            0 => None,
            1 => Some(r.ring(range.size()).map_err(c)?),
            _ => return Err(SnapshotError::Corrupt),
        };
        let n = usize::try_from(r.u32().map_err(c)?).map_err(|_| SnapshotError::Corrupt)?;
        // Each allocation takes at least 9 bytes: bound the reservation by the input.
        if n.saturating_mul(9) > r.buf.len() {
            return Err(SnapshotError::Corrupt);
        }
        let mut allocations = Vec::with_capacity(n);
        let mut keys = BTreeSet::new();
        let mut last: Option<u32> = None;
        for _ in 0..n {
            let off = r.u32().map_err(c)?;
            if last.is_some_and(|l| l >= off) || off == 0 || off >= range.size() - 1 {
                return Err(SnapshotError::Corrupt);
            }
            last = Some(off);
            let cl = usize::from(r.u16().map_err(c)?);
            let cid = r.take(cl).map_err(c)?;
            let il = usize::from(r.u8().map_err(c)?);
            let ifn = r.take(il).map_err(c)?;
            let (Ok(cid), Ok(ifn)) = (std::str::from_utf8(cid), std::str::from_utf8(ifn)) else {
                return Err(SnapshotError::Corrupt);
            };
            if cid.is_empty()
                || cid.len() > MAX_CONTAINER_ID_LEN
                || ifn.is_empty()
                || ifn.len() > MAX_IFNAME_LEN
            {
                return Err(SnapshotError::Corrupt);
            }
            let key = AllocKey {
                container_id: cid.to_owned(),
                ifname: ifn.to_owned(),
            };
            if !keys.insert(key.clone()) {
                return Err(SnapshotError::Corrupt);
            }
            allocations.push((key, off));
        }
        if !r.buf.is_empty() {
            return Err(SnapshotError::Corrupt);
        }
        Ok(Self {
            name,
            range,
            seq,
            ring,
            allocations,
        })
    }
}
