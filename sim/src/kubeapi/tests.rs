//! Unit tests of the store, patches, selectors and fault bookkeeping, without a network.
//! `sim/tests/kubeapi.rs` tests the HTTP interface and runs the `kube` client against it.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::faults::{FaultRequest, FaultState, Verdict};
use super::kind::{Filter, Kind};
use super::meta::timestamp;
use super::patch;
use super::store::{ListQuery, Part, PatchType, Store};
use super::{Fault, Span, StandIn};

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[test]
fn create_stamps_metadata_and_one_counter_covers_all_kinds() {
    let mut s = Store::default();
    let n = s.create(Kind::Node, "", node("a")).unwrap();
    assert_eq!(n["metadata"]["resourceVersion"], "1");
    assert_eq!(n["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(
        n["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let p = s
        .create(Kind::Pod, "ns1", json!({"metadata": {"name": "p"}}))
        .unwrap();
    assert_eq!(p["metadata"]["resourceVersion"], "2");
    assert_eq!(p["kind"], "Pod");
    assert_eq!(p["apiVersion"], "v1");
    assert_eq!(p["metadata"]["namespace"], "ns1");
    let err = s.create(Kind::Node, "", node("a")).unwrap_err();
    assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
    let err = s.create(
        Kind::Node,
        "",
        json!({"kind": "Pod", "metadata": {"name": "x"}}),
    );
    assert_eq!(err.unwrap_err().code, 400);
}

#[test]
fn namespaces_carry_their_name_label_through_updates() {
    let mut s = Store::default();
    let ns = s
        .create(
            Kind::Namespace,
            "",
            json!({"metadata": {"name": "team", "labels": {"a": "b"}}}),
        )
        .unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    assert_eq!(ns["metadata"]["labels"]["a"], "b");
    let ns = s
        .replace(
            Kind::Namespace,
            "",
            "team",
            json!({"metadata": {"name": "team"}}),
            Part::Main,
            true,
        )
        .unwrap();
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "team"})
    );
}

#[test]
fn unchanged_replace_writes_nothing() {
    let mut s = Store::default();
    let n = s.create(Kind::Node, "", node("a")).unwrap();
    let again = s
        .replace(Kind::Node, "", "a", n.clone(), Part::Main, true)
        .unwrap();
    assert_eq!(again, n);
    assert_eq!(s.rv(), 1);
}

#[test]
fn strategic_merge_merges_conditions_by_type_and_merge_patch_replaces_them() {
    let mut s = Store::default();
    let mut n = node("a");
    n["status"] = json!({"conditions": [
        {"type": "Ready", "status": "True"},
        {"type": "MemoryPressure", "status": "False"},
    ]});
    s.create(Kind::Node, "", n).unwrap();
    let patch = json!({"status": {
        "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "NetworkUnavailable"}],
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "KubeletDown"},
            {"type": "NetworkUnavailable", "status": "False"},
        ],
    }});
    let n = s
        .patch(
            Kind::Node,
            "",
            "a",
            PatchType::Strategic,
            &patch,
            Part::Status,
        )
        .unwrap();
    assert_eq!(
        n["status"]["conditions"],
        json!([
            {"type": "Ready", "status": "False", "reason": "KubeletDown"},
            {"type": "MemoryPressure", "status": "False"},
            {"type": "NetworkUnavailable", "status": "False"},
        ])
    );
    assert!(n["status"].get("$setElementOrder/conditions").is_none());
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let n = s
        .patch(Kind::Node, "", "a", PatchType::Merge, &patch, Part::Status)
        .unwrap();
    assert_eq!(
        n["status"]["conditions"],
        json!([{"type": "Ready", "status": "True"}])
    );
}

#[test]
fn status_patches_change_only_the_status() {
    let mut s = Store::default();
    s.create(Kind::Node, "", node("a")).unwrap();
    let patch = json!({"metadata": {"labels": {"x": "y"}}, "status": {"phase": "Running"}});
    let n = s
        .patch(Kind::Node, "", "a", PatchType::Merge, &patch, Part::Status)
        .unwrap();
    assert!(n["metadata"]["labels"].is_null());
    assert_eq!(n["status"]["phase"], "Running");
}

