//! The real `kube` client and watcher against the stand-in Kubernetes API server (on
//! loopback, no root needed), and the `weft-sim kube-api` command.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};
use weft_sim::kubeapi::{self, Fault, Kind, Span, StandIn, Verb};

/// How long any awaited event may take before the test fails.
const WITHIN: Duration = Duration::from_secs(10);

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn server() -> kubeapi::Server {
    kubeapi::start(StandIn::new()).unwrap()
}

fn kube_client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// A watcher backoff of 50 ms every time.
struct QuickBackoff;

impl Iterator for QuickBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

impl kube::runtime::utils::Backoff for QuickBackoff {
    fn reset(&mut self) {}
}

#[tokio::test]
async fn the_kube_client_lists_and_its_watcher_follows_changes() {
    let srv = server();
    let s = srv.standin().clone();
    s.set_bookmark_interval(Duration::from_millis(200));
    s.apply(node("before")).unwrap();
    let api: kube::Api<Node> = kube::Api::all(kube_client(&srv.url()));
    let nodes = api.list(&Default::default()).await.unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert_eq!(nodes.items[0].metadata.name.as_deref(), Some("before"));

    // A short fixed backoff: the default one grows to seconds over the faults below.
    let mut events = watcher(api, watcher::Config::default())
        .backoff(QuickBackoff)
        .boxed();
    // The next event; errors (a dropped watch, a 410) are the watcher's to recover from.
    let mut next = async || {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let item = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("a watcher event in time")
                .expect("the watcher's stream goes on");
            if let Ok(event) = item {
                return event;
            }
        }
    };
    let name = |n: &Node| n.metadata.name.clone().unwrap();
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(n) if name(&n) == "before"));
    assert!(matches!(next().await, watcher::Event::InitDone));
    // The watcher is lazy: it opens its watch (from the list's version) when next polled.
    s.apply(node("after")).unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(n) if name(&n) == "after"));
    s.delete(Kind::Node, "", "after").unwrap();
    assert!(matches!(next().await, watcher::Event::Delete(n) if name(&n) == "after"));
    let counts = s.counts();
    assert_eq!(counts.requests(Verb::List, Kind::Node), 2);
    assert_eq!(counts.requests(Verb::Watch, Kind::Node), 1);

    // A dropped watch resumes from its version without a relist...
    s.fault(Fault::DropConnections);
    s.apply(node("resumed")).unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(n) if name(&n) == "resumed"));
    assert_eq!(s.counts().watches_opened(Kind::Node), 2);
    assert_eq!(s.counts().requests(Verb::List, Kind::Node), 2);
    // ...and after compaction, relists (410 on the watch, then Init again). 500s (which the
    // client does not retry) keep it out while the store moves past its version.
    s.fault(Fault::Fail {
        code: 500,
        span: Span::For(WITHIN),
    });
    s.fault(Fault::DropConnections);
    s.apply(node("compacted")).unwrap();
    s.fault(Fault::Compact);
    s.fault(Fault::Clear);
    let mut seen_init = false;
    loop {
        match next().await {
            watcher::Event::Init => seen_init = true,
            watcher::Event::InitApply(_) | watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
            }
            watcher::Event::InitDone => break,
        }
    }
    assert!(seen_init);
    assert_eq!(s.counts().requests(Verb::List, Kind::Node), 3);
}

#[tokio::test]
async fn the_kube_client_retries_after_429_as_told() {
    let srv = server();
    srv.standin().apply(node("a")).unwrap();
    srv.standin().fault(Fault::Throttle {
        retry_after: 1,
        span: Span::Requests(2),
    });
    let api: kube::Api<Node> = kube::Api::all(kube_client(&srv.url()));
    let started = Instant::now();
    let nodes = tokio::time::timeout(WITHIN, api.list(&Default::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(1_900));
    assert_eq!(srv.standin().counts().requests(Verb::List, Kind::Node), 3);
}

#[tokio::test]
async fn the_kube_client_speaks_tls_with_a_bearer_token() {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../router/tests/data");
    let cert = std::fs::read(format!("{data}/kube-apiserver.crt")).unwrap();
    let key = std::fs::read(format!("{data}/kube-apiserver.key")).unwrap();
    let ca = std::fs::read(format!("{data}/kube-ca.crt")).unwrap();
    let srv =
        kubeapi::start_tls(StandIn::new(), kubeapi::Tls::from_pem(&cert, &key).unwrap()).unwrap();
    assert!(srv.url().starts_with("https://127.0.0.1:"));
    srv.standin().apply(node("a")).unwrap();
    srv.standin().set_tokens(Some(vec!["sesame".into()]));
    let mut config = kube::Config::new(srv.url().parse().unwrap());
    config.root_cert = Some(
        CertificateDer::pem_slice_iter(&ca)
            .map(|c| c.unwrap().to_vec())
            .collect(),
    );
    config.auth_info.token = Some("sesame".to_owned().into());
    let api: kube::Api<Node> = kube::Api::all(kube::Client::try_from(config).unwrap());
    let nodes = api.list(&Default::default()).await.unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert_eq!(srv.standin().counts().unauthorized(), 0);
}

#[test]
fn the_kube_api_command_serves_until_killed() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-sim"))
        .args([
            "kube-api",
            "--listen",
            "127.0.0.1:0",
            "--default-namespaces",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async {
        let client = kube_client(&format!("http://{addr}"));
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let node: Node = serde_json::from_value(node("lab-node")).unwrap();
        nodes.create(&Default::default(), &node).await?;
        let names: Vec<_> = nodes
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|n| n.metadata.name.unwrap())
            .collect();
        let namespaces: kube::Api<Namespace> = kube::Api::all(client);
        let count = namespaces.list(&Default::default()).await?.items.len();
        Ok::<_, kube::Error>((names, count))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(outcome.unwrap(), (vec!["lab-node".to_owned()], 4));
}
