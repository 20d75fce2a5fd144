//! The stand-in Kubernetes API server over HTTP on loopback (no root needed): lists, pages,
//! watches, bookmarks, compaction, selectors, status patches, every fault, tokens. The real
//! `kube` client and the `weft-sim kube-api` command are in `kube_client.rs`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, RETRY_AFTER};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use weft_sim::kubeapi::{self, Fault, Kind, Server, Span, StandIn, Verb};

/// How long any awaited condition may take before the test fails.
const WITHIN: Duration = Duration::from_secs(10);

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
}

fn server() -> Server {
    kubeapi::start(StandIn::new()).unwrap()
}

/// An answer: status code, headers, JSON body (Null if the body is not JSON).
struct Answer {
    code: u16,
    headers: HeaderMap,
    body: Value,
}

/// Opens a connection and sends one request; returns the response with its body unread.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Value)>,
    token: Option<&str>,
) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "kube");
    if let Some(token) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let bytes = match &body {
        Some((ctype, v)) => {
            req = req.header(CONTENT_TYPE, *ctype);
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    sender
        .send_request(req.body(Full::new(bytes)).unwrap())
        .await
        .unwrap()
}

async fn call(addr: SocketAddr, method: Method, path: &str, body: Option<(&str, Value)>) -> Answer {
    call_as(addr, method, path, body, None).await
}

async fn call_as(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Value)>,
    token: Option<&str>,
) -> Answer {
    let resp = send(addr, method, path, body, token).await;
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        code,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, Method::GET, path, None).await
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Answer {
    call(addr, Method::POST, path, Some(("application/json", body))).await
}

