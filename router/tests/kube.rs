//! The Kubernetes client's settings against servers of the test's own: a URL that is not one
//! is named at start; over HTTPS the client trusts only the cluster CA it is given, sends the
//! service account token (and a rotated one within a minute), names a refused token, a wrong
//! CA and a missing or malformed token file. Discovery end to end runs against the simulator's
//! stand-in API (`sim/tests/kube_discovery.rs`).

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tempfile::TempDir;
use tokio::net::TcpListener;
use weft_router::kube::KubeSettings;
use weft_router::{RouterConfig, start_router};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(code: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = code;
    resp
}

fn node_object(name: &str, ip: &str, rv: u64) -> serde_json::Value {
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string()},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    })
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

    // Nothing listens at the URL: the list (which the start makes, retrying for a minute)
    // fails naming the URL and what failed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = KubeSettings {
        api: Some(format!("http://127.0.0.1:{port}")),
        token_file: dir.path().join("no-token"),
        ..KubeSettings::in_cluster()
    };
    let (c, url) = weft_router::kube::client(&settings).unwrap();
    let err = weft_router::kube::nodes::initial_list(&c, &url, Duration::ZERO)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}")) && err.contains("listing nodes"),
        "{err}"
    );
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
