//! Incremental updates between two compiled [`RuleSet`]s of one node: what the nftables layer
//! changes instead of reprogramming everything.
//!
//! [`RuleSet::diff`] lists [`Change`]s in an order that is safe to program: sets created
//! first, then set elements and node addresses, then pod chains, and sets deleted last, so
//! that a rule never refers to a missing set. [`RuleSet::apply`] applies them to the state;
//! `old.apply(&old.diff(&new))` makes `old` equal to `new`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::compile::{IpSet, PodKey, PodRules, RuleSet, SetName};

/// One change to a node's rule state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new set, with its elements.
    SetAdded {
        /// The set.
        name: SetName,
        /// Its elements.
        elements: IpSet,
    },
    /// Elements added to and removed from an existing set.
    SetElements {
        /// The set.
        name: SetName,
        /// Elements to add.
        added: IpSet,
        /// Elements to remove.
        removed: IpSet,
    },
    /// The node's addresses changed.
    NodeAddresses {
        /// Addresses to add.
        added: BTreeSet<IpAddr>,
        /// Addresses to remove.
        removed: BTreeSet<IpAddr>,
    },
    /// A local pod's chains are new or replaced.
    PodSet {
        /// The pod.
        pod: PodKey,
        /// Its rules.
        rules: PodRules,
    },
    /// A local pod's chains are gone.
    PodRemoved {
        /// The pod.
        pod: PodKey,
    },
    /// A set no rule refers to any more.
    SetRemoved {
        /// The set.
        name: SetName,
    },
}

fn difference<T: Ord + Clone>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> BTreeSet<T> {
    a.difference(b).cloned().collect()
}

impl RuleSet {
    /// The changes that turn `self` into `new`, in a safe order (see the module docs). The
    /// node's name is not compared.
    pub fn diff(&self, new: &Self) -> Vec<Change> {
        let mut out = Vec::new();
        for (name, elements) in &new.sets {
            match self.sets.get(name) {
                None => out.push(Change::SetAdded {
                    name: name.clone(),
                    elements: elements.clone(),
                }),
                Some(old) if old != elements => out.push(Change::SetElements {
                    name: name.clone(),
                    added: difference(elements, old),
                    removed: difference(old, elements),
                }),
                Some(_) => {}
            }
        }
        if self.node_addresses != new.node_addresses {
            out.push(Change::NodeAddresses {
                added: difference(&new.node_addresses, &self.node_addresses),
                removed: difference(&self.node_addresses, &new.node_addresses),
            });
        }
        for (pod, rules) in &new.pods {
            if self.pods.get(pod) != Some(rules) {
                out.push(Change::PodSet {
                    pod: pod.clone(),
                    rules: rules.clone(),
                });
            }
        }
        out.extend(
            self.pods
                .keys()
                .filter(|pod| !new.pods.contains_key(*pod))
                .map(|pod| Change::PodRemoved { pod: pod.clone() }),
        );
        out.extend(
            self.sets
                .keys()
                .filter(|name| !new.sets.contains_key(*name))
                .map(|name| Change::SetRemoved { name: name.clone() }),
        );
        out
    }

    /// Applies `changes` (as [`diff`](Self::diff) lists them).
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::SetAdded { name, elements } => {
                    self.sets.insert(name.clone(), elements.clone());
                }
                Change::SetElements {
                    name,
                    added,
                    removed,
                } => {
                    let set = self.sets.entry(name.clone()).or_default();
                    set.retain(|e| !removed.contains(e));
                    set.extend(added.iter().copied());
                }
                Change::NodeAddresses { added, removed } => {
                    self.node_addresses.retain(|a| !removed.contains(a));
                    self.node_addresses.extend(added.iter().copied());
                }
                Change::PodSet { pod, rules } => {
                    self.pods.insert(pod.clone(), rules.clone());
                }
                Change::PodRemoved { pod } => {
                    self.pods.remove(pod);
                }
                Change::SetRemoved { name } => {
                    self.sets.remove(name);
                }
            }
        }
    }
}
