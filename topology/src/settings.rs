//! Mesh-wide settings: the encryption on/off record, how records merge, how they travel on the
//! control channel, and the per-peer decision whether to seal.
//!
//! The mesh holds one [`EncryptionRecord`] `{enabled, version, origin, proof}`. Every router
//! starts from its `--encryption` flag at version 0; `weft encryption enable|disable` makes the
//! next version on the router it ran on. Records merge by [`EncryptionRecord::beats`]: the
//! higher version wins, then (at version 0 only) "on" wins, then the higher origin uid, so
//! every router that has seen the same records holds the same one, whatever the order. A node
//! that joins a mesh which turned encryption on at run time learns the newer record from its
//! first connection and seals from then on.
//!
//! Records travel on control channel `0x04` (`docs/PROTOCOL.md`, "Mesh settings"): each side
//! sends its record when a connection comes up; a router that adopts a newer record floods it
//! to every other connection; one that receives an older record answers with its own. Since a
//! router only forwards what it adopts and adoption strictly raises the record, floods end.
//!
//! Where a mesh password is set, every record carries a proof: an HMAC over
//! [`EncryptionRecord::proof_message`] keyed from the password (`crypto::settings`). This module
//! never sees the key: the shell passes a verifier to [`Settings::handle_message`], and a
//! record that fails it is dropped unapplied.
//!
//! Sans-IO: no clock is needed, effects are queued messages ([`Settings::poll_transmit`]).

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::channel::Channel;
use crate::peer::{ConnId, PeerUid};

/// Length of a record's proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// The record layout's version byte.
pub const RECORD_VERSION: u8 = 1;
/// A record without proof, channel byte included.
pub const RECORD_LEN: usize = 1 + 1 + 1 + 8 + 8;
/// A record with proof, channel byte included.
pub const RECORD_WITH_PROOF_LEN: usize = RECORD_LEN + PROOF_LEN;
/// The prefix of the bytes a proof covers.
pub const PROOF_LABEL: &[u8] = b"weft/1 encryption setting";

const FLAG_ENABLED: u8 = 0b0000_0001;
const FLAG_PROOF: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_ENABLED | FLAG_PROOF;

/// The mesh-wide encryption setting as one router holds it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EncryptionRecord {
    /// Whether traffic between peers is sealed (outside trusted subnets).
    pub enabled: bool,
    /// 0 for a router's startup flag; each run-time change adds one.
    pub version: u64,
    /// The uid of the router that made this version.
    pub origin: PeerUid,
    /// The mesh-password proof over [`Self::proof_message`], where a password is set.
    pub proof: Option<[u8; PROOF_LEN]>,
}

impl fmt::Debug for EncryptionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionRecord")
            .field("enabled", &self.enabled)
            .field("version", &self.version)
            .field("origin", &self.origin)
            .field("proof", &self.proof.map(|_| "<present>"))
            .finish()
    }
}

/// Why a settings message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The message's length is neither of the two valid ones.
    #[error("settings record has a bad length")]
    BadLength,
    /// The message is not on the settings channel.
    #[error("not a settings message")]
    WrongChannel,
    /// The layout version is not one we speak.
    #[error("unknown settings record version")]
    BadVersion,
    /// A flag bit we do not know is set, or the proof flag disagrees with the length.
    #[error("bad settings record flags")]
    BadFlags,
    /// The origin uid was zero.
    #[error("zero origin uid")]
    ZeroOrigin,
    /// The proof did not verify (or was missing where a password is set).
    #[error("settings record proof does not verify")]
    BadProof,
}

impl EncryptionRecord {
    /// A router's startup record: version 0, from its `--encryption` flag.
    pub fn initial(enabled: bool, origin: PeerUid) -> Self {
        Self {
            enabled,
            version: 0,
            origin,
            proof: None,
        }
    }

    /// Returns whether this record replaces `other` in a merge: the higher version wins; at
    /// version 0 (routers started with different flags) "on" wins; then the higher origin uid;
    /// then "on". A total order, so every router that saw the same records holds the same one.
    pub fn beats(&self, other: &Self) -> bool {
        self.order_key() > other.order_key()
    }