#[test]
fn strategic_merge_deletes_with_patch_directive_and_merges_nested_maps() {
    let mut target = json!({"spec": {"a": 1, "b": {"c": 2}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"},
                                 {"type": "Hostname", "address": "n"}]}});
    patch::strategic(
        &mut target,
        &json!({"spec": {"b": {"d": 3}, "a": null},
                "status": {"addresses": [{"type": "Hostname", "$patch": "delete"}]}}),
    );
    assert_eq!(
        target,
        json!({"spec": {"b": {"c": 2, "d": 3}},
               "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}})
    );
}

#[test]
fn pages_are_consistent_at_the_first_pages_version() {
    let mut s = Store::default();
    for n in ["n1", "n2", "n3", "n4", "n5"] {
        s.create(Kind::Node, "", node(n)).unwrap();
    }
    let q = |limit, token: Option<&str>| ListQuery {
        limit: Some(limit),
        continue_token: token.map(str::to_owned),
        ..ListQuery::default()
    };
    let p1 = s.list(Kind::Node, &q(2, None)).unwrap();
    assert_eq!(names(&p1), ["n1", "n2"]);
    assert_eq!(p1["metadata"]["resourceVersion"], "5");
    assert_eq!(p1["metadata"]["remainingItemCount"], 3);
    // Changes after the first page do not show in the later pages.
    s.delete(Kind::Node, "", "n3").unwrap();
    s.create(Kind::Node, "", node("n6")).unwrap();
    let mut n4 = s.get(Kind::Node, "", "n4").unwrap().clone();
    n4["metadata"]["labels"] = json!({"x": "y"});
    s.replace(Kind::Node, "", "n4", n4, Part::Main, true)
        .unwrap();
    let token = p1["metadata"]["continue"].as_str().unwrap();
    let p2 = s.list(Kind::Node, &q(2, Some(token))).unwrap();
    assert_eq!(names(&p2), ["n3", "n4"]);
    assert!(p2["items"][1]["metadata"]["labels"].is_null());
    assert_eq!(p2["metadata"]["resourceVersion"], "5");
    let token = p2["metadata"]["continue"].as_str().unwrap();
    let p3 = s.list(Kind::Node, &q(2, Some(token))).unwrap();
    assert_eq!(names(&p3), ["n5"]);
    assert!(p3["metadata"]["continue"].is_null());
    // A fresh list sees the present.
    let all = s.list(Kind::Node, &ListQuery::default()).unwrap();
    assert_eq!(names(&all), ["n1", "n2", "n4", "n5", "n6"]);
    assert_eq!(all["metadata"]["resourceVersion"], "8");
    // After compaction the old token is gone.
    s.compact();
    let err = s.list(Kind::Node, &q(2, Some(token))).unwrap_err();
    assert_eq!((err.code, err.reason), (410, "Expired"));
}

#[test]
fn deleting_a_namespace_deletes_its_objects() {
    let mut s = Store::default();
    s.create(Kind::Namespace, "", json!({"metadata": {"name": "a"}}))
        .unwrap();
    s.create(Kind::Pod, "a", json!({"metadata": {"name": "p"}}))
        .unwrap();
    s.create(Kind::Pod, "b", json!({"metadata": {"name": "p"}}))
        .unwrap();
    s.delete(Kind::Namespace, "", "a").unwrap();
    let pods = s.objects(Kind::Pod, &Filter::default());
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["metadata"]["namespace"], "b");
    let (events, _) = s.events_since(Kind::Pod, 3).unwrap();
    assert_eq!(events.len(), 1);
}

