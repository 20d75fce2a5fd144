//! From what the kernel holds to what weft wants, in one atomic batch.
//!
//! Rules:
//! - A chain whose rules already carry the wanted keys, in the wanted order, is left alone:
//!   a reconcile that finds everything in place sends nothing.
//! - A chain that differs has its rules replaced: every present rule deleted and every wanted
//!   rule appended, in the same batch (the kernel applies a batch atomically, so traffic never
//!   meets a half-made chain).
//! - A base chain whose hook, priority or type changed is deleted and made again, in the batch.
//! - Chains of weft's table that are no longer wanted are emptied and deleted.
//! - A verdict map's elements change after the chains they jump to are made and before
//!   chains no longer wanted are deleted (a key moving to another chain: removed, then added).
//! - Sets come before the rules that look into them: a missing set is made; a set that
//!   differs gets the missing elements added and the extra ones removed (never emptied and
//!   refilled: a peer that stays is never out of its set, even for a batch); sets no longer
//!   wanted go last, after the rules that used them.
//! - Nothing outside weft's table is touched.

use std::collections::{BTreeMap, BTreeSet};

use super::wire::{NFPROTO_INET, Op, PresentChain, PresentRule};
use super::{Chain, Set};

/// Most elements one message carries: a message's element list is one netlink attribute,
/// whose length is 16 bits (a map element with its chain's name takes about 70 bytes).
pub const ELEMENTS_PER_MESSAGE: usize = 256;

/// A chain as held: its base-chain settings and its rules (handle, key), in order.
pub type HeldChain = (Option<super::BaseChain>, Vec<(u64, Option<String>)>);

/// What the kernel holds in weft's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Present {
    /// Whether the table exists.
    pub table: bool,
    /// Its chains by name: the base chain settings and the rules (handle, key), in order.
    pub chains: BTreeMap<String, HeldChain>,
    /// Its sets by name, with their elements' keys.
    pub sets: BTreeMap<String, BTreeSet<Vec<u8>>>,
}

impl Present {
    /// Adds the sets (name → element keys) of weft's table.
    pub fn with_sets(mut self, sets: BTreeMap<String, BTreeSet<Vec<u8>>>) -> Self {
        if !sets.is_empty() {
            self.table = true;
        }
        self.sets = sets;
        self
    }

    /// Builds the view from chain and rule dumps (other tables and families are ignored).
    pub fn from_dumps(chains: &[PresentChain], rules: &[PresentRule]) -> Self {
        let mut present = Self::default();
        for c in chains
            .iter()
            .filter(|c| c.family == NFPROTO_INET && c.table == super::TABLE)
        {
            present.table = true;
            present.chains.insert(c.name.clone(), (c.base, Vec::new()));
        }
        for r in rules.iter().filter(|r| r.table == super::TABLE) {
            if let Some((_, list)) = present.chains.get_mut(&r.chain) {
                list.push((r.handle, r.key.clone()));
            }
        }
        present
    }
}

/// The operations that make `present` hold exactly the `wanted` chains and no set.
pub fn plan(wanted: &[Chain], present: &Present) -> Vec<Op> {
    plan_table(wanted, &[], present)
}

/// The operations that make `present` hold exactly the `wanted` chains and sets (empty when
/// it does).
pub fn plan_table(wanted: &[Chain], sets: &[Set], present: &Present) -> Vec<Op> {
    plan_keeping(wanted, sets, present, |_| false)
}

/// As [`plan_table`], but chains and sets the kernel holds that are not wanted and whose name
/// `keep` accepts are left as they are (a part of the table whose owner is not ready to say
/// what it wants).
pub fn plan_keeping(
    wanted: &[Chain],
    sets: &[Set],
    present: &Present,
    keep: impl Fn(&str) -> bool,
) -> Vec<Op> {
    let mut ops = Vec::new();
    if !present.table {
        ops.push(Op::AddTable);
    }
    // A verdict map's elements name chains: they change after the chains are made and before
    // unwanted chains go.
    let mut map_ops = Vec::new();
    for set in sets {
        let keys = set.keys();
        let held = present.sets.get(&set.name);
        if held.is_none() {
            ops.push(Op::AddSet(set.clone()));
        }
        let empty = BTreeSet::new();
        let held = held.unwrap_or(&empty);
        let add: Vec<Vec<u8>> = keys.difference(held).cloned().collect();
        let del: Vec<Vec<u8>> = held.difference(&keys).cloned().collect();
        if set.jumps.is_some() {
            // Removals first: a key moving to another chain is removed, then added.
            let n = set.key_len();
            for chunk in del.chunks(ELEMENTS_PER_MESSAGE) {
                map_ops.push(Op::DelElements {
                    set: set.name.clone(),
                    keys: chunk
                        .iter()
                        .map(|id| id[..n.min(id.len())].to_vec())
                        .collect(),
                });
            }
            for chunk in add.chunks(ELEMENTS_PER_MESSAGE) {
                let entries = chunk
                    .iter()
                    .map(|id| {
                        let (key, chain) = id.split_at(n.min(id.len()));
                        (key.to_vec(), String::from_utf8_lossy(chain).into_owned())
                    })
                    .collect();
                map_ops.push(Op::AddJumps {
                    set: set.name.clone(),
                    entries,
                });
            }
            continue;
        }
        for chunk in add.chunks(ELEMENTS_PER_MESSAGE) {
            ops.push(Op::AddElements {
                set: set.name.clone(),
                keys: chunk.to_vec(),
            });
        }
        for chunk in del.chunks(ELEMENTS_PER_MESSAGE) {
            ops.push(Op::DelElements {
                set: set.name.clone(),
                keys: chunk.to_vec(),
            });
        }
    }
    for chain in wanted {
        let keys: Vec<Option<String>> = chain.rules.iter().map(|r| Some(r.key())).collect();
        let add_rules = |ops: &mut Vec<Op>| {
            for rule in &chain.rules {
                ops.push(Op::AddRule {
                    chain: chain.name.clone(),
                    rule: rule.clone(),
                });
            }
        };
        match present.chains.get(&chain.name) {
            None => {
                ops.push(Op::AddChain(chain.clone()));
                add_rules(&mut ops);
            }
            Some((base, rules)) => {
                let same_rules = rules.iter().map(|(_, k)| k).eq(keys.iter());
                if *base == chain.base && same_rules {
                    continue;
                }
                for (handle, _) in rules {
                    ops.push(Op::DelRule {
                        chain: chain.name.clone(),
                        handle: *handle,
                    });
                }
                if *base != chain.base {
                    ops.push(Op::DelChain(chain.name.clone()));
                    ops.push(Op::AddChain(chain.clone()));
                }
                add_rules(&mut ops);
            }
        }
    }
    ops.extend(map_ops);
    for (name, (_, rules)) in &present.chains {
        if wanted.iter().any(|c| &c.name == name) || keep(name) {
            continue;
        }
        for (handle, _) in rules {
            ops.push(Op::DelRule {
                chain: name.clone(),
                handle: *handle,
            });
        }
        ops.push(Op::DelChain(name.clone()));
    }
    for name in present.sets.keys() {
        if !sets.iter().any(|s| &s.name == name) && !keep(name) {
            ops.push(Op::DelSet(name.clone()));
        }
    }
    ops
}