    fn order_key(&self) -> (u64, bool, u64, bool) {
        (
            self.version,
            self.version == 0 && self.enabled,
            self.origin.0,
            self.enabled,
        )
    }

    /// The bytes a proof covers: [`PROOF_LABEL`], the flags byte with only the enabled bit,
    /// the version and the origin uid (both big-endian).
    pub fn proof_message(&self) -> [u8; PROOF_LABEL.len() + 17] {
        let mut out = [0u8; PROOF_LABEL.len() + 17];
        let (label, rest) = out.split_at_mut(PROOF_LABEL.len());
        label.copy_from_slice(PROOF_LABEL);
        rest[0] = u8::from(self.enabled);
        rest[1..9].copy_from_slice(&self.version.to_be_bytes());
        rest[9..17].copy_from_slice(&self.origin.0.to_be_bytes());
        out
    }

    /// Encodes the record as a complete control message (channel byte included).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_WITH_PROOF_LEN);
        out.push(Channel::Settings.to_byte());
        out.push(RECORD_VERSION);
        let mut flags = 0;
        if self.enabled {
            flags |= FLAG_ENABLED;
        }
        if self.proof.is_some() {
            flags |= FLAG_PROOF;
        }
        out.push(flags);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.origin.0.to_be_bytes());
        if let Some(proof) = &self.proof {
            out.extend_from_slice(proof);
        }
        out
    }

    /// Decodes a record body (the message after its channel byte). Strict: exactly one of the
    /// two lengths, known layout version, no unknown flag, the proof flag matching the length,
    /// a nonzero origin.
    ///
    /// # Errors
    /// Any [`Error`] but [`Error::BadProof`] and [`Error::WrongChannel`].
    pub fn decode(body: &[u8]) -> Result<Self, Error> {
        let with_proof = match body.len() {
            n if n == RECORD_LEN - 1 => false,
            n if n == RECORD_WITH_PROOF_LEN - 1 => true,
            _ => return Err(Error::BadLength),
        };
        let (&version_byte, rest) = body.split_first().ok_or(Error::BadLength)?;
        if version_byte != RECORD_VERSION {
            return Err(Error::BadVersion);
        }
        let (&flags, rest) = rest.split_first().ok_or(Error::BadLength)?;
        if flags & !KNOWN_FLAGS != 0 || (flags & FLAG_PROOF != 0) != with_proof {
            return Err(Error::BadFlags);
        }
        let (version, rest) = rest.split_first_chunk::<8>().ok_or(Error::BadLength)?;
        let (origin, rest) = rest.split_first_chunk::<8>().ok_or(Error::BadLength)?;
        let origin = u64::from_be_bytes(*origin);
        if origin == 0 {
            return Err(Error::ZeroOrigin);
        }
        let proof = if with_proof {
            let proof: &[u8; PROOF_LEN] = rest.try_into().map_err(|_| Error::BadLength)?;
            Some(*proof)
        } else {
            None
        };
        Ok(Self {
            enabled: flags & FLAG_ENABLED != 0,
            version: u64::from_be_bytes(*version),
            origin: PeerUid(origin),
            proof,
        })
    }

    /// Decodes a complete control message (channel byte included).
    ///
    /// # Errors
    /// [`Error::WrongChannel`] or any error of [`Self::decode`].
    pub fn decode_message(msg: &[u8]) -> Result<Self, Error> {
        match msg.split_first() {
            Some((&b, body)) if b == Channel::Settings.to_byte() => Self::decode(body),
            Some(_) => Err(Error::WrongChannel),
            None => Err(Error::BadLength),
        }
    }
}

/// Where a queued settings message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// One connection.
    Conn(ConnId),
    /// Every connection but the one named (the one the record came from), if any.
    AllExcept(Option<ConnId>),
}

