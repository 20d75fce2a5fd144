//! Judging a connection initiation with compiled [`RuleSet`]s only, as the kernel would: the
//! egress verdict at the source's node, the ingress verdict at the destination's node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::cluster::{ClusterView, Protocol};

use super::Direction;
use super::compile::{Allow, PodRules, PortMatch, RuleSet, set_contains};

impl RuleSet {
    /// The local pod using `ip`, if any.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&PodRules> {
        self.pods.values().find(|p| p.ips.contains(&ip))
    }

    /// Whether this node lets the connection `src` opens to `dst`'s `port` over `protocol`
    /// pass: the egress verdict if `src` is a local pod, and the ingress verdict if `dst` is
    /// one (a connection touching no local pod is not this node's to judge: it passes).
    pub fn allows(&self, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> bool {
        let egress = self
            .pod_at(src)
            .is_none_or(|pod| self.verdict(pod, Direction::Egress, dst, dst, protocol, port));
        let ingress = self
            .pod_at(dst)
            .is_none_or(|pod| self.verdict(pod, Direction::Ingress, src, dst, protocol, port));
        egress && ingress
    }

    /// `pod`'s chain for `direction`, with `other` the other end's address.
    fn verdict(
        &self,
        pod: &PodRules,
        direction: Direction,
        other: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        if pod.ips.contains(&other) || self.node_addresses.contains(&other) {
            return true;
        }
        match pod.chain(direction) {
            None => true,
            Some(chain) => chain
                .iter()
                .any(|allow| self.matches(allow, other, dst, protocol, port)),
        }
    }

    fn in_set(&self, name: &str, ip: IpAddr) -> bool {
        self.sets.get(name).is_some_and(|set| set_contains(set, ip))
    }

    fn matches(
        &self,
        allow: &Allow,
        other: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        let peer_ok = allow
            .peer
            .as_deref()
            .is_none_or(|name| self.in_set(name, other));
        let port_ok = match &allow.ports {
            PortMatch::Any => true,
            PortMatch::Range {
                protocol: p,
                first,
                last,
            } => *p == protocol && (*first..=*last).contains(&port),
            PortMatch::Named {
                protocol: p,
                port: n,
                destinations,
            } => *p == protocol && *n == port && self.in_set(destinations, dst),
        };
        peer_ok && port_ok
    }
}

/// Every node's [`RuleSet`], by node name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRules {
    /// The rule set of each node.
    pub nodes: BTreeMap<String, RuleSet>,
}

impl ClusterRules {
    /// Compiles the rules of every node of `nodes` (name to its own addresses). Pods on a
    /// node not listed, or not scheduled, are enforced nowhere.
    pub fn compile(view: &ClusterView, nodes: &BTreeMap<String, Vec<IpAddr>>) -> Self {
        Self {
            nodes: nodes
                .iter()
                .map(|(name, ips)| (name.clone(), RuleSet::compile(view, name, ips)))
                .collect(),
        }
    }

    /// Whether the connection passes every node's rules (in practice: the source's node's
    /// egress verdict and the destination's node's ingress verdict).
    pub fn allows(&self, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.nodes
            .values()
            .all(|rules| rules.allows(src, dst, protocol, port))
    }
}
