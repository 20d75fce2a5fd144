//! The reference NetworkPolicy evaluator: is one connection initiation allowed?
//!
//! Written straight from the `networking.k8s.io/v1` text, simply and without any
//! optimisation (every policy is scanned for every question), so that it can be checked by
//! reading. The compiled rules are property-tested against [`allowed`].
//!
//! The semantics, in the order [`allowed`] applies them:
//!
//! 1. **Always allowed.** A pod's connection to itself (at any of its addresses); a
//!    connection between a pod and its own node (an [`Endpoint::Node`] whose name is the
//!    pod's `spec.nodeName`, or a host-network pod on that node), either way. Connections
//!    where neither end is a pod that policies can select are never judged (nothing selects
//!    them), so they are allowed too.
//! 2. **Both directions.** Otherwise the connection is allowed iff the source's egress allows
//!    it and the destination's ingress allows it. Egress is judged only when the source is a
//!    pod policies can select, ingress only when the destination is. A host-network pod is
//!    never selected by a policy: it is judged as its node (or as a plain host when it is not
//!    scheduled).
//! 3. **Isolation.** A pod is isolated for a direction iff at least one policy of its
//!    namespace selects it (`podSelector`) and has that direction in effect (its effective
//!    `policyTypes`: [`NetworkPolicy::ingress`]/[`egress`](NetworkPolicy::egress) is
//!    `Some`). A direction that is not isolated allows everything. An isolated one allows the
//!    connection iff some rule of some selecting policy, in that direction, matches: the
//!    policies add up, none takes anything away.
//! 4. **Rules.** A rule matches iff one of its peers matches the *other* end (the source for
//!    ingress, the destination for egress) — no peers: any end, pod or not — and one of its
//!    port entries matches — no ports: every protocol and port.
//! 5. **Peers.** [`Peer::Pods`] matches a pod that policies can select (not a host-network
//!    pod, not a node or host) whose namespace is the policy's own when `namespaces` is
//!    `None`, or is a namespace of the view whose labels `namespaces` matches (a pod whose
//!    namespace the view does not hold is matched by no `namespaceSelector`), and whose
//!    labels `pods` matches. [`Peer::IpBlock`] matches when the other end's address for this
//!    connection (pods included) is in `cidr` and in none of `except`.
//! 6. **Ports.** Judged on the destination port, for both directions. The protocol must be the
//!    connection's. [`PortSpec::Number`] is an inclusive range. [`PortSpec::Named`] is looked
//!    up in the destination's container ports ([`Pod::named_port`], name and protocol) and
//!    matches when it resolves to the connection's port; it never matches when the
//!    destination is not a pod policies can select (a node, a host, a host-network pod), as
//!    upstream resolves named ports on destination pods only.
//!
//! Addresses: an [`Endpoint::Pod`] carries the address the connection uses on the pod's side
//! (one of `pod.ips`, which matters for `ipBlock`s and dual-stack pods). The evaluator does
//! not check that the address is the pod's. A pod without addresses (not started yet, or
//! finished: [`Pod::ips`] is empty) has no endpoint ([`Endpoint::of_pod`] yields none), so it
//! is never at either end of a connection and a compiler needs no rule for it; an address
//! it once had belongs to no pod until another pod reports it.

use std::net::IpAddr;

use crate::cluster::{ClusterView, NetworkPolicy, Peer, Pod, PolicyPort, PortSpec, Protocol, Rule};

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// A pod, using `ip` (one of its [`Pod::ips`]) for this connection. A host-network pod
    /// stands for its node (or for a plain host when it is not scheduled).
    Pod {
        /// The pod.
        pod: &'a Pod,
        /// Its address on this connection.
        ip: IpAddr,
    },
    /// One of a node's own addresses (the kubelet, a host-network process).
    Node {
        /// The Node object's name, as pods' `spec.nodeName` spells it.
        name: &'a str,
        /// The address.
        ip: IpAddr,
    },
    /// Anything else: outside the cluster, or an address that is neither a pod's nor a
    /// node's.
    Host(IpAddr),
}

impl<'a> Endpoint<'a> {
    /// One endpoint per address of `pod`, in its order (none for a pod without addresses).
    pub fn of_pod(pod: &'a Pod) -> impl Iterator<Item = Self> + 'a {
        pod.ips.iter().map(move |&ip| Self::Pod { pod, ip })
    }

    /// The address this end uses.
    pub fn ip(&self) -> IpAddr {
        match *self {
            Self::Pod { ip, .. } | Self::Node { ip, .. } | Self::Host(ip) => ip,
        }
    }

    /// The pod policies can select and match at this end: a pod not on the host network.
    pub fn policy_pod(&self) -> Option<&'a Pod> {
        match *self {
            Self::Pod { pod, .. } if !pod.host_network => Some(pod),
            Self::Pod { .. } | Self::Node { .. } | Self::Host(_) => None,
        }
    }

