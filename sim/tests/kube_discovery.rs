//! `--kube-peers` end to end: in-process routers on loopback addresses (127.0.0.1-4, one shared
//! ephemeral port, no devices) discover each other from the stand-in Kubernetes API server
//! (`weft_sim::kubeapi`), through watch disconnects, compaction (410 Gone), an unusable Node
//! object and node deletion; each sets its Node's `NetworkUnavailable` condition; and without a
//! mesh password only Nodes may join.

#![allow(clippy::unwrap_used, clippy::print_stderr)] // test helpers panic on setup failures by design

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;
use weft_router::api::ApiAddr;
use weft_router::api::client::ApiClient;
use weft_router::kube::KubeSettings;
use weft_router::status::{ConnectionState, RouterStatus};
use weft_router::{RouterConfig, RunningRouter, start_router};
use weft_sim::kubeapi::{self, Fault, Kind, Server, Span, StandIn, Verb};

fn node_object(name: &str, ip: &str) -> serde_json::Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("uid-{name}"),
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
        },
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name}
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        }
    })
}

/// The stand-in, with the changes the tests make to Nodes.
struct ApiServer(Server);

impl ApiServer {
    fn start() -> (Self, SocketAddr) {
        let server = kubeapi::start(StandIn::new()).unwrap();
        let addr = server.addr();
        (Self(server), addr)
    }

    fn api(&self) -> &StandIn {
        self.0.standin()
    }

    /// Adds, changes or deletes a Node.
    fn change(&self, kind: &str, name: &str, ip: &str) {
        if kind == "DELETED" {
            self.api().delete(Kind::Node, "", name).unwrap();
        } else {
            self.api().apply(node_object(name, ip)).unwrap();
        }
    }

    /// Ends every open watch (as an API server restart or a load balancer would) while the
    /// server holds new requests back, and makes a change no watch sees live. With
    /// `compact`, versions from before get 410 Gone.
    fn change_while_disconnected(&self, kind: &str, name: &str, ip: &str, compact: bool) {
        self.api().fault(Fault::Silence {
            duration: Duration::from_millis(500),
        });
        self.api().fault(Fault::DropConnections);
        self.change(kind, name, ip);
        if compact {
            self.api().fault(Fault::Compact);
        }
    }

    /// A Node weft cannot use: its name is not a DNS subdomain.
    fn garble(&self) {
        self.api()
            .apply(node_object("Not_A_Node_Name", "127.0.0.9"))
            .unwrap();
    }

