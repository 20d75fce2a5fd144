//! An interpreter of weft's nftables programs, written from the kernel's `nft_do_chain`: a
//! packet goes through a base chain's rules in order; each rule runs its expressions over
//! register 1 (16 bytes) until one does not hold (the rule breaks: on to the next rule) or a
//! verdict ends it. `accept` and `drop` end the hook; `return`, or the end of a chain, goes
//! back to the rule after the caller's jump (from the base chain: its policy, accept); a jump
//! calls a regular chain.
//!
//! Strict where the kernel would silently compute something weft never means: an expression
//! it does not model, a header byte it does not fill, a comparison over bytes no expression
//! loaded, a missing set or chain, or a jump to a base chain is an error, which fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use topology::netfilter::reconcile::Present;
use topology::netfilter::wire::Op;
use topology::netfilter::{
    Chain, CmpOp, Expr, MetaKey, NFPROTO_IPV4, NFPROTO_IPV6, PayloadBase, Set, Verdict,
};

/// `ct state established`.
pub(crate) const CT_ESTABLISHED: u32 = 1 << 1;
/// `ct state related`.
pub(crate) const CT_RELATED: u32 = 1 << 2;
/// `ct state new`.
pub(crate) const CT_NEW: u32 = 1 << 3;

/// The kernel's jump stack depth (`NFT_JUMP_STACK_SIZE`).
const JUMP_STACK: usize = 16;

/// What the interpreter knows of a packet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Packet {
    /// The source address (its family is the packet's).
    pub(crate) saddr: IpAddr,
    /// The destination address, of the same family.
    pub(crate) daddr: IpAddr,
    /// The layer-4 protocol number.
    pub(crate) l4proto: u8,
    /// The destination port.
    pub(crate) dport: u16,
    /// The connection tracking state bits (`CT_*`).
    pub(crate) ct_state: u32,
}

impl Packet {
    fn nfproto(&self) -> u8 {
        if self.saddr.is_ipv4() {
            NFPROTO_IPV4
        } else {
            NFPROTO_IPV6
        }
    }

    /// The network header, and the range of it the interpreter fills (the addresses).
    fn network_header(&self) -> Result<(Vec<u8>, std::ops::Range<usize>), String> {
        match (self.saddr, self.daddr) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, self.l4proto, 0, 0];
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                Ok((h, 12..20))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut h = vec![0x60, 0, 0, 0, 0, 0, self.l4proto, 64];
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                Ok((h, 8..40))
            }
            _ => Err(format!("packet mixes families: {self:?}")),
        }
    }
}

/// How a run through a hook ended, and the rules that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// Accepted (by a rule or by the base chain's policy).
    pub(crate) accepted: bool,
    /// `chain/rule` of each rule whose verdict was taken, in order.
    pub(crate) trace: Vec<String>,
}

/// One table's chains and sets, as the kernel would hold them.
#[derive(Debug)]
pub(crate) struct Table<'a> {
    chains: BTreeMap<&'a str, &'a Chain>,
    /// Name → (key length, elements' keys).
    sets: BTreeMap<&'a str, (usize, BTreeSet<Vec<u8>>)>,
}

/// What one rule did.
enum Outcome<'a> {
    /// An expression did not hold (`NFT_BREAK`), or the rule ran out of expressions.
    Next,
    Verdict(Verdict),
    Jump(&'a str),
}

/// Register 1 and how many of its bytes the last load filled.
struct Register {
    bytes: [u8; 16],
    loaded: usize,
}

impl Register {
    fn load(&mut self, data: &[u8]) -> Result<(), String> {
        if data.len() > self.bytes.len() {
            return Err(format!(
                "load of {} bytes into a 16-byte register",
                data.len()
            ));
        }
        self.bytes = [0; 16];
        self.bytes[..data.len()].copy_from_slice(data);
        self.loaded = data.len();
        Ok(())
    }

    fn read(&self, len: usize, what: &str) -> Result<&[u8], String> {
        if len == 0 || len > self.loaded {
            return Err(format!(
                "{what} over {len} bytes, but the register holds {} loaded bytes",
                self.loaded
            ));
        }
        Ok(&self.bytes[..len])
    }
}

impl<'a> Table<'a> {
    /// The table holding `chains` and `sets` (each set with its elements).
    pub(crate) fn new(chains: &'a [Chain], sets: &'a [Set]) -> Self {
        Self {
            chains: chains.iter().map(|c| (c.name.as_str(), c)).collect(),
            sets: sets
                .iter()
                .map(|s| (s.name.as_str(), (if s.v6 { 16 } else { 4 }, s.keys())))
                .collect(),
        }
    }