async fn admin(addr: SocketAddr, fault: Value) {
    let a = post(addr, "/weft-standin/faults", fault).await;
    assert_eq!(a.code, 200, "{}", a.body);
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A watch's event stream, read line by line.
struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

/// What reading a watch gave.
#[derive(Debug)]
enum Next {
    Event(Value),
    End,
    Quiet,
}

impl Watch {
    async fn open(addr: SocketAddr, path: &str) -> Self {
        let resp = send(addr, Method::GET, path, None, None).await;
        assert_eq!(resp.status(), 200);
        Self {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// Returns the next event, the end of the stream, or Quiet if nothing came for `wait`.
    async fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Next::Event(serde_json::from_slice(&line).unwrap());
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Quiet,
                Ok(None | Some(Err(_))) => return Next::End,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Returns the next event; fails the test on a quiet stream or its end.
    async fn next(&mut self) -> Value {
        match self.next_within(WITHIN).await {
            Next::Event(v) => v,
            other @ (Next::End | Next::Quiet) => panic!("expected an event, got {other:?}"),
        }
    }

    /// Returns the next event that is not a bookmark.
    async fn next_change(&mut self) -> Value {
        loop {
            let e = self.next().await;
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

fn summary(e: &Value) -> (String, String) {
    (
        e["type"].as_str().unwrap().to_owned(),
        e["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

fn rv_of(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `cond` until it holds, failing after `WITHIN`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WITHIN, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let srv = server();
    let addr = srv.addr();
    for n in ["n3", "n1", "n5", "n2", "n4"] {
        assert_eq!(post(addr, "/api/v1/nodes", node(n)).await.code, 201);
    }
    let p1 = get(addr, "/api/v1/nodes?limit=2").await;
    assert_eq!(p1.code, 200);
    assert_eq!(p1.body["kind"], "NodeList");
    assert_eq!(p1.body["apiVersion"], "v1");
    assert_eq!(p1.body["metadata"]["resourceVersion"], "5");
    assert_eq!(names(&p1.body), ["n1", "n2"]);
    assert_eq!(p1.body["items"][0]["kind"], "Node");
    let token = p1.body["metadata"]["continue"].as_str().unwrap();
    let p2 = get(addr, &format!("/api/v1/nodes?limit=2&continue={token}")).await;
    assert_eq!(names(&p2.body), ["n3", "n4"]);
    let token = p2.body["metadata"]["continue"].as_str().unwrap();
    let p3 = get(addr, &format!("/api/v1/nodes?limit=2&continue={token}")).await;
    assert_eq!(names(&p3.body), ["n5"]);
    assert!(p3.body["metadata"].get("continue").is_none());
    // Pods: all namespaces, one namespace; network policies in their group.
    srv.standin().apply(pod("b", "p1", "n1")).unwrap();
    srv.standin().apply(pod("a", "p2", "n1")).unwrap();
    let all = get(addr, "/api/v1/pods").await;
    assert_eq!(all.body["kind"], "PodList");
    assert_eq!(names(&all.body), ["p2", "p1"]);
    assert_eq!(
        names(&get(addr, "/api/v1/namespaces/b/pods").await.body),
        ["p1"]
    );
    let np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
    let base = "/apis/networking.k8s.io/v1";
    assert_eq!(
        post(addr, &format!("{base}/namespaces/a/networkpolicies"), np)
            .await
            .code,
        201
    );
    let l = get(addr, &format!("{base}/networkpolicies")).await;
    assert_eq!(l.body["kind"], "NetworkPolicyList");
    assert_eq!(l.body["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(l.body["items"][0]["metadata"]["namespace"], "a");
    assert_eq!(get(addr, "/api/v1/networkpolicies").await.code, 404);
}

#[tokio::test]
async fn crud_answers_with_the_real_servers_codes_and_statuses() {
    let srv = server();
    let addr = srv.addr();
    let created = post(addr, "/api/v1/nodes", node("a")).await;
    assert_eq!(created.code, 201);
    let dup = post(addr, "/api/v1/nodes", node("a")).await;
    assert_eq!(dup.code, 409);
    assert_eq!(dup.body["kind"], "Status");
    assert_eq!(dup.body["reason"], "AlreadyExists");
    let one = get(addr, "/api/v1/nodes/a").await;
    assert_eq!(one.body["metadata"]["uid"], created.body["metadata"]["uid"]);
    let missing = get(addr, "/api/v1/nodes/zz").await;
    assert_eq!(
        (missing.code, missing.body["reason"].as_str()),
        (404, Some("NotFound"))
    );
    // PUT with the current version succeeds, with a stale one conflicts.
    let mut a = one.body.clone();
    a["metadata"]["labels"] = json!({"x": "1"});
    let put = call(
        addr,
        Method::PUT,
        "/api/v1/nodes/a",
        Some(("application/json", a.clone())),
    )
    .await;
    assert_eq!(put.code, 200);
    assert!(rv_of(&put.body) > rv_of(&one.body));
    let stale = call(
        addr,
        Method::PUT,
        "/api/v1/nodes/a",
        Some(("application/json", a)),
    )
    .await;
    assert_eq!(
        (stale.code, stale.body["reason"].as_str()),
        (409, Some("Conflict"))
    );
    let del = call(addr, Method::DELETE, "/api/v1/nodes/a", None).await;
    assert_eq!(
        (del.code, del.body["metadata"]["name"].as_str()),
        (200, Some("a"))
    );
    let again = call(addr, Method::DELETE, "/api/v1/nodes/a", None).await;
    assert_eq!(
        (again.code, again.body["reason"].as_str()),
        (404, Some("NotFound"))
    );
    assert_eq!(get(addr, "/version").await.body["major"], "1");
}

#[tokio::test]
async fn namespaces_carry_the_metadata_name_label() {
    let srv = server();
    let addr = srv.addr();
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}});
    let created = post(addr, "/api/v1/namespaces", ns).await;
    assert_eq!(created.code, 201);
    assert_eq!(
        created.body["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    let listed = get(
        addr,
        "/api/v1/namespaces?labelSelector=kubernetes.io/metadata.name%3Dteam",
    )
    .await;
    assert_eq!(names(&listed.body), ["team"]);
    // The label survives a replace that leaves it out.
    let mut body = created.body.clone();
    body["metadata"]["labels"] = json!({"other": "x"});
    let put = call(
        addr,
        Method::PUT,
        "/api/v1/namespaces/team",
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(
        put.body["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    assert_eq!(put.body["metadata"]["labels"]["other"], "x");
}

#[tokio::test]
async fn node_status_patches_merge_conditions_by_type() {
    let srv = server();
    let addr = srv.addr();
    let mut n = node("a");
    n["metadata"]["labels"] = json!({"keep": "me"});
    n["status"] = json!({"conditions": [{"type": "Ready", "status": "True"},
                                         {"type": "DiskPressure", "status": "False"}]});
    srv.standin().apply(n).unwrap();
    let strategic = json!({"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"},
        {"type": "Ready", "status": "False"}]}});
    let ctype = "application/strategic-merge-patch+json";
    let p = call(
        addr,
        Method::PATCH,
        "/api/v1/nodes/a/status",
        Some((ctype, strategic)),
    )
    .await;
    assert_eq!(p.code, 200, "{}", p.body);
    let conditions = &p.body["status"]["conditions"];
    let types: Vec<&str> = conditions
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "DiskPressure", "NetworkUnavailable"]);
    assert_eq!(conditions[0]["status"], "False");
    assert_eq!(p.body["metadata"]["labels"]["keep"], "me");
    let merge = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let ctype = "application/merge-patch+json; charset=utf-8";
    let p = call(
        addr,
        Method::PATCH,
        "/api/v1/nodes/a/status",
        Some((ctype, merge)),
    )
    .await;
    assert_eq!(
        p.body["status"]["conditions"],
        json!([{"type": "Ready", "status": "True"}])
    );
    let missing = call(
        addr,
        Method::PATCH,
        "/api/v1/nodes/b/status",
        Some((ctype, json!({}))),
    )
    .await;
    assert_eq!(missing.code, 404);
    let json_patch = Some(("application/json-patch+json", json!([])));
    assert_eq!(
        call(addr, Method::PATCH, "/api/v1/nodes/a", json_patch)
            .await
            .code,
        415
    );
}

#[tokio::test]
async fn watches_stream_events_after_a_version_in_order() {
    let srv = server();
    let addr = srv.addr();
    let s = srv.standin();
    s.apply(node("a")).unwrap();
    let from = s.resource_version();
    s.apply(node("b")).unwrap();
    let mut a = s.get(Kind::Node, "", "a").unwrap();
    a["metadata"]["labels"] = json!({"x": "1"});
    s.apply(a).unwrap();
    s.apply(pod("ns", "p", "a")).unwrap();
    s.delete(Kind::Node, "", "b").unwrap();
    let mut w = Watch::open(
        addr,
        &format!("/api/v1/nodes?watch=true&resourceVersion={from}"),
    )
    .await;
    let mut seen = Vec::new();
    let mut last = from;
    for _ in 0..3 {
        let e = w.next().await;
        let rv = rv_of(&e["object"]);
        assert!(rv > last, "versions increase: {rv} after {last}");
        last = rv;
        seen.push(summary(&e));
    }
    let want = [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")];
    assert_eq!(seen, want.map(|(t, n)| (t.to_owned(), n.to_owned())));
    // Live events follow.
    s.apply(node("c")).unwrap();
    assert_eq!(summary(&w.next().await), ("ADDED".into(), "c".into()));
    // resourceVersion=0: the current objects first, as ADDED.
    let mut w0 = Watch::open(addr, "/api/v1/nodes?watch=1&resourceVersion=0").await;
    assert_eq!(summary(&w0.next().await), ("ADDED".into(), "a".into()));
    assert_eq!(summary(&w0.next().await), ("ADDED".into(), "c".into()));
    assert!(matches!(
        w0.next_within(Duration::from_millis(200)).await,
        Next::Quiet
    ));
    assert_eq!(s.counts().watches_opened(Kind::Node), 2);
    assert_eq!(s.counts().watches_open(), 2);
    drop((w, w0));
    until("the watches to close", || s.counts().watches_open() == 0).await;
}

#[tokio::test]
async fn idle_watches_get_bookmarks_and_end_after_their_timeout() {
    let srv = server();
    let addr = srv.addr();
    let s = srv.standin();
    s.set_bookmark_interval(Duration::from_millis(100));
    s.apply(node("a")).unwrap();
    let rv = s.resource_version();
    let path = format!("/api/v1/nodes?watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
    let mut w = Watch::open(addr, &path).await;
    let b = w.next().await;
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(b["object"]["kind"], "Node");
    assert_eq!(b["object"]["apiVersion"], "v1");
    assert_eq!(rv_of(&b["object"]), rv);
    // A bookmark after a change carries the version the watch reached.
    s.apply(pod("x", "p", "a")).unwrap();
    s.apply(node("b")).unwrap();
    assert_eq!(
        summary(&w.next_change().await),
        ("ADDED".into(), "b".into())
    );
    let b = w.next().await;
    assert_eq!(
        (b["type"].as_str(), rv_of(&b["object"])),
        (Some("BOOKMARK"), rv + 2)
    );
    // Without allowWatchBookmarks, none.
    let mut quiet = Watch::open(
        addr,
        &format!("/api/v1/nodes?watch=true&resourceVersion={rv}"),
    )
    .await;
    assert_eq!(summary(&quiet.next().await), ("ADDED".into(), "b".into()));
    assert!(matches!(
        quiet.next_within(Duration::from_millis(400)).await,
        Next::Quiet
    ));
    // timeoutSeconds ends the stream.
    let started = Instant::now();
    let mut short = Watch::open(
        addr,
        "/api/v1/nodes?watch=true&resourceVersion=0&timeoutSeconds=1",
    )
    .await;
    loop {
        match short.next_within(WITHIN).await {
            Next::Event(_) => {}
            Next::End => break,
            Next::Quiet => panic!("the watch outlived its timeout"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // sendInitialEvents: the objects, then a bookmark marking their end.
    let mut init = Watch::open(
        addr,
        "/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(summary(&init.next().await).0, "ADDED");
    assert_eq!(summary(&init.next().await).0, "ADDED");
    let end = init.next().await;
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn compaction_answers_410_to_old_watches_and_continue_tokens() {
    let srv = server();
    let addr = srv.addr();
    let s = srv.standin();
    for n in ["a", "b", "c"] {
        s.apply(node(n)).unwrap();
    }
    let page = get(addr, "/api/v1/nodes?limit=1").await;
    let token = page.body["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = rv_of(&page.body);
    s.apply(node("d")).unwrap();
    admin(addr, json!({"fault": "compact"})).await;
    let gone = get(addr, &format!("/api/v1/nodes?limit=1&continue={token}")).await;
    assert_eq!(gone.code, 410);
    assert_eq!(gone.body["kind"], "Status");
    assert_eq!(gone.body["reason"], "Expired");
    let mut w = Watch::open(
        addr,
        &format!("/api/v1/nodes?watch=true&resourceVersion={old}"),
    )
    .await;
    let e = w.next().await;
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(matches!(w.next_within(WITHIN).await, Next::End));
    // The current version is still good.
    let now = s.resource_version();
    let mut ok = Watch::open(
        addr,
        &format!("/api/v1/nodes?watch=true&resourceVersion={now}"),
    )
    .await;
    s.apply(node("e")).unwrap();
    assert_eq!(summary(&ok.next().await), ("ADDED".into(), "e".into()));
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let srv = server();
    let addr = srv.addr();
    let s = srv.standin();
    s.apply(pod("x", "p1", "a")).unwrap();
    s.apply(pod("x", "p2", "b")).unwrap();
    s.apply(pod("y", "p3", "a")).unwrap();
    let on_a = get(addr, "/api/v1/pods?fieldSelector=spec.nodeName%3Da").await;
    assert_eq!(names(&on_a.body), ["p1", "p3"]);
    let by_name = get(
        addr,
        "/api/v1/namespaces/x/pods?fieldSelector=metadata.name%3Dp2",
    )
    .await;
    assert_eq!(names(&by_name.body), ["p2"]);
    let rv = s.resource_version();
    let path =
        format!("/api/v1/pods?watch=true&resourceVersion={rv}&fieldSelector=spec.nodeName%3Db");
    let mut w = Watch::open(addr, &path).await;
    s.apply(pod("x", "p4", "a")).unwrap();
    s.apply(pod("x", "p5", "b")).unwrap();
    assert_eq!(summary(&w.next().await), ("ADDED".into(), "p5".into()));
    // Objects that start or stop matching a label selector arrive as ADDED and DELETED.
    let path = format!(
        "/api/v1/pods?watch=true&resourceVersion={}&labelSelector=app%3Dweb",
        s.resource_version()
    );
    let mut w = Watch::open(addr, &path).await;
    let mut p1 = s.get(Kind::Pod, "x", "p1").unwrap();
    p1["metadata"]["labels"] = json!({"app": "web"});
    s.apply(p1.clone()).unwrap();
    p1["metadata"]["labels"] = json!({"app": "db"});
    s.apply(p1).unwrap();
    assert_eq!(summary(&w.next().await), ("ADDED".into(), "p1".into()));
    let gone = w.next().await;
    assert_eq!(summary(&gone), ("DELETED".into(), "p1".into()));
    assert_eq!(gone["object"]["metadata"]["labels"]["app"], "web");
    assert_eq!(rv_of(&gone["object"]), s.resource_version());
    assert_eq!(
        get(addr, "/api/v1/pods?fieldSelector=nonsense").await.code,
        400
    );
}

#[tokio::test]
async fn throttling_and_errors_answer_until_used_up() {
    let srv = server();
    let addr = srv.addr();
    admin(
        addr,
        json!({"fault": "throttle", "retryAfter": 3, "requests": 2}),
    )
    .await;
    for _ in 0..2 {
        let a = get(addr, "/api/v1/nodes").await;
        assert_eq!(
            (a.code, a.body["reason"].as_str()),
            (429, Some("TooManyRequests"))
        );
        assert_eq!(a.headers[RETRY_AFTER], "3");
        assert_eq!(a.body["details"]["retryAfterSeconds"], 3);
    }
    assert_eq!(get(addr, "/api/v1/nodes").await.code, 200);
    srv.standin().fault(Fault::Fail {
        code: 503,
        span: Span::Requests(1),
    });
    let a = get(addr, "/api/v1/nodes").await;
    assert_eq!(
        (a.code, a.body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    admin(addr, json!({"fault": "fail", "code": 500, "seconds": 30})).await;
    let a = get(addr, "/api/v1/nodes").await;
    assert_eq!(
        (a.code, a.body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    // The admin interface is never faulted; clear lifts the fault.
    assert_eq!(get(addr, "/weft-standin/counts").await.code, 200);
    admin(addr, json!({"fault": "clear"})).await;
    assert_eq!(get(addr, "/api/v1/nodes").await.code, 200);
    let counts = srv.standin().counts();
    assert_eq!(counts.requests(Verb::List, Kind::Node), 6);
    assert_eq!(counts.faulted(), 4);
    let json = get(addr, "/weft-standin/counts").await.body;
    assert_eq!(json["requests"]["list nodes"], 6);
    assert_eq!(
        call(addr, Method::DELETE, "/weft-standin/counts", None)
            .await
            .code,
        200
    );
    assert_eq!(srv.standin().counts().requests(Verb::List, Kind::Node), 0);
}

#[tokio::test]
async fn silence_holds_answers_and_watch_events_until_it_ends() {
    let srv = server();
    let addr = srv.addr();
    let s = srv.standin();
    s.set_bookmark_interval(Duration::from_millis(50));
    let rv = s.resource_version();
    let path = format!("/api/v1/nodes?watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
    let mut w = Watch::open(addr, &path).await;
    assert_eq!(w.next().await["type"], "BOOKMARK");
    let silence = Duration::from_millis(800);
    admin(
        addr,
        json!({"fault": "silence", "seconds": silence.as_secs_f64()}),
    )
    .await;
    let started = Instant::now();
    s.apply(node("a")).unwrap();
    let list = tokio::spawn(async move { get(addr, "/api/v1/nodes").await.code });
    // Nothing at all (no event, no bookmark) while silent.
    assert!(matches!(
        w.next_within(Duration::from_millis(500)).await,
        Next::Quiet
    ));
    assert_eq!(
        summary(&w.next_change().await),
        ("ADDED".into(), "a".into())
    );
    assert!(started.elapsed() >= silence - Duration::from_millis(50));
    assert_eq!(list.await.unwrap(), 200);
    assert!(started.elapsed() >= silence - Duration::from_millis(50));
}

#[tokio::test]
async fn a_drop_closes_every_connection_and_watch() {
    let srv = server();
    let addr = srv.addr();
    let s = srv.standin();
    let mut w1 = Watch::open(addr, "/api/v1/nodes?watch=true&resourceVersion=0").await;
    let mut w2 = Watch::open(addr, "/api/v1/pods?watch=true&resourceVersion=0").await;
    until("two open watches", || s.counts().watches_open() == 2).await;
    admin(addr, json!({"fault": "drop"})).await;
    assert!(matches!(w1.next_within(WITHIN).await, Next::End));
    assert!(matches!(w2.next_within(WITHIN).await, Next::End));
    until("the watches to close", || s.counts().watches_open() == 0).await;
    // New connections are served.
    assert_eq!(get(addr, "/api/v1/nodes").await.code, 200);
    s.fault(Fault::DropConnections);
    assert_eq!(get(addr, "/api/v1/nodes").await.code, 200);
}

#[tokio::test]
async fn tokens_are_checked_and_changeable() {
    let srv = server();
    let addr = srv.addr();
    let s = srv.standin();
    s.set_tokens(Some(vec!["good".into()]));
    let a = call_as(addr, Method::GET, "/api/v1/nodes", None, None).await;
    assert_eq!(
        (a.code, a.body["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    let bad = call_as(addr, Method::GET, "/api/v1/nodes", None, Some("bad")).await;
    assert_eq!(bad.code, 401);
    assert_eq!(
        call_as(addr, Method::GET, "/api/v1/nodes", None, Some("good"))
            .await
            .code,
        200
    );
    let body = Some(("application/json", json!({"tokens": ["new"]})));
    assert_eq!(
        call(addr, Method::PUT, "/weft-standin/tokens", body)
            .await
            .code,
        200
    );
    assert_eq!(
        call_as(addr, Method::GET, "/api/v1/nodes", None, Some("good"))
            .await
            .code,
        401
    );
    assert_eq!(
        call_as(addr, Method::GET, "/api/v1/nodes", None, Some("new"))
            .await
            .code,
        200
    );
    s.set_tokens(None);
    assert_eq!(get(addr, "/api/v1/nodes").await.code, 200);
    assert_eq!(s.counts().unauthorized(), 3);
}
