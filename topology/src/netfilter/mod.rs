//! weft's packet rules: what nftables should hold, and how to get there from what it holds.
//!
//! weft owns one nftables table (`inet weft`). Its content is a pure function of the router's
//! settings and the cluster ([`masquerade`] builds the NAT chain, [`tunnels`] the tunnel-port
//! filter, [`policy`] NetworkPolicy's chains and sets). The router's shell reads what the
//! kernel holds ([`wire`] decodes the netlink dump), asks [`reconcile::plan`] for the operations that turn it into what is wanted,
//! and sends them as one netlink batch, which the kernel applies atomically: a packet meets the
//! old rules or the new ones, never an empty chain.
//!
//! Every rule carries a key in its user data (`weft:NAME:HASH`, the hash over its encoded
//! expressions), so a rule whose meaning changed gets a new key and is replaced, and a rule
//! someone else altered is noticed.
//!
//! Pure: no sockets; [`wire`] only builds and parses bytes.

pub mod masquerade;
pub mod policy;
pub mod reconcile;
pub mod tunnels;
pub mod wire;

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// The table weft owns (family `inet`).
pub const TABLE: &str = "weft";

/// Which chain types the kernel knows (`NFTA_CHAIN_TYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
}

impl ChainType {
    /// The kernel's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Nat => "nat",
        }
    }
}

/// Netfilter hooks of the `inet` family (`NF_INET_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Before routing.
    Prerouting = 0,
    /// To a local socket.
    Input = 1,
    /// Routed or bridged through.
    Forward = 2,
    /// From a local socket.
    Output = 3,
    /// After routing.
    Postrouting = 4,
}

impl Hook {
    /// The hook numbered `n`, if any.
    pub fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Prerouting,
            1 => Self::Input,
            2 => Self::Forward,
            3 => Self::Output,
            4 => Self::Postrouting,
            _ => return None,
        })
    }
}

/// A base chain's place in the packet path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// Its type.
    pub kind: ChainType,
    /// Its hook.
    pub hook: Hook,
    /// Its priority (lower runs first; `srcnat` is 100).
    pub priority: i32,
}

/// A chain of weft's table, with the rules it should hold, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// `None` for a regular chain reached by jumps.
    pub base: Option<BaseChain>,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// One rule: a name for people and a list of expressions for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What the rule is for, e.g. `masquerade` (part of its key).
    pub name: String,
    /// Its expressions, in order.
    pub exprs: Vec<Expr>,
}

impl Rule {
    /// The rule's key, kept in its user data: the name and a hash of its encoded expressions.
    pub fn key(&self) -> String {
        let mut bytes = Vec::new();
        wire::encode_exprs(&mut bytes, &self.exprs);
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("weft:{}:{:016x}", self.name, hash)
    }
}

/// Comparison operators (`NFT_CMP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
    /// Less than or equal (byte-wise, so big-endian numbers compare as numbers).
    Lte = 3,
    /// Greater than or equal (byte-wise).
    Gte = 5,
}

/// Verdicts (`NF_*` and `NFT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the packet pass this chain.
    Accept,
    /// Drop it.
    Drop,
    /// Leave this chain (a base chain's policy decides).
    Return,
}

impl Verdict {
    /// The kernel's code.
    pub fn code(self) -> i32 {
        match self {
            Self::Drop => 0,
            Self::Accept => 1,
            Self::Return => -5,
        }
    }
}

/// Packet header bases for [`Expr::Payload`] (`NFT_PAYLOAD_*_HEADER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    /// The network (IP) header.
    Network = 1,
    /// The transport header.
    Transport = 2,
}

/// Keys for [`Expr::Meta`] (`NFT_META_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    /// The layer-3 protocol family (`NFPROTO_*`), one byte.
    NfProto = 15,
    /// The layer-4 protocol, one byte.
    L4Proto = 16,
}

/// One nftables expression, in the kernel's terms. All of them use register 1 (the 16-byte
/// `NFT_REG_1`) but the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Load a meta key into register 1.
    Meta(MetaKey),
    /// Load `len` bytes at `offset` of a header into register 1.
    Payload {
        /// Which header.
        base: PayloadBase,
        /// Offset in it.
        offset: u32,
        /// How many bytes.
        len: u32,
    },
    /// Register 1 &= mask (its length is the mask's).
    Mask(Vec<u8>),
    /// Compare register 1 with a value; the rule stops here when it does not hold.
    Cmp(CmpOp, Vec<u8>),
    /// A verdict.
    Verdict(Verdict),
    /// Source NAT to the output interface's address.
    Masquerade,
    /// Count packets and bytes.
    Counter,
    /// Load the connection's tracking state (`ct state`, 4 bytes in host order) into register 1.
    CtState,
    /// Jump to a regular chain of weft's table; a `return` there comes back to the next rule.
    Jump(String),
    /// Look register 1 up in a verdict map of weft's table and jump to the chain it names;
    /// the rule stops here when the value is not in the map.
    Vmap(String),
    /// Look register 1 up in a set of weft's table; the rule stops here when it is found
    /// (`invert`: when it is not).
    Lookup {
        /// The set's name.
        set: String,
        /// Match when the value is *not* in the set.
        invert: bool,
    },
}