/// What [`Settings::handle_message`] did with a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The record was newer: adopted and flooded on.
    Adopted,
    /// The record is the one held already.
    Known,
    /// The record was older: the sender is sent ours.
    Stale,
}

/// Why a local change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The record is not the next version of the one held (someone else changed the setting
    /// meanwhile).
    #[error("the mesh setting is at version {current}; the change must be version {}", current + 1)]
    NotNext {
        /// The version held.
        current: u64,
    },
}

/// One router's view of the mesh-wide settings, and the messages it owes its connections.
#[derive(Debug)]
pub struct Settings {
    record: EncryptionRecord,
    local: PeerUid,
    outbox: VecDeque<(Destination, Vec<u8>)>,
    changes: u64,
}

impl Settings {
    /// Starts from this router's startup record ([`EncryptionRecord::initial`], proved by the
    /// shell where a password is set).
    pub fn new(local: PeerUid, initial: EncryptionRecord) -> Self {
        Self {
            record: initial,
            local,
            outbox: VecDeque::new(),
            changes: 0,
        }
    }

    /// The record held now.
    pub fn record(&self) -> &EncryptionRecord {
        &self.record
    }

    /// Whether mesh encryption is on.
    pub fn enabled(&self) -> bool {
        self.record.enabled
    }

    /// How many times the held record changed since start.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The record a local change to `enabled` would make (the shell proves it, then passes it
    /// to [`Self::propose`]).
    pub fn next(&self, enabled: bool) -> EncryptionRecord {
        EncryptionRecord {
            enabled,
            version: self.record.version.saturating_add(1),
            origin: self.local,
            proof: None,
        }
    }

    /// A connection came up: it is sent our record.
    pub fn handle_connection_up(&mut self, conn: ConnId) {
        self.outbox
            .push_back((Destination::Conn(conn), self.record.encode()));
    }

    /// Handles a settings message body from `conn`. `verify` checks the record's proof (it
    /// returns true for any record where no password is set); a record it refuses is dropped.
    ///
    /// # Errors
    /// A decoding [`Error`] or [`Error::BadProof`]; the state is then unchanged.
    pub fn handle_message(
        &mut self,
        conn: ConnId,
        body: &[u8],
        verify: impl FnOnce(&EncryptionRecord) -> bool,
    ) -> Result<Outcome, Error> {
        let record = EncryptionRecord::decode(body)?;
        if !verify(&record) {
            return Err(Error::BadProof);
        }
        if record.beats(&self.record) {
            self.adopt(record, Some(conn));
            Ok(Outcome::Adopted)
        } else if self.record.beats(&record) {
            self.outbox
                .push_back((Destination::Conn(conn), self.record.encode()));
            Ok(Outcome::Stale)
        } else {
            Ok(Outcome::Known)
        }
    }

    /// Makes a local change: `record` must be [`Self::next`]'s (proved where needed).
    ///
    /// # Errors
    /// [`ProposeError::NotNext`] when the version is not one more than the held one.
    pub fn propose(&mut self, record: EncryptionRecord) -> Result<(), ProposeError> {
        if record.version != self.record.version.saturating_add(1) {
            return Err(ProposeError::NotNext {
                current: self.record.version,
            });
        }
        self.adopt(record, None);
        Ok(())
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<(Destination, Vec<u8>)> {
        self.outbox.pop_front()
    }

    fn adopt(&mut self, record: EncryptionRecord, from: Option<ConnId>) {
        self.record = record;
        self.changes += 1;
        // Older floods still queued are superseded.
        self.outbox
            .retain(|(d, _)| !matches!(d, Destination::AllExcept(_)));
        self.outbox
            .push_back((Destination::AllExcept(from), record.encode()));
    }
}

/// Why traffic to a peer is sealed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReason {
    /// Mesh encryption is on.
    MeshOn,
    /// Mesh encryption is off.
    MeshOff,
    /// Both underlay addresses are inside trusted subnets (the one holding the peer's given).
    TrustedSubnet(IpNet),
}

