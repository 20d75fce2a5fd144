//! The policy compiler for one node: from a [`ClusterView`] to the [`RuleSet`] the node
//! enforces for the pods scheduled on it.
//!
//! # The state
//!
//! A [`RuleSet`] is flat data, shaped for nftables:
//!
//! - **[`RuleSet::sets`]**: named IP sets ([`IpSet`]: disjoint prefixes, a host address as a
//!   `/32` or `/128`), one per peer of a rule and one per resolved egress named port. They map
//!   one-to-one onto nftables `interval` sets of `ipv4_addr`/`ipv6_addr` (one per family).
//!   Names are paths ([`SetName`]), stable across recompilations, so that a changed set is
//!   a changed element list, not a new name;
//! - **[`RuleSet::node_addresses`]**: the node's own addresses (plus those of the
//!   host-network pods on it): traffic between a local pod and these is always allowed;
//! - **[`RuleSet::pods`]**: per local pod (with addresses, not on the host network), its
//!   addresses and, per direction, `None` (not isolated: everything passes) or the list of
//!   [`Allow`] rules (isolated: a connection passes iff one matches). An empty list denies
//!   every connection in that direction.
//!
//! The nftables layer programs, per local pod and isolated direction, a chain that first
//! accepts traffic with the pod's own addresses and the node's addresses, then one rule per
//! [`Allow`] (`ip daddr @peer tcp dport 80-81 accept`; for [`PortMatch::Named`] the
//! destination must also be in its destination set), then drops. Egress chains are jumped to
//! on `ip saddr` of the pod, ingress chains on `ip daddr`, for connection initiations only
//! (`ct state new`); established traffic is accepted before, as the API requires.
//!
//! # Named ports
//!
//! For ingress a named port is the local pod's own container port: it resolves (or not) at
//! compile time to a [`PortMatch::Range`] of one port. For egress it is each *destination*
//! pod's: every distinct number `p` the name resolves to (with the entry's protocol) over the
//! cluster's selectable pods gives one [`PortMatch::Named`] whose destination set
//! (`named/<PROTO>/<name>/<p>`) holds the addresses of the pods where it resolves to `p`.
//!
//! Pure: no I/O, no clock. [`RuleSet::allows`] (in [`interpret`](super::interpret)) interprets the state as the
//! kernel would; it is property-tested against [`reference::allowed`](super::reference).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::{ClusterView, NetworkPolicy, Peer, Pod, PortSpec, Protocol, Rule};

use super::Direction;

/// A set's name: `<namespace>/<policy>/<ingress|egress>/<rule>/<peer>` for a rule's peer,
/// `named/<PROTO>/<port name>/<number>` for an egress named port's destinations.
pub type SetName = String;

/// An IP set: disjoint prefixes (a single address is a `/32` or `/128`).
pub type IpSet = BTreeSet<IpNet>;

/// A pod's key: (namespace, name).
pub type PodKey = (String, String);

/// Whether `ip` is in `set`.
pub fn set_contains(set: &IpSet, ip: IpAddr) -> bool {
    set.iter().any(|net| net.contains(&ip))
}

/// What one allow rule requires of the port (always the destination port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Every protocol and port.
    Any,
    /// `protocol` and a port in `first..=last`.
    Range {
        /// The protocol.
        protocol: Protocol,
        /// The first port.
        first: u16,
        /// The last port (inclusive).
        last: u16,
    },
    /// An egress named port resolved to `port`: `protocol`, exactly `port`, and the
    /// destination address in the set `destinations` (the pods where the name is `port`).
    Named {
        /// The protocol.
        protocol: Protocol,
        /// The resolved number.
        port: u16,
        /// The set of the destinations it resolves to `port` on.
        destinations: SetName,
    },
}

/// One allow rule of a pod's chain: the other end (source for ingress, destination for
/// egress) in `peer` (`None`: any address) and the port matching `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allow {
    /// The peer set, or `None` for any peer.
    pub peer: Option<SetName>,
    /// The port condition.
    pub ports: PortMatch,
}

/// The rules of one local pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRules {
    /// Its addresses (traffic to itself is always allowed).
    pub ips: Vec<IpAddr>,
    /// `None`: not isolated for ingress. `Some`: only what one of these allows.
    pub ingress: Option<Vec<Allow>>,
    /// `None`: not isolated for egress. `Some`: only what one of these allows.
    pub egress: Option<Vec<Allow>>,
}

impl PodRules {
    /// The chain of `direction`.
    pub fn chain(&self, direction: Direction) -> Option<&[Allow]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Everything one node enforces: see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// The node's name.
    pub node: String,
    /// The node's own addresses, and those of the host-network pods scheduled on it.
    pub node_addresses: BTreeSet<IpAddr>,
    /// The sets the pods' rules name (and only those).
    pub sets: BTreeMap<SetName, IpSet>,
    /// The local pods that have addresses and are not on the host network.
    pub pods: BTreeMap<PodKey, PodRules>,
}

