//! The conversion of Kubernetes API objects (JSON as a server sends it) into the core's
//! cluster types: the same bytes are read as a Namespace, a Pod and a NetworkPolicy.
//! Properties: no input panics; an error message stays bounded; what converts holds the
//! core's invariants (a policy affects a direction, port ranges are ordered and non-zero,
//! `except` blocks are strict sub-networks, selector values suit their operators, port names
//! are valid, pod addresses canonical, the namespace name label set); and the object, written
//! back to JSON by k8s-openapi, converts to the same value.

#![no_main]
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use libfuzzer_sys::fuzz_target;
use router::kube::convert::{Convert, ConvertError, from_json, valid_port_name};
use topology::cluster::{self, LabelSelector, NAMESPACE_NAME_LABEL, Operator, Peer, PortSpec};

/// Converts `data` as a `K`; on success also through `K`'s own JSON, which must agree.
fn check<K: Convert + serde::Serialize>(data: &[u8]) -> Option<K::Core>
where
    K::Core: PartialEq + std::fmt::Debug,
{
    match from_json::<K>(data) {
        Ok(core) => {
            let object: K = serde_json::from_slice(data).unwrap();
            let again = serde_json::to_vec(&object).unwrap();
            assert_eq!(from_json::<K>(&again).unwrap(), core);
            Some(core)
        }
        Err(e) => {
            bounded(&e);
            None
        }
    }
}

fn bounded(e: &ConvertError) {
    let message = e.to_string();
    assert!(message.len() < 8192, "{} bytes", message.len());
}

fn selector_ok(s: &LabelSelector) {
    for r in &s.match_expressions {
        match r.operator {
            Operator::In | Operator::NotIn => assert!(!r.values.is_empty()),
            Operator::Exists | Operator::DoesNotExist => assert!(r.values.is_empty()),
        }
    }
}

fn policy_ok(p: &cluster::NetworkPolicy) {
    assert!(!p.namespace.is_empty() && !p.name.is_empty());
    let types = p.policy_types();
    assert!(types.ingress || types.egress);
    selector_ok(&p.pod_selector);
    for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    namespaces.iter().for_each(selector_ok);
                    selector_ok(pods);
                }
                Peer::IpBlock { cidr, except } => {
                    assert_eq!(*cidr, cidr.trunc());
                    for e in except {
                        assert_eq!(*e, e.trunc());
                        assert!(cidr.contains(e) && e.prefix_len() > cidr.prefix_len());
                    }
                }
            }
        }
        for port in &rule.ports {
            match &port.port {
                Some(PortSpec::Number { first, last }) => assert!(0 < *first && first <= last),
                Some(PortSpec::Named(name)) => assert!(valid_port_name(name)),
                None => {}
            }
        }
    }
}

fn pod_ok(p: &cluster::Pod) {
    assert!(!p.namespace.is_empty() && !p.name.is_empty());
    assert!(p.node.as_ref().is_none_or(|n| !n.is_empty()));
    assert!(p.ips.iter().all(|ip| ip.to_canonical() == *ip));
    assert!(
        p.ports
            .iter()
            .all(|c| c.port != 0 && valid_port_name(&c.name))
    );
}

fuzz_target!(|data: &[u8]| {
    if let Some(ns) = check::<Namespace>(data) {
        assert_eq!(ns.labels.get(NAMESPACE_NAME_LABEL), Some(&ns.name));
    }
    if let Some(p) = check::<Pod>(data) {
        pod_ok(&p);
    }
    if let Some(p) = check::<NetworkPolicy>(data) {
        policy_ok(&p);
    }
});
