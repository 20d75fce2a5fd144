//! The engine's vocabulary: the range, its configuration, allocation keys and results, the
//! errors and events it reports.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use crate::peer::PeerName;

use super::{GATEWAY_CONTAINER, GATEWAY_IFNAME, MAX_CONTAINER_ID_LEN, MAX_IFNAME_LEN};

/// An IPv4 CIDR the ring covers. Prefix 8..=30, no host bits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Range {
    base: Ipv4Addr,
    prefix: u8,
}

impl Range {
    /// Makes a range; None if the prefix is outside 8..=30 or host bits are set.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Option<Self> {
        if !(8..=30).contains(&prefix) {
            return None;
        }
        let size = 1u32 << (32 - prefix);
        (u32::from(base) & (size - 1) == 0).then_some(Self { base, prefix })
    }

    /// Returns the network address.
    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    /// Returns the prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Returns the number of addresses.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// Returns the address at `offset`.
    pub fn addr(&self, offset: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(u32::from(self.base).wrapping_add(offset)))
    }

    /// Returns the offset of `addr`, if it lies in the range.
    pub fn offset(&self, addr: IpAddr) -> Option<u32> {
        let IpAddr::V4(v4) = addr else { return None };
        let off = u32::from(v4).wrapping_sub(u32::from(self.base));
        (off < self.size()).then_some(off)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The error for a string that is not an IPv4 CIDR with prefix 8..=30 and no host bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPAM range (expected an IPv4 CIDR like 10.32.0.0/12, prefix 8 to 30)")]
pub struct ParseRangeError;

impl FromStr for Range {
    type Err = ParseRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or(ParseRangeError)?;
        let base: Ipv4Addr = a.parse().map_err(|_| ParseRangeError)?;
        let prefix: u8 = p.parse().map_err(|_| ParseRangeError)?;
        Self::new(base, prefix).ok_or(ParseRangeError)
    }
}

/// How the ring comes into being when no peer has one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Init {
    /// Paxos among ring-less peers; the ring is created once `quorum` agree on the seeds.
    /// With quorum 1 a lone peer seeds at its first allocation and owns everything.
    Consensus {
        /// Agreeing peers needed.
        quorum: usize,
    },
    /// Never votes, never seeds; waits to hear a ring.
    Observer,
    /// The ring is these peers' (sorted, deduplicated), split evenly, made at once by anyone.
    Seed(Vec<PeerName>),
}

impl Init {
    /// Returns weave's default: consensus with quorum `(targets + 1) / 2 + 1`, `targets` being
    /// the number of `--peers` given.
    pub fn default_for_targets(targets: usize) -> Self {
        Self::Consensus {
            quorum: targets.div_ceil(2) + 1,
        }
    }
}

/// Engine settings. [`Config::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our name.
    pub name: PeerName,
    /// The whole allocation range (default 10.32.0.0/12).
    pub range: Range,
    /// How the ring is created.
    pub init: Init,
    /// Owners gone from the topology this long are reclaimed once the live owners agree;
    /// None disables auto-reclaim (default 10 min).
    pub reclaim_after: Option<Duration>,
    /// Period of the full-state broadcast (default 30 s).
    pub gossip_interval: Duration,
    /// How long a space request waits before trying another donor (default 2 s).
    pub request_timeout: Duration,
    /// Base delay between consensus proposals (default 5 s, plus up to 50 % jitter).
    pub propose_interval: Duration,
}

impl Config {
    /// Returns the defaults for `name`: range 10.32.0.0/12, consensus with quorum 1.
    pub fn new(name: PeerName) -> Self {
        Self {
            name,
            range: Range {
                base: Ipv4Addr::new(10, 32, 0, 0),
                prefix: 12,
            },
            init: Init::Consensus { quorum: 1 },
            reclaim_after: Some(Duration::from_secs(600)),
            gossip_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(2),
            propose_interval: Duration::from_secs(5),
        }
    }
}

