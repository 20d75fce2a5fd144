//! `--kube-peers` end to end: in-process routers on loopback addresses (127.0.0.1-3, one shared
//! ephemeral port, no devices) discover each other from a stand-in Kubernetes API server.
//!
//! The stand-in serves `GET /api/v1/nodes` (a `NodeList`) and `GET /api/v1/nodes?watch=1`
//! (newline-delimited watch events), in the shapes the Kubernetes API reference gives: kind
//! `NodeList`, apiVersion `v1`, `metadata.resourceVersion`, events `{"type": "ADDED",
//! "object": {...}}`, a `Status` object with code 410 in an `ERROR` event for a version that is
//! too old. The test can end every open watch (a disconnect) and compact the history (so a
//! resumed watch gets 410 and the client must list again). A third test serves the list over
//! HTTPS with a test CA (`tests/data/`) and checks the CA and the bearer token.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_router::api::ApiAddr;
use weft_router::api::client::ApiClient;
use weft_router::kube::KubeSettings;
use weft_router::status::{ConnectionState, RouterStatus};
use weft_router::{RouterConfig, RunningRouter, start_router};

type Body = BoxBody<Bytes, Infallible>;
type Sink = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// The stand-in API server's state.
#[derive(Default)]
struct Cluster {
    /// name → InternalIP.
    nodes: BTreeMap<String, String>,
    /// The last resource version given out.
    rv: u64,
    /// Every change: (rv, type, name, ip).
    history: Vec<(u64, &'static str, String, String)>,
    /// Watches from a version older than this get 410.
    compacted: u64,
    /// Open watch streams.
    watches: Vec<Sink>,
    lists: usize,
    watch_requests: usize,
    gone_answers: usize,
    /// Node name → the `NetworkUnavailable` condition last patched onto its status.
    conditions: BTreeMap<String, serde_json::Value>,
}

impl Cluster {
    fn apply(&mut self, kind: &'static str, name: &str, ip: &str) -> Bytes {
        self.rv += 1;
        let rv = self.rv;
        if kind == "DELETED" {
            self.nodes.remove(name);
        } else {
            self.nodes.insert(name.to_owned(), ip.to_owned());
        }
        self.history
            .push((rv, kind, name.to_owned(), ip.to_owned()));
        event_line(kind, name, ip, rv)
    }
}

fn node_object(name: &str, ip: &str, rv: u64) -> serde_json::Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("uid-{name}"),
            "resourceVersion": rv.to_string(),
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

fn event_line(kind: &str, name: &str, ip: &str, rv: u64) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": kind, "object": node_object(name, ip, rv)})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

#[derive(Clone)]
struct ApiServer(Arc<Mutex<Cluster>>);

impl ApiServer {
    async fn start() -> (Self, SocketAddr) {
        let server = Self(Arc::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (server, addr)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(name) = req
            .uri()
            .path()
            .strip_prefix("/api/v1/nodes/")
            .and_then(|p| p.strip_suffix("/status"))
        {
            // The router's condition: a strategic merge patch of the Node's status.
            let name = name.to_owned();
            assert_eq!(req.method(), hyper::Method::PATCH);
            assert_eq!(
                req.headers()["content-type"],
                "application/strategic-merge-patch+json"
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let condition = patch["status"]["conditions"][0].clone();
            let mut c = self.0.lock().unwrap();
            let ip = c.nodes.get(&name).cloned().unwrap_or_default();
            c.conditions.insert(name.clone(), condition);
            let node = node_object(&name, &ip, c.rv);
            return respond(StatusCode::OK, Bytes::from(node.to_string()));
        }
        assert_eq!(req.uri().path(), "/api/v1/nodes", "{}", req.uri());
        let query = req.uri().query().unwrap_or("");
        let params: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let mut c = self.0.lock().unwrap();
        if !matches!(params.get("watch"), Some(&("1" | "true"))) {
            c.lists += 1;
            let items: Vec<_> = c
                .nodes
                .iter()
                .map(|(n, ip)| node_object(n, ip, c.rv))
                .collect();
            let body = json!({
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": c.rv.to_string()},
                "items": items
            });
            return respond(StatusCode::OK, Bytes::from(body.to_string()));
        }
        c.watch_requests += 1;
        assert_eq!(params.get("allowWatchBookmarks"), Some(&"true"));
        let from: u64 = params["resourceVersion"].parse().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        if from < c.compacted {
            // What an API server sends for a compacted version: 200, then an ERROR event.
            c.gone_answers += 1;
            let status = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", c.compacted),
                "reason": "Expired", "code": 410}});
            let _ = tx.send(Ok(Frame::data(Bytes::from(format!("{status}\n")))));
        } else {
            for (rv, kind, name, ip) in c.history.iter().filter(|h| h.0 > from) {
                let _ = tx.send(Ok(Frame::data(event_line(kind, name, ip, *rv))));
            }
            // A bookmark, as the server sends now and then.
            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
                "metadata": {"resourceVersion": c.rv.to_string()}}});
            let _ = tx.send(Ok(Frame::data(Bytes::from(format!("{bookmark}\n")))));
            c.watches.push(tx);
        }
        let body = StreamBody::new(tokio_stream(rx)).boxed();
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        resp
    }

    /// Applies a change and sends it to every open watch.
    fn change(&self, kind: &'static str, name: &str, ip: &str) {
        let mut c = self.0.lock().unwrap();
        let line = c.apply(kind, name, ip);
        c.watches
            .retain(|w| w.send(Ok(Frame::data(line.clone()))).is_ok());
    }

    /// Ends every open watch (as an API server restart or a load balancer would), then applies
    /// a change that no watch sees live, all under one lock so no watch can open in between.
    /// With `compact`, the history is then forgotten: watches from before get 410.
    fn change_while_disconnected(&self, kind: &'static str, name: &str, ip: &str, compact: bool) {
        let mut c = self.0.lock().unwrap();
        c.watches.clear();
        c.apply(kind, name, ip);
        if compact {
            c.compacted = c.rv;
            c.history.clear();
        }
    }

    /// Sends every open watch a Node weft cannot use: its name is not a DNS subdomain.
    fn garble(&self) {
        let mut c = self.0.lock().unwrap();
        c.rv += 1;
        let line = json!({"type": "ADDED", "object": {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "Not_A_Node_Name", "resourceVersion": c.rv.to_string()}}});
        let line = Bytes::from(format!("{line}\n"));
        c.watches
            .retain(|w| w.send(Ok(Frame::data(line.clone()))).is_ok());
    }

    fn condition(&self, node: &str) -> Option<serde_json::Value> {
        self.0.lock().unwrap().conditions.get(node).cloned()
    }

    fn counts(&self) -> (usize, usize, usize) {
        let c = self.0.lock().unwrap();
        (c.lists, c.watch_requests, c.gone_answers)
    }
}

