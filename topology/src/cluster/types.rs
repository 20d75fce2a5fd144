//! The objects [`ClusterView`](super::ClusterView) holds: namespaces, pods and network policies,
//! reduced to what NetworkPolicy enforcement reads, with the API's defaults already applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// Labels: key to value.
pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace, set to the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace (`v1/Namespace`): its name and labels (which `namespaceSelector`s match).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`, including [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

/// A pod (`v1/Pod`), as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.nodeName`: `None` until the pod is scheduled.
    pub node: Option<String>,
    /// `status.podIPs` (or `status.podIP`), in the API's order: empty until the pod has an
    /// address, and for a pod that has finished (phase `Succeeded` or `Failed`), whose
    /// addresses may already belong to another pod.
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`: the pod uses its node's addresses, not its own.
    pub host_network: bool,
    /// The named ports of its containers (unnamed ports are left out: a policy can only
    /// refer to a container port by name).
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// The named port `name` for `protocol`, if one of its containers declares it.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// `name`: what a policy's named port refers to.
    pub name: String,
    /// `protocol` (default TCP).
    pub protocol: Protocol,
    /// `containerPort`: 1 to 65535.
    pub port: u16,
}

/// A transport protocol a policy port or container port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `TCP` (the API's default).
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// The protocol the API spells `s` (case-sensitive, as the API server validates it).
    pub fn from_api(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

/// A label selector (`metav1.LabelSelector`): every `match_labels` pair and every requirement
/// must hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    /// `matchLabels`: the label must be present with exactly this value.
    pub match_labels: Labels,
    /// `matchExpressions`.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether it selects nothing but matches everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether an object with `labels` is selected, with the API's semantics.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the label's value is judged.
    pub operator: Operator,
    /// The values for [`Operator::In`] and [`Operator::NotIn`] (the API requires at least one);
    /// empty for the others.
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// Whether `labels` satisfy it.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            // An absent key is not in any set.
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // An absent key is not in the set either, so it matches.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// The key is present and its value is one of the values.
    In,
    /// The key is absent, or its value is none of the values.
    NotIn,
    /// The key is present (any value).
    Exists,
    /// The key is absent.
    DoesNotExist,
}

impl Operator {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }

    /// The operator the API spells `s` (case-sensitive).
    pub fn from_api(s: &str) -> Option<Self> {
        match s {
            "In" => Some(Self::In),
            "NotIn" => Some(Self::NotIn),
            "Exists" => Some(Self::Exists),
            "DoesNotExist" => Some(Self::DoesNotExist),
            _ => None,
        }
    }
}

/// A NetworkPolicy (`networking.k8s.io/v1`), with the API's defaults applied.
///
/// The policy types are held *effectively*, in the rule lists themselves: `ingress` is `Some`
/// exactly when the policy isolates the pods it selects for ingress, `egress` likewise. So:
///
/// - `policyTypes` absent: `ingress` is always `Some` (every policy affects ingress, with or
///   without an ingress section), and `egress` is `Some` iff the egress section has at least
///   one rule (the API server's defaulting; an empty `egress: []` does not count);
/// - `policyTypes` present: a direction it lists is `Some` (its rules, possibly none: nothing
///   allowed), a direction it omits is `None`, and that direction's rules, if any, are
///   dropped: they have no effect.
///
/// `Some(vec![])` thus denies every connection in that direction (beyond what other policies
/// allow); `None` leaves the direction alone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkPolicy {
    /// `metadata.namespace`: the policy selects pods in this namespace only.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.podSelector`: the pods the policy applies to (empty: every pod of the namespace).
    pub pod_selector: LabelSelector,
    /// Ingress rules, if the policy affects ingress; see the type's docs.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, if the policy affects egress; see the type's docs.
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    /// The effective `policyTypes`.
    pub fn policy_types(&self) -> PolicyTypes {
        PolicyTypes {
            ingress: self.ingress.is_some(),
            egress: self.egress.is_some(),
        }
    }

    /// Whether the policy applies to `pod` (same namespace, labels selected).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// Which directions a policy affects (the effective `policyTypes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyTypes {
    /// `Ingress`: the selected pods are isolated for ingress.
    pub ingress: bool,
    /// `Egress`: the selected pods are isolated for egress.
    pub egress: bool,
}

/// One ingress or egress rule: traffic from/to any of `peers` on any of `ports` is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress); empty: any peer, pod or not.
    pub peers: Vec<Peer>,
    /// `ports`; empty: every port and protocol.
    pub ports: Vec<PolicyPort>,
}

/// A `NetworkPolicyPeer`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods chosen by labels (`namespaceSelector` and/or `podSelector`).
    Pods {
        /// `namespaceSelector`: `None` is the policy's own namespace; `Some` selects namespaces
        /// by their labels (the empty selector: every namespace).
        namespaces: Option<LabelSelector>,
        /// `podSelector` within those namespaces; absent in the API is the empty selector
        /// (every pod).
        pods: LabelSelector,
    },
    /// `ipBlock`: addresses in `cidr` but in none of `except`. Meant for addresses outside
    /// the cluster; how it applies to pod addresses is the implementation's choice.
    IpBlock {
        /// The block, host bits cleared.
        cidr: IpNet,
        /// Strict sub-blocks of `cidr` left out, host bits cleared.
        except: Vec<IpNet>,
    },
}

/// A `NetworkPolicyPort`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPort {
    /// `protocol` (default TCP).
    pub protocol: Protocol,
    /// `port` (and `endPort`); `None`: every port of the protocol.
    pub port: Option<PortSpec>,
}

/// The port part of a [`PolicyPort`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// A numeric port, or a range with `endPort`: `first..=last`, `1 <= first <= last`.
    Number {
        /// `port`.
        first: u16,
        /// `endPort`, or `first` when absent.
        last: u16,
    },
    /// A named container port, looked up in each destination pod ([`Pod::named_port`]).
    Named(String),
}
