//! `weft-sim lab up --kube`: the lab plays a Kubernetes cluster. Three routers discover each
//! other from the stand-in API's Node objects, set their Nodes' `NetworkUnavailable` condition
//! to False, and report the pods of two namespaces; objects applied with `lab kube apply`
//! reach every router's cluster view.

#![allow(clippy::unwrap_used, clippy::print_stderr)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use serde_json::Value;
use weft_sim::lab::{self, LabGuard, LabSpec, PodMeta};

mod common;
use common::{ping_until, pod_ip, serial, unique_with};

/// Polls node `node`'s report until `f` holds of its `kubernetes` section (20 s at most).
fn wait_kube(name: &str, node: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let report = lab::report(name, node).unwrap();
        if f(&report["kubernetes"]) {
            return report["kubernetes"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{node}: {what}; its Kubernetes status: {:#}",
            report["kubernetes"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The (namespace, name) of every pod a node reports as its own.
fn local_pods(kube: &Value) -> Vec<(String, String)> {
    let mut pods: Vec<(String, String)> = kube["cluster"]["local_pods"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["namespace"].as_str().unwrap().to_owned(),
                        p["name"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    pods.sort();
    pods
}

#[test]
fn a_kube_lab_is_a_cluster_the_routers_follow() {
    let _serial = serial();
    let name = unique_with("kl", "k");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 1;
    spec.kube = true;
    let info = lab::up(&spec).unwrap();
    // Every pod is a Pod object `hI-p1` in `default`, labelled pod=p1, as `lab up` lists it.
    for node in &info.nodes {
        let pod = &node.pods[0];
        assert_eq!(pod.namespace.as_deref(), Some("default"), "{pod:?}");
        assert_eq!(
            pod.labels
                .as_ref()
                .and_then(|l| l.get("pod"))
                .map(String::as_str),
            Some("p1")
        );
    }
    // A second namespace: a pod on h2 with labels and a named port.
    let meta = PodMeta::parse(
        Some("shop"),
        &["app=web".to_owned(), "tier=front".to_owned()],
        &["http=tcp/8080".to_owned()],
    )
    .unwrap();
    let p2 = lab::pod_add_with(&name, "h2", "p2", None, &meta).unwrap();
    assert_eq!(p2.namespace.as_deref(), Some("shop"));
    let obj = lab::objects::get(&name, "pod", Some("shop/h2-p2")).unwrap();
    assert_eq!(obj["spec"]["containers"][0]["ports"][0]["name"], "http");

    for (node, want) in [
        ("h1", vec![("default", "h1-p1")]),
        ("h2", vec![("default", "h2-p1"), ("shop", "h2-p2")]),
        ("h3", vec![("default", "h3-p1")]),
    ] {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
            .collect();
        let kube = wait_kube(&name, node, "its own pods of two namespaces", |k| {
            local_pods(k) == want && k["cluster"]["pods"] == 4
        });
        // Discovery found the other nodes; the condition is set on the Node object.
        assert_eq!(kube["watches"][0]["kind"], "Node");
        assert_eq!(kube["watches"][0]["objects"], 3, "{kube:#}");
        let node_obj = lab::objects::get(&name, "node", Some(node)).unwrap();
        let condition = node_obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .cloned()
            .unwrap_or_else(|| panic!("{node}: no condition: {node_obj:#}"));
        assert_eq!(
            (&condition["status"], &condition["reason"]),
            (&Value::from("False"), &Value::from("WeftIsUp"))
        );
    }

    // Pods still reach each other across nodes, with peers discovered from Nodes.
    let ip3 = pod_ip(&info, 3);
    assert!(
        ping_until(&name, "h1/p1", &ip3, Duration::from_secs(5)).is_some(),
        "h1/p1 cannot reach h3/p1 at {ip3}"
    );

    // A NetworkPolicy and a Namespace applied from YAML reach every router's view; a Pod
    // applied again gets its new labels.
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("objects.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bank\n  labels: {team: bank}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: shop\n\
         spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - ports:\n    - port: http\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: h2-p2\n  namespace: shop\n  labels: {app: web, version: two}\n",
    )
    .unwrap();
    let done = lab::objects::apply(&name, &file).unwrap();
    assert_eq!(done.len(), 3, "{done:?}");
    for node in ["h1", "h2", "h3"] {
        wait_kube(&name, node, "the applied policy and namespace", |k| {
            k["cluster"]["policies"] == 1
                && k["watches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|w| w["kind"] == "Namespace" && w["objects"].as_u64() >= Some(5))
        });
    }
    wait_kube(&name, "h2", "the pod's new labels", |k| {
        k["cluster"]["local_pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "h2-p2" && p["labels"]["version"] == "two")
    });
    // Deleting the objects again: gone from the views; deleting a pod deletes its object.
    lab::objects::delete(&name, &file).unwrap();
    lab::pod_del(&name, "h2", "p1").unwrap();
    wait_kube(&name, "h1", "the deletions", |k| {
        k["cluster"]["policies"] == 0 && k["cluster"]["pods"] == 2
    });
}