fn respond(code: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = code;
    resp
}

fn tokio_stream(
    mut rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
    let (api, api_addr) = ApiServer::start().await;
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
    let (_, watches_before, _) = api.counts();
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
    let (lists_before, _, _) = api.counts();
    api.change_while_disconnected("ADDED", "n6", "127.0.0.6", true);
    wait_for(&n1, "n6 dialled after a relist", |s| {
        targets(s).contains(&at(6))
    })
    .await;
    wait_for(&n2, "n6 dialled after a relist", |s| {
        targets(s).contains(&at(6))
    })
    .await;
    let (lists, _, gone) = api.counts();
    assert!(gone >= 2, "both routers got 410: {gone}");
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

#[tokio::test]
async fn an_unreachable_api_fails_the_start_with_the_url() {
    let dir = TempDir::new().unwrap();
    let mut config = RouterConfig::with_addrs(
        dir.path().join("weft.sock"),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.state_dir = dir.path().join("state");
    config.kube = Some(KubeSettings {
        api: Some("ftp://127.0.0.1:1".to_owned()),
        ..KubeSettings::in_cluster()
    });
    let err = start_router(config).await.unwrap_err().to_string();
    assert!(err.contains("--kube-api"), "{err}");
}

/// The HTTPS path: the client trusts only the cluster CA it is given, sends the service
/// account token as a bearer token, and re-reads the token file for every request (kubelet
/// rotates it).
#[tokio::test]
async fn https_with_the_cluster_ca_and_a_rotating_token() {
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use weft_router::kube::{client, nodes::initial_list};

    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(data.join("kube-apiserver.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(data.join("kube-apiserver.key")).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The tokens the server accepts, and the last one it saw.
    let accepted: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(vec!["token-1".to_owned()]));
    let seen: Arc<Mutex<String>> = Arc::default();
    let (want, saw) = (Arc::clone(&accepted), Arc::clone(&seen));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let want = Arc::clone(&want);
            let saw = Arc::clone(&saw);
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let token = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    let authorized = want.lock().unwrap().contains(&token);
                    *saw.lock().unwrap() = token;
                    let resp = if authorized {
                        let list = json!({"kind": "NodeList", "apiVersion": "v1",
                            "metadata": {"resourceVersion": "7"},
                            "items": [node_object("n1", "192.0.2.1", 7)]});
                        respond(StatusCode::OK, Bytes::from(list.to_string()))
                    } else {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized",
                            "code": 401});
                        respond(StatusCode::UNAUTHORIZED, Bytes::from(status.to_string()))
                    };
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let dir = TempDir::new().unwrap();
    let token_file = dir.path().join("token");
    // A token file with a newline is named (kube would send it verbatim).
    std::fs::write(&token_file, "token-1\n").unwrap();
    let settings = |ca: &str| KubeSettings {
        api: Some(format!("https://127.0.0.1:{port}")),
        token_file: token_file.clone(),
        ca_file: data.join(ca),
        discover_peers: true,
    };
    let list = |c| async move { initial_list(&c, "test", Duration::ZERO).await };
    let err = client(&settings("kube-ca.crt")).err().unwrap().to_string();
    assert!(err.contains("newline"), "{err}");
    std::fs::write(&token_file, "token-1").unwrap();
    let (c, _) = client(&settings("kube-ca.crt")).unwrap();
    let nodes = list(c.clone()).await.unwrap();
    assert_eq!(nodes[0].name, "n1");
    assert_eq!(*seen.lock().unwrap(), "token-1");

    // The token rotates (kubelet keeps the old one valid a while): the client reads the new
    // one within about a minute, as client-go does.
    accepted.lock().unwrap().push("token-2".to_owned());
    std::fs::write(&token_file, "token-2").unwrap();
    let start = std::time::Instant::now();
    while *seen.lock().unwrap() != "token-2" {
        assert!(
            start.elapsed() < Duration::from_secs(75),
            "the rotated token was never sent"
        );
        list(c.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A token the server does not accept: the server's reason.
    *accepted.lock().unwrap() = vec!["token-3".to_owned()];
    let err = list(c.clone()).await.unwrap_err().to_string();
    assert!(err.contains("Unauthorized"), "{err}");

    // A CA that did not sign the server's certificate: refused, and said so.
    let (other, _) = client(&settings("other-ca.crt")).unwrap();
    let err = format!("{:?}", list(other).await.unwrap_err());
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // No token file on HTTPS: named.
    std::fs::remove_file(&token_file).unwrap();
    let err = client(&settings("kube-ca.crt")).err().unwrap().to_string();
    assert!(err.contains(&token_file.display().to_string()), "{err}");
}

/// Without a mesh password, a router that knows the cluster's Nodes admits only their
/// addresses (and addresses it was told to dial): a stranger is refused before the handshake
/// and counted, and admitted once a Node with its address appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_only_nodes_may_join() {
    let dir = TempDir::new().unwrap();
    let (api, api_addr) = ApiServer::start().await;
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