    /// The `NetworkUnavailable` condition on Node `node`'s status.
    fn condition(&self, node: &str) -> Option<serde_json::Value> {
        let obj = self.api().get(Kind::Node, "", node)?;
        obj["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .cloned()
    }

    /// (Node lists, Node watches opened).
    fn counts(&self) -> (u64, u64) {
        let c = self.api().counts();
        (
            c.requests(Verb::List, Kind::Node),
            c.watches_opened(Kind::Node),
        )
    }
}

/// A port free on 127.0.0.1 (and, in practice, on the other loopback addresses).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn start(dir: &Path, node: &str, ip: IpAddr, port: u16, api: SocketAddr) -> Router {
    let mut config = RouterConfig::with_addrs(
        dir.join(node).join("weft.sock"),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.nickname = node.to_owned();
    config.state_dir = dir.join(node).join("state");
    config.bind_addr = Some(ip);
    config.port = port;
    config.kube = Some(KubeSettings {
        api: Some(format!("http://{api}")),
        token_file: dir.join("no-token"),
        ca_file: dir.join("no-ca"),
        discover_peers: true,
    });
    let client = ApiClient::new(ApiAddr::Unix(config.api_socket.clone()));
    Router {
        running: start_router(config).await.unwrap(),
        client,
    }
}

struct Router {
    running: RunningRouter,
    client: ApiClient,
}

async fn wait_for(r: &Router, what: &str, f: impl Fn(&RouterStatus) -> bool) -> RouterStatus {
    let start = Instant::now();
    loop {
        let s: RouterStatus = r.client.report().await.unwrap();
        if f(&s) {
            return s;
        }
        // IPAM's first consensus may take some rounds when three routers propose at once.
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn targets(s: &RouterStatus) -> Vec<String> {
    let mut t: Vec<String> = s.targets.iter().map(|t| t.addr.clone()).collect();
    t.sort();
    t
}

fn connected_to(s: &RouterStatus, nick: &str) -> bool {
    s.connections.iter().any(|c| {
        c.state == ConnectionState::Established && c.remote_nickname.as_deref() == Some(nick)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_follow_the_nodes_through_watch_disconnects_and_410() {
    let dir = TempDir::new().unwrap();
    let (api, api_addr) = ApiServer::start();
    let port = free_port();
    let at = |i: u8| format!("127.0.0.{i}:{port}");
    for i in 1..=3 {
        api.change("ADDED", &format!("n{i}"), &format!("127.0.0.{i}"));
    }
    let ip = |i: u8| IpAddr::from([127, 0, 0, i]);
    let (n1, n2, n3) = tokio::join!(
        start(dir.path(), "n1", ip(1), port, api_addr),
        start(dir.path(), "n2", ip(2), port, api_addr),
        start(dir.path(), "n3", ip(3), port, api_addr),
    );

    // Every router dials the others (never itself), the mesh forms, IPAM agrees (quorum 2 of
    // 3, counted from the node list) and every router turns ready.
    for (r, me) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
        // Connected is not yet known: a peer's record arrives just after its connection is
        // up, and the checks below read the records.
        let s = wait_for(r, "the mesh and IPAM", |s| {
            s.ready
                && ["n1", "n2", "n3"]
                    .iter()
                    .filter(|n| **n != me)
                    .all(|n| connected_to(s, n))
                && ["n1", "n2", "n3"]
                    .iter()
                    .all(|n| s.peers.iter().any(|p| p.nickname == *n))
        })
        .await;
        let mut want: Vec<String> = (1..=3u8)
            .filter(|i| format!("n{i}") != me)
            .map(at)
            .collect();
        want.sort();
        assert_eq!(targets(&s), want, "{me}");
        let ready = r.client.get("/ready").await.unwrap();
        assert_eq!(ready.status, 200, "{me}: {}", ready.body);
    }
    // n3 holds IP space of its own once it has its gateway (it is ready).
    let s = n1.client.report().await.unwrap();
    let n3_name = s
        .peers
        .iter()
        .find(|p| p.nickname == "n3")
        .unwrap()
        .name
        .clone();
    let n3_ips = |s: &RouterStatus| {
        s.ipam
            .as_ref()
            .unwrap()
            .owners
            .iter()
            .find(|o| o.name == n3_name)
            .map_or(0, |o| o.ips)
    };
    wait_for(&n1, "n3 to own IP space", |s| n3_ips(s) > 0).await;

    // A node added mid-watch is dialled.
    api.change("ADDED", "n4", "127.0.0.4");
    wait_for(&n1, "n4 dialled", |s| targets(s).contains(&at(4))).await;

    // The watch drops; while it is down n4 moves. The client watches again from the last
    // version it saw, so it gets the change it missed.
    let (_, watches_before) = api.counts();
    api.change_while_disconnected("MODIFIED", "n4", "127.0.0.5", false);
    let s = wait_for(&n1, "n4's move seen after the reconnect", |s| {
        let t = targets(s);
        t.contains(&at(5)) && !t.contains(&at(4))
    })
    .await;
    assert!(
        !targets(&s).contains(&at(1)),
        "n1 dials itself: {:?}",
        targets(&s)
    );
    assert!(
        api.counts().1 > watches_before,
        "no new watch after the disconnect"
    );

    // n3 is switched off and its Node deleted mid-watch: every router forgets it, and n1 (the
    // live node with the lowest name) removes its peer and takes its IP space over.
    n3.running.shutdown().await.unwrap();
    api.change("DELETED", "n3", "127.0.0.3");
    let s = wait_for(&n1, "n3 forgotten and its space reclaimed", |s| {
        !targets(s).contains(&at(3)) && n3_ips(s) == 0
    })
    .await;
    assert!(s.peers.iter().all(|p| p.nickname != "n3"), "{:#?}", s.peers);
    wait_for(&n2, "n2 forgets n3", |s| !targets(s).contains(&at(3))).await;

    // The history is compacted and the watch drops; meanwhile n6 joins. The resumed watch gets
    // 410 Gone, so the routers list again, and only that list shows n6.
    let (lists_before, _) = api.counts();
    api.change_while_disconnected("ADDED", "n6", "127.0.0.6", true);
    wait_for(&n1, "n6 dialled after a relist", |s| {
        targets(s).contains(&at(6))
    })
    .await;
    wait_for(&n2, "n6 dialled after a relist", |s| {
        targets(s).contains(&at(6))
    })
    .await;
    let (lists, _) = api.counts();
    assert!(
        lists >= lists_before + 2,
        "both routers listed again: {lists_before} -> {lists}"
    );

    // An object weft cannot use (no name): counted and skipped, the watch goes on.
    api.garble();
    let s = wait_for(&n1, "the unusable Node counted", |s| {
        s.kubernetes
            .as_ref()
            .is_some_and(|k| k.watches[0].skipped >= 1)
    })
    .await;
    let nodes = &s.kubernetes.as_ref().unwrap().watches[0];
    assert!(nodes.synced && nodes.error.is_none(), "{nodes:?}");
    api.change("ADDED", "n7", "127.0.0.7");
    wait_for(&n1, "n7 dialled after the bad object", |s| {
        targets(s).contains(&at(7))
    })
    .await;

    // Every router, once ready, told the API its node's network is up.
    for node in ["n1", "n2"] {
        let c = api
            .condition(node)
            .unwrap_or_else(|| panic!("{node}: no condition set"));
        assert_eq!(
            (&c["type"], &c["status"], &c["reason"]),
            (
                &json!("NetworkUnavailable"),
                &json!("False"),
                &json!("WeftIsUp")
            ),
            "{c}"
        );
    }

    // n2 is deleted while n1 is down. When n1 starts again (same state directory), it
    // remembers n2 from its discovery state: it forgets the address it had persisted for n2 and
    // reclaims n2's IP space, though no watch event told it.
    let n2_name = n1
        .client
        .report()
        .await
        .unwrap()
        .peers
        .iter()
        .find(|p| p.nickname == "n2")
        .unwrap()
        .name
        .clone();
    let peers_json = dir.path().join("n1/state/peers.json");
    let started = Instant::now();
    while !std::fs::read_to_string(&peers_json).is_ok_and(|t| t.contains(&at(2))) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "n2 never persisted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n1.running.shutdown().await.unwrap();
    n2.running.shutdown().await.unwrap();
    api.change("DELETED", "n2", "127.0.0.2");
    let n1 = start(dir.path(), "n1", ip(1), port, api_addr).await;
    let owned_by_n2 = |s: &RouterStatus| {
        s.ipam
            .as_ref()
            .unwrap()
            .owners
            .iter()
            .find(|o| o.name == n2_name)
            .map_or(0, |o| o.ips)
    };
    wait_for(&n1, "n2 forgotten and reclaimed after a restart", |s| {
        // Until the engine publishes, the snapshot has no IPAM section. n3's and n2's space is
        // n1's now: it owns the whole restored ring.
        s.ipam.as_ref().is_some_and(|i| {
            i.owners.len() == 1 && i.owners[0].name == s.name && i.owners[0].ips == i.range_num_ips
        }) && !targets(s).contains(&at(2))
            && owned_by_n2(s) == 0
    })
    .await;
    assert!(
        !std::fs::read_to_string(&peers_json)
            .unwrap()
            .contains(&at(2))
    );
    n1.running.shutdown().await.unwrap();
}

/// Without a mesh password, a router that knows the cluster's Nodes admits only their
/// addresses (and addresses it was told to dial): a stranger is refused before the handshake
/// and counted, and admitted once a Node with its address appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_only_nodes_may_join() {
    let dir = TempDir::new().unwrap();
    let (api, api_addr) = ApiServer::start();
    let port = free_port();
    api.change("ADDED", "n1", "127.0.0.1");
    let n1 = start(
        dir.path(),
        "n1",
        IpAddr::from([127, 0, 0, 1]),
        port,
        api_addr,
    )
    .await;

    // A router that is no Node dials n1 from its own address, 127.0.0.4.
    let mut config = RouterConfig::with_addrs(
        dir.path().join("stranger/weft.sock"),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.nickname = "stranger".to_owned();
    config.state_dir = dir.path().join("stranger/state");
    config.bind_addr = Some(IpAddr::from([127, 0, 0, 4]));
    config.port = port;
    config.peers = vec![format!("127.0.0.1:{port}")];
    let stranger = Router {
        client: ApiClient::new(ApiAddr::Unix(config.api_socket.clone())),
        running: start_router(config).await.unwrap(),
    };
    let start = Instant::now();
    while n1.running.metrics().refused_not_a_node() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "n1 never refused the stranger"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = n1.client.report().await.unwrap();
    assert!(!connected_to(&s, "stranger"), "{s:#?}");
    assert!(s.peers.iter().all(|p| p.nickname != "stranger"), "{s:#?}");
    let at = n1.running.metrics_addr();
    let scrape = ApiClient::new(ApiAddr::Http {
        host: at.ip().to_string(),
        port: at.port(),
    })
    .get("/metrics")
    .await
    .unwrap();
    assert!(
        scrape
            .body
            .contains("weft_connections_refused_total{reason=\"not_a_node\"} "),
        "{}",
        scrape.body
    );

    // Once a Node has its address, it joins.
    api.change("ADDED", "stranger", "127.0.0.4");
    wait_for(&n1, "the stranger, now a Node, to join", |s| {
        connected_to(s, "stranger")
    })
    .await;
    stranger.running.shutdown().await.unwrap();
    n1.running.shutdown().await.unwrap();
}

fn pod_object(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn namespace_object(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": name}}})
}

fn policy_object(ns: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}]}
    })
}

/// Whether n1's cluster view holds what the stand-in holds: every namespace, pod and policy,
/// and n1's own pods with their labels.
fn view_matches(api: &StandIn, s: &RouterStatus) -> bool {
    let Some(k) = &s.kubernetes else {
        return false;
    };
    let Some(c) = &k.cluster else {
        return false;
    };
    let mut local: Vec<(String, String, String)> = api
        .list(Kind::Pod, None)
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "n1")
        .map(|p| {
            let m = &p["metadata"];
            let app = m["labels"]["app"].as_str().unwrap_or_default();
            (
                m["namespace"].as_str().unwrap().to_owned(),
                m["name"].as_str().unwrap().to_owned(),
                app.to_owned(),
            )
        })
        .collect();
    local.sort();
    let mut seen: Vec<(String, String, String)> = c
        .local_pods
        .iter()
        .map(|p| {
            (
                p.namespace.clone(),
                p.name.clone(),
                p.labels.get("app").cloned().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    c.namespaces == api.list(Kind::Namespace, None).len()
        && c.pods == api.list(Kind::Pod, None).len()
        && c.policies == api.list(Kind::NetworkPolicy, None).len()
        && local == seen
}

/// Whether status says every watch is in sync.
fn in_sync(s: &RouterStatus) -> bool {
    s.kubernetes
        .as_ref()
        .is_some_and(|k| k.watches.iter().all(|w| w.synced && w.error.is_none()))
}

/// The watchers ride out what an API server does to its clients: dropped connections (they
/// watch again from where they were, without listing again), 429 with `Retry-After`, 5xx
/// (status says they retry, with the last view kept), 410 after compaction (one relist per
/// kind, not a storm) and a minute of silence (the dead watch is given up and opened again).
/// After each, the cluster view matches the stand-in's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_survives_what_an_api_server_does() {
    let dir = TempDir::new().unwrap();
    let (server, api_addr) = ApiServer::start();
    let api = server.api().clone();
    api.add_default_namespaces().unwrap();
    server.change("ADDED", "n1", "127.0.0.1");
    for ns in ["shop", "bank"] {
        api.apply(namespace_object(ns)).unwrap();
        api.apply(policy_object(ns, "db")).unwrap();
    }
    api.apply(pod_object("shop", "web-1", "n1", "10.32.0.10", "web"))
        .unwrap();
    api.apply(pod_object("bank", "db-1", "n1", "10.32.0.11", "db"))
        .unwrap();
    api.apply(pod_object("bank", "db-2", "n2", "10.40.0.1", "db"))
        .unwrap();
    let port = free_port();
    let n1 = start(
        dir.path(),
        "n1",
        IpAddr::from([127, 0, 0, 1]),
        port,
        api_addr,
    )
    .await;
    wait_for(&n1, "the first view", |s| {
        view_matches(&api, s) && in_sync(s)
    })
    .await;
    let lists = |api: &StandIn| {
        let c = api.counts();
        [Kind::Node, Kind::Namespace, Kind::Pod, Kind::NetworkPolicy]
            .map(|k| c.requests(Verb::List, k))
    };

    // Dropped connections: changes made meanwhile arrive; nobody lists again.
    let before = lists(&api);
    api.fault(Fault::Silence {
        duration: Duration::from_millis(300),
    });
    api.fault(Fault::DropConnections);
    api.apply(pod_object("shop", "web-2", "n1", "10.32.0.12", "web"))
        .unwrap();
    api.apply(pod_object("bank", "db-1", "n1", "10.32.0.11", "db-primary"))
        .unwrap();
    wait_for(&n1, "the view after a disconnect", |s| {
        view_matches(&api, s)
    })
    .await;
    assert_eq!(
        lists(&api),
        before,
        "a disconnect made the watchers list again"
    );

    // 429 with Retry-After (and 503, 504) the client itself waits out and retries. A 500 for
    // a while reaches the watchers: status says they retry, and the view is kept meanwhile.
    api.fault(Fault::Throttle {
        retry_after: 1,
        span: Span::Requests(3),
    });
    api.fault(Fault::DropConnections);
    api.apply(namespace_object("tools")).unwrap();
    wait_for(&n1, "the view after 429s", |s| view_matches(&api, s)).await;
    api.fault(Fault::Fail {
        code: 500,
        span: Span::For(Duration::from_secs(6)),
    });
    api.fault(Fault::DropConnections);
    let s = wait_for(&n1, "status to say a watch retries", |s| {
        s.kubernetes
            .as_ref()
            .is_some_and(|k| k.watches.iter().any(|w| !w.synced && w.error.is_some()))
    })
    .await;
    let k = s.kubernetes.unwrap();
    assert!(
        k.cluster.as_ref().is_some_and(|c| c.pods == 4),
        "the last view is kept: {k:?}"
    );
    api.apply(policy_object("tools", "db")).unwrap();
    wait_for(&n1, "the view after 500s", |s| view_matches(&api, s)).await;

    // Compaction: the resumed watches get 410 and each kind lists once more, not in a loop.
    let before = lists(&api);
    api.fault(Fault::Silence {
        duration: Duration::from_millis(300),
    });
    api.fault(Fault::DropConnections);
    api.delete(Kind::Pod, "shop", "web-1").unwrap();
    api.fault(Fault::Compact);
    wait_for(&n1, "the view after 410", |s| {
        view_matches(&api, s) && lists(&api).iter().zip(before).all(|(a, b)| *a > b)
    })
    .await;
    let after = lists(&api);
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        assert!(
            (b + 1..=b + 2).contains(&a),
            "kind {i}: {b} -> {a} lists after one 410"
        );
    }

    // A minute of silence: the view stays, the dead watches are given up and opened again,
    // and what changed meanwhile arrives.
    api.fault(Fault::Silence {
        duration: Duration::from_secs(62),
    });
    api.apply(pod_object("shop", "web-3", "n1", "10.32.0.13", "web"))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // let a request reach the silent server
    let s = n1.client.report().await.unwrap();
    assert!(
        !view_matches(&api, &s),
        "the change cannot have arrived yet"
    );
    // After that, no error is fresh any more: status says every watch is in sync again.
    let start = Instant::now();
    loop {
        let s = n1.client.report().await.unwrap();
        if view_matches(&api, &s) && in_sync(&s) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the view never caught up: {:?}",
            s.kubernetes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    n1.running.shutdown().await.unwrap();
}
