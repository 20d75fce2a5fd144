//! Objects as an API server sends them (JSON, as `kubectl get -o json` shows it), decoded
//! into the k8s-openapi types and converted; each defaulting rule and each refusal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use topology::cluster::{Labels, NetworkPolicy, Pod};

use super::*;

mod policy;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn select(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn ns_json(json: &str) -> Result<cluster::Namespace, ConvertError> {
    from_json::<api_core::Namespace>(json.as_bytes())
}

fn pod_json(json: &str) -> Result<Pod, ConvertError> {
    from_json::<api_core::Pod>(json.as_bytes())
}

// ---- Namespace ----

#[test]
fn namespace_keeps_its_labels() {
    let ns = ns_json(
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop","uid":"1a2b","resourceVersion":"310","creationTimestamp":"2026-12-01T10:00:00Z","labels":{"kubernetes.io/metadata.name":"shop","team":"payments"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}"#,
    )
    .unwrap();
    assert_eq!(ns.name, "shop");
    assert_eq!(
        ns.labels,
        labels(&[
            ("kubernetes.io/metadata.name", "shop"),
            ("team", "payments")
        ])
    );
}

#[test]
fn namespace_gets_the_name_label_the_api_server_sets() {
    let ns = ns_json(r#"{"metadata":{"name":"shop"}}"#).unwrap();
    assert_eq!(ns.labels, labels(&[(NAMESPACE_NAME_LABEL, "shop")]));
    // The API server overwrites a wrong value; so does the conversion.
    let ns =
        ns_json(r#"{"metadata":{"name":"shop","labels":{"kubernetes.io/metadata.name":"x"}}}"#)
            .unwrap();
    assert_eq!(ns.labels, labels(&[(NAMESPACE_NAME_LABEL, "shop")]));
}

#[test]
fn namespace_without_a_name_is_refused() {
    for json in [r#"{"metadata":{}}"#, r#"{"metadata":{"name":""}}"#] {
        let e = ns_json(json).unwrap_err();
        assert_eq!(
            (e.kind, e.field.as_str()),
            (Kind::Namespace, "metadata.name")
        );
        assert_eq!(e.problem, Problem::Missing);
        assert_eq!(e.to_string(), "Namespace: metadata.name: missing");
    }
}

// ---- Pod ----

/// A running dual-stack pod with a sidecar, trimmed from `kubectl get pod -o json`.
const RUNNING_POD: &str = r#"{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "web-7d9c5b6f4-x2x7q", "namespace": "shop", "uid": "c0ffee",
    "resourceVersion": "9001", "labels": {"app": "web", "pod-template-hash": "7d9c5b6f4"},
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c5b6f4",
      "uid": "beef", "controller": true, "blockOwnerDeletion": true}]},
  "spec": {
    "nodeName": "node-2",
    "initContainers": [
      {"name": "migrate", "image": "migrate:1", "ports": [{"name": "init-port", "containerPort": 9999}]},
      {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
       "ports": [{"name": "envoy-admin", "containerPort": 15000, "protocol": "TCP"}]}
    ],
    "containers": [
      {"name": "web", "image": "nginx:1.27",
       "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                 {"containerPort": 9090},
                 {"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
      {"name": "metrics", "image": "exporter:1",
       "ports": [{"name": "metrics", "containerPort": 9100}]}
    ],
    "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "serviceAccountName": "default"
  },
  "status": {
    "phase": "Running", "hostIP": "192.0.2.12", "hostIPs": [{"ip": "192.0.2.12"}],
    "podIP": "10.32.1.7", "podIPs": [{"ip": "10.32.1.7"}, {"ip": "fd00:10:32::1:7"}],
    "conditions": [{"type": "Ready", "status": "True"}], "qosClass": "BestEffort",
    "startTime": "2026-12-01T10:00:00Z"
  }
}"#;

#[test]
fn running_pod_converts() {
    let p = pod_json(RUNNING_POD).unwrap();
    let port = |name: &str, protocol, port| ContainerPort {
        name: name.to_owned(),
        protocol,
        port,
    };
    assert_eq!(
        p,
        Pod {
            namespace: "shop".into(),
            name: "web-7d9c5b6f4-x2x7q".into(),
            labels: labels(&[("app", "web"), ("pod-template-hash", "7d9c5b6f4")]),
            node: Some("node-2".into()),
            ips: vec![ip("10.32.1.7"), ip("fd00:10:32::1:7")],
            host_network: false,
            // Unnamed ports and plain init containers' ports are left out; sidecars count.
            ports: vec![
                port("http", Protocol::Tcp, 8080),
                port("dns", Protocol::Udp, 53),
                port("metrics", Protocol::Tcp, 9100),
                port("envoy-admin", Protocol::Tcp, 15000),
            ],
        }
    );
}

#[test]
fn pod_ip_is_the_fallback_for_pod_ips() {
    let p = pod_json(
        r#"{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[]},"status":{"phase":"Running","podIP":"10.32.0.5"}}"#,
    )
    .unwrap();
    assert_eq!(p.ips, [ip("10.32.0.5")]);
    let p = pod_json(
        r#"{"metadata":{"name":"a","namespace":"n"},"status":{"podIP":"10.32.0.5","podIPs":[]}}"#,
    )
    .unwrap();
    assert_eq!(p.ips, [ip("10.32.0.5")]);
    // podIPs wins when both are there.
    let p = pod_json(
        r#"{"metadata":{"name":"a","namespace":"n"},"status":{"podIP":"10.32.0.5","podIPs":[{"ip":"10.32.0.6"}]}}"#,
    )
    .unwrap();
    assert_eq!(p.ips, [ip("10.32.0.6")]);
    // An IPv4-mapped address is the IPv4 address, as Go's ParseIP reads it.
    let p = pod_json(
        r#"{"metadata":{"name":"a","namespace":"n"},"status":{"podIP":"::ffff:10.32.0.5"}}"#,
    )
    .unwrap();
    assert_eq!(p.ips, [ip("10.32.0.5")]);
}

#[test]
fn pending_pod_has_no_node_and_no_address() {
    let p = pod_json(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"n","labels":{"app":"x"}},"spec":{"containers":[{"name":"c","image":"i"}]},"status":{"phase":"Pending","conditions":[{"type":"PodScheduled","status":"False","reason":"Unschedulable"}]}}"#,
    )
    .unwrap();
    assert_eq!(p.node, None);
    assert!(p.ips.is_empty());
    assert!(p.ports.is_empty());
    assert!(!p.host_network);
    // Nothing but metadata.
    let p = pod_json(r#"{"metadata":{"name":"a","namespace":"n"}}"#).unwrap();
    assert_eq!((p.node, p.ips.len(), p.labels.len()), (None, 0, 0));
    let p = pod_json(r#"{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[],"nodeName":""},"status":{"podIP":""}}"#)
        .unwrap();
    assert_eq!((p.node, p.ips.len()), (None, 0));
}

#[test]
fn finished_pods_have_no_address() {
    for phase in ["Succeeded", "Failed"] {
        let json = format!(
            r#"{{"metadata":{{"name":"job-1","namespace":"n"}},"spec":{{"nodeName":"node-1","containers":[]}},"status":{{"phase":"{phase}","podIP":"10.32.0.9","podIPs":[{{"ip":"10.32.0.9"}}]}}}}"#
        );
        let p = pod_json(&json).unwrap();
        assert!(p.ips.is_empty(), "{phase}");
        assert_eq!(p.node.as_deref(), Some("node-1"));
    }
}

#[test]
fn host_network_pod() {
    let p = pod_json(
        r#"{"metadata":{"name":"kube-proxy-abcde","namespace":"kube-system"},"spec":{"hostNetwork":true,"nodeName":"node-1","containers":[{"name":"kube-proxy","image":"kube-proxy:v1.33.0"}]},"status":{"phase":"Running","podIP":"192.0.2.11","podIPs":[{"ip":"192.0.2.11"}]}}"#,
    )
    .unwrap();
    assert!(p.host_network);
    assert_eq!(p.ips, [ip("192.0.2.11")]);
}

#[test]
fn pod_refusals() {
    let cases: &[(&str, &str, Problem)] = &[
        (
            r#"{"metadata":{"name":"a"}}"#,
            "metadata.namespace",
            Problem::Missing,
        ),
        (
            r#"{"metadata":{"namespace":"n"}}"#,
            "metadata.name",
            Problem::Missing,
        ),
        (
            r#"{"metadata":{"name":"a","namespace":"n"},"status":{"podIPs":[{"ip":"10.32.0.5"},{"ip":"10.32.0.256"}]}}"#,
            "status.podIPs[1].ip",
            Problem::BadIp("10.32.0.256".into()),
        ),
        (
            r#"{"metadata":{"name":"a","namespace":"n"},"status":{"podIP":"010.1.1.1"}}"#,
            "status.podIP",
            Problem::BadIp("010.1.1.1".into()),
        ),
        (
            r#"{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[{"name":"c","ports":[{"name":"http","containerPort":80,"protocol":"tcp"}]}]}}"#,
            "spec.containers[0].ports[0].protocol",
            Problem::UnknownProtocol("tcp".into()),
        ),
        (
            r#"{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[{"name":"c"},{"name":"d","ports":[{"name":"http","containerPort":0}]}]}}"#,
            "spec.containers[1].ports[0].containerPort",
            Problem::PortOutOfRange(0),
        ),
        (
            r#"{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[{"name":"c","ports":[{"name":"http","containerPort":65536}]}]}}"#,
            "spec.containers[0].ports[0].containerPort",
            Problem::PortOutOfRange(65536),
        ),
        (
            r#"{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[],"initContainers":[{"name":"s","restartPolicy":"Always","ports":[{"name":"HTTP","containerPort":80}]}]}}"#,
            "spec.initContainers[0].ports[0].name",
            Problem::BadPortName("HTTP".into()),
        ),
    ];
    for (json, field, problem) in cases {
        let e = pod_json(json).unwrap_err();
        assert_eq!(e.kind, Kind::Pod);
        assert_eq!((e.field.as_str(), &e.problem), (*field, problem), "{json}");
    }
    // What is known of the object is named.
    let e = pod_json(r#"{"metadata":{"name":"a"}}"#).unwrap_err();
    assert_eq!((e.namespace, e.name.as_deref()), (None, Some("a")));
    let e = pod_json(cases[2].0).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"Pod n/a: status.podIPs[1].ip: "10.32.0.256" is not an IP address"#
    );
}

#[test]
fn bad_json_is_refused_with_its_kind() {
    for (bytes, kind) in [
        (&b"not json"[..], Kind::NetworkPolicy),
        (
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"n"}}"#,
            Kind::NetworkPolicy,
        ),
        (
            br#"{"metadata":{"name":"p","namespace":"n"},"spec":{"podSelector":[]}}"#,
            Kind::NetworkPolicy,
        ),
    ] {
        let e = from_json::<api_net::NetworkPolicy>(bytes).unwrap_err();
        assert_eq!(e.kind, kind);
        assert!(matches!(e.problem, Problem::Json(_)), "{e}");
        assert_eq!((e.namespace, e.name), (None, None));
    }
    let e =
        from_json::<api_core::Namespace>(br#"{"apiVersion":"v2","kind":"Namespace"}"#).unwrap_err();
    assert!(matches!(e.problem, Problem::Json(_)), "{e}");
    let e = from_json::<api_core::Pod>(br#"{"metadata":{"name":5}}"#).unwrap_err();
    assert_eq!(e.kind, Kind::Pod);
}

#[test]
fn port_names() {
    for good in ["http", "h", "metrics-1", "a1", "1a", "abcdefghijklmno"] {
        assert!(valid_port_name(good), "{good}");
    }
    for bad in [
        "",
        "80",
        "-http",
        "http-",
        "ht--tp",
        "HTTP",
        "abcdefghijklmnop",
        "h_t",
        "é",
    ] {
        assert!(!valid_port_name(bad), "{bad}");
    }
}

#[test]
fn the_trait_and_the_functions_agree() {
    let object: api_core::Pod = serde_json::from_str(RUNNING_POD).unwrap();
    assert_eq!(object.convert(), pod(&object));
    assert_eq!(
        <api_core::Pod as k8s_openapi::Resource>::KIND,
        api_core::Pod::CORE_KIND.as_str()
    );
}
