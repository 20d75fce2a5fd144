//! nf_tables over netlink, byte by byte: the batch weft sends and the dumps and acks it reads
//! back (linux/netfilter/nf_tables.h, nfnetlink.h). docs/PROTOCOL.md, "nftables", lists what is
//! used.
//!
//! Netlink headers and attribute headers are in host byte order; nf_tables' integer
//! attributes are big-endian. Every decoder takes untrusted bytes (a kernel of another version,
//! or the fuzzer) and returns an error rather than panicking.

use thiserror::Error;

use super::{BaseChain, Chain, ChainType, Expr, Hook, Rule, Set};

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: i32 = 12;

const NLMSG_HDRLEN: usize = 16;
const NFGEN_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

/// `NFPROTO_UNSPEC`: every family (dumps).
pub const NFPROTO_UNSPEC: u8 = 0;
/// `NFPROTO_INET`.
pub const NFPROTO_INET: u8 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFT_JUMP`.
const NFT_JUMP: i32 = -3;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_DATA_TYPE: u16 = 6;
/// `NFT_SET_MAP`.
const NFT_SET_MAP: u32 = 0x8;
/// `NFT_DATA_VERDICT`: a map's data are verdicts.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// nft's data types for set keys (what `nft list` shows): `ipv4_addr`, `ipv6_addr`.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
/// `NFT_LOOKUP_F_INV`.
const LOOKUP_INVERT: u32 = 1;
/// `NFT_REG_VERDICT` and `NFT_REG_1`.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;

/// An operation on weft's table, as one message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the table (no error when it exists).
    AddTable,
    /// Delete the table and everything in it.
    DelTable,
    /// Create a chain (no error when it exists); its rules are added separately.
    AddChain(Chain),
    /// Delete an (empty) chain.
    DelChain(String),
    /// Append a rule to a chain.
    AddRule {
        /// The chain.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// Delete the rule with this handle.
    DelRule {
        /// The chain.
        chain: String,
        /// The kernel's handle of the rule.
        handle: u64,
    },
    /// Create an (empty) set (no error when it exists).
    AddSet(Set),
    /// Delete a set.
    DelSet(String),
    /// Add elements (key bytes) to a set.
    AddElements {
        /// The set.
        set: String,
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// Add elements to a verdict map: (key bytes, the chain to jump to).
    AddJumps {
        /// The map.
        set: String,
        /// The elements.
        entries: Vec<(Vec<u8>, String)>,
    },
    /// Remove elements (by key bytes) from a set or map.
    DelElements {
        /// The set.
        set: String,
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
}

impl Op {
    /// A line for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Self::AddTable => format!("add table inet {}", super::TABLE),
            Self::DelTable => format!("delete table inet {}", super::TABLE),
            Self::AddChain(c) => format!("add chain {}", c.name),
            Self::DelChain(c) => format!("delete chain {c}"),
            Self::AddRule { chain, rule } => format!("add rule {} to chain {chain}", rule.key()),
            Self::DelRule { chain, handle } => format!("delete rule {handle} of chain {chain}"),
            Self::AddSet(s) => format!("add set {}", s.name),
            Self::DelSet(s) => format!("delete set {s}"),
            Self::AddElements { set, keys } => format!("add {} elements to set {set}", keys.len()),
            Self::AddJumps { set, entries } => {
                format!("add {} elements to map {set}", entries.len())
            }
            Self::DelElements { set, keys } => {
                format!("delete {} elements from set {set}", keys.len())
            }
        }
    }
}

/// Netlink message building: a growing buffer of messages with attribute nesting.
struct Msg<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Msg<'a> {
    fn begin(
        buf: &'a mut Vec<u8>,
        kind: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0_u32.to_ne_bytes()); // length, set by end()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0_u32.to_ne_bytes()); // port id: the kernel fills it
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Self { buf, start }
    }

    fn end(self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn attr_str(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let mut v = value.as_bytes().to_vec();
    v.push(0);
    attr(buf, kind, &v);
}

fn attr_be32(buf: &mut Vec<u8>, kind: u16, value: u32) {
    attr(buf, kind, &value.to_be_bytes());
}

/// Writes a nested attribute whose content `f` writes.
fn nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn expr(buf: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nested(buf, NFTA_LIST_ELEM, |b| {
        attr_str(b, NFTA_EXPR_NAME, name);
        nested(b, NFTA_EXPR_DATA, data);
    });
}

fn data_value(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    nested(buf, kind, |b| attr(b, NFTA_DATA_VALUE, value));
}

/// Appends the encoding of `exprs` (the list elements of `NFTA_RULE_EXPRESSIONS`).
pub fn encode_exprs(buf: &mut Vec<u8>, exprs: &[Expr]) {
    for e in exprs {
        match e {
            Expr::Meta(key) => expr(buf, "meta", |b| {
                attr_be32(b, 1, REG_1); // NFTA_META_DREG
                attr_be32(b, 2, *key as u32); // NFTA_META_KEY
            }),
            Expr::Payload { base, offset, len } => expr(buf, "payload", |b| {
                attr_be32(b, 1, REG_1); // NFTA_PAYLOAD_DREG
                attr_be32(b, 2, *base as u32); // NFTA_PAYLOAD_BASE
                attr_be32(b, 3, *offset); // NFTA_PAYLOAD_OFFSET
                attr_be32(b, 4, *len); // NFTA_PAYLOAD_LEN
            }),
            Expr::Mask(mask) => expr(buf, "bitwise", |b| {
                attr_be32(b, 1, REG_1); // NFTA_BITWISE_SREG
                attr_be32(b, 2, REG_1); // NFTA_BITWISE_DREG
                attr_be32(b, 3, mask.len() as u32); // NFTA_BITWISE_LEN
                data_value(b, 4, mask); // NFTA_BITWISE_MASK
                data_value(b, 5, &vec![0; mask.len()]); // NFTA_BITWISE_XOR
            }),
            Expr::Cmp(op, value) => expr(buf, "cmp", |b| {
                attr_be32(b, 1, REG_1); // NFTA_CMP_SREG
                attr_be32(b, 2, *op as u32); // NFTA_CMP_OP
                data_value(b, 3, value); // NFTA_CMP_DATA
            }),
            Expr::Verdict(v) => expr(buf, "immediate", |b| {
                attr_be32(b, 1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
                nested(b, 2, |b| {
                    // NFTA_IMMEDIATE_DATA
                    nested(b, NFTA_DATA_VERDICT, |b| {
                        attr_be32(b, NFTA_VERDICT_CODE, v.code() as u32);
                    });
                });
            }),
            Expr::Jump(chain) => expr(buf, "immediate", |b| {
                attr_be32(b, 1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
                nested(b, 2, |b| {
                    nested(b, NFTA_DATA_VERDICT, |b| {
                        attr_be32(b, NFTA_VERDICT_CODE, NFT_JUMP as u32);
                        attr_str(b, NFTA_VERDICT_CHAIN, chain);
                    });
                });
            }),
            Expr::Vmap(set) => expr(buf, "lookup", |b| {
                attr_str(b, 1, set); // NFTA_LOOKUP_SET
                attr_be32(b, 2, REG_1); // NFTA_LOOKUP_SREG
                attr_be32(b, 3, REG_VERDICT); // NFTA_LOOKUP_DREG
            }),
            Expr::CtState => expr(buf, "ct", |b| {
                attr_be32(b, 1, REG_1); // NFTA_CT_DREG
                attr_be32(b, 2, 0); // NFTA_CT_KEY: NFT_CT_STATE
            }),
            Expr::Masquerade => expr(buf, "masq", |_| {}),
            Expr::Counter => expr(buf, "counter", |_| {}),
            Expr::Lookup { set, invert } => expr(buf, "lookup", |b| {
                attr_str(b, 1, set); // NFTA_LOOKUP_SET
                attr_be32(b, 2, REG_1); // NFTA_LOOKUP_SREG
                if *invert {
                    attr_be32(b, 5, LOOKUP_INVERT); // NFTA_LOOKUP_FLAGS
                }
            }),
        }
    }
}

/// Starts an nf_tables message of type `msg` for the `inet` family.
fn inet(buf: &mut Vec<u8>, msg: u16, flags: u16, seq: u32) -> Msg<'_> {
    Msg::begin(
        buf,
        (NFNL_SUBSYS_NFTABLES << 8) | msg,
        flags,
        seq,
        NFPROTO_INET,
        0,
    )
}

/// Encodes `ops` as one atomic batch with sequence numbers from `seq`; every operation asks
/// for an acknowledgement. Returns the bytes and the sequence number of each operation.
pub fn encode_batch(ops: &[Op], seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut buf = Vec::new();
    let mut seqs = Vec::with_capacity(ops.len());
    let res_id = NFNL_SUBSYS_NFTABLES;
    Msg::begin(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        NFPROTO_UNSPEC,
        res_id,
    )
    .end();
    let table = super::TABLE;
    for (i, op) in ops.iter().enumerate() {
        let s = seq.wrapping_add(1 + i as u32);
        seqs.push(s);
        let req = NLM_F_REQUEST | NLM_F_ACK;
        match op {
            Op::AddTable => {
                let m = inet(&mut buf, NFT_MSG_NEWTABLE, req | NLM_F_CREATE, s);
                attr_str(m.buf, NFTA_TABLE_NAME, table);
                attr_be32(m.buf, NFTA_TABLE_FLAGS, 0);
                m.end();
            }
            Op::DelTable => {
                let m = inet(&mut buf, NFT_MSG_DELTABLE, req, s);
                attr_str(m.buf, NFTA_TABLE_NAME, table);
                m.end();
            }
            Op::AddChain(chain) => {
                let m = inet(&mut buf, NFT_MSG_NEWCHAIN, req | NLM_F_CREATE, s);
                attr_str(m.buf, NFTA_CHAIN_TABLE, table);
                attr_str(m.buf, NFTA_CHAIN_NAME, &chain.name);
                if let Some(base) = chain.base {
                    nested(m.buf, NFTA_CHAIN_HOOK, |b| {
                        attr_be32(b, NFTA_HOOK_HOOKNUM, base.hook as u32);
                        attr_be32(b, NFTA_HOOK_PRIORITY, base.priority as u32);
                    });
                    attr_be32(m.buf, NFTA_CHAIN_POLICY, 1); // NF_ACCEPT
                    attr_str(m.buf, NFTA_CHAIN_TYPE, base.kind.as_str());
                }
                m.end();
            }
            Op::DelChain(name) => {
                let m = inet(&mut buf, NFT_MSG_DELCHAIN, req, s);
                attr_str(m.buf, NFTA_CHAIN_TABLE, table);
                attr_str(m.buf, NFTA_CHAIN_NAME, name);
                m.end();
            }
            Op::AddRule { chain, rule } => {
                let flags = req | NLM_F_CREATE | NLM_F_APPEND;
                let m = inet(&mut buf, NFT_MSG_NEWRULE, flags, s);
                attr_str(m.buf, NFTA_RULE_TABLE, table);
                attr_str(m.buf, NFTA_RULE_CHAIN, chain);
                nested(m.buf, NFTA_RULE_EXPRESSIONS, |b| {
                    encode_exprs(b, &rule.exprs)
                });
                attr(m.buf, NFTA_RULE_USERDATA, rule.key().as_bytes());
                m.end();
            }
            Op::DelRule { chain, handle } => {
                let m = inet(&mut buf, NFT_MSG_DELRULE, req, s);
                attr_str(m.buf, NFTA_RULE_TABLE, table);
                attr_str(m.buf, NFTA_RULE_CHAIN, chain);
                attr(m.buf, NFTA_RULE_HANDLE, &handle.to_be_bytes());
                m.end();
            }
            Op::AddSet(set) => {
                let m = inet(&mut buf, NFT_MSG_NEWSET, req | NLM_F_CREATE, s);
                attr_str(m.buf, NFTA_SET_TABLE, table);
                attr_str(m.buf, NFTA_SET_NAME, &set.name);
                let map = set.jumps.is_some();
                attr_be32(m.buf, NFTA_SET_FLAGS, if map { NFT_SET_MAP } else { 0 });
                let (kind, len) = if set.v6 {
                    (TYPE_IP6ADDR, 16)
                } else {
                    (TYPE_IPADDR, 4)
                };
                attr_be32(m.buf, NFTA_SET_KEY_TYPE, kind);
                attr_be32(m.buf, NFTA_SET_KEY_LEN, len);
                if map {
                    attr_be32(m.buf, NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                }
                // The kernel requires an id naming the set within the batch.
                attr_be32(m.buf, NFTA_SET_ID, s);
                m.end();
            }
            Op::DelSet(name) => {
                let m = inet(&mut buf, NFT_MSG_DELSET, req, s);
                attr_str(m.buf, NFTA_SET_TABLE, table);
                attr_str(m.buf, NFTA_SET_NAME, name);
                m.end();
            }
            Op::AddJumps { set, entries } => {
                let m = inet(&mut buf, NFT_MSG_NEWSETELEM, req | NLM_F_CREATE, s);
                attr_str(m.buf, NFTA_SET_ELEM_LIST_TABLE, table);
                attr_str(m.buf, NFTA_SET_ELEM_LIST_SET, set);
                nested(m.buf, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    for (key, chain) in entries {
                        nested(b, NFTA_LIST_ELEM, |b| {
                            nested(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, key));
                            nested(b, NFTA_SET_ELEM_DATA, |b| {
                                nested(b, NFTA_DATA_VERDICT, |b| {
                                    attr_be32(b, NFTA_VERDICT_CODE, NFT_JUMP as u32);
                                    attr_str(b, NFTA_VERDICT_CHAIN, chain);
                                });
                            });
                        });
                    }
                });
                m.end();
            }
            Op::AddElements { set, keys } | Op::DelElements { set, keys } => {
                let (msg, flags) = if matches!(op, Op::AddElements { .. }) {
                    (NFT_MSG_NEWSETELEM, req | NLM_F_CREATE)
                } else {
                    (NFT_MSG_DELSETELEM, req)
                };
                let m = inet(&mut buf, msg, flags, s);
                attr_str(m.buf, NFTA_SET_ELEM_LIST_TABLE, table);
                attr_str(m.buf, NFTA_SET_ELEM_LIST_SET, set);
                nested(m.buf, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    for key in keys {
                        nested(b, NFTA_LIST_ELEM, |b| {
                            nested(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, key));
                        });
                    }
                });
                m.end();
            }
        }
    }
    let end_seq = seq.wrapping_add(1 + ops.len() as u32);
    Msg::begin(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        NFPROTO_UNSPEC,
        res_id,
    )
    .end();
    (buf, seqs)
}

/// A dump request for the rules of weft's table.
pub fn encode_get_rules(seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    let m = inet(&mut buf, NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, seq);
    attr_str(m.buf, NFTA_RULE_TABLE, super::TABLE);
    m.end();
    buf
}

/// A dump request for the sets of weft's table.
pub fn encode_get_sets(seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    let m = inet(&mut buf, NFT_MSG_GETSET, NLM_F_REQUEST | NLM_F_DUMP, seq);
    attr_str(m.buf, NFTA_SET_TABLE, super::TABLE);
    m.end();
    buf
}

/// A dump request for the elements of set `set` of weft's table.
pub fn encode_get_elements(seq: u32, set: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let m = inet(
        &mut buf,
        NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    attr_str(m.buf, NFTA_SET_ELEM_LIST_TABLE, super::TABLE);
    attr_str(m.buf, NFTA_SET_ELEM_LIST_SET, set);
    m.end();
    buf
}

/// A request for the ruleset's generation (it grows with every commit, by anyone), with an
/// acknowledgement after the answer.
pub fn encode_get_generation(seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
    Msg::begin(
        &mut buf,
        kind,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NFPROTO_UNSPEC,
        0,
    )
    .end();
    buf
}

/// A dump request for every chain of every table and family.
pub fn encode_get_chains(seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN;
    Msg::begin(
        &mut buf,
        kind,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_UNSPEC,
        0,
    )
    .end();
    buf
}

/// Why bytes from the kernel could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A length field points past the end, or below a header's size.
    #[error("truncated or malformed netlink message at byte {0}")]
    Malformed(usize),
    /// A message lacks an attribute it must have.
    #[error("{0} without its {1} attribute")]
    Missing(&'static str, &'static str),
}

/// One message read from the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An acknowledgement (`error` 0) or an error (negative errno) for message `seq`.
    Ack {
        /// The sequence number of the message it answers.
        seq: u32,
        /// 0, or the negative errno.
        error: i32,
    },
    /// The end of a dump (`error` is nonzero when the dump failed).
    Done {
        /// The dump's sequence number.
        seq: u32,
        /// 0, or the negative errno.
        error: i32,
    },
    /// A rule of a dump.
    Rule(PresentRule),
    /// A chain of a dump.
    Chain(PresentChain),
    /// A set of a dump: its table and name.
    Set {
        /// Its table.
        table: String,
        /// Its name.
        name: String,
    },
    /// Elements of a set, from a dump: the set's table and name, and each element's key.
    Elements {
        /// The set's table.
        table: String,
        /// The set's name.
        set: String,
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// The ruleset's generation.
    Generation(u32),
    /// Anything else (other message types are skipped).
    Other,
}

/// A rule as the kernel holds it: where, its handle and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentRule {
    /// Its table.
    pub table: String,
    /// Its chain.
    pub chain: String,
    /// The kernel's handle.
    pub handle: u64,
    /// Its user data as text (weft's key), if any.
    pub key: Option<String>,
    /// The packets its `counter` expression counted, if it has one.
    pub packets: Option<u64>,
}

/// A chain as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentChain {
    /// Its family (`NFPROTO_*`).
    pub family: u8,
    /// Its table.
    pub table: String,
    /// Its name.
    pub name: String,
    /// Hook, priority and type, for a base chain whose type is one weft uses.
    pub base: Option<BaseChain>,
    /// The hook number of a base chain (also for hooks and types weft does not model).
    pub hook: Option<u32>,
    /// A base chain's policy (`NF_DROP` 0, `NF_ACCEPT` 1).
    pub policy: Option<u32>,
}

/// Splits a datagram into messages and decodes each.
///
/// # Errors
/// Fails on a length field that does not fit; attributes it does not know are skipped.
pub fn decode_replies(mut bytes: &[u8]) -> Result<Vec<Reply>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while !bytes.is_empty() {
        if bytes.len() < NLMSG_HDRLEN {
            return Err(DecodeError::Malformed(at));
        }
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return Err(DecodeError::Malformed(at));
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let body = &bytes[NLMSG_HDRLEN..len];
        out.push(decode_message(kind, seq, body).map_err(|e| match e {
            DecodeError::Malformed(i) => DecodeError::Malformed(at + NLMSG_HDRLEN + i),
            other @ DecodeError::Missing(..) => other,
        })?);
        let step = align4(len).min(bytes.len());
        bytes = &bytes[step..];
        at += step;
    }
    Ok(out)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn decode_message(kind: u16, seq: u32, body: &[u8]) -> Result<Reply, DecodeError> {
    match kind {
        NLMSG_ERROR | NLMSG_DONE => {
            let error = match body.get(..4) {
                Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                // A DONE may carry no error field.
                None if kind == NLMSG_DONE => 0,
                None => return Err(DecodeError::Malformed(0)),
            };
            Ok(if kind == NLMSG_ERROR {
                Reply::Ack { seq, error }
            } else {
                Reply::Done { seq, error }
            })
        }
        k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
            let family_body = body.get(NFGEN_HDRLEN..).ok_or(DecodeError::Malformed(0))?;
            let mut rule = PresentRule {
                table: String::new(),
                chain: String::new(),
                handle: 0,
                key: None,
                packets: None,
            };
            let (mut table, mut handle) = (false, false);
            for (t, v) in Attrs::new(family_body, NFGEN_HDRLEN) {
                let v = v?;
                match t {
                    NFTA_RULE_TABLE => (rule.table, table) = (cstr(v), true),
                    NFTA_RULE_CHAIN => rule.chain = cstr(v),
                    NFTA_RULE_HANDLE => {
                        rule.handle = be64(v).ok_or(DecodeError::Malformed(0))?;
                        handle = true;
                    }
                    NFTA_RULE_USERDATA => rule.key = Some(String::from_utf8_lossy(v).into_owned()),
                    NFTA_RULE_EXPRESSIONS => rule.packets = counter_packets(v)?,
                    _ => {}
                }
            }
            if !table {
                return Err(DecodeError::Missing("rule", "table"));
            }
            if !handle {
                return Err(DecodeError::Missing("rule", "handle"));
            }
            Ok(Reply::Rule(rule))
        }
        k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN => {
            let family = *body.first().ok_or(DecodeError::Malformed(0))?;
            let attrs = body.get(NFGEN_HDRLEN..).ok_or(DecodeError::Malformed(0))?;
            let mut chain = PresentChain {
                family,
                table: String::new(),
                name: String::new(),
                base: None,
                hook: None,
                policy: None,
            };
            let (mut priority, mut kind) = (None, None);
            for (t, v) in Attrs::new(attrs, NFGEN_HDRLEN) {
                let v = v?;
                match t {
                    NFTA_CHAIN_TABLE => chain.table = cstr(v),
                    NFTA_CHAIN_NAME => chain.name = cstr(v),
                    NFTA_CHAIN_POLICY => chain.policy = be32(v),
                    NFTA_CHAIN_TYPE => {
                        kind = match cstr(v).as_str() {
                            "filter" => Some(ChainType::Filter),
                            "nat" => Some(ChainType::Nat),
                            _ => None,
                        };
                    }
                    NFTA_CHAIN_HOOK => {
                        for (t, v) in Attrs::new(v, 0) {
                            let v = v?;
                            match t {
                                NFTA_HOOK_HOOKNUM => chain.hook = be32(v),
                                NFTA_HOOK_PRIORITY => priority = be32(v).map(|p| p as i32),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if chain.name.is_empty() {
                return Err(DecodeError::Missing("chain", "name"));
            }
            if let (Some(hook), Some(priority), Some(kind)) =
                (chain.hook.and_then(Hook::from_number), priority, kind)
            {
                chain.base = Some(BaseChain {
                    kind,
                    hook,
                    priority,
                });
            }
            Ok(Reply::Chain(chain))
        }
        k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET => {
            let attrs = body.get(NFGEN_HDRLEN..).ok_or(DecodeError::Malformed(0))?;
            let (mut table, mut name) = (String::new(), String::new());
            for (t, v) in Attrs::new(attrs, NFGEN_HDRLEN) {
                let v = v?;
                match t {
                    NFTA_SET_TABLE => table = cstr(v),
                    NFTA_SET_NAME => name = cstr(v),
                    _ => {}
                }
            }
            if name.is_empty() {
                return Err(DecodeError::Missing("set", "name"));
            }
            Ok(Reply::Set { table, name })
        }
        k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM => {
            let attrs = body.get(NFGEN_HDRLEN..).ok_or(DecodeError::Malformed(0))?;
            let (mut table, mut set, mut keys) = (String::new(), String::new(), Vec::new());
            for (t, v) in Attrs::new(attrs, NFGEN_HDRLEN) {
                let v = v?;
                match t {
                    NFTA_SET_ELEM_LIST_TABLE => table = cstr(v),
                    NFTA_SET_ELEM_LIST_SET => set = cstr(v),
                    NFTA_SET_ELEM_LIST_ELEMENTS => {
                        for (_, elem) in Attrs::new(v, 0) {
                            keys.push(element_identity(elem?)?);
                        }
                    }
                    _ => {}
                }
            }
            if set.is_empty() {
                return Err(DecodeError::Missing("set element list", "set"));
            }
            Ok(Reply::Elements { table, set, keys })
        }
        k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN => {
            let attrs = body.get(NFGEN_HDRLEN..).ok_or(DecodeError::Malformed(0))?;
            for (t, v) in Attrs::new(attrs, NFGEN_HDRLEN) {
                if t == NFTA_GEN_ID {
                    let id = be32(v?).ok_or(DecodeError::Malformed(0))?;
                    return Ok(Reply::Generation(id));
                }
            }
            Err(DecodeError::Missing("generation", "id"))
        }
        _ => Ok(Reply::Other),
    }
}

/// An element's identity as `Set::keys` makes it: its key bytes, followed for a verdict
/// map's element by the name of the chain it jumps to.
fn element_identity(elem: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (mut key, mut chain) = (Vec::new(), Vec::new());
    for (t, v) in Attrs::new(elem, 0) {
        let v = v?;
        match t {
            NFTA_SET_ELEM_KEY => {
                for (t, value) in Attrs::new(v, 0) {
                    if t == NFTA_DATA_VALUE {
                        key = value?.to_vec();
                    }
                }
            }
            NFTA_SET_ELEM_DATA => {
                for (t, verdict) in Attrs::new(v, 0) {
                    if t != NFTA_DATA_VERDICT {
                        continue;
                    }
                    for (t, value) in Attrs::new(verdict?, 0) {
                        if t == NFTA_VERDICT_CHAIN {
                            chain = cstr(value?).into_bytes();
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if key.is_empty() {
        return Err(DecodeError::Missing("set element", "key"));
    }
    key.extend_from_slice(&chain);
    Ok(key)
}

/// The packet count of the first `counter` expression in a rule's expression list.
fn counter_packets(list: &[u8]) -> Result<Option<u64>, DecodeError> {
    for (_, elem) in Attrs::new(list, 0) {
        let (mut name, mut data) = (String::new(), None);
        for (t, v) in Attrs::new(elem?, 0) {
            let v = v?;
            match t {
                NFTA_EXPR_NAME => name = cstr(v),
                NFTA_EXPR_DATA => data = Some(v),
                _ => {}
            }
        }
        if name != "counter" {
            continue;
        }
        for (t, v) in Attrs::new(data.unwrap_or_default(), 0) {
            if t == NFTA_COUNTER_PACKETS {
                return Ok(be64(v?));
            }
        }
        return Ok(Some(0));
    }
    Ok(None)
}

/// Iterates over the attributes of a buffer: (type without flags, value).
struct Attrs<'a> {
    bytes: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Attrs<'a> {
    fn new(bytes: &'a [u8], at: usize) -> Self {
        Self {
            bytes,
            at,
            failed: false,
        }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, Result<&'a [u8], DecodeError>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() || self.failed {
            return None;
        }
        let malformed = |s: &mut Self| {
            s.failed = true;
            Some((0, Err(DecodeError::Malformed(s.at))))
        };
        if self.bytes.len() < 4 {
            return malformed(self);
        }
        let len = usize::from(u16::from_ne_bytes([self.bytes[0], self.bytes[1]]));
        let kind = u16::from_ne_bytes([self.bytes[2], self.bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.bytes.len() {
            return malformed(self);
        }
        let value = &self.bytes[4..len];
        let step = align4(len).min(self.bytes.len());
        self.bytes = &self.bytes[step..];
        self.at += step;
        Some((kind, Ok(value)))
    }
}

fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// The rules of `chains` as the kernel would dump them (for tests and the fuzzer's corpus):
/// one `NEWRULE` message per rule, handles counting from `first_handle`.
pub fn encode_rule_dump(chains: &[Chain], first_handle: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut handle = first_handle;
    for chain in chains {
        for rule in &chain.rules {
            // NLM_F_MULTI, as a dump's parts carry it.
            let m = inet(&mut buf, NFT_MSG_NEWRULE, 0x2, 1);
            attr_str(m.buf, NFTA_RULE_TABLE, super::TABLE);
            attr_str(m.buf, NFTA_RULE_CHAIN, &chain.name);
            attr(m.buf, NFTA_RULE_HANDLE, &handle.to_be_bytes());
            nested(m.buf, NFTA_RULE_EXPRESSIONS, |b| {
                encode_exprs(b, &rule.exprs)
            });
            attr(m.buf, NFTA_RULE_USERDATA, rule.key().as_bytes());
            m.end();
            handle += 1;
        }
    }
    buf
}
