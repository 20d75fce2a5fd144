//! Peer discovery from Kubernetes Node objects, sans-IO (`weft router --kube-peers`).
//!
//! Two parts, both pure:
//!
//! - [`Node`]: the few fields of the Kubernetes API's Node that weft reads (`metadata.name`,
//!   `status.addresses` of type `InternalIP` and `ExternalIP`), built by [`Node::from_status`];
//! - [`Discovery`]: the cluster's nodes against what discovery has already done, turned into
//!   [`Action`]s (connect, forget, rmpeer) by [`reconcile`].
//!
//! The router's `kube` module lists and watches Nodes through the `kube` crate, converts each
//! object with [`Node::from_status`] and feeds the daemon the actions through the same command
//! channel as `weft connect|forget|rmpeer`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// One Kubernetes node, as weft needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`: a DNS subdomain (checked), also the node's weft nickname.
    pub name: String,
    /// The first `InternalIP` of `status.addresses` (IPv4 preferred); `None` when it has none.
    pub internal_ip: Option<IpAddr>,
    /// Every `InternalIP` and `ExternalIP` (at most [`MAX_NODE_ADDRESSES`]): the sources the
    /// node's router may dial from, admitted to the control port.
    pub addresses: Vec<IpAddr>,
}

/// The most addresses kept per node; a Node listing more is cut short, not refused.
pub const MAX_NODE_ADDRESSES: usize = 16;

/// Why a Node object is of no use to discovery.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// `metadata.name` is missing or not a DNS subdomain.
    #[error("node name {0:?} missing or not a DNS subdomain")]
    Name(String),
}

impl Node {
    /// The node named `name` with the `status.addresses` given as `(type, address)` pairs, as
    /// the shell reads them from the API object. The first `InternalIP` (IPv4 preferred) is
    /// the one dialled; every parsable `InternalIP` and `ExternalIP` is kept for admission, at
    /// most [`MAX_NODE_ADDRESSES`]. An unparsable address is skipped, not an error.
    ///
    /// # Errors
    ///
    /// [`NodeError::Name`] when the name is not a DNS subdomain (it doubles as a nickname).
    pub fn from_status<'a>(
        name: &str,
        addresses: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, NodeError> {
        if !valid_node_name(name) {
            // Any string may come here: cut at a character boundary.
            return Err(NodeError::Name(name.chars().take(MAX_MESSAGE).collect()));
        }
        let mut internal: Vec<IpAddr> = Vec::new();
        let mut all: Vec<IpAddr> = Vec::new();
        for (kind, address) in addresses {
            let Ok(ip) = address.parse::<IpAddr>() else {
                continue;
            };
            match kind {
                "InternalIP" => {
                    internal.push(ip);
                    all.push(ip.to_canonical());
                }
                "ExternalIP" => all.push(ip.to_canonical()),
                _ => {}
            }
        }
        let internal_ip = internal
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| internal.first())
            .copied();
        all.sort_unstable();
        all.dedup();
        all.truncate(MAX_NODE_ADDRESSES);
        Ok(Self {
            name: name.to_owned(),
            internal_ip,
            addresses: all,
        })
    }
}

/// A Kubernetes node name: a DNS subdomain (RFC 1123), at most 253 characters.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Most characters of an invalid name kept in an error.
const MAX_MESSAGE: usize = 512;

/// What discovery asks the router to do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Stop dialling an address (the node is gone, or its address changed).
    Forget {
        /// The node.
        node: String,
        /// The address dialled so far.
        addr: SocketAddr,
    },
    /// Dial the node's router.
    Connect {
        /// The node.
        node: String,
        /// Its `InternalIP` and the mesh port.
        addr: SocketAddr,
    },
    /// Remove the deleted node's peer and reclaim its IP space (`weft rmpeer`). Only the
    /// reclaimer (the live node with the lowest name) asks for it, so that one router takes the
    /// space over, as IPAM requires.
    RmPeer {
        /// The deleted node; its router's nickname.
        node: String,
    },
}

/// What discovery has done so far. Mutated only by the outcome methods, so a failed action is
/// planned again by the next [`reconcile`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Nodes whose address the router was told to dial, and that address.
    pub dialled: BTreeMap<String, SocketAddr>,
    /// Every node seen in the last observation.
    pub known: BTreeSet<String>,
    /// Deleted nodes whose IP space nobody is known to have reclaimed yet.
    pub unreclaimed: BTreeSet<String>,
}

impl Discovery {
    /// Records the nodes as they are now: known nodes missing from `nodes` were deleted and
    /// wait for their space to be reclaimed; a node that came back needs no reclaim.
    pub fn observe(&mut self, me: &str, nodes: &BTreeMap<String, Node>) {
        for gone in self.known.iter().filter(|n| !nodes.contains_key(*n)) {
            if gone != me {
                self.unreclaimed.insert(gone.clone());
            }
        }
        self.unreclaimed.retain(|n| !nodes.contains_key(n));
        self.known = nodes.keys().cloned().collect();
    }

    /// The router now dials `addr` for `node`.
    pub fn connected(&mut self, node: &str, addr: SocketAddr) {
        self.dialled.insert(node.to_owned(), addr);
    }

    /// The router no longer dials `node`'s old address.
    pub fn forgotten(&mut self, node: &str, addr: SocketAddr) {
        if self.dialled.get(node) == Some(&addr) {
            self.dialled.remove(node);
        }
    }

    /// `node`'s space is reclaimed (or there was nothing to reclaim).
    pub fn reclaimed(&mut self, node: &str) {
        self.unreclaimed.remove(node);
    }
}

/// Plans what brings the router in line with the cluster's `nodes`, given what `done` has
/// done so far. `me` is this node's name (never dialled, never removed); `port` is the mesh
/// port every router listens on.
///
/// - a node with an `InternalIP` that is not dialled at that address: [`Action::Connect`]
///   (after [`Action::Forget`] of its old address, if it moved);
/// - a dialled node that is gone or lost its address: [`Action::Forget`];
/// - a node that was known and is gone, or still waits for its space: [`Action::RmPeer`], on
///   the reclaimer only.
///
/// Call [`Discovery::observe`] first, so deletions since the last call are in
/// `done.unreclaimed`. Actions come sorted: forgets, then connects, then rmpeers.
pub fn reconcile(
    me: &str,
    port: u16,
    nodes: &BTreeMap<String, Node>,
    done: &Discovery,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for node in nodes.values().filter(|n| n.name != me) {
        let want = node.internal_ip.map(|ip| SocketAddr::new(ip, port));
        let have = done.dialled.get(&node.name).copied();
        if want == have {
            continue;
        }
        if let Some(addr) = have {
            actions.push(Action::Forget {
                node: node.name.clone(),
                addr,
            });
        }
        if let Some(addr) = want {
            actions.push(Action::Connect {
                node: node.name.clone(),
                addr,
            });
        }
    }
    for (node, &addr) in &done.dialled {
        if !nodes.contains_key(node) {
            actions.push(Action::Forget {
                node: node.clone(),
                addr,
            });
        }
    }
    if is_reclaimer(me, nodes) {
        for node in done.unreclaimed.iter().filter(|n| !nodes.contains_key(*n)) {
            actions.push(Action::RmPeer { node: node.clone() });
        }
    }
    actions.sort();
    actions
}

/// True when `me` is the live node with the lowest name: the one router that reclaims a
/// deleted node's space.
pub fn is_reclaimer(me: &str, nodes: &BTreeMap<String, Node>) -> bool {
    nodes.keys().next().is_some_and(|first| first == me)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
