//! The router's control plane in the lab: real `weft router` processes in namespaces.
//!
//! ```text
//!   full:  h1 ── h2 ── h3 (and h1 ── h3)      line:  h1 ── h2 ── h3 ── h4
//! ```
//!
//! Each test builds its own lab (`lt<pid><tag>`) under a `LabGuard`, so failures clean up.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_sim::lab::{self, LabGuard, LabSpec, RouterAction, Underlay};

mod common;
use common::{metric_sum, metrics, unique};

fn spec(name: &str, nodes: usize) -> LabSpec {
    let mut spec = LabSpec::new(name);
    spec.nodes = nodes;
    spec.pods = 0;
    spec
}

fn established(report: &Value) -> usize {
    report["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "established")
        .count()
}

fn peer_names(report: &Value) -> Vec<(String, String)> {
    report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("nickname"))
        })
        .collect()
}

/// The next hop (by nickname) that `report` routes toward the peer nicknamed `dst`.
fn next_hop(report: &Value, dst: &str) -> Option<String> {
    let names = peer_names(report);
    let nick = |name: &str| {
        names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.clone())
    };
    let dst_name = names.iter().find(|(_, k)| k == dst)?.0.clone();
    report["routes"].as_array()?.iter().find_map(|r| {
        (r["destination"] == dst_name.as_str()).then(|| nick(r["next_hop"].as_str()?))?
    })
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn three_routers_connect_within_two_seconds() {
    let name = unique("m");
    let _guard = LabGuard::new(&name);
    let info = lab::up(&spec(&name, 3)).unwrap();
    let ready = info.ready_s.unwrap();
    assert!(ready <= 2.0, "routers took {ready:.2} s to connect");
    for node in ["h1", "h2", "h3"] {
        let report = lab::report(&name, node).unwrap();
        assert_eq!(established(&report), 2, "{node}: {report:#}");
        assert_eq!(peer_names(&report).len(), 3, "{node}: {report:#}");
    }
    let weft = lab::weft_binary().unwrap();
    let status = || {
        let out = lab::exec_output(&name, "h2", &[weft.to_str().unwrap(), "status"]).unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = status();
    assert!(
        text.contains("    Connections: 2 (2 established)"),
        "{text}"
    );
    // Each router publishes its own record's connections at most every 300 ms, so the
    // mesh-wide count settles shortly after the connections are up.
    let settled = wait_for(Duration::from_secs(2), || {
        status().contains("          Peers: 3 (with 6 established connections)")
    });
    assert!(settled.is_some(), "{}", status());
}

#[test]
fn a_line_of_four_routes_through_neighbours() {
    let name = unique("n");
    let _guard = LabGuard::new(&name);
    let mut s = spec(&name, 4);
    s.underlay = Underlay::Line;
    lab::up(&s).unwrap();
    // Routes follow the peers' connection records, which each router publishes at most every
    // 300 ms (bursts within 900 ms), so they settle shortly after the connections are up.
    let expected = [
        ("h1", "h2", "h2"),
        ("h1", "h3", "h2"),
        ("h1", "h4", "h2"),
        ("h3", "h1", "h2"),
        ("h3", "h4", "h4"),
    ];
    let settled = wait_for(Duration::from_secs(3), || {
        expected.iter().all(|(from, to, via)| {
            let r = lab::report(&name, from).unwrap();
            next_hop(&r, to).as_deref() == Some(*via)
        })
    });
    let r1 = lab::report(&name, "h1").unwrap();
    assert!(settled.is_some(), "routes did not settle: {r1:#}");
    assert_eq!(peer_names(&r1).len(), 4, "{r1:#}");
    assert_eq!(established(&r1), 1);
}

#[test]
fn a_killed_router_is_noticed_and_rejoins() {
    let name = unique("k");
    let _guard = LabGuard::new(&name);
    lab::up(&spec(&name, 3)).unwrap();
    lab::router_action(&name, "h3", RouterAction::Kill).unwrap();
    for node in ["h1", "h2"] {
        let noticed = wait_for(Duration::from_secs(3), || {
            let r = lab::report(&name, node).unwrap();
            established(&r) == 1 && next_hop(&r, "h3").is_none()
        });
        assert!(noticed.is_some(), "{node} still routes to the killed h3");
    }
    lab::router_action(&name, "h3", RouterAction::Start).unwrap();
    for node in ["h1", "h2", "h3"] {
        let back = wait_for(Duration::from_secs(3), || {
            lab::report(&name, node).is_ok_and(|r| established(&r) == 2)
        });
        assert!(back.is_some(), "{node} did not re-establish within 3 s");
    }
}

#[test]
fn a_wrong_password_never_establishes_and_says_why() {
    let name = unique("w");
    let _guard = LabGuard::new(&name);
    let mut s = spec(&name, 3);
    s.password = Some("correct horse".into());
    lab::up(&s).unwrap();
    lab::set_password(&name, "h3", Some("wrong horse")).unwrap();
    lab::router_action(&name, "h3", RouterAction::Restart).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let r3 = lab::report(&name, "h3").unwrap();
    assert_eq!(established(&r3), 0, "{r3:#}");
    let why = wait_for(Duration::from_secs(5), || {
        let r = lab::report(&name, "h3").unwrap();
        serde_json::to_string(&r).unwrap().contains("password")
    });
    assert!(
        why.is_some(),
        "h3's status never names the password: {r3:#}"
    );
    let r1 = lab::report(&name, "h1").unwrap();
    assert_eq!(established(&r1), 1, "{r1:#}");
}

#[test]
fn garbage_on_the_control_port_is_dropped_and_counted() {
    let name = unique("g");
    let _guard = LabGuard::new(&name);
    lab::up(&spec(&name, 3)).unwrap();
    let before = metric_sum(&metrics(&name, "h2"), "weft_handshake_failures_total");
    let (h1, _) = lab::target(&name, "h1").unwrap();
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff; 3],
        vec![0x57; 1 << 20],
        (0..=255u8).cycle().take(70_000).collect(),
    ];
    for input in inputs {
        let closed = lab::netns::in_netns(&h1, move || {
            let mut s = TcpStream::connect("192.0.2.2:6783")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            // The router may close while we still write: that is the point.
            let _ = s.write_all(&input);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            // EOF or a reset means the router dropped us; a timeout means it kept us open.
            Ok(match s.read_to_end(&mut sink) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            })
        })
        .unwrap();
        assert!(closed, "the router kept a garbage connection open");
    }
    let counted = wait_for(Duration::from_secs(3), || {
        metric_sum(&metrics(&name, "h2"), "weft_handshake_failures_total") >= before + 4.0
    });
    assert!(counted.is_some(), "garbage connections were not counted");
    for node in ["h1", "h2", "h3"] {
        assert_eq!(established(&lab::report(&name, node).unwrap()), 2, "{node}");
    }
}
