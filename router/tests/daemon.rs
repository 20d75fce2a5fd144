//! Two or three routers in-process on loopback (no devices, ephemeral ports): persistence of
//! learned peers, the peers file, connect/forget/rmpeer through the API.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use weft_router::api::ApiAddr;
use weft_router::api::client::ApiClient;
use weft_router::status::{ConnectionState, RouterStatus};
use weft_router::{RouterConfig, RunningRouter, start_router};

async fn start(dir: &Path, nick: &str, peers: &[String]) -> (RunningRouter, ApiClient) {
    start_with(dir, nick, peers, |_| {}).await
}

async fn start_with(
    dir: &Path,
    nick: &str,
    peers: &[String],
    tweak: impl FnOnce(&mut RouterConfig),
) -> (RunningRouter, ApiClient) {
    let mut config = RouterConfig::with_addrs(
        dir.join(nick).join("weft.sock"),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.nickname = nick.to_owned();
    config.state_dir = dir.join(nick).join("state");
    config.peers = peers.to_vec();
    tweak(&mut config);
    let client = ApiClient::new(ApiAddr::Unix(config.api_socket.clone()));
    (start_router(config).await.unwrap(), client)
}

async fn report(client: &ApiClient) -> RouterStatus {
    client.report().await.unwrap()
}

fn established(r: &RouterStatus) -> usize {
    r.connections
        .iter()
        .filter(|c| c.state == ConnectionState::Established)
        .count()
}

async fn wait_for(
    client: &ApiClient,
    what: &str,
    f: impl Fn(&RouterStatus) -> bool,
) -> RouterStatus {
    let start = Instant::now();
    loop {
        let r = report(client).await;
        if f(&r) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_restarted_router_reconnects_to_the_peers_it_learned() {
    let dir = TempDir::new().unwrap();
    let (a, ca) = start(dir.path(), "a", &[]).await;
    let a_addr = format!("127.0.0.1:{}", report(&ca).await.port);
    let (b, cb) = start(dir.path(), "b", std::slice::from_ref(&a_addr)).await;
    wait_for(&cb, "b to connect", |r| established(r) == 1).await;
    // Give housekeeping time to persist what b learned.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.shutdown().await.unwrap();
    wait_for(&ca, "a to notice b left", |r| established(r) == 0).await;

    let (b, cb) = start(dir.path(), "b", &[]).await;
    let r = wait_for(&cb, "b to reconnect without --peers", |r| {
        established(r) == 1
    })
    .await;
    assert_eq!(r.connections[0].remote_nickname.as_deref(), Some("a"));
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn peers_connect_forget_and_rmpeer_through_the_api() {
    let dir = TempDir::new().unwrap();
    let (a, ca) = start(dir.path(), "a", &[]).await;
    let (b, cb) = start(dir.path(), "b", &[]).await;
    let (c, cc) = start(dir.path(), "c", &[]).await;
    let b_addr = format!("127.0.0.1:{}", report(&cb).await.port);
    let c_addr = format!("127.0.0.1:{}", report(&cc).await.port);
    assert_eq!(
        ca.connect(&b_addr).await.unwrap(),
        format!("added {b_addr}")
    );
    assert_eq!(
        ca.connect(&c_addr).await.unwrap(),
        format!("added {c_addr}")
    );
    let r = wait_for(&ca, "a to know 3 peers", |r| {
        established(r) == 2 && r.peers.len() == 3
    })
    .await;
    assert_eq!(r.targets.len(), 2);
    assert!(ca.connect("not an address at all").await.is_err());

    // c leaves for good; a forgets it and removes it from its peer list.
    c.shutdown().await.unwrap();
    wait_for(&ca, "a to notice c left", |r| established(r) == 1).await;
    assert_eq!(
        ca.forget(&c_addr).await.unwrap(),
        format!("forgot {c_addr}")
    );
    let rm = ca.rmpeer("c").await;
    // c may already be gone from a's view (unreachable peers are collected); both are fine,
    // but afterwards a must not list it.
    if let Err(e) = &rm {
        assert!(e.to_string().contains("no peer named c"), "{e}");
    }
    let r = wait_for(&ca, "c to vanish", |r| {
        r.peers.iter().all(|p| p.nickname != "c")
    })
    .await;
    assert_eq!(r.targets.len(), 1);
    assert!(
        ca.rmpeer("a").await.is_err(),
        "a router cannot remove itself"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_peers_file_is_read_again_when_it_changes() {
    let dir = TempDir::new().unwrap();
    let (a, ca) = start(dir.path(), "a", &[]).await;
    let a_addr = format!("127.0.0.1:{}", report(&ca).await.port);
    let file = dir.path().join("peers");
    std::fs::write(&file, "# nobody yet\n").unwrap();
    let mut config = RouterConfig::with_addrs(
        dir.path().join("b.sock"),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.nickname = "b".into();
    config.state_dir = dir.path().join("b-state");
    config.peers_file = Some(file.clone());
    let cb = ApiClient::new(ApiAddr::Unix(config.api_socket.clone()));
    let b = start_router(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(established(&report(&cb).await), 0);
    std::fs::write(&file, format!("# a appeared\n{a_addr}\n")).unwrap();
    wait_for(&cb, "b to read the peers file again", |r| {
        established(r) == 1
    })
    .await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn ipam_allocates_idempotently_releases_collects_and_survives_a_restart() {
    use topology::api::ipam::{AllocateResponse, LookupResponse, ReleaseResponse};
    let dir = TempDir::new().unwrap();
    // No peers: a quorum of one, so this router seeds the ring and owns the whole range.
    let (a, ca) = start(dir.path(), "a", &[]).await;
    let body =
        |cid: &str| serde_json::json!({"container_id": cid, "ifname": "eth0", "network": "weft"});
    let alloc = |cid: &'static str| {
        let ca = &ca;
        async move {
            let resp = ca.post_json("/ipam/allocate", &body(cid)).await.unwrap();
            assert_eq!(resp.status, 200, "{}", resp.body);
            serde_json::from_str::<AllocateResponse>(&resp.body).unwrap()
        }
    };
    let first = alloc("c1").await;
    assert!(first.ip.ends_with("/12"), "{first:?}");
    assert_ne!(first.ip.split('/').next(), Some(first.gateway.as_str()));
    assert_eq!(
        alloc("c1").await,
        first,
        "a repeated ADD gets the same address"
    );
    // Lookup reports what is held and never allocates.
    let resp = ca.post_json("/ipam/lookup", &body("c1")).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let held: LookupResponse = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(held.ip, first.ip);
    let resp = ca.post_json("/ipam/lookup", &body("nobody")).await.unwrap();
    assert_eq!(resp.status, 404, "{}", resp.body);
    let resp = ca.post_json("/ipam/lookup", &body("nobody")).await.unwrap();
    assert_eq!(resp.status, 404, "a lookup allocated: {}", resp.body);
    let second = alloc("c2").await;
    assert_ne!(second.ip, first.ip);
    let third = alloc("c3").await;

    // GC keeps c1 and c3, frees c2.
    let gc = serde_json::json!({"network": "weft", "valid": [
        {"container_id": "c1", "ifname": "eth0"}, {"container_id": "c3", "ifname": "eth0"}]});
    let resp = ca.post_json("/ipam/gc", &gc).await.unwrap();
    let freed: ReleaseResponse = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(freed.released, vec![second.ip.clone()]);

    let resp = ca.post_json("/ipam/release", &body("c3")).await.unwrap();
    let freed: ReleaseResponse = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(freed.released, vec![third.ip.clone()]);
    let resp = ca.post_json("/ipam/release", &body("c3")).await.unwrap();
    let freed: ReleaseResponse = serde_json::from_str(&resp.body).unwrap();
    assert!(freed.released.is_empty(), "a second release frees nothing");

    let bad = ca.post_json("/ipam/allocate", &body("")).await.unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);

    // A restarted router keeps its claims: c1 gets the same address back.
    a.shutdown().await.unwrap();
    let (a, ca) = start(dir.path(), "a", &[]).await;
    let resp = ca.post_json("/ipam/allocate", &body("c1")).await.unwrap();
    let again: AllocateResponse = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(again, first);
    let status = ca.text("/status/ipam").await.unwrap();
    assert!(status.contains("(a)"), "{status}");
    assert!(status.contains("100.0% of total"), "{status}");
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn auto_reclaim_takes_a_dead_routers_space_after_the_configured_time() {
    let dir = TempDir::new().unwrap();
    let reclaim = |c: &mut RouterConfig| c.ipalloc_reclaim_after = Some(Duration::from_secs(10));
    // a has no peers: quorum 1, it seeds the ring at its first allocation; b and c adopt it and
    // get space by donation.
    let (a, ca) = start_with(dir.path(), "a", &[], reclaim).await;
    let a_addr = format!("127.0.0.1:{}", report(&ca).await.port);
    let (b, cb) = start_with(dir.path(), "b", std::slice::from_ref(&a_addr), reclaim).await;
    let (c, cc) = start_with(dir.path(), "c", std::slice::from_ref(&a_addr), reclaim).await;
    wait_for(&ca, "a to know 3 peers", |r| r.peers.len() == 3).await;
    for (client, cid) in [(&ca, "pa"), (&cb, "pb"), (&cc, "pc")] {
        let body = serde_json::json!({"container_id": cid, "ifname": "eth0", "network": "weft"});
        let resp = client.post_json("/ipam/allocate", &body).await.unwrap();
        assert_eq!(resp.status, 200, "{cid}: {}", resp.body);
    }
    let owners = |r: &RouterStatus| -> Vec<String> {
        let mut v: Vec<String> = r
            .ipam
            .iter()
            .flat_map(|i| i.owners.iter().map(|o| o.nickname.clone()))
            .collect();
        v.sort();
        v
    };
    wait_for(&ca, "three owners", |r| owners(r) == ["a", "b", "c"]).await;
    c.shutdown().await.unwrap();
    let gone = Instant::now();
    loop {
        let r = report(&ca).await;
        if owners(&r) == ["a", "b"] {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(40),
            "c's space not reclaimed: {:#?}",
            r.ipam
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = gone.elapsed();
    assert!(
        took >= Duration::from_secs(10),
        "reclaimed after {took:?}, before --ipalloc-reclaim-after"
    );
    eprintln!("c's space reclaimed {took:?} after it stopped (reclaim after 10 s)");
    let r = wait_for(&cb, "b to see the takeover", |r| owners(r) == ["a", "b"]).await;
    assert_eq!(r.ipam.unwrap().conflicting, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