impl fmt::Display for SealReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MeshOn => f.write_str("mesh encryption on"),
            Self::MeshOff => f.write_str("mesh encryption off"),
            Self::TrustedSubnet(net) => write!(f, "trusted subnet {net}"),
        }
    }
}

/// Whether to seal traffic to one peer, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealDecision {
    /// Seal (encrypt) the traffic.
    pub seal: bool,
    /// Why.
    pub reason: SealReason,
}

/// Decides whether traffic between `local` and `remote` (underlay addresses) is sealed: when
/// mesh encryption is on, unless both addresses fall inside `trusted` subnets. This is the one
/// per-peer "must seal" rule every data path follows (sleeve and fastdp alike).
pub fn seal_decision(
    enabled: bool,
    trusted: &[IpNet],
    local: IpAddr,
    remote: IpAddr,
) -> SealDecision {
    if !enabled {
        return SealDecision {
            seal: false,
            reason: SealReason::MeshOff,
        };
    }
    let local = local.to_canonical();
    let remote = remote.to_canonical();
    let local_trusted = trusted.iter().any(|n| n.contains(&local));
    match trusted.iter().find(|n| n.contains(&remote)) {
        Some(net) if local_trusted => SealDecision {
            seal: false,
            reason: SealReason::TrustedSubnet(*net),
        },
        _ => SealDecision {
            seal: true,
            reason: SealReason::MeshOn,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn rec(enabled: bool, version: u64, origin: u64) -> EncryptionRecord {
        EncryptionRecord {
            enabled,
            version,
            origin: PeerUid(origin),
            proof: None,
        }
    }

    #[test]
    fn record_bytes_are_as_documented() {
        let r = rec(true, 0x0102_0304_0506_0708, 0x1112_1314_1516_1718);
        assert_eq!(
            r.encode(),
            [
                0x04, 0x01, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
                0x18
            ]
        );
        let mut proved = rec(false, 2, 9);
        proved.proof = Some([0xaa; PROOF_LEN]);
        let bytes = proved.encode();
        assert_eq!(bytes.len(), RECORD_WITH_PROOF_LEN);
        assert_eq!(bytes[2], 0x02);
        assert_eq!(EncryptionRecord::decode_message(&bytes).unwrap(), proved);
        let m = proved.proof_message();
        assert_eq!(&m[..PROOF_LABEL.len()], PROOF_LABEL);
        assert_eq!(m[PROOF_LABEL.len()], 0);
        assert_eq!(m.len(), PROOF_LABEL.len() + 17);
    }

    #[test]
    fn bad_records_are_rejected() {
        let good = rec(true, 1, 1).encode();
        let body = &good[1..];
        assert_eq!(EncryptionRecord::decode(&[]), Err(Error::BadLength));
        assert_eq!(
            EncryptionRecord::decode(&body[..body.len() - 1]),
            Err(Error::BadLength)
        );
        let mut long = body.to_vec();
        long.push(0);
        assert_eq!(EncryptionRecord::decode(&long), Err(Error::BadLength));
        let mut v = body.to_vec();
        v[0] = 2;
        assert_eq!(EncryptionRecord::decode(&v), Err(Error::BadVersion));
        let mut f = body.to_vec();
        f[1] = 0x81;
        assert_eq!(EncryptionRecord::decode(&f), Err(Error::BadFlags));
        let mut p = body.to_vec();
        p[1] = FLAG_PROOF;
        assert_eq!(EncryptionRecord::decode(&p), Err(Error::BadFlags));
        let zero = rec(true, 1, 0).encode();
        assert_eq!(EncryptionRecord::decode(&zero[1..]), Err(Error::ZeroOrigin));
        assert_eq!(
            EncryptionRecord::decode_message(&[0x02, 1]),
            Err(Error::WrongChannel)
        );
    }

    #[test]
    fn merge_order() {
        // Higher version wins whatever the state.
        assert!(rec(false, 2, 1).beats(&rec(true, 1, 9)));
        // At version 0, on wins.
        assert!(rec(true, 0, 1).beats(&rec(false, 0, 9)));
        // Above 0, the origin decides.
        assert!(rec(false, 3, 9).beats(&rec(true, 3, 1)));
        assert!(!rec(true, 3, 1).beats(&rec(true, 3, 1)));
    }

    fn drain(s: &mut Settings) -> Vec<(Destination, Vec<u8>)> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    #[test]
    fn adopt_flood_and_answer_stale() {
        let mut s = Settings::new(PeerUid(5), rec(false, 0, 5));
        s.handle_connection_up(ConnId(1));
        assert_eq!(
            drain(&mut s),
            vec![(Destination::Conn(ConnId(1)), rec(false, 0, 5).encode())]
        );
        let newer = rec(true, 1, 7).encode();
        assert_eq!(
            s.handle_message(ConnId(1), &newer[1..], |_| true),
            Ok(Outcome::Adopted)
        );
        assert!(s.enabled());
        assert_eq!(
            drain(&mut s),
            vec![(Destination::AllExcept(Some(ConnId(1))), newer.clone())]
        );
        assert_eq!(
            s.handle_message(ConnId(2), &newer[1..], |_| true),
            Ok(Outcome::Known)
        );
        assert!(drain(&mut s).is_empty());
        let older = rec(false, 0, 9).encode();
        assert_eq!(
            s.handle_message(ConnId(3), &older[1..], |_| true),
            Ok(Outcome::Stale)
        );
        assert_eq!(drain(&mut s), vec![(Destination::Conn(ConnId(3)), newer)]);
    }

    #[test]
    fn unproved_records_change_nothing() {
        let mut s = Settings::new(PeerUid(5), rec(true, 4, 5));
        let off = rec(false, 9, 7).encode();
        assert_eq!(
            s.handle_message(ConnId(1), &off[1..], |_| false),
            Err(Error::BadProof)
        );
        assert!(s.enabled());
        assert_eq!(s.record().version, 4);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn propose_needs_the_next_version() {
        let mut s = Settings::new(PeerUid(5), rec(false, 0, 5));
        let next = s.next(true);
        assert_eq!((next.version, next.origin), (1, PeerUid(5)));
        assert_eq!(
            s.propose(rec(true, 3, 5)),
            Err(ProposeError::NotNext { current: 0 })
        );
        s.propose(next).unwrap();
        assert!(s.enabled());
        assert_eq!(
            drain(&mut s),
            vec![(Destination::AllExcept(None), next.encode())]
        );
        assert_eq!(s.changes(), 1);
    }

    #[test]
    fn trusted_subnets() {
        let trusted: Vec<IpNet> = vec!["192.0.2.0/24".parse().unwrap()];
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "198.51.100.1".parse().unwrap();
        let d = seal_decision(true, &trusted, a, b);
        assert!(!d.seal);
        assert_eq!(d.reason.to_string(), "trusted subnet 192.0.2.0/24");
        assert!(seal_decision(true, &trusted, a, c).seal);
        assert!(seal_decision(true, &trusted, c, a).seal);
        assert_eq!(
            seal_decision(false, &trusted, a, c),
            SealDecision {
                seal: false,
                reason: SealReason::MeshOff
            }
        );
        assert_eq!(seal_decision(true, &[], a, b).reason, SealReason::MeshOn);
        // IPv4-mapped IPv6 addresses count as their IPv4 address.
        let mapped: IpAddr = "::ffff:192.0.2.3".parse().unwrap();
        assert!(!seal_decision(true, &trusted, mapped, b).seal);
    }

    /// Routers on a line (0–1–…–n-1, connection i joins i and i+1) pass messages until
    /// quiet; returns how many were delivered.
    fn run_line(nodes: &mut [Settings]) -> usize {
        let n = nodes.len();
        // Connection ids: on node i, ConnId(i - 1) leads left, ConnId(i) leads right.
        let mut delivered = 0;
        for _ in 0..1000 {
            let mut queue = Vec::new();
            for (i, node) in nodes.iter_mut().enumerate() {
                while let Some((dest, msg)) = node.poll_transmit() {
                    let left = (i > 0).then(|| (ConnId(i as u64 - 1), i - 1));
                    let right = (i + 1 < n).then(|| (ConnId(i as u64), i + 1));
                    for (conn, to) in [left, right].into_iter().flatten() {
                        let send = match dest {
                            Destination::Conn(c) => c == conn,
                            Destination::AllExcept(except) => except != Some(conn),
                        };
                        if send {
                            queue.push((to, conn, msg.clone()));
                        }
                    }
                }
            }
            if queue.is_empty() {
                return delivered;
            }
            for (to, conn, msg) in queue {
                delivered += 1;
                nodes[to].handle_message(conn, &msg[1..], |_| true).unwrap();
            }
        }
        panic!("settings messages never stopped");
    }

    #[test]
    fn a_change_floods_along_a_line_and_stops() {
        let mut nodes: Vec<Settings> = (1..=6)
            .map(|u| Settings::new(PeerUid(u), rec(false, 0, u)))
            .collect();
        for i in 0..nodes.len() {
            if i > 0 {
                nodes[i].handle_connection_up(ConnId(i as u64 - 1));
            }
            if i + 1 < nodes.len() {
                nodes[i].handle_connection_up(ConnId(i as u64));
            }
        }
        run_line(&mut nodes);
        let first = *nodes[0].record();
        assert!(nodes.iter().all(|s| *s.record() == first));
        // A change at one end reaches the other end; each link carries it about once.
        let next = nodes[5].next(true);
        nodes[5].propose(next).unwrap();
        let delivered = run_line(&mut nodes);
        assert!(nodes.iter().all(|s| s.enabled() && s.record().version == 1));
        assert!(delivered <= 2 * 5, "{delivered} messages for 5 links");
        // A node that restarts with its flag (version 0) is brought up to date.
        nodes[2] = Settings::new(PeerUid(99), rec(false, 0, 99));
        nodes[2].handle_connection_up(ConnId(1));
        nodes[2].handle_connection_up(ConnId(2));
        run_line(&mut nodes);
        assert!(nodes[2].enabled());
        assert_eq!(nodes[2].record().version, 1);
    }

    fn arb_record() -> impl Strategy<Value = EncryptionRecord> {
        (
            any::<bool>(),
            0u64..4,
            1u64..4,
            proptest::option::of(any::<[u8; PROOF_LEN]>()),
        )
            .prop_map(|(enabled, version, origin, proof)| EncryptionRecord {
                enabled,
                version,
                origin: PeerUid(origin),
                proof,
            })
    }

    proptest! {
        #[test]
        fn round_trips(r in arb_record(), version: u64, origin in 1u64..) {
            let r = EncryptionRecord { version, origin: PeerUid(origin), ..r };
            prop_assert_eq!(EncryptionRecord::decode_message(&r.encode()).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_reencode_exactly(
            bytes in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            if let Ok(r) = EncryptionRecord::decode(&bytes) {
                prop_assert_eq!(&r.encode()[1..], &bytes[..]);
            }
        }

        /// Routers that receive the same records in any order, each starting from its own,
        /// end up holding the same one: the greatest.
        #[test]
        fn merge_converges_whatever_the_order(
            records in proptest::collection::vec(arb_record(), 1..8),
            seed: u64,
        ) {
            // Proofs are not part of the order; two records equal in order are equal here.
            let records: Vec<EncryptionRecord> =
                records.into_iter().map(|r| EncryptionRecord { proof: None, ..r }).collect();
            let best = records.iter().copied().reduce(|a, b| if b.beats(&a) { b } else { a }).unwrap();
            let mut order = records;
            // A cheap deterministic shuffle.
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut s = Settings::new(PeerUid(1), order[0]);
            for r in &order[1..] {
                let bytes = r.encode();
                s.handle_message(ConnId(1), &bytes[1..], |_| true).unwrap();
            }
            prop_assert_eq!(*s.record(), best);
        }
    }
}