/// A set of addresses in weft's table, of one family; or a verdict map from addresses to
/// chains to jump to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// Its name.
    pub name: String,
    /// IPv4 (`ipv4_addr`) or IPv6 (`ipv6_addr`) addresses.
    pub v6: bool,
    /// Its elements (of a plain set).
    pub elements: BTreeSet<IpAddr>,
    /// `Some` for a verdict map (`ip saddr vmap @name`): each address's chain.
    pub jumps: Option<BTreeMap<IpAddr, String>>,
}

impl Set {
    /// A plain set of `elements`.
    pub fn addresses(name: &str, v6: bool, elements: BTreeSet<IpAddr>) -> Self {
        Self {
            name: name.to_owned(),
            v6,
            elements,
            jumps: None,
        }
    }

    /// The key bytes of an address of this set's family (4 or 16), `None` for the other's.
    pub fn key_of(&self, addr: &IpAddr) -> Option<Vec<u8>> {
        match (addr, self.v6) {
            (IpAddr::V4(a), false) => Some(a.octets().to_vec()),
            (IpAddr::V6(a), true) => Some(a.octets().to_vec()),
            _ => None,
        }
    }

    /// The key length.
    pub fn key_len(&self) -> usize {
        if self.v6 { 16 } else { 4 }
    }

    /// The elements' identities: the key bytes of a plain set's addresses; for a verdict
    /// map, the key bytes followed by the chain's name (so a key that moves to another chain
    /// is another element). Addresses of the other family are left out.
    pub fn keys(&self) -> BTreeSet<Vec<u8>> {
        match &self.jumps {
            None => self
                .elements
                .iter()
                .filter_map(|a| self.key_of(a))
                .collect(),
            Some(jumps) => jumps
                .iter()
                .filter_map(|(a, chain)| {
                    let mut id = self.key_of(a)?;
                    id.extend_from_slice(chain.as_bytes());
                    Some(id)
                })
                .collect(),
        }
    }
}

/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;

/// The expressions that match UDP to destination port `port`.
pub fn match_udp_dport(port: u16) -> Vec<Expr> {
    vec![
        Expr::Meta(MetaKey::L4Proto),
        Expr::Cmp(CmpOp::Eq, vec![IPPROTO_UDP]),
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
        },
        Expr::Cmp(CmpOp::Eq, port.to_be_bytes().to_vec()),
    ]
}

/// The expressions that match a source address outside set `set` (the family must have been
/// matched first).
pub fn match_saddr_not_in(set: &str, v6: bool) -> Vec<Expr> {
    vec![
        Expr::Payload {
            base: PayloadBase::Network,
            offset: if v6 { 8 } else { 12 },
            len: if v6 { 16 } else { 4 },
        },
        Expr::Lookup {
            set: set.to_owned(),
            invert: true,
        },
    ]
}

/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6`.
pub const NFPROTO_IPV6: u8 = 10;

/// Which address of the IP header a match reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// The source.
    Source,
    /// The destination.
    Destination,
}

/// The expressions that match the packet's family to `net`'s (`meta nfproto ipv4`).
pub fn match_family(net: &IpNet) -> Vec<Expr> {
    let proto = match net {
        IpNet::V4(_) => NFPROTO_IPV4,
        IpNet::V6(_) => NFPROTO_IPV6,
    };
    vec![
        Expr::Meta(MetaKey::NfProto),
        Expr::Cmp(CmpOp::Eq, vec![proto]),
    ]
}

/// The expressions that match (or, with `Neq`, exclude) an address in `net`; the packet's
/// family must have been matched first ([`match_family`]).
pub fn match_addr(which: Addr, op: CmpOp, net: &IpNet) -> Vec<Expr> {
    let (offset, value) = match (net.network(), which) {
        (IpAddr::V4(a), Addr::Source) => (12, a.octets().to_vec()),
        (IpAddr::V4(a), Addr::Destination) => (16, a.octets().to_vec()),
        (IpAddr::V6(a), Addr::Source) => (8, a.octets().to_vec()),
        (IpAddr::V6(a), Addr::Destination) => (24, a.octets().to_vec()),
    };
    let len = value.len();
    let mut exprs = vec![Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: len as u32,
    }];
    let prefix = usize::from(net.prefix_len());
    if prefix < len * 8 {
        let mask: Vec<u8> = (0..len)
            .map(|i| {
                let bits = prefix.saturating_sub(i * 8).min(8);
                // The top `bits` bits of the byte.
                (0xff_u16 << (8 - bits)) as u8
            })
            .collect();
        exprs.push(Expr::Mask(mask));
    }
    exprs.push(Expr::Cmp(op, value));
    exprs
}
