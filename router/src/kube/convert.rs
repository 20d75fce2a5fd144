//! From the Kubernetes API's objects (k8s-openapi) to the pure core's [`topology::cluster`]
//! types: [`namespace`], [`pod`] and [`network_policy`], and [`from_json`] for raw bytes.
//!
//! The conversion applies the API's defaults (documented in [`topology::cluster`]) and refuses,
//! with a [`ConvertError`], what the API server's validation would have refused, so the core
//! never holds a half-understood object: a missing name or namespace, a bad address or CIDR,
//! an unknown protocol, operator or policy type, a selector requirement whose values do not
//! suit its operator, a port out of range, an `endPort` without a numeric port or below it, a
//! malformed port name, an `except` outside its `cidr`, a peer with no selector or with both
//! an `ipBlock` and a selector. Nothing here panics, whatever the input (the
//! `router_kube_convert` fuzz target checks it).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as api_core;
use k8s_openapi::api::networking::v1 as api_net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as api_meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use topology::cluster::{
    self, ContainerPort, LabelSelector, NAMESPACE_NAME_LABEL, Operator, Peer, PolicyPort, PortSpec,
    Protocol, Requirement, Rule,
};

/// Why an API object did not convert.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}{}: {}{problem}", Object(.namespace, .name), Field(.field))]
pub struct ConvertError {
    /// The object's kind.
    pub kind: Kind,
    /// `metadata.namespace`, when known.
    pub namespace: Option<String>,
    /// `metadata.name`, when known.
    pub name: Option<String>,
    /// Where in the object, as a JSON path (`spec.ingress[0].ports[1].endPort`); empty when
    /// the problem is the object as a whole.
    pub field: String,
    /// What was wrong.
    pub problem: Problem,
}

/// The kinds of object converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1/Namespace`.
    Namespace,
    /// `v1/Pod`.
    Pod,
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy,
}

impl Kind {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was wrong with an object (values from the input are cut to [`MAX_QUOTED`] chars).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The bytes are not JSON of the kind's shape (only from [`from_json`]).
    #[error("not a valid object: {0}")]
    Json(String),
    /// A required field is absent or empty.
    #[error("missing")]
    Missing,
    /// Not an IP address.
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    /// Not a CIDR (`192.0.2.0/24`, `2001:db8::/64`).
    #[error("{0:?} is not a CIDR")]
    BadCidr(String),
    /// An `except` entry that is not a strict subset of the block's `cidr`.
    #[error("{except} is not a strict subset of cidr {cidr}")]
    ExceptOutsideCidr {
        /// The block.
        cidr: IpNet,
        /// The entry.
        except: IpNet,
    },
    /// A protocol other than TCP, UDP and SCTP.
    #[error("unknown protocol {0:?} (TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    /// A selector operator other than In, NotIn, Exists and DoesNotExist.
    #[error("unknown operator {0:?} (In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator(String),
    /// Values given with Exists or DoesNotExist.
    #[error("values given with operator {}", .0.as_str())]
    ValuesNotAllowed(Operator),
    /// No values with In or NotIn.
    #[error("operator {} needs at least one value", .0.as_str())]
    ValuesRequired(Operator),
    /// A policy type other than Ingress and Egress.
    #[error("unknown policy type {0:?} (Ingress or Egress)")]
    UnknownPolicyType(String),
    /// A port number outside 1..=65535.
    #[error("port {0} is out of range 1-65535")]
    PortOutOfRange(i32),
    /// `endPort` without `port`.
    #[error("endPort {0} without a port")]
    EndPortWithoutPort(i32),
    /// `endPort` with a named `port`.
    #[error("endPort {end} with the named port {port:?}")]
    EndPortWithNamedPort {
        /// The named port.
        port: String,
        /// The `endPort`.
        end: i32,
    },
    /// `endPort` below `port`.
    #[error("endPort {end} is below port {port}")]
    EndPortBelowPort {
        /// `port`.
        port: u16,
        /// `endPort`.
        end: i32,
    },
    /// A port name that is not an IANA service name (1-15 of `a-z0-9-`, a letter, no `--`,
    /// no hyphen at either end).
    #[error("{0:?} is not a valid port name")]
    BadPortName(String),
    /// A peer with none of `ipBlock`, `namespaceSelector` and `podSelector`.
    #[error("a peer needs an ipBlock, a namespaceSelector or a podSelector")]
    EmptyPeer,
    /// A peer with an `ipBlock` and a selector.
    #[error("a peer with an ipBlock may have no selector")]
    IpBlockWithSelector,
}

/// The most chars of an input value quoted in an error.
pub const MAX_QUOTED: usize = 64;
/// The most chars of an object's namespace or name kept in an error.
const MAX_NAME: usize = 253;