/// Where a message goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Destination {
    /// Every directly connected peer. Receivers re-broadcast what was new to them.
    Broadcast,
    /// One peer (routed by the shell); losing it is harmless, requests are retried.
    Peer(PeerName),
}

/// The key of an allocation: a container and one of its interfaces.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct AllocKey {
    /// The container (CNI `CNI_CONTAINERID`).
    pub container_id: String,
    /// The interface in the container (CNI `CNI_IFNAME`).
    pub ifname: String,
}

impl AllocKey {
    /// Makes a key, checking lengths.
    ///
    /// # Errors
    ///
    /// [`AllocError::BadKey`] when a part is empty or too long.
    pub fn new(container_id: &str, ifname: &str) -> Result<Self, AllocError> {
        if container_id.is_empty()
            || container_id.len() > MAX_CONTAINER_ID_LEN
            || ifname.is_empty()
            || ifname.len() > MAX_IFNAME_LEN
        {
            return Err(AllocError::BadKey);
        }
        Ok(Self {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    }

    pub(super) fn gateway() -> Self {
        Self {
            container_id: GATEWAY_CONTAINER.to_owned(),
            ifname: GATEWAY_IFNAME.to_owned(),
        }
    }
}

/// An allocated address with the prefix length of the range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Address {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length pods use (the range's).
    pub prefix_len: u8,
}

/// The answer to [`Ipam::allocate`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Allocation {
    /// Allocated (or already allocated to this key).
    Allocated(Address),
    /// Waiting; [`Event::Allocated`] follows, or the caller retries, or gives up and calls
    /// [`Ipam::release`] so nothing stays pending.
    Pending(Waiting),
}

/// What a pending allocation waits for; also the status line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Waiting {
    /// No ring yet: seeding consensus needs more peers.
    Consensus,
    /// This peer is cut off from a majority of owners and could be reclaimed; it does not
    /// allocate until it sees them again.
    Fenced,
    /// An observer waits to hear a ring.
    Ring,
    /// Space was requested from another peer.
    Space,
    /// Every other owner is unreachable or has no free space.
    Unreachable,
}

impl Waiting {
    /// Returns a short description for status and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consensus => "awaiting consensus",
            Self::Fenced => "cut off from a majority of IP range owners: not allocating",
            Self::Ring => "waiting to hear the IP ring from peers (observer)",
            Self::Space => "waiting for IP space from peers",
            Self::Unreachable => {
                "all free IP ranges owned by unreachable peers - use 'weft rmpeer' if they are dead"
            }
        }
    }
}

/// Why an allocation or claim was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AllocError {
    /// The container ID or interface name is empty or too long.
    #[error("container ID or interface name empty or too long")]
    BadKey,
    /// The claimed address is held by another container.
    #[error("address already allocated to another container")]
    Taken,
    /// The claimed address is not in the range.
    #[error("address outside the IPAM range")]
    OutOfRange,
    /// The claimed address belongs to another peer.
    #[error("address owned by another peer")]
    NotOwned,
    /// The claimed address is the network or broadcast address.
    #[error("network or broadcast address")]
    Reserved,
}

/// Why `rmpeer` was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RmPeerError {
    /// The peer is in the topology; taking a live peer's space could give an address twice.
    #[error("peer is alive (still in the topology)")]
    Alive,
    /// No ring yet.
    #[error("no IP ring yet")]
    NoRing,
    /// A peer cannot remove itself.
    #[error("cannot remove this router itself")]
    Ourselves,
}

/// What the shell may want to act on.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A pending allocation completed.
    Allocated {
        /// The key.
        key: AllocKey,
        /// The address.
        address: Address,
    },
    /// Ranges of ours were taken over by another peer; allocations inside them may clash.
    Conflict {
        /// Our allocations now inside someone else's range.
        addresses: Vec<IpAddr>,
    },
    /// A dead peer's space was taken over (by rmpeer or agreed reclaim).
    Reclaimed {
        /// The dead peer.
        peer: PeerName,
        /// Addresses taken over.
        addresses: u64,
    },
}