    /// Runs `packet` through base chain `base`, as the kernel's hook would.
    pub(crate) fn run(&self, base: &str, packet: &Packet) -> Result<Run, String> {
        let mut chain = self.chain(base)?;
        if chain.base.is_none() {
            return Err(format!("{base} is not a base chain"));
        }
        let mut stack: Vec<(&Chain, usize)> = Vec::new();
        let mut next = 0;
        let mut trace = Vec::new();
        loop {
            let Some(rule) = chain.rules.get(next) else {
                // The end of a chain: an implicit return.
                match stack.pop() {
                    Some((caller, at)) => {
                        (chain, next) = (caller, at);
                        continue;
                    }
                    None => {
                        return Ok(Run {
                            accepted: true,
                            trace,
                        });
                    }
                }
            };
            next += 1;
            let outcome = self
                .rule(&rule.exprs, packet)
                .map_err(|e| format!("{}/{}: {e}", chain.name, rule.name))?;
            let verdict = match outcome {
                Outcome::Next => continue,
                Outcome::Verdict(v) => v,
                Outcome::Jump(target) => {
                    trace.push(format!("{}/{}", chain.name, rule.name));
                    let callee = self.chain(target)?;
                    if callee.base.is_some() {
                        return Err(format!("{}: jump to base chain {target}", chain.name));
                    }
                    if stack.len() >= JUMP_STACK {
                        return Err(format!("jump stack overflow at {target}"));
                    }
                    stack.push((chain, next));
                    (chain, next) = (callee, 0);
                    continue;
                }
            };
            trace.push(format!("{}/{}", chain.name, rule.name));
            match verdict {
                Verdict::Accept | Verdict::Drop => {
                    return Ok(Run {
                        accepted: verdict == Verdict::Accept,
                        trace,
                    });
                }
                Verdict::Return => match stack.pop() {
                    Some((caller, at)) => (chain, next) = (caller, at),
                    None => {
                        return Ok(Run {
                            accepted: true,
                            trace,
                        });
                    }
                },
            }
        }
    }

    fn chain(&self, name: &str) -> Result<&'a Chain, String> {
        self.chains
            .get(name)
            .copied()
            .ok_or_else(|| format!("no chain {name}"))
    }

    /// Runs one rule's expressions.
    fn rule<'e>(&self, exprs: &'e [Expr], packet: &Packet) -> Result<Outcome<'e>, String>
    where
        'a: 'e,
    {
        let mut reg = Register {
            bytes: [0; 16],
            loaded: 0,
        };
        for expr in exprs {
            match expr {
                Expr::Meta(MetaKey::NfProto) => reg.load(&[packet.nfproto()])?,
                Expr::Meta(MetaKey::L4Proto) => reg.load(&[packet.l4proto])?,
                Expr::Payload {
                    base: PayloadBase::Network,
                    offset,
                    len,
                } => {
                    let (header, filled) = packet.network_header()?;
                    let (start, end) = (*offset as usize, (*offset + *len) as usize);
                    if *len == 0 || start < filled.start || end > filled.end {
                        return Err(format!(
                            "network header bytes {start}..{end} outside the modelled \
                             {filled:?} of {packet:?}"
                        ));
                    }
                    reg.load(&header[start..end])?;
                }
                Expr::Payload {
                    base: PayloadBase::Transport,
                    offset: 2,
                    len: 2,
                } => reg.load(&packet.dport.to_be_bytes())?,
                Expr::Payload {
                    base: PayloadBase::Transport,
                    offset,
                    len,
                } => {
                    return Err(format!(
                        "transport header bytes {offset}+{len}: only the destination port is \
                         modelled"
                    ));
                }
                Expr::Mask(mask) => {
                    let masked: Vec<u8> = reg
                        .read(mask.len(), "mask")?
                        .iter()
                        .zip(mask)
                        .map(|(r, m)| r & m)
                        .collect();
                    reg.bytes[..mask.len()].copy_from_slice(&masked);
                }
                Expr::Cmp(op, value) => {
                    let order = reg.read(value.len(), "cmp")?.cmp(value.as_slice());
                    let holds = match op {
                        CmpOp::Eq => order.is_eq(),
                        CmpOp::Neq => order.is_ne(),
                        CmpOp::Lte => order.is_le(),
                        CmpOp::Gte => order.is_ge(),
                    };
                    if !holds {
                        return Ok(Outcome::Next);
                    }
                }
                Expr::Lookup { set, invert } => {
                    let (len, keys) = self
                        .sets
                        .get(set.as_str())
                        .ok_or_else(|| format!("lookup in missing set {set}"))?;
                    if reg.loaded != *len {
                        return Err(format!(
                            "lookup in {set} ({len}-byte keys) of a {}-byte value",
                            reg.loaded
                        ));
                    }
                    let found = keys.contains(reg.read(*len, "lookup")?);
                    if found == *invert {
                        return Ok(Outcome::Next);
                    }
                }
                Expr::Vmap(set) => {
                    let (len, keys) = self
                        .sets
                        .get(set.as_str())
                        .ok_or_else(|| format!("vmap lookup in missing map {set}"))?;
                    if reg.loaded != *len {
                        return Err(format!(
                            "vmap lookup in {set} ({len}-byte keys) of a {}-byte value",
                            reg.loaded
                        ));
                    }
                    let key = reg.read(*len, "vmap")?;
                    // A map's element is its key followed by its chain's name.
                    let Some(id) = keys
                        .iter()
                        .find(|id| id.len() > *len && id.starts_with(key))
                    else {
                        return Ok(Outcome::Next);
                    };
                    let chain = std::str::from_utf8(&id[*len..]).map_err(|e| e.to_string())?;
                    let chain = self.chain(chain)?;
                    return Ok(Outcome::Jump(&chain.name));
                }
                Expr::CtState => reg.load(&packet.ct_state.to_ne_bytes())?,
                Expr::Counter => {}
                // The kernel stops a rule's expressions at its verdict.
                Expr::Verdict(v) => return Ok(Outcome::Verdict(*v)),
                Expr::Jump(chain) => return Ok(Outcome::Jump(chain)),
                Expr::Masquerade => return Err("masquerade is not modelled".to_owned()),
            }
        }
        Ok(Outcome::Next)
    }
}