/// A k8s-openapi type this module converts, with its core counterpart.
pub trait Convert: k8s_openapi::Resource + DeserializeOwned {
    /// The [`topology::cluster`] type.
    type Core;
    /// Its kind, for errors.
    const CORE_KIND: Kind;

    /// Converts it.
    ///
    /// # Errors
    ///
    /// [`ConvertError`] when the object is not one the API server would have accepted.
    fn convert(&self) -> Result<Self::Core, ConvertError>;
}

impl Convert for api_core::Namespace {
    type Core = cluster::Namespace;
    const CORE_KIND: Kind = Kind::Namespace;
    fn convert(&self) -> Result<Self::Core, ConvertError> {
        namespace(self)
    }
}

impl Convert for api_core::Pod {
    type Core = cluster::Pod;
    const CORE_KIND: Kind = Kind::Pod;
    fn convert(&self) -> Result<Self::Core, ConvertError> {
        pod(self)
    }
}

impl Convert for api_net::NetworkPolicy {
    type Core = cluster::NetworkPolicy;
    const CORE_KIND: Kind = Kind::NetworkPolicy;
    fn convert(&self) -> Result<Self::Core, ConvertError> {
        network_policy(self)
    }
}

/// Decodes one `K` from JSON (as the API server sends it, `apiVersion` and `kind` optional)
/// and converts it.
///
/// # Errors
///
/// [`Problem::Json`] when the bytes are not a `K`, else what [`Convert::convert`] finds.
pub fn from_json<K: Convert>(bytes: &[u8]) -> Result<K::Core, ConvertError> {
    let object: K = serde_json::from_slice(bytes).map_err(|e| ConvertError {
        kind: K::CORE_KIND,
        namespace: None,
        name: None,
        field: String::new(),
        problem: Problem::Json(clip(&e.to_string(), 4 * MAX_QUOTED)),
    })?;
    object.convert()
}

/// Converts a namespace: its name and labels, with `kubernetes.io/metadata.name` set to the
/// name as the API server sets it.
///
/// # Errors
///
/// [`Problem::Missing`] when it has no name.
pub fn namespace(ns: &api_core::Namespace) -> Result<cluster::Namespace, ConvertError> {
    let kind = Kind::Namespace;
    let name = ns
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Invalid::new("metadata.name", Problem::Missing).into_error(kind, None, None)
        })?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
    Ok(cluster::Namespace { name, labels })
}

/// Converts a pod: labels, `spec.nodeName`, `spec.hostNetwork`, the named ports of its
/// containers (and of its sidecars: init containers with `restartPolicy: Always`), and its
/// addresses from `status.podIPs` (else `status.podIP`), none once it has finished.
///
/// # Errors
///
/// [`ConvertError`] for a missing name or namespace, an address that does not parse, or a
/// named port with a bad name, number or protocol.
pub fn pod(pod: &api_core::Pod) -> Result<cluster::Pod, ConvertError> {
    let kind = Kind::Pod;
    let meta = &pod.metadata;
    let (namespace, name) = namespaced(kind, meta)?;
    let fail = |e: Invalid| e.into_error(kind, Some(&namespace), Some(&name));
    let spec = pod.spec.as_ref();
    let mut ports = Vec::new();
    if let Some(spec) = spec {
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"));
        let containers = spec.containers.iter().enumerate();
        for (list, (i, c)) in containers
            .map(|c| ("containers", c))
            .chain(sidecars.map(|c| ("initContainers", c)))
        {
            for (j, port) in c.ports.iter().flatten().enumerate() {
                if let Some(p) = container_port(port)
                    .map_err(|e| fail(e.within(&format!("spec.{list}[{i}].ports[{j}]"))))?
                {
                    ports.push(p);
                }
            }
        }
    }
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    let mut ips = Vec::new();
    if let Some(status) = status.filter(|_| !finished) {
        match status.pod_ips.as_deref() {
            Some(list) if !list.is_empty() => {
                for (i, ip) in list.iter().enumerate() {
                    ips.push(
                        parse_ip(&ip.ip)
                            .map_err(|e| fail(e.within(&format!("status.podIPs[{i}].ip"))))?,
                    );
                }
            }
            _ => {
                if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
                    ips.push(parse_ip(ip).map_err(|e| fail(e.within("status.podIP")))?);
                }
            }
        }
    }
    Ok(cluster::Pod {
        labels: meta.labels.clone().unwrap_or_default(),
        node: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
        namespace,
        name,
    })
}