#[test]
fn selectors_filter_by_fields_and_labels() {
    let pod = json!({"metadata": {"name": "p", "namespace": "n", "labels": {"app": "web", "tier": "x"}},
                     "spec": {"nodeName": "a"}});
    let ok = |f: Option<&str>, l: Option<&str>| Filter::new(None, f, l).unwrap().matches(&pod);
    assert!(ok(Some("spec.nodeName=a"), None));
    assert!(!ok(Some("spec.nodeName=b"), None));
    assert!(ok(Some("spec.nodeName!=b,metadata.name==p"), None));
    assert!(ok(Some("spec.hostNetwork!=true"), None));
    assert!(ok(None, Some("app=web,tier")));
    assert!(ok(None, Some("app in (db, web),!missing")));
    assert!(!ok(None, Some("app notin (web)")));
    assert!(!ok(None, Some("app!=web")));
    assert!(Filter::new(None, Some("spec.nodeName"), None).is_err());
    assert!(Filter::new(None, None, Some("app in (a")).is_err());
    assert!(
        !Filter::new(Some("other".into()), None, None)
            .unwrap()
            .matches(&pod)
    );
}

#[test]
fn counted_faults_run_out_and_timed_ones_expire() {
    let now = Instant::now();
    let mut f = FaultState::default();
    f.set(
        &Fault::Throttle {
            retry_after: 2,
            span: Span::Requests(2),
        },
        now,
    );
    f.set(
        &Fault::Fail {
            code: 503,
            span: Span::For(Duration::from_secs(5)),
        },
        now,
    );
    assert_eq!(f.verdict(now), Verdict::Throttle(2));
    assert_eq!(f.verdict(now), Verdict::Throttle(2));
    assert_eq!(f.verdict(now), Verdict::Fail(503));
    assert_eq!(f.verdict(now + Duration::from_secs(6)), Verdict::Pass);
    f.set(
        &Fault::Silence {
            duration: Duration::from_secs(1),
        },
        now,
    );
    assert!(f.silent_until(now).is_some());
    assert!(f.silent_until(now + Duration::from_secs(2)).is_none());
    f.set(&Fault::Clear, now);
    assert!(f.silent_until(now).is_none());
}

#[test]
fn fault_requests_parse() {
    let parse = |v: Value| {
        serde_json::from_value::<FaultRequest>(v)
            .unwrap()
            .into_fault()
    };
    assert_eq!(
        parse(json!({"fault": "throttle", "retryAfter": 3, "requests": 2})),
        Ok(Fault::Throttle {
            retry_after: 3,
            span: Span::Requests(2)
        })
    );
    assert_eq!(
        parse(json!({"fault": "fail", "code": 503, "seconds": 0.5})),
        Ok(Fault::Fail {
            code: 503,
            span: Span::For(Duration::from_millis(500))
        })
    );
    assert_eq!(parse(json!({"fault": "drop"})), Ok(Fault::DropConnections));
    assert!(parse(json!({"fault": "fail"})).is_err());
    assert!(parse(json!({"fault": "fail", "code": 200, "requests": 1})).is_err());
    assert!(parse(json!({"fault": "nope"})).is_err());
}

#[test]
fn the_handle_applies_and_lists() {
    let s = StandIn::new();
    s.apply(node("b")).unwrap();
    s.apply(node("a")).unwrap();
    let mut b = node("b");
    b["metadata"]["labels"] = json!({"x": "1"});
    b["metadata"]["resourceVersion"] = "999".into();
    let b = s.apply(b).unwrap();
    assert_eq!(b["metadata"]["resourceVersion"], "3");
    let names: Vec<Value> = s
        .list(Kind::Node, None)
        .iter()
        .map(|n| n["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, ["a", "b"]);
    s.apply(json!({"kind": "Pod", "metadata": {"name": "p"}}))
        .unwrap();
    assert!(s.get(Kind::Pod, "default", "p").is_some());
    assert_eq!(s.delete(Kind::Node, "", "zz").unwrap_err().code, 404);
    s.add_default_namespaces().unwrap();
    assert_eq!(s.list(Kind::Namespace, None).len(), 4);
    assert!(
        s.apply(json!({"kind": "Service", "metadata": {"name": "x"}}))
            .is_err()
    );
}

#[test]
fn timestamps_are_rfc3339_utc() {
    let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
    assert_eq!(timestamp(t), "2024-02-29T12:34:56Z");
    assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
}
