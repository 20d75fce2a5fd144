//! The conversion from the Kubernetes API's objects against its inverse: for any core
//! namespace, pod or network policy, the API object that means it (spelled with or without
//! the API's defaults), sent through JSON as a server would send it, converts back to the same
//! core object.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1 as api_core;
use k8s_openapi::api::networking::v1 as api_net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as api_meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use topology::cluster::{
    ContainerPort, LabelSelector, Labels, NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy, Operator,
    Peer, Pod, PolicyPort, PortSpec, Protocol, Requirement, Rule,
};
use weft_router::kube::convert::{Convert, from_json};

// ---- core objects ----

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,6}[a-z0-9]"
}

fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map("([a-z]{1,3}\\.io/)?[a-z]{1,4}", "[a-z0-9]{0,3}", 0..3)
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        "[a-z]{1,4}",
        prop::sample::select(vec![
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]),
        proptest::collection::btree_set("[a-z0-9]{0,3}", 1..3),
    )
        .prop_map(|(key, operator, values)| Requirement {
            key,
            operator,
            values: match operator {
                Operator::In | Operator::NotIn => values,
                Operator::Exists | Operator::DoesNotExist => Default::default(),
            },
        });
    (labels(), proptest::collection::vec(requirement, 0..3)).prop_map(
        |(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        },
    )
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::from(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::from(Ipv6Addr::from(b)).to_canonical()),
    ]
}

fn port_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z][a-z0-9]{0,6}", "[a-z0-9]{1,3}-[a-z]{1,3}"]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp])
}

fn namespace() -> impl Strategy<Value = Namespace> {
    (name(), labels()).prop_map(|(name, mut labels)| {
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        Namespace { name, labels }
    })
}

fn pod() -> impl Strategy<Value = Pod> {
    let port = (port_name(), protocol(), 1u16..).prop_map(|(name, protocol, port)| ContainerPort {
        name,
        protocol,
        port,
    });
    (
        (name(), name(), labels()),
        prop::option::of(name()),
        proptest::collection::vec(ip(), 0..3),
        any::<bool>(),
        proptest::collection::vec(port, 0..4),
    )
        .prop_map(
            |((namespace, name, labels), node, ips, host_network, ports)| Pod {
                namespace,
                name,
                labels,
                node,
                ips,
                host_network,
                ports,
            },
        )
}

/// A network with host bits cleared, and strict sub-networks of it.
fn ip_block() -> impl Strategy<Value = Peer> {
    let v4 = (any::<u32>(), 0u8..32).prop_flat_map(|(addr, len)| {
        let cidr = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
        let inner = (any::<u32>(), (len + 1)..=32).prop_map(move |(bits, sub)| {
            let host = bits & !u32::from(cidr.netmask());
            let addr = u32::from(cidr.network()) | host;
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), sub).unwrap().trunc())
        });
        proptest::collection::vec(inner, 0..3).prop_map(move |except| Peer::IpBlock {
            cidr: IpNet::V4(cidr),
            except,
        })
    });
    let v6 = (any::<u128>(), 0u8..128).prop_flat_map(|(addr, len)| {
        let cidr = Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc();
        let inner = (any::<u128>(), (len + 1)..=128).prop_map(move |(bits, sub)| {
            let host = bits & !u128::from(cidr.netmask());
            let addr = u128::from(cidr.network()) | host;
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), sub).unwrap().trunc())
        });
        proptest::collection::vec(inner, 0..3).prop_map(move |except| Peer::IpBlock {
            cidr: IpNet::V6(cidr),
            except,
        })
    });
    prop_oneof![v4, v6]
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        2 => (prop::option::of(selector()), selector())
            .prop_map(|(namespaces, pods)| Peer::Pods { namespaces, pods }),
        1 => ip_block(),
    ]
}

fn policy_port() -> impl Strategy<Value = PolicyPort> {
    let spec = prop_oneof![
        (1u16.., 0u16..2000, any::<bool>()).prop_map(|(first, span, one)| PortSpec::Number {
            first,
            last: if one {
                first
            } else {
                first.saturating_add(span)
            },
        }),
        port_name().prop_map(PortSpec::Named),
    ];
    (protocol(), prop::option::of(spec)).prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    let rule = (
        proptest::collection::vec(peer(), 0..3),
        proptest::collection::vec(policy_port(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports });
    proptest::collection::vec(rule, 0..3)
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        (name(), name()),
        selector(),
        prop::option::of(rules()),
        prop::option::of(rules()),
    )
        .prop_map(
            |((namespace, name), pod_selector, ingress, egress)| NetworkPolicy {
                namespace,
                name,
                pod_selector,
                // A policy affects at least one direction (no policyTypes reads as Ingress).
                ingress: if egress.is_none() {
                    Some(ingress.unwrap_or_default())
                } else {
                    ingress
                },
                egress,
            },
        )
}

