//! Peer discovery from Kubernetes Node objects, sans-IO (`weft router --kube-peers`).
//!
//! Three parts, all pure:
//!
//! - the few fields of the Kubernetes API's `Node` that weft reads (`metadata.name`,
//!   `metadata.resourceVersion`, `status.addresses[type=InternalIP]`), as plain values;
//! - their decoders: [`decode_node_list`] for `GET /api/v1/nodes` (a `NodeList`) and
//!   [`decode_watch_event`] for one line of `GET /api/v1/nodes?watch=1` (`{"type": "ADDED",
//!   "object": {...}}`, newline-delimited), including `BOOKMARK` and `ERROR` (e.g. 410 Gone);
//! - [`Discovery`]: the cluster's nodes against what discovery has already done, turned into
//!   [`Action`]s (connect, forget, rmpeer) by [`reconcile`].
//!
//! The router's `kube` module does the HTTP and feeds the daemon the actions through the same
//! command channel as `weft connect|forget|rmpeer`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

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

/// A decoded `NodeList`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeList {
    /// `metadata.resourceVersion`: where a watch continues from.
    pub resource_version: String,
    /// The nodes that decoded.
    pub nodes: Vec<Node>,
    /// Items skipped because their name was missing or not a DNS subdomain.
    pub skipped: usize,
}

/// A decoded watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A node was created (or was there when the watch started).
    Added {
        /// The node.
        node: Node,
        /// The object's `resourceVersion`.
        resource_version: String,
    },
    /// A node changed.
    Modified {
        /// The node.
        node: Node,
        /// The object's `resourceVersion`.
        resource_version: String,
    },
    /// A node was deleted; the object is its last state.
    Deleted {
        /// The node.
        node: Node,
        /// The object's `resourceVersion`.
        resource_version: String,
    },
    /// Nothing changed, but the watch has seen everything up to this version.
    Bookmark {
        /// Where a new watch may continue from.
        resource_version: String,
    },
    /// The server ended the watch with a `Status` object.
    Error {
        /// `code`, e.g. 410 when the version is too old ("Gone": list again).
        code: u16,
        /// `reason` and `message`, for the log.
        message: String,
    },
}

/// Why API JSON did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not the expected shape.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// `kind` is not the expected one.
    #[error("expected kind {expected}, got {got:?}")]
    Kind {
        /// The kind wanted.
        expected: &'static str,
        /// The kind found.
        got: String,
    },
    /// The event `type` is not one of ADDED, MODIFIED, DELETED, BOOKMARK, ERROR.
    #[error("unknown watch event type {0:?}")]
    EventType(String),
    /// A field is missing or out of bounds.
    #[error("{0}")]
    Field(&'static str),
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<RawMeta>,
    #[serde(default)]
    items: Option<Vec<RawNode>>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<RawMeta>,
    #[serde(default)]
    status: Option<RawNodeStatus>,
}

#[derive(Deserialize)]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct RawNodeStatus {
    #[serde(default)]
    addresses: Option<Vec<RawAddress>>,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Decodes the body of `GET /api/v1/nodes`.
///
/// Items whose name is missing or not a DNS subdomain are skipped and counted; an item's
/// unparsable address only leaves its `internal_ip` empty. Nothing here panics.
///
/// # Errors
///
/// [`DecodeError`] when the body is not a `NodeList` or has no valid `resourceVersion`.
pub fn decode_node_list(bytes: &[u8]) -> Result<NodeList, DecodeError> {
    let raw: RawList =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
    if let Some(kind) = raw.kind.filter(|k| k != "NodeList") {
        return Err(DecodeError::Kind {
            expected: "NodeList",
            got: kind,
        });
    }
    let resource_version = raw
        .metadata
        .and_then(|m| m.resource_version)
        .filter(|v| valid_resource_version(v))
        .ok_or(DecodeError::Field(
            "NodeList metadata.resourceVersion missing or invalid",
        ))?;
    let mut nodes = Vec::new();
    let mut skipped = 0;
    for item in raw.items.unwrap_or_default() {
        match node_of(item) {
            Ok((node, _)) => nodes.push(node),
            Err(_) => skipped += 1,
        }
    }
    Ok(NodeList {
        resource_version,
        nodes,
        skipped,
    })
}