/// Converts a network policy, applying the API's defaults (see
/// [`topology::cluster::NetworkPolicy`]): `policyTypes` absent or empty is Ingress, plus
/// Egress when there is at least one egress rule; rules of a direction not in effect are
/// checked, then dropped; an absent `podSelector` is the empty selector; a port's protocol
/// defaults to TCP.
///
/// # Errors
///
/// [`ConvertError`] for anything the API server's validation refuses (see the module docs).
pub fn network_policy(
    policy: &api_net::NetworkPolicy,
) -> Result<cluster::NetworkPolicy, ConvertError> {
    let kind = Kind::NetworkPolicy;
    let meta = &policy.metadata;
    let (namespace, name) = namespaced(kind, meta)?;
    let fail = |e: Invalid| e.into_error(kind, Some(&namespace), Some(&name));
    let default_spec = api_net::NetworkPolicySpec::default();
    let spec = policy.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(s).map_err(|e| fail(e.within("spec.podSelector")))?,
        None => LabelSelector::everything(),
    };
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(r.from.as_deref(), r.ports.as_deref(), "from")
                .map_err(|e| fail(e.within(&format!("spec.ingress[{i}]"))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(r.to.as_deref(), r.ports.as_deref(), "to")
                .map_err(|e| fail(e.within(&format!("spec.egress[{i}]"))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut wants_ingress, mut wants_egress) = (false, false);
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => wants_ingress = true,
                    "Egress" => wants_egress = true,
                    other => {
                        return Err(fail(Invalid::new(
                            format!("spec.policyTypes[{i}]"),
                            Problem::UnknownPolicyType(clip(other, MAX_QUOTED)),
                        )));
                    }
                }
            }
        }
        _ => {
            wants_ingress = true;
            wants_egress = !egress.is_empty();
        }
    }
    Ok(cluster::NetworkPolicy {
        namespace,
        name,
        pod_selector,
        ingress: wants_ingress.then_some(ingress),
        egress: wants_egress.then_some(egress),
    })
}

/// A problem and where it is, relative to the part being converted.
#[derive(Debug)]
struct Invalid {
    field: String,
    problem: Problem,
}

impl Invalid {
    fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }

    /// The same problem, seen from `parent`.
    fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    fn into_error(self, kind: Kind, ns: Option<&str>, name: Option<&str>) -> ConvertError {
        ConvertError {
            kind,
            namespace: ns.map(|n| clip(n, MAX_NAME)),
            name: name.map(|n| clip(n, MAX_NAME)),
            field: self.field,
            problem: self.problem,
        }
    }
}

/// The namespace and name of a namespaced object, both required.
fn namespaced(kind: Kind, meta: &api_meta::ObjectMeta) -> Result<(String, String), ConvertError> {
    let ns = meta.namespace.as_deref().filter(|n| !n.is_empty());
    let name = meta.name.as_deref().filter(|n| !n.is_empty());
    match (ns, name) {
        (Some(ns), Some(name)) => Ok((ns.to_owned(), name.to_owned())),
        (None, _) => {
            Err(Invalid::new("metadata.namespace", Problem::Missing).into_error(kind, None, name))
        }
        (Some(_), None) => {
            Err(Invalid::new("metadata.name", Problem::Missing).into_error(kind, ns, None))
        }
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, Invalid> {
    s.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| Invalid::new("", Problem::BadIp(clip(s, MAX_QUOTED))))
}

fn protocol(p: Option<&str>) -> Result<Protocol, Invalid> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::from_api(s)
            .ok_or_else(|| Invalid::new("protocol", Problem::UnknownProtocol(clip(s, MAX_QUOTED)))),
    }
}

fn port_number(n: i32, field: &str) -> Result<u16, Invalid> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| Invalid::new(field, Problem::PortOutOfRange(n)))
}

/// A container port, if it has a name.
fn container_port(p: &api_core::ContainerPort) -> Result<Option<ContainerPort>, Invalid> {
    let Some(name) = p.name.as_deref() else {
        return Ok(None);
    };
    if !valid_port_name(name) {
        return Err(Invalid::new(
            "name",
            Problem::BadPortName(clip(name, MAX_QUOTED)),
        ));
    }
    Ok(Some(ContainerPort {
        name: name.to_owned(),
        protocol: protocol(p.protocol.as_deref())?,
        port: port_number(p.container_port, "containerPort")?,
    }))
}