// ---- the API objects that mean them ----
//
// `spell` says how to write what the API lets one leave out: `true` writes every default out
// (protocol TCP, endPort equal to port, empty selectors and lists, policyTypes), `false` omits
// every default it can.

fn api_labels(labels: &Labels, spell: bool) -> Option<BTreeMap<String, String>> {
    (spell || !labels.is_empty()).then(|| labels.clone())
}

fn api_selector(s: &LabelSelector, spell: bool) -> api_meta::LabelSelector {
    let expressions: Vec<_> = s
        .match_expressions
        .iter()
        .map(|r| api_meta::LabelSelectorRequirement {
            key: r.key.clone(),
            operator: r.operator.as_str().to_owned(),
            values: (spell || !r.values.is_empty()).then(|| r.values.iter().cloned().collect()),
        })
        .collect();
    api_meta::LabelSelector {
        match_labels: api_labels(&s.match_labels, spell),
        match_expressions: (spell || !expressions.is_empty()).then_some(expressions),
    }
}

fn api_protocol(p: Protocol, spell: bool) -> Option<String> {
    (spell || p != Protocol::Tcp).then(|| p.as_str().to_owned())
}

fn api_namespace(ns: &Namespace, spell: bool) -> api_core::Namespace {
    let mut labels = ns.labels.clone();
    if !spell {
        // The stand-in server may leave the label out; the conversion adds it.
        labels.remove(NAMESPACE_NAME_LABEL);
    }
    api_core::Namespace {
        metadata: api_meta::ObjectMeta {
            name: Some(ns.name.clone()),
            labels: api_labels(&labels, spell),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn api_pod(p: &Pod, spell: bool) -> api_core::Pod {
    let mut ports: Vec<_> = p
        .ports
        .iter()
        .map(|c| api_core::ContainerPort {
            name: Some(c.name.clone()),
            protocol: api_protocol(c.protocol, spell),
            container_port: i32::from(c.port),
            ..Default::default()
        })
        .collect();
    // An unnamed port, which no policy can name.
    ports.insert(
        ports.len() / 2,
        api_core::ContainerPort {
            container_port: 9999,
            ..Default::default()
        },
    );
    let ips: Vec<_> = p.ips.iter().map(|ip| ip.to_string()).collect();
    api_core::Pod {
        metadata: api_meta::ObjectMeta {
            namespace: Some(p.namespace.clone()),
            name: Some(p.name.clone()),
            labels: api_labels(&p.labels, spell),
            ..Default::default()
        },
        spec: Some(api_core::PodSpec {
            node_name: p.node.clone(),
            host_network: (spell || p.host_network).then_some(p.host_network),
            containers: vec![api_core::Container {
                name: "c".into(),
                image: Some("i".into()),
                ports: Some(ports),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(api_core::PodStatus {
            phase: Some(if ips.is_empty() { "Pending" } else { "Running" }.into()),
            pod_ip: ips.first().cloned(),
            // Without podIPs, podIP is the only address.
            pod_ips: (spell || ips.len() > 1).then(|| {
                ips.iter()
                    .map(|ip| api_core::PodIP { ip: ip.clone() })
                    .collect()
            }),
            ..Default::default()
        }),
    }
}

fn api_peer(p: &Peer, spell: bool) -> api_net::NetworkPolicyPeer {
    match p {
        Peer::Pods { namespaces, pods } => api_net::NetworkPolicyPeer {
            namespace_selector: namespaces.as_ref().map(|s| api_selector(s, spell)),
            // With a namespaceSelector, an absent podSelector is every pod.
            pod_selector: (spell || namespaces.is_none() || !pods.is_empty())
                .then(|| api_selector(pods, spell)),
            ip_block: None,
        },
        Peer::IpBlock { cidr, except } => api_net::NetworkPolicyPeer {
            ip_block: Some(api_net::IPBlock {
                cidr: cidr.to_string(),
                except: (spell || !except.is_empty())
                    .then(|| except.iter().map(IpNet::to_string).collect()),
            }),
            ..Default::default()
        },
    }
}

fn api_port(p: &PolicyPort, spell: bool) -> api_net::NetworkPolicyPort {
    let (port, end_port) = match &p.port {
        None => (None, None),
        Some(PortSpec::Named(name)) => (Some(IntOrString::String(name.clone())), None),
        Some(PortSpec::Number { first, last }) => (
            Some(IntOrString::Int(i32::from(*first))),
            (spell || last != first).then_some(i32::from(*last)),
        ),
    };
    api_net::NetworkPolicyPort {
        protocol: api_protocol(p.protocol, spell),
        port,
        end_port,
    }
}

fn api_rule(
    r: &Rule,
    spell: bool,
) -> (
    Option<Vec<api_net::NetworkPolicyPeer>>,
    Option<Vec<api_net::NetworkPolicyPort>>,
) {
    let peers: Vec<_> = r.peers.iter().map(|p| api_peer(p, spell)).collect();
    let ports: Vec<_> = r.ports.iter().map(|p| api_port(p, spell)).collect();
    (
        (spell || !peers.is_empty()).then_some(peers),
        (spell || !ports.is_empty()).then_some(ports),
    )
}

fn api_policy(p: &NetworkPolicy, spell: bool) -> api_net::NetworkPolicy {
    // policyTypes may be left out when the defaults give the same: ingress in effect, and
    // egress in effect exactly when it has rules.
    let defaults_agree = p.ingress.is_some() && p.egress.as_ref().is_none_or(|e| !e.is_empty());
    let types = p.policy_types();
    let policy_types = (spell || !defaults_agree).then(|| {
        [("Ingress", types.ingress), ("Egress", types.egress)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(t, _)| t.to_owned())
            .collect()
    });
    let ingress = p.ingress.as_ref().map(|rules| {
        rules
            .iter()
            .map(|r| {
                let (from, ports) = api_rule(r, spell);
                api_net::NetworkPolicyIngressRule { from, ports }
            })
            .collect()
    });
    let egress = p.egress.as_ref().map(|rules| {
        rules
            .iter()
            .map(|r| {
                let (to, ports) = api_rule(r, spell);
                api_net::NetworkPolicyEgressRule { to, ports }
            })
            .collect()
    });
    api_net::NetworkPolicy {
        metadata: api_meta::ObjectMeta {
            namespace: Some(p.namespace.clone()),
            name: Some(p.name.clone()),
            ..Default::default()
        },
        spec: Some(api_net::NetworkPolicySpec {
            pod_selector: (spell || !p.pod_selector.is_empty())
                .then(|| api_selector(&p.pod_selector, spell)),
            policy_types,
            ingress,
            egress,
        }),
    }
}

/// Converts `object` directly and through its JSON; both must give `want`.
fn back<K: Convert + serde::Serialize>(object: &K, want: &K::Core) -> Result<(), TestCaseError>
where
    K::Core: PartialEq + std::fmt::Debug,
{
    prop_assert_eq!(&object.convert().unwrap(), want);
    let json = serde_json::to_vec(object).unwrap();
    prop_assert_eq!(&from_json::<K>(&json).unwrap(), want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn namespaces_convert_back(ns in namespace(), spell in any::<bool>()) {
        back(&api_namespace(&ns, spell), &ns)?;
    }

    #[test]
    fn pods_convert_back(p in pod(), spell in any::<bool>()) {
        back(&api_pod(&p, spell), &p)?;
    }

    #[test]
    fn policies_convert_back(p in policy(), spell in any::<bool>()) {
        back(&api_policy(&p, spell), &p)?;
    }

    /// Rules of a direction the policy does not affect change nothing.
    #[test]
    fn rules_outside_the_policy_types_are_dropped(
        p in policy(),
        extra in rules(),
        spell in any::<bool>(),
    ) {
        let mut object = api_policy(&p, spell);
        let spec = object.spec.as_mut().unwrap();
        let types = p.policy_types();
        // Explicit types, so the extra rules cannot change them.
        spec.policy_types = Some(
            [("Ingress", types.ingress), ("Egress", types.egress)]
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(t, _)| t.to_owned())
                .collect(),
        );
        let unused = NetworkPolicy { ingress: Some(extra.clone()), egress: Some(extra), ..p.clone() };
        let unused = api_policy(&unused, spell).spec.unwrap();
        if !types.ingress {
            spec.ingress = unused.ingress;
        }
        if !types.egress {
            spec.egress = unused.egress;
        }
        back(&object, &p)?;
    }
}
