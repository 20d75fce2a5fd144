//! The local API end to end: a router in-process on a temporary socket and ephemeral
//! ports, driven through the client the `weft` subcommands use.
//!
//! Never binds the fixed ports (6782-6784); every file lives in a temporary directory that is
//! removed when the test ends.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use tempfile::TempDir;
use weft_router::api::client::{ApiClient, ClientError};
use weft_router::api::{ApiAddr, ErrorBody};
use weft_router::cli::{Command, EncryptionAction, StatusView, run_client_command};
use weft_router::status::RouterStatus;
use weft_router::{RouterConfig, RunningRouter, start_router};

struct Harness {
    router: RunningRouter,
    unix: ApiClient,
    http: ApiClient,
    metrics: ApiClient,
    dir: TempDir,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    async fn start_in(dir: TempDir) -> Self {
        let router = start_router(config(&dir)).await.unwrap();
        let http = router.http_addr();
        let metrics = router.metrics_addr();
        Self {
            unix: ApiClient::new(ApiAddr::Unix(socket_path(&dir))),
            http: ApiClient::new(ApiAddr::Http {
                host: http.ip().to_string(),
                port: http.port(),
            }),
            metrics: ApiClient::new(ApiAddr::Http {
                host: metrics.ip().to_string(),
                port: metrics.port(),
            }),
            router,
            dir,
        }
    }

    fn socket(&self) -> PathBuf {
        socket_path(&self.dir)
    }
}

fn socket_path(dir: &TempDir) -> PathBuf {
    dir.path().join("run").join("weft.sock")
}

fn config(dir: &TempDir) -> RouterConfig {
    let mut config = RouterConfig::with_addrs(
        socket_path(dir),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.nickname = "h1".to_owned();
    config.state_dir = dir.path().join("state");
    config.peers = vec!["127.0.0.1:1".to_owned()];
    config
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("{e}: {body}"))
        .error
}

#[tokio::test]
async fn socket_is_0660_in_a_0755_dir_and_removed_on_shutdown() {
    let h = Harness::start().await;
    let socket = h.socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o755, "dir mode {dir_mode:o}");
    h.router.shutdown().await.unwrap();
    assert!(!socket.exists(), "socket left behind");
}

