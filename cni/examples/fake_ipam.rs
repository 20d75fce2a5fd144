//! A stand-in for the router's IPAM API, for running the plugin without a router (latency runs,
//! manual tests): `cargo run -p weft-cni --example fake_ipam -- SOCKET [GATEWAY]`.
//!
//! Serves the routes of `docs/CNI.md` on the unix socket SOCKET, one request per connection,
//! allocating from 10.32.0.0/12 (lowest free address after the gateway, default 10.32.0.1).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};

use weft_cni::api::{
    AllocateRequest, AllocateResponse, GcRequest, ReadyResponse, ReleaseRequest, ReleaseResponse,
};

type Key = (String, String, String);

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        return Err(std::io::Error::other("usage: fake_ipam SOCKET [GATEWAY]"));
    };
    let gateway: Ipv4Addr = args
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or(Ipv4Addr::new(10, 32, 0, 1));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let mut held: BTreeMap<Key, Ipv4Addr> = BTreeMap::new();
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let Some((path, body)) = read_request(&mut s) else {
            continue;
        };
        let (status, answer) = handle(&mut held, gateway, &path, &body);
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{answer}",
            answer.len()
        );
        let _ = s.write_all(reply.as_bytes());
    }
    Ok(())
}

fn handle(
    held: &mut BTreeMap<Key, Ipv4Addr>,
    gateway: Ipv4Addr,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    match path {
        "/ready" => (
            200,
            json(&ReadyResponse {
                ready: true,
                reason: None,
            }),
        ),
        "/ipam/allocate" => {
            let Ok(r) = serde_json::from_slice::<AllocateRequest>(body) else {
                return (400, r#"{"error":"bad allocate request"}"#.to_owned());
            };
            let key = (r.container_id, r.ifname, r.network);
            let ip = match held.get(&key) {
                Some(ip) => *ip,
                None => {
                    let start = u32::from(gateway) + 1;
                    let Some(ip) = (start..u32::from(Ipv4Addr::new(10, 47, 255, 255)))
                        .map(Ipv4Addr::from)
                        .find(|ip| !held.values().any(|h| h == ip))
                    else {
                        return (507, r#"{"error":"range exhausted"}"#.to_owned());
                    };
                    held.insert(key, ip);
                    ip
                }
            };
            let answer = AllocateResponse {
                ip: format!("{ip}/12"),
                gateway: gateway.to_string(),
            };
            (200, json(&answer))
        }
        "/ipam/release" => {
            let Ok(r) = serde_json::from_slice::<ReleaseRequest>(body) else {
                return (400, r#"{"error":"bad release request"}"#.to_owned());
            };
            let released = held
                .remove(&(r.container_id, r.ifname, r.network))
                .map(|ip| format!("{ip}/12"))
                .into_iter()
                .collect();
            (200, json(&ReleaseResponse { released }))
        }
        "/ipam/gc" => {
            let Ok(r) = serde_json::from_slice::<GcRequest>(body) else {
                return (400, r#"{"error":"bad gc request"}"#.to_owned());
            };
            let mut released = Vec::new();
            held.retain(|k, ip| {
                let keep = k.2 != r.network
                    || r.valid
                        .iter()
                        .any(|v| v.container_id == k.0 && v.ifname == k.1);
                if !keep {
                    released.push(format!("{ip}/12"));
                }
                keep
            });
            (200, json(&ReleaseResponse { released }))
        }
        _ => (404, r#"{"error":"no such route"}"#.to_owned()),
    }
}

/// Reads one request: the path and the body (by Content-Length).
fn read_request(s: &mut UnixStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let path = head.split(' ').nth(1)?.to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Some((path, buf[end + 4..end + 4 + length].to_vec()));
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