impl RuleSet {
    /// Compiles the rules node `node`, whose own addresses are `node_ips`, enforces.
    pub fn compile(view: &ClusterView, node: &str, node_ips: &[IpAddr]) -> Self {
        let mut out = Self {
            node: node.to_owned(),
            node_addresses: node_ips.iter().copied().collect(),
            ..Self::default()
        };
        for pod in view.pods_on(node) {
            if pod.host_network {
                out.node_addresses.extend(pod.ips.iter().copied());
                continue;
            }
            if pod.ips.is_empty() {
                continue;
            }
            let mut rules = PodRules {
                ips: pod.ips.clone(),
                ingress: None,
                egress: None,
            };
            for policy in view.policies().filter(|p| p.selects(pod)) {
                for (direction, list, slot) in [
                    (Direction::Ingress, &policy.ingress, &mut rules.ingress),
                    (Direction::Egress, &policy.egress, &mut rules.egress),
                ] {
                    let Some(list) = list else { continue };
                    let chain = slot.get_or_insert_with(Vec::new);
                    for (index, rule) in list.iter().enumerate() {
                        let compiler = RuleCompiler {
                            view,
                            policy,
                            direction,
                            index,
                            local: pod,
                        };
                        compiler.compile(rule, chain, &mut out.sets);
                    }
                }
            }
            for chain in [&mut rules.ingress, &mut rules.egress]
                .into_iter()
                .flatten()
            {
                chain.sort();
                chain.dedup();
            }
            out.pods
                .insert((pod.namespace.clone(), pod.name.clone()), rules);
        }
        out
    }
}

/// Compiles one rule of one policy for one local pod.
struct RuleCompiler<'a> {
    view: &'a ClusterView,
    policy: &'a NetworkPolicy,
    direction: Direction,
    index: usize,
    local: &'a Pod,
}

impl RuleCompiler<'_> {
    fn compile(&self, rule: &Rule, chain: &mut Vec<Allow>, sets: &mut BTreeMap<SetName, IpSet>) {
        let peers: Vec<Option<SetName>> = if rule.peers.is_empty() {
            vec![None]
        } else {
            rule.peers
                .iter()
                .enumerate()
                .map(|(i, peer)| {
                    let name = format!(
                        "{}/{}/{}/{}/{i}",
                        self.policy.namespace,
                        self.policy.name,
                        match self.direction {
                            Direction::Ingress => "ingress",
                            Direction::Egress => "egress",
                        },
                        self.index
                    );
                    sets.entry(name.clone())
                        .or_insert_with(|| self.peer_set(peer));
                    Some(name)
                })
                .collect()
        };
        let mut ports = Vec::new();
        if rule.ports.is_empty() {
            ports.push(PortMatch::Any);
        }
        for entry in &rule.ports {
            let protocol = entry.protocol;
            match &entry.port {
                None => ports.push(PortMatch::Range {
                    protocol,
                    first: 0,
                    last: u16::MAX,
                }),
                Some(PortSpec::Number { first, last }) => ports.push(PortMatch::Range {
                    protocol,
                    first: *first,
                    last: *last,
                }),
                Some(PortSpec::Named(name)) => match self.direction {
                    Direction::Ingress => {
                        if let Some(port) = self.local.named_port(name, protocol) {
                            ports.push(PortMatch::Range {
                                protocol,
                                first: port,
                                last: port,
                            });
                        }
                    }
                    Direction::Egress => {
                        for (port, set) in named_port_sets(self.view, name, protocol) {
                            let destinations = format!("named/{}/{name}/{port}", protocol.as_str());
                            sets.insert(destinations.clone(), set);
                            ports.push(PortMatch::Named {
                                protocol,
                                port,
                                destinations,
                            });
                        }
                    }
                },
            }
        }
        for peer in &peers {
            for port in &ports {
                chain.push(Allow {
                    peer: peer.clone(),
                    ports: port.clone(),
                });
            }
        }
    }

    /// The addresses `peer` (of this rule's policy) matches.
    fn peer_set(&self, peer: &Peer) -> IpSet {
        match peer {
            Peer::Pods { namespaces, pods } => self
                .view
                .pods()
                .filter(|pod| !pod.host_network && pods.matches(&pod.labels))
                .filter(|pod| match namespaces {
                    None => pod.namespace == self.policy.namespace,
                    Some(selector) => self
                        .view
                        .namespace(&pod.namespace)
                        .is_some_and(|ns| selector.matches(&ns.labels)),
                })
                .flat_map(|pod| pod.ips.iter().map(|&ip| IpNet::from(ip)))
                .collect(),
            Peer::IpBlock { cidr, except } => {
                let mut out = IpSet::new();
                subtract(*cidr, except, &mut out);
                out
            }
        }
    }
}

/// For each number the named port `name`/`protocol` resolves to on some selectable pod, the
/// addresses of those pods.
fn named_port_sets(view: &ClusterView, name: &str, protocol: Protocol) -> BTreeMap<u16, IpSet> {
    let mut out: BTreeMap<u16, IpSet> = BTreeMap::new();
    for pod in view.pods().filter(|p| !p.host_network && !p.ips.is_empty()) {
        if let Some(port) = pod.named_port(name, protocol) {
            out.entry(port)
                .or_default()
                .extend(pod.ips.iter().map(|&ip| IpNet::from(ip)));
        }
    }
    out
}

/// Adds to `out` the prefixes covering `net` minus every prefix of `except`, as disjoint
/// prefixes (two prefixes are nested or disjoint, so splitting in halves suffices).
pub fn subtract(net: IpNet, except: &[IpNet], out: &mut IpSet) {
    if except.iter().any(|e| e.contains(&net)) {
        return;
    }
    if !except.iter().any(|e| net.contains(e)) {
        out.insert(net);
        return;
    }
    if let Ok(halves) = net.subnets(net.prefix_len().saturating_add(1)) {
        for half in halves {
            subtract(half, except, out);
        }
    }
}
