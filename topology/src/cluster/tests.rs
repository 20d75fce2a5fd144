use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.to_owned(),
        operator,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn expr(r: Requirement) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![r],
    }
}

fn ns(name: &str, pairs: &[(&str, &str)]) -> Namespace {
    let mut labels = labels(pairs);
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
    Namespace {
        name: name.to_owned(),
        labels,
    }
}

fn pod(namespace: &str, name: &str, node: Option<&str>, ip: &str) -> Pod {
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: labels(&[("app", name)]),
        node: node.map(str::to_owned),
        ips: vec![ip.parse::<IpAddr>().unwrap()],
        host_network: false,
        ports: vec![ContainerPort {
            name: "http".to_owned(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
    }
}

fn deny_all(namespace: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector: LabelSelector::everything(),
        ingress: Some(Vec::new()),
        egress: None,
    }
}

fn deleted(namespace: &str, name: &str) -> Event<Pod> {
    Event::Deleted {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

#[test]
fn empty_selector_matches_everything() {
    let s = LabelSelector::everything();
    assert!(s.is_empty());
    assert!(s.matches(&Labels::new()));
    assert!(s.matches(&labels(&[("app", "web")])));
}

#[test]
fn match_labels_need_every_pair() {
    let s = LabelSelector {
        match_labels: labels(&[("app", "web"), ("tier", "front")]),
        match_expressions: Vec::new(),
    };
    assert!(s.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
    assert!(!s.matches(&labels(&[("app", "web")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("tier", "back")])));
    assert!(!s.matches(&Labels::new()));
}

#[test]
fn operator_in() {
    let s = expr(req("env", Operator::In, &["prod", "staging"]));
    assert!(s.matches(&labels(&[("env", "prod")])));
    assert!(s.matches(&labels(&[("env", "staging")])));
    assert!(!s.matches(&labels(&[("env", "dev")])));
    // An absent key is in no set.
    assert!(!s.matches(&labels(&[("other", "prod")])));
    // In with no values (the API refuses it) matches nothing.
    assert!(!expr(req("env", Operator::In, &[])).matches(&labels(&[("env", "")])));
}

#[test]
fn operator_not_in() {
    let s = expr(req("env", Operator::NotIn, &["prod"]));
    assert!(!s.matches(&labels(&[("env", "prod")])));
    assert!(s.matches(&labels(&[("env", "dev")])));
    // An absent key matches NotIn.
    assert!(s.matches(&Labels::new()));
}

#[test]
fn operator_exists_and_does_not_exist() {
    let exists = expr(req("env", Operator::Exists, &[]));
    let absent = expr(req("env", Operator::DoesNotExist, &[]));
    for l in [labels(&[("env", "")]), labels(&[("env", "prod")])] {
        assert!(exists.matches(&l));
        assert!(!absent.matches(&l));
    }
    assert!(!exists.matches(&labels(&[("envx", "prod")])));
    assert!(absent.matches(&labels(&[("envx", "prod")])));
}

#[test]
fn labels_and_expressions_combine_with_and() {
    let s = LabelSelector {
        match_labels: labels(&[("app", "web")]),
        match_expressions: vec![
            req("env", Operator::NotIn, &["prod"]),
            req("canary", Operator::DoesNotExist, &[]),
        ],
    };
    assert!(s.matches(&labels(&[("app", "web"), ("env", "dev")])));
    assert!(s.matches(&labels(&[("app", "web")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("canary", "1")])));
    assert!(!s.matches(&labels(&[("app", "db")])));
}

#[test]
fn spellings_round_trip() {
    for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        assert_eq!(Protocol::from_api(p.as_str()), Some(p));
    }
    assert_eq!(Protocol::from_api("tcp"), None);
    for o in [
        Operator::In,
        Operator::NotIn,
        Operator::Exists,
        Operator::DoesNotExist,
    ] {
        assert_eq!(Operator::from_api(o.as_str()), Some(o));
    }
    assert_eq!(Operator::from_api("Gt"), None);
}

#[test]
fn policy_types_follow_the_rule_lists() {
    let mut p = deny_all("a", "deny");
    assert_eq!(
        p.policy_types(),
        PolicyTypes {
            ingress: true,
            egress: false
        }
    );
    p.egress = Some(vec![Rule::default()]);
    p.ingress = None;
    assert_eq!(
        p.policy_types(),
        PolicyTypes {
            ingress: false,
            egress: true
        }
    );
}

#[test]
fn policy_selects_pods_of_its_namespace_only() {
    let mut p = deny_all("a", "deny");
    p.pod_selector = LabelSelector {
        match_labels: labels(&[("app", "web")]),
        match_expressions: Vec::new(),
    };
    assert!(p.selects(&pod("a", "web", None, "10.0.0.1")));
    assert!(!p.selects(&pod("b", "web", None, "10.0.0.1")));
    assert!(!p.selects(&pod("a", "db", None, "10.0.0.1")));
}

#[test]
fn named_port_lookup() {
    let p = pod("a", "web", None, "10.0.0.1");
    assert_eq!(p.named_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(p.named_port("http", Protocol::Udp), None);
    assert_eq!(p.named_port("https", Protocol::Tcp), None);
}

#[test]
fn revision_bumps_once_per_change() {
    let mut v = ClusterView::new();
    assert_eq!(v.revision(), 0);
    assert!(v.handle_pods(Event::Applied(pod("a", "web", Some("n1"), "10.0.0.1"))));
    assert_eq!(v.revision(), 1);
    // The same object again: nothing changes.
    assert!(!v.handle_pods(Event::Applied(pod("a", "web", Some("n1"), "10.0.0.1"))));
    assert_eq!(v.revision(), 1);
    // A changed object.
    assert!(v.handle_pods(Event::Applied(pod("a", "web", Some("n1"), "10.0.0.2"))));
    assert_eq!(v.revision(), 2);
    assert_eq!(
        v.pod("a", "web").unwrap().ips,
        ["10.0.0.2".parse::<IpAddr>().unwrap()]
    );
    // Other kinds share the revision.
    assert!(v.handle_namespaces(Event::Applied(ns("a", &[]))));
    assert!(v.handle_policies(Event::Applied(deny_all("a", "deny"))));
    assert_eq!(v.revision(), 4);
    assert!(v.handle_pods(deleted("a", "web")));
    assert_eq!(v.revision(), 5);
    assert_eq!(v.pod_count(), 0);
}

#[test]
fn deleting_an_absent_object_changes_nothing() {
    let mut v = ClusterView::new();
    v.handle_pods(Event::Applied(pod("a", "web", None, "10.0.0.1")));
    let before = v.clone();
    assert!(!v.handle_pods(deleted("a", "db")));
    assert!(!v.handle_pods(deleted("b", "web")));
    assert!(!v.handle_policies(Event::Deleted {
        namespace: "a".into(),
        name: "web".into()
    }));
    assert!(!v.handle_namespaces(Event::Deleted {
        namespace: String::new(),
        name: "a".into()
    }));
    assert_eq!(v, before);
}

#[test]
fn namespace_deletion_ignores_the_namespace_field() {
    let mut v = ClusterView::new();
    v.handle_namespaces(Event::Applied(ns("a", &[])));
    assert!(v.handle_namespaces(Event::Deleted {
        namespace: "whatever".into(),
        name: "a".into()
    }));
    assert!(v.namespace("a").is_none());
}

#[test]
fn restarted_replaces_every_object_of_its_kind() {
    let mut v = ClusterView::new();
    v.handle_pods(Event::Applied(pod("a", "web", Some("n1"), "10.0.0.1")));
    v.handle_pods(Event::Applied(pod("a", "db", Some("n1"), "10.0.0.2")));
    v.handle_policies(Event::Applied(deny_all("a", "deny")));
    let rev = v.revision();
    // One kept, one changed, one gone, one new: a single bump.
    assert!(v.handle_pods(Event::Restarted(vec![
        pod("a", "web", Some("n1"), "10.0.0.1"),
        pod("a", "db", Some("n2"), "10.0.0.2"),
        pod("b", "cache", Some("n2"), "10.0.0.3"),
    ])));
    assert_eq!(v.revision(), rev + 1);
    assert_eq!(v.pod_count(), 3);
    assert_eq!(v.pods_on("n1").count(), 1);
    assert_eq!(v.pods_on("n2").count(), 2);
    // Policies are untouched by a pod relist.
    assert_eq!(v.policy_count(), 1);
    // The same list again: no change.
    assert!(!v.handle_pods(Event::Restarted(vec![
        pod("b", "cache", Some("n2"), "10.0.0.3"),
        pod("a", "db", Some("n2"), "10.0.0.2"),
        pod("a", "web", Some("n1"), "10.0.0.1"),
    ])));
    assert_eq!(v.revision(), rev + 1);
    // An empty relist removes them all.
    assert!(v.handle_pods(Event::Restarted(Vec::new())));
    assert_eq!(v.pod_count(), 0);
    assert_eq!(v.pods_on("n2").count(), 0);
    assert!(!v.handle_pods(Event::Restarted(Vec::new())));
}

#[test]
fn restarted_keeps_the_last_of_duplicates() {
    let mut v = ClusterView::new();
    v.handle_pods(Event::Restarted(vec![
        pod("a", "web", None, "10.0.0.1"),
        pod("a", "web", None, "10.0.0.9"),
    ]));
    assert_eq!(v.pod_count(), 1);
    assert_eq!(
        v.pod("a", "web").unwrap().ips,
        ["10.0.0.9".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn pods_by_node_follow_moves_and_deletions() {
    let mut v = ClusterView::new();
    v.handle_pods(Event::Applied(pod("a", "web", None, "10.0.0.1")));
    assert_eq!(v.pods_on("n1").count(), 0);
    v.handle_pods(Event::Applied(pod("a", "web", Some("n1"), "10.0.0.1")));
    v.handle_pods(Event::Applied(pod("b", "web", Some("n1"), "10.0.0.2")));
    let on: Vec<_> = v.pods_on("n1").map(|p| p.namespace.as_str()).collect();
    assert_eq!(on, ["a", "b"]);
    v.handle_pods(Event::Applied(pod("a", "web", Some("n2"), "10.0.0.1")));
    assert_eq!(v.pods_on("n1").count(), 1);
    assert_eq!(v.pods_on("n2").count(), 1);
    v.handle_pods(deleted("b", "web"));
    assert_eq!(v.pods_on("n1").count(), 0);
    // No empty index entries are left behind: equal content, equal views.
    let mut fresh = ClusterView::new();
    fresh.handle_pods(Event::Applied(pod("a", "web", Some("n2"), "10.0.0.1")));
    assert_eq!(v.by_node, fresh.by_node);
}

#[test]
fn pods_in_a_namespace() {
    let mut v = ClusterView::new();
    for (n, name) in [("a", "x"), ("ab", "y"), ("a", "z"), ("b", "w"), ("", "v")] {
        v.handle_pods(Event::Applied(pod(n, name, None, "10.0.0.1")));
    }
    let names: BTreeSet<_> = v.pods_in("a").map(|p| p.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["x", "z"]));
    assert_eq!(v.pods_in("c").count(), 0);
    assert_eq!(v.pods_in("").count(), 1);
}

#[test]
fn counts_serialize() {
    let mut v = ClusterView::new();
    v.handle_namespaces(Event::Restarted(vec![
        ns("a", &[]),
        ns("b", &[("team", "x")]),
    ]));
    v.handle_policies(Event::Applied(deny_all("a", "deny")));
    assert_eq!(v.namespace("b").unwrap().labels.get("team").unwrap(), "x");
    assert_eq!(v.namespaces().count(), 2);
    assert_eq!(v.policy("a", "deny"), Some(&deny_all("a", "deny")));
    assert_eq!(v.policies().count(), 1);
    assert_eq!(
        serde_json::to_string(&v.counts()).unwrap(),
        r#"{"namespaces":2,"pods":0,"policies":1,"revision":2}"#
    );
}