#[tokio::test]
async fn read_only_routes_answer_on_both_listeners() {
    let h = Harness::start().await;
    for client in [&h.unix, &h.http] {
        for path in [
            "/status",
            "/status/peers",
            "/status/connections",
            "/status/targets",
            "/report",
            "/encryption",
            "/healthz",
        ] {
            let resp = client.get(path).await.unwrap();
            assert_eq!(resp.status, 200, "{} {path}: {}", client.addr(), resp.body);
        }
        // One unreachable target: IPAM waits for a quorum of 2, so no gateway address, so not
        // ready, and the reason says why (the CNI plugin's STATUS passes it on).
        let resp = client.get("/ready").await.unwrap();
        assert_eq!(resp.status, 503, "{}", resp.body);
        let ready: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(ready["ready"], false);
        let reason = ready["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("IPAM: ") && reason.ends_with("(no gateway address yet)"),
            "{reason}"
        );
        let status = client.text("/status").await.unwrap();
        assert!(status.contains("        Service: router\n"), "{status}");
        // The name derives from the node key created in the state directory.
        let name_line = status
            .lines()
            .find(|l| l.starts_with("           Name: "))
            .unwrap();
        assert!(name_line.ends_with("(h1)"), "{status}");
        assert!(!name_line.contains("00:00:00:00:00:00"), "{status}");
        assert!(status.contains("        Targets: 1\n"), "{status}");
        assert_eq!(
            client.text("/status/targets").await.unwrap(),
            "127.0.0.1:1\n"
        );
        let report: RouterStatus = client.report().await.unwrap();
        assert_eq!(report.nickname, "h1");
        assert!(!report.ready);
        // One target: IPAM waits for a quorum of 2 to seed its ring.
        assert!(report.ipam.is_some());
    }
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lone_router_turns_ready_once_ipam_gives_its_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    // No peers: a quorum of one, so the ring is seeded at once.
    config.peers.clear();
    let router = start_router(config).await.unwrap();
    let client = ApiClient::new(ApiAddr::Unix(socket_path(&dir)));
    let started = std::time::Instant::now();
    loop {
        let resp = client.get("/ready").await.unwrap();
        if resp.status == 200 {
            assert_eq!(resp.body.trim(), "{\n  \"ready\": true\n}");
            break;
        }
        assert!(
            started.elapsed().as_secs() < 10,
            "never ready: {}",
            resp.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report = client.report().await.unwrap();
    assert!(report.ready && report.not_ready_reason.is_none());
    router.shutdown().await.unwrap();
}

#[tokio::test]
async fn state_changing_routes_are_refused_over_http() {
    let h = Harness::start().await;
    for (path, body) in [
        ("/connect", r#"{"addr": "127.0.0.1:7"}"#),
        ("/forget", r#"{"addr": "127.0.0.1:1"}"#),
        ("/rmpeer", r#"{"name": "h2"}"#),
        ("/encryption", r#"{"enabled": true}"#),
        // Read-only, but socket-only too: it names containers.
        (
            "/ipam/lookup",
            r#"{"container_id": "c", "ifname": "eth0", "network": "weft"}"#,
        ),
    ] {
        let resp = h
            .http
            .post_raw(path, body.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(resp.status, 403, "POST {path}: {}", resp.body);
        assert!(
            error_of(&resp.body).contains("use the unix socket"),
            "{}",
            resp.body
        );
    }
    // Nothing changed.
    assert_eq!(
        h.unix.text("/status/targets").await.unwrap(),
        "127.0.0.1:1\n"
    );
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn connect_and_forget_through_the_socket() {
    let h = Harness::start().await;
    assert_eq!(
        h.unix.connect("127.0.0.1:7").await.unwrap(),
        "added 127.0.0.1:7"
    );
    assert_eq!(
        h.unix.text("/status/targets").await.unwrap(),
        "127.0.0.1:1\n127.0.0.1:7\n"
    );
    assert_eq!(
        h.unix.forget("127.0.0.1:1").await.unwrap(),
        "forgot 127.0.0.1:1"
    );
    assert_eq!(
        h.http.text("/status/targets").await.unwrap(),
        "127.0.0.1:7\n"
    );
    let report = h.unix.report().await.unwrap();
    assert_eq!(report.targets.len(), 1);
    let Err(ClientError::Api { status, message }) = h.unix.forget("127.0.0.1:99").await else {
        panic!("forgetting an unknown target succeeded");
    };
    assert_eq!(
        (status, message.as_str()),
        (404, "127.0.0.1:99 is not a target")
    );
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_say_what_is_wrong() {
    let h = Harness::start().await;
    for (path, body, code, needle) in [
        (
            "/connect",
            "{",
            400,
            "invalid JSON body for POST /connect: EOF",
        ),
        ("/connect", "", 400, "invalid JSON body for POST /connect"),
        ("/connect", "{}", 400, "missing field `addr`"),
        ("/connect", r#"{"adr": "x"}"#, 400, "unknown field `adr`"),
        (
            "/connect",
            r#"{"addr": 7}"#,
            400,
            "invalid type: integer `7`",
        ),
        ("/connect", r#"{"addr": ""}"#, 400, "\"addr\" is empty"),
        (
            "/forget",
            r#"{"addr": "a b"}"#,
            400,
            "is not a host or host:port",
        ),
        ("/rmpeer", r#"{"name": " "}"#, 400, "\"name\" is empty"),
        (
            "/encryption",
            r#"{"enabled": "yes"}"#,
            400,
            "invalid type: string \"yes\"",
        ),
    ] {
        let resp = h
            .unix
            .post_raw(path, body.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(resp.status, code, "POST {path} {body:?}: {}", resp.body);
        let error = error_of(&resp.body);
        assert!(error.contains(needle), "POST {path} {body:?}: {error}");
    }
    let big = vec![b' '; 70 * 1024];
    assert_eq!(h.unix.post_raw("/connect", big).await.unwrap().status, 413);
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    let h = Harness::start().await;
    for client in [&h.unix, &h.http] {
        let resp = client.get("/nope").await.unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(error_of(&resp.body), "no route GET /nope");
        let resp = client.get("/status/dns").await.unwrap();
        assert_eq!(resp.status, 404);
        let resp = client.get("/connect").await.unwrap();
        assert_eq!(resp.status, 405, "{}", resp.body);
        assert!(error_of(&resp.body).contains("use POST"));
        let resp = client.post_raw("/status", b"{}".to_vec()).await.unwrap();
        assert_eq!(resp.status, 405, "{}", resp.body);
    }
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn encryption_switches_without_a_password() {
    let h = Harness::start().await;
    let resp = h
        .unix
        .post_raw("/encryption", br#"{"enabled": true}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let enc = h.unix.encryption().await.unwrap();
    assert!(enc.enabled);
    assert_eq!(enc.version, 1);
    assert_eq!(enc.origin, enc.local_origin);
    // Without a password, socket access suffices to disable.
    let msg = h.unix.set_encryption(false, None, None).await.unwrap();
    assert_eq!(msg, "encryption disabled for the mesh (version 2)");
    let msg = h.unix.set_encryption(false, None, None).await.unwrap();
    assert_eq!(msg, "encryption is already disabled (version 2)");
    // A stale version is refused, and a proof where no password is set makes no sense.
    let err = h
        .unix
        .set_encryption(true, Some(1), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 409, .. }), "{err}");
    let err = h
        .unix
        .set_encryption(true, Some(3), Some("00".repeat(32)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no mesh password"), "{err}");
    let status = h.unix.text("/status").await.unwrap();
    assert!(status.contains("     Encryption: disabled\n"), "{status}");
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn disabling_encryption_needs_the_mesh_password() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "correct horse battery staple\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not the password\n").unwrap();
    for f in [&password, &wrong] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut config = config(&dir);
    config.password_file = Some(password.clone());
    config.encryption = true;
    let router = start_router(config).await.unwrap();
    let api = ApiAddr::Unix(socket_path(&dir));
    let run = |action, password_file: Option<PathBuf>| {
        let api = api.clone();
        async move {
            let mut out = Vec::new();
            let cmd = Command::Encryption {
                action,
                password_file,
            };
            run_client_command(&api, &cmd, &mut out)
                .await
                .map(|()| String::from_utf8(out).unwrap())
                .map_err(|e| e.to_string())
        }
    };
    let err = run(EncryptionAction::Disable, None).await.unwrap_err();
    assert_eq!(
        err,
        "disabling encryption needs proof of the mesh password: run `weft encryption disable \
         --password-file FILE` (or set WEFT_PASSWORD_FILE)"
    );
    let err = run(EncryptionAction::Disable, Some(wrong))
        .await
        .unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    let err = run(EncryptionAction::Disable, Some(dir.path().join("missing")))
        .await
        .unwrap_err();
    assert!(err.starts_with("--password-file: password file "), "{err}");
    let status = run(EncryptionAction::Status, None).await.unwrap();
    assert!(
        status.starts_with("enabled\n        Version: 0 (set by "),
        "{status}"
    );
    let out = run(EncryptionAction::Disable, Some(password.clone()))
        .await
        .unwrap();
    assert_eq!(out, "encryption disabled for the mesh (version 1)\n");
    // Enabling needs no proof.
    let out = run(EncryptionAction::Enable, None).await.unwrap();
    assert_eq!(out, "encryption enabled for the mesh (version 2)\n");
    let client = ApiClient::new(api.clone());
    let enc = client.encryption().await.unwrap();
    assert!(enc.enabled && enc.password_set);
    assert_eq!((enc.version, enc.changes, enc.rejected), (2, 2, 0));
    let metrics = client.text("/report").await.unwrap();
    assert!(!metrics.contains("horse"));
    router.shutdown().await.unwrap();
}

#[tokio::test]
async fn cli_commands_print_weave_layout_and_fail_in_one_line() {
    let h = Harness::start().await;
    let api = h.unix.addr().clone();
    let mut out = Vec::new();
    run_client_command(&api, &Command::Status { view: None }, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("\n        Version: "), "{text:?}");
    assert!(text.ends_with("\n\n"), "{text:?}");

    let mut out = Vec::new();
    let view = Command::Status {
        view: Some(StatusView::Targets),
    };
    run_client_command(&api, &view, &mut out).await.unwrap();
    assert_eq!(out, b"127.0.0.1:1\n");

    let mut out = Vec::new();
    let enc = Command::Encryption {
        action: EncryptionAction::Status,
        password_file: None,
    };
    run_client_command(&api, &enc, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("disabled\n        Version: 0 (set by "),
        "{text}"
    );
    assert!(
        text.ends_with("\n       Password: not set (disable needs socket access only)\n"),
        "{text}"
    );

    let mut out = Vec::new();
    let enable = Command::Encryption {
        action: EncryptionAction::Enable,
        password_file: None,
    };
    run_client_command(&api, &enable, &mut out).await.unwrap();
    assert_eq!(out, b"encryption enabled for the mesh (version 1)\n");

    let mut out = Vec::new();
    let connect = Command::Connect {
        addr: "127.0.0.1:8".to_owned(),
    };
    let err = run_client_command(&h.http.addr().clone(), &connect, &mut out)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("use the unix socket"), "{err}");

    let mut out = Vec::new();
    run_client_command(&api, &Command::Report, &mut out)
        .await
        .unwrap();
    let report: RouterStatus = serde_json::from_slice(&out).unwrap();
    assert_eq!(report.nickname, "h1");
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_router_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    let client = ApiClient::new(ApiAddr::Unix(path.clone()));
    let err = client.text("/status").await.unwrap_err().to_string();
    assert!(err.starts_with(&format!(
        "cannot reach the router at unix:{}: ",
        path.display()
    )));
    assert!(!err.contains('\n'));

    // A port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = ApiClient::new(ApiAddr::Http {
        host: "127.0.0.1".to_owned(),
        port,
    });
    let err = client.text("/status").await.unwrap_err().to_string();
    assert!(err.starts_with(&format!(
        "cannot reach the router at http://127.0.0.1:{port}: "
    )));
}

#[tokio::test]
async fn stale_socket_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(socket_path(&dir).parent().unwrap()).unwrap();
    // A socket file nobody listens on, as a killed router leaves it.
    drop(std::os::unix::net::UnixListener::bind(socket_path(&dir)).unwrap());
    assert!(socket_path(&dir).exists());
    let h = Harness::start_in(dir).await;
    assert_eq!(h.unix.get("/healthz").await.unwrap().body, "ok\n");

    let err = start_router(config(&h.dir)).await.unwrap_err().to_string();
    assert!(
        err.contains("another router is listening on API socket"),
        "{err}"
    );
    // The failed second start left the first one's socket alone.
    assert_eq!(h.unix.get("/healthz").await.unwrap().status, 200);
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_file_in_the_sockets_place_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(socket_path(&dir).parent().unwrap()).unwrap();
    std::fs::write(socket_path(&dir), "precious").unwrap();
    let err = start_router(config(&dir)).await.unwrap_err().to_string();
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(socket_path(&dir)).unwrap(),
        "precious"
    );
}

#[tokio::test]
async fn metrics_are_served_and_count() {
    let h = Harness::start().await;
    h.router
        .metrics()
        .add_forwarded(weft_router::status::Datapath::Sleeve, 2, 300);
    let resp = h.metrics.get("/metrics").await.unwrap();
    assert_eq!(resp.status, 200);
    for line in [
        "weft_peers 1",
        "weft_connections{state=\"established\"} 0",
        "weft_forwarded_frames_total{datapath=\"sleeve\"} 2",
        "weft_forwarded_bytes_total{datapath=\"sleeve\"} 300",
    ] {
        assert!(
            resp.body.lines().any(|l| l == line),
            "missing {line:?}:\n{}",
            resp.body
        );
    }
    assert_eq!(h.metrics.get("/status").await.unwrap().status, 404);
    h.router.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_password_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "correct horse battery staple\n").unwrap();
    let mut config = config(&dir);
    config.password_file = Some(password);
    let router = start_router(config).await.unwrap();
    let client = ApiClient::new(ApiAddr::Unix(socket_path(&dir)));
    let report = client.text("/report").await.unwrap();
    let parsed: RouterStatus = serde_json::from_str(&report).unwrap();
    assert!(parsed.encryption.password_set);
    for path in [
        "/status",
        "/status/connections",
        "/status/peers",
        "/encryption",
    ] {
        let body = client.text(path).await.unwrap();
        assert!(!body.contains("horse"), "{path}: {body}");
    }
    assert!(!report.contains("horse"), "{report}");
    router.shutdown().await.unwrap();
}

/// Runs the CNI plugin's STATUS (CNI 1.1.0) against the router at `socket`, as a runtime would.
async fn cni_status(socket: PathBuf) -> (i32, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "weft", "type": "weft", "socket": socket,
        });
        let env = weft_cni::conf::Env {
            command: Some("STATUS".to_owned()),
            ..weft_cni::conf::Env::default()
        };
        let out = weft_cni::run(&env, &mut conf.to_string().as_bytes());
        let body = if out.stdout.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap()
        };
        (out.exit_code, body)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cni_status_follows_readiness() {
    // One unreachable target: IPAM cannot agree on a ring, so STATUS says 50 and why.
    let h = Harness::start().await;
    let (code, err) = cni_status(h.socket()).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(err["code"], 50, "{err}");
    let details = err["details"].as_str().unwrap();
    assert!(
        details.contains("router not ready (HTTP 503): IPAM: "),
        "{details}"
    );
    h.router.shutdown().await.unwrap();

    // A lone router seeds its ring and takes its gateway: STATUS succeeds, printing nothing.
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.peers.clear();
    let router = start_router(config).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let (code, out) = cni_status(socket_path(&dir)).await;
        if code == 0 {
            assert_eq!(out, serde_json::Value::Null);
            break;
        }
        assert!(started.elapsed().as_secs() < 10, "never ready: {out}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    router.shutdown().await.unwrap();
}

/// Slowloris: 200 clients on each TCP server and more than the socket's cap on the unix socket
/// send half a request head and stall. `weft status` (socket and HTTP) and a scrape are still
/// answered while every slow client holds its connection, the socket's surplus is closed
/// oldest first, and weft closes every slow client once its head is late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stall_status_or_scrapes() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt as _;
    use weft_router::api::limits;
    use weft_router::metrics::{HttpClosed, HttpServer};

    const SLOW_TCP: usize = 200;
    let unix_slow = limits::UNIX_CONNECTIONS + 16;
    let h = Harness::start().await;
    let head = b"GET /status HTTP/1.1\r\nHost: weft\r\nX-Slow: ";
    let mut tcp = Vec::new();
    for addr in [h.router.http_addr(), h.router.metrics_addr()] {
        for _ in 0..SLOW_TCP {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head).await.unwrap();
            tcp.push(s);
        }
    }
    let mut unix = Vec::new();
    for _ in 0..unix_slow {
        let mut s = tokio::net::UnixStream::connect(socket_path(&h.dir))
            .await
            .unwrap();
        s.write_all(head).await.unwrap();
        unix.push(s);
    }

    for _ in 0..3 {
        let status = h.unix.get("/status").await.unwrap();
        assert_eq!(status.status, 200, "{}", status.body);
        assert!(status.body.contains("Version:"), "{}", status.body);
        assert_eq!(h.http.get("/status").await.unwrap().status, 200);
        let scrape = h.metrics.get("/metrics").await.unwrap();
        assert_eq!(scrape.status, 200);
        assert!(scrape.body.contains("weft_http_connections_closed_total"));
    }
    let m = h.router.metrics();
    // Answered while the slow clients still held their connections: none had timed out yet.
    for server in HttpServer::ALL {
        assert_eq!(m.http_closed(server, HttpClosed::Timeout), 0);
    }
    // The socket's surplus was closed to make room (and our own requests took slots too).
    assert!(m.http_closed(HttpServer::Api, HttpClosed::Limit) >= 16);
    assert_eq!(m.http_closed(HttpServer::Metrics, HttpClosed::Limit), 0);

    // weft closes every slow client: each reads to end of stream (or a reset).
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &mut tcp {
        assert!(
            closed_by_peer(s, deadline).await,
            "a slow TCP client was not closed"
        );
    }
    for s in &mut unix {
        assert!(
            closed_by_peer(s, deadline).await,
            "a slow socket client was not closed"
        );
    }
    assert_eq!(
        m.http_closed(HttpServer::Metrics, HttpClosed::Timeout),
        SLOW_TCP as u64
    );
    assert!(m.http_closed(HttpServer::Api, HttpClosed::Timeout) >= SLOW_TCP as u64);
    h.router.shutdown().await.unwrap();
}

/// Reads until the other end closes (true) or `deadline` passes (false).
async fn closed_by_peer(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    deadline: std::time::Instant,
) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}