/// An IANA service name, as Kubernetes checks port names (`IsValidPortName`).
pub fn valid_port_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=15).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn selector(s: &api_meta::LabelSelector) -> Result<LabelSelector, Invalid> {
    let mut match_expressions = Vec::new();
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let at = |field: &str, problem: Problem| {
            Invalid::new(format!("matchExpressions[{i}].{field}"), problem)
        };
        let operator = Operator::from_api(&r.operator).ok_or_else(|| {
            at(
                "operator",
                Problem::UnknownOperator(clip(&r.operator, MAX_QUOTED)),
            )
        })?;
        let values: std::collections::BTreeSet<String> =
            r.values.iter().flatten().cloned().collect();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(at("values", Problem::ValuesRequired(operator)));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(at("values", Problem::ValuesNotAllowed(operator)));
            }
            Operator::In | Operator::NotIn | Operator::Exists | Operator::DoesNotExist => {}
        }
        match_expressions.push(Requirement {
            key: r.key.clone(),
            operator,
            values,
        });
    }
    Ok(LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

fn rule(
    peers: Option<&[api_net::NetworkPolicyPeer]>,
    ports: Option<&[api_net::NetworkPolicyPort]>,
    peers_field: &str,
) -> Result<Rule, Invalid> {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| peer(p).map_err(|e| e.within(&format!("{peers_field}[{i}]"))))
        .collect::<Result<_, _>>()?;
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| policy_port(p).map_err(|e| e.within(&format!("ports[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(Rule { peers, ports })
}

fn peer(p: &api_net::NetworkPolicyPeer) -> Result<Peer, Invalid> {
    if let Some(block) = &p.ip_block {
        if p.namespace_selector.is_some() || p.pod_selector.is_some() {
            return Err(Invalid::new("", Problem::IpBlockWithSelector));
        }
        return ip_block(block).map_err(|e| e.within("ipBlock"));
    }
    if p.namespace_selector.is_none() && p.pod_selector.is_none() {
        return Err(Invalid::new("", Problem::EmptyPeer));
    }
    let namespaces = match &p.namespace_selector {
        Some(s) => Some(selector(s).map_err(|e| e.within("namespaceSelector"))?),
        None => None,
    };
    let pods = match &p.pod_selector {
        Some(s) => selector(s).map_err(|e| e.within("podSelector"))?,
        None => LabelSelector::everything(),
    };
    Ok(Peer::Pods { namespaces, pods })
}

fn parse_cidr(s: &str) -> Result<IpNet, Invalid> {
    // The API accepts host bits (`192.0.2.1/24`, ParseCIDRSloppy); the block is the network.
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| Invalid::new("", Problem::BadCidr(clip(s, MAX_QUOTED))))
}

fn ip_block(b: &api_net::IPBlock) -> Result<Peer, Invalid> {
    let cidr = parse_cidr(&b.cidr).map_err(|e| e.within("cidr"))?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let at = format!("except[{i}]");
        let net = parse_cidr(e).map_err(|err| err.within(&at))?;
        if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
            return Err(Invalid::new(
                at,
                Problem::ExceptOutsideCidr { cidr, except: net },
            ));
        }
        except.push(net);
    }
    Ok(Peer::IpBlock { cidr, except })
}

fn policy_port(p: &api_net::NetworkPolicyPort) -> Result<PolicyPort, Invalid> {
    let protocol = protocol(p.protocol.as_deref())?;
    let port = match (&p.port, p.end_port) {
        (None, None) => None,
        (None, Some(end)) => {
            return Err(Invalid::new("endPort", Problem::EndPortWithoutPort(end)));
        }
        (Some(IntOrString::String(name)), end) => {
            if let Some(end) = end {
                return Err(Invalid::new(
                    "endPort",
                    Problem::EndPortWithNamedPort {
                        port: clip(name, MAX_QUOTED),
                        end,
                    },
                ));
            }
            if !valid_port_name(name) {
                return Err(Invalid::new(
                    "port",
                    Problem::BadPortName(clip(name, MAX_QUOTED)),
                ));
            }
            Some(PortSpec::Named(name.clone()))
        }
        (Some(IntOrString::Int(n)), end) => {
            let first = port_number(*n, "port")?;
            let last = match end {
                None => first,
                Some(end) => {
                    let last = port_number(end, "endPort")?;
                    if last < first {
                        return Err(Invalid::new(
                            "endPort",
                            Problem::EndPortBelowPort { port: first, end },
                        ));
                    }
                    last
                }
            };
            Some(PortSpec::Number { first, last })
        }
    };
    Ok(PolicyPort { protocol, port })
}

/// At most `max` chars of `s`, cut at a char boundary.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// ` NAMESPACE/NAME`, ` NAME` or nothing, for [`ConvertError`]'s message.
struct Object<'a>(&'a Option<String>, &'a Option<String>);

impl fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}"),
            (Some(ns), None) => write!(f, " in {ns}"),
            (None, Some(name)) => write!(f, " {name}"),
            (None, None) => Ok(()),
        }
    }
}

/// `FIELD: ` or nothing.
struct Field<'a>(&'a str);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