/// Decodes one line of a node watch.
///
/// # Errors
///
/// [`DecodeError`] when the line is not a watch event, its type is unknown, or its object is
/// not a node with a valid name and `resourceVersion` (for ADDED, MODIFIED, DELETED), a
/// `resourceVersion` (BOOKMARK) or a `Status` (ERROR).
pub fn decode_watch_event(line: &[u8]) -> Result<WatchEvent, DecodeError> {
    let raw: RawEvent =
        serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    let node_event = |object: serde_json::Value| -> Result<(Node, String), DecodeError> {
        let raw: RawNode =
            serde_json::from_value(object).map_err(|e| DecodeError::Json(e.to_string()))?;
        let (node, rv) = node_of(raw)?;
        let rv = rv.ok_or(DecodeError::Field(
            "watch event object has no valid metadata.resourceVersion",
        ))?;
        Ok((node, rv))
    };
    match raw.kind.as_str() {
        "ADDED" => node_event(raw.object).map(|(node, resource_version)| WatchEvent::Added {
            node,
            resource_version,
        }),
        "MODIFIED" => node_event(raw.object).map(|(node, resource_version)| WatchEvent::Modified {
            node,
            resource_version,
        }),
        "DELETED" => node_event(raw.object).map(|(node, resource_version)| WatchEvent::Deleted {
            node,
            resource_version,
        }),
        "BOOKMARK" => {
            let raw: RawNode =
                serde_json::from_value(raw.object).map_err(|e| DecodeError::Json(e.to_string()))?;
            let resource_version = raw
                .metadata
                .and_then(|m| m.resource_version)
                .filter(|v| valid_resource_version(v))
                .ok_or(DecodeError::Field(
                    "BOOKMARK object has no valid metadata.resourceVersion",
                ))?;
            Ok(WatchEvent::Bookmark { resource_version })
        }
        "ERROR" => {
            let raw: RawStatus =
                serde_json::from_value(raw.object).map_err(|e| DecodeError::Json(e.to_string()))?;
            let mut message = [raw.reason, raw.message]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            message.truncate(MAX_MESSAGE);
            Ok(WatchEvent::Error {
                code: raw.code.unwrap_or(0),
                message,
            })
        }
        other => {
            let mut other = other.to_owned();
            other.truncate(MAX_MESSAGE);
            Err(DecodeError::EventType(other))
        }
    }
}

fn node_of(raw: RawNode) -> Result<(Node, Option<String>), DecodeError> {
    if let Some(kind) = raw.kind.filter(|k| k != "Node") {
        let mut got = kind;
        got.truncate(MAX_MESSAGE);
        return Err(DecodeError::Kind {
            expected: "Node",
            got,
        });
    }
    let meta = raw
        .metadata
        .ok_or(DecodeError::Field("node without metadata"))?;
    let name = meta
        .name
        .filter(|n| valid_node_name(n))
        .ok_or(DecodeError::Field(
            "node name missing or not a DNS subdomain",
        ))?;
    let rv = meta.resource_version.filter(|v| valid_resource_version(v));
    let addresses = raw.status.and_then(|s| s.addresses).unwrap_or_default();
    let internal: Vec<IpAddr> = addresses
        .iter()
        .filter(|a| a.kind == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let internal_ip = internal
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| internal.first())
        .copied();
    let mut all: Vec<IpAddr> = addresses
        .iter()
        .filter(|a| a.kind == "InternalIP" || a.kind == "ExternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    all.sort_unstable();
    all.dedup();
    all.truncate(MAX_NODE_ADDRESSES);
    Ok((
        Node {
            name,
            internal_ip,
            addresses: all,
        },
        rv,
    ))
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

/// A resource version is opaque, but weft puts it in a URL: non-empty, bounded, printable
/// ASCII without spaces.
fn valid_resource_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_RESOURCE_VERSION && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Longest `resourceVersion` accepted.
pub const MAX_RESOURCE_VERSION: usize = 256;
/// Longest server message or unknown type kept.
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