/// Applies a batch `ops` to a model of the kernel's table, as the kernel would (handles count
/// up), failing on what the kernel would refuse: as in `topology/src/netfilter/tests.rs`, and a
/// rule may only jump to a chain, or look into a set, that is already there.
pub(crate) fn apply(present: &mut Present, ops: &[Op], next_handle: &mut u64) {
    for op in ops {
        match op {
            Op::AddTable => present.table = true,
            Op::DelTable => *present = Present::default(),
            Op::AddChain(c) => {
                assert!(present.table, "chain added before its table");
                present
                    .chains
                    .entry(c.name.clone())
                    .or_insert((c.base, Vec::new()));
            }
            Op::DelChain(name) => {
                let (_, rules) = present
                    .chains
                    .remove(name)
                    .expect("deleting a missing chain");
                assert!(rules.is_empty(), "deleting chain {name} with rules in it");
            }
            Op::AddRule { chain, rule } => {
                for expr in &rule.exprs {
                    if let Expr::Jump(target) = expr {
                        assert!(
                            present.chains.contains_key(target),
                            "{chain}: jump to {target}, not made yet"
                        );
                    }
                    if let Expr::Lookup { set, .. } | Expr::Vmap(set) = expr {
                        assert!(
                            present.sets.contains_key(set),
                            "{chain}: lookup in {set}, not made yet"
                        );
                    }
                }
                let (_, rules) = present.chains.get_mut(chain).expect("rule's chain");
                rules.push((*next_handle, Some(rule.key())));
                *next_handle += 1;
            }
            Op::DelRule { chain, handle } => {
                let (_, rules) = present.chains.get_mut(chain).expect("rule's chain");
                let before = rules.len();
                rules.retain(|(h, _)| h != handle);
                assert_eq!(rules.len() + 1, before, "deleting a missing rule");
            }
            Op::AddSet(s) => {
                assert!(present.table, "set added before its table");
                present.sets.entry(s.name.clone()).or_default();
            }
            Op::DelSet(name) => {
                assert!(
                    present.sets.remove(name).is_some(),
                    "deleting a missing set"
                );
            }
            Op::AddElements { set, keys } => {
                let held = present.sets.get_mut(set).expect("elements' set");
                for k in keys {
                    assert!(held.insert(k.clone()), "adding an element twice");
                }
            }
            Op::AddJumps { set, entries } => {
                for (key, chain) in entries {
                    assert!(
                        present.chains.contains_key(chain),
                        "{set}: jump to {chain}, not made yet"
                    );
                    let held = present.sets.get_mut(set).expect("elements' set");
                    // The kernel refuses a key it holds already, whatever its chain.
                    assert!(
                        !held.iter().any(|id| id.starts_with(key)),
                        "adding a map key twice"
                    );
                    let mut id = key.clone();
                    id.extend_from_slice(chain.as_bytes());
                    held.insert(id);
                }
            }
            Op::DelElements { set, keys } => {
                let held = present.sets.get_mut(set).expect("elements' set");
                for k in keys {
                    // A map's element is known by its key alone.
                    let id = held.iter().find(|id| id.starts_with(k)).cloned();
                    assert!(
                        id.is_some_and(|id| held.remove(&id)),
                        "removing a missing element"
                    );
                }
            }
        }
    }
}