    /// The node this end is, if it is one: a node's address, or a scheduled host-network pod.
    pub fn node(&self) -> Option<&'a str> {
        match *self {
            Self::Node { name, .. } => Some(name),
            Self::Pod { pod, .. } if pod.host_network => pod.node.as_deref(),
            Self::Pod { .. } | Self::Host(_) => None,
        }
    }
}

/// A direction of traffic, as a pod sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Connections to the pod.
    Ingress,
    /// Connections from the pod.
    Egress,
}

/// Whether the connection `src` opens to `dst`'s `port` over `protocol` is allowed by the
/// policies of `view` (see the [module docs](self) for the semantics). Judges the initiation
/// only: replies of an allowed connection always pass.
pub fn allowed(
    view: &ClusterView,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    if always_allowed(src, dst) {
        return true;
    }
    let egress = match src.policy_pod() {
        Some(pod) => direction_allows(view, pod, Direction::Egress, dst, dst, protocol, port),
        None => true,
    };
    let ingress = match dst.policy_pod() {
        Some(pod) => direction_allows(view, pod, Direction::Ingress, src, dst, protocol, port),
        None => true,
    };
    egress && ingress
}

/// Whether `pod` is isolated for `direction`: some policy of its namespace selects it with
/// that direction in effect. A host-network pod never is.
pub fn isolated(view: &ClusterView, pod: &Pod, direction: Direction) -> bool {
    !pod.host_network
        && view
            .policies()
            .any(|policy| policy.selects(pod) && rules(policy, direction).is_some())
}

/// A pod to itself, and a pod to or from its own node.
fn always_allowed(src: Endpoint<'_>, dst: Endpoint<'_>) -> bool {
    if let (Some(a), Some(b)) = (src.policy_pod(), dst.policy_pod())
        && a.namespace == b.namespace
        && a.name == b.name
    {
        return true;
    }
    pod_and_its_node(src, dst) || pod_and_its_node(dst, src)
}

/// Whether `pod_end` is a (selectable) pod and `other` is the node it runs on.
fn pod_and_its_node(pod_end: Endpoint<'_>, other: Endpoint<'_>) -> bool {
    pod_end
        .policy_pod()
        .and_then(|pod| pod.node.as_deref())
        .is_some_and(|node| other.node() == Some(node))
}

/// The rules of `policy` for `direction`, if it has that direction in effect.
fn rules(policy: &NetworkPolicy, direction: Direction) -> Option<&[Rule]> {
    match direction {
        Direction::Ingress => policy.ingress.as_deref(),
        Direction::Egress => policy.egress.as_deref(),
    }
}

/// Whether `pod`'s `direction` allows the connection with `other` (the other end), whose
/// destination is `dst`: not isolated, or some rule of some selecting policy matches.
fn direction_allows(
    view: &ClusterView,
    pod: &Pod,
    direction: Direction,
    other: Endpoint<'_>,
    dst: Endpoint<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let mut isolated = false;
    for policy in view.policies() {
        if !policy.selects(pod) {
            continue;
        }
        let Some(rules) = rules(policy, direction) else {
            continue;
        };
        isolated = true;
        for rule in rules {
            if rule_matches(view, policy, rule, other, dst, protocol, port) {
                return true;
            }
        }
    }
    !isolated
}

/// Whether `rule` of `policy` matches: a peer matches `other` (or there are no peers) and a
/// port entry matches (or there are none).
fn rule_matches(
    view: &ClusterView,
    policy: &NetworkPolicy,
    rule: &Rule,
    other: Endpoint<'_>,
    dst: Endpoint<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(view, policy, p, other));
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|entry| port_matches(entry, dst, protocol, port));
    peer_ok && port_ok
}

/// Whether `peer`, in a rule of `policy`, matches the end `other`.
fn peer_matches(
    view: &ClusterView,
    policy: &NetworkPolicy,
    peer: &Peer,
    other: Endpoint<'_>,
) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = other.policy_pod() else {
                return false;
            };
            let namespace_ok = match namespaces {
                None => pod.namespace == policy.namespace,
                Some(selector) => view
                    .namespace(&pod.namespace)
                    .is_some_and(|ns| selector.matches(&ns.labels)),
            };
            namespace_ok && pods.matches(&pod.labels)
        }
        Peer::IpBlock { cidr, except } => {
            let ip = other.ip();
            cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
        }
    }
}

/// Whether the port entry `entry` matches the connection to `dst`'s `port` over `protocol`.
fn port_matches(entry: &PolicyPort, dst: Endpoint<'_>, protocol: Protocol, port: u16) -> bool {
    if entry.protocol != protocol {
        return false;
    }
    match &entry.port {
        None => true,
        Some(PortSpec::Number { first, last }) => (*first..=*last).contains(&port),
        Some(PortSpec::Named(name)) => {
            dst.policy_pod()
                .and_then(|pod| pod.named_port(name, protocol))
                == Some(port)
        }
    }
}
