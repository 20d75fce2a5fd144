//! Faults that must cost pods at most a second: a sleeve router killed (SIGKILL) or restarted
//! (SIGTERM, as a rolling DaemonSet update does) while a pod pings through it every 10 ms,
//! plain and encrypted; and a rolling restart of every router under a steady pod-to-pod TCP
//! stream, on fastdp and on the sleeve. And ready means ready: the first ping right after
//! `lab up` (which waits for every router's `/ready`) crosses without an ARP retry.

#![allow(clippy::unwrap_used, clippy::print_stderr)] // test helpers panic on setup failures by design; figures go to stderr

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use weft_sim::lab::{self, Datapath, LabGuard, LabSpec, RouterAction};

mod common;
use common::{pod_ip, serial, unique_with, wait_listening};

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls until `node`'s router answers its API; returns when it first did.
fn api_answers(name: &str, node: &str) -> SystemTime {
    let start = Instant::now();
    loop {
        if lab::report(name, node).is_ok() {
            return SystemTime::now();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let log = std::path::Path::new(lab::RUN_DIR)
                .join(name)
                .join(node)
                .join("router.log");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{node}'s API never answered; its log ends:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The wall-clock times (`ping -D`) of every echo reply in `out`.
fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// Reads the growing output file of a running ping.
fn replies(path: &std::path::Path) -> Vec<f64> {
    reply_times(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Polls until a reply newer than `after` shows up; returns its time.
fn first_reply_after(path: &std::path::Path, after: f64) -> f64 {
    let start = Instant::now();
    loop {
        if let Some(t) = replies(path).into_iter().find(|t| *t > after) {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pings never resumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn restarts_cost_at_most_a_second(encrypt: bool) {
    let _serial = serial();
    let name = unique_with("ft", if encrypt { "e" } else { "p" });
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    spec.datapath = Datapath::Sleeve;
    spec.encrypt = encrypt;
    let info = lab::up(&spec).unwrap();
    // In the lab's run directory, which `lab down` removes.
    let out = std::path::Path::new(lab::RUN_DIR)
        .join(&name)
        .join("faults-ping.txt");
    // Bounded: 6,000 pings every 10 ms is a minute at most.
    let mut ping = lab::exec_command(
        &name,
        "h1/p1",
        &[
            "ping",
            "-D",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            "6000",
            &pod_ip(&info, 2),
        ],
    )
    .unwrap()
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out).unwrap())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let _ = first_reply_after(&out, 0.0);

    for (what, stop) in [
        ("SIGKILL", RouterAction::Kill),
        ("SIGTERM", RouterAction::Stop),
    ] {
        lab::router_action(&name, "h2", stop).unwrap();
        let dead = epoch_secs(SystemTime::now());
        lab::router_action(&name, "h2", RouterAction::Start).unwrap();
        let api = epoch_secs(api_answers(&name, "h2"));
        let resumed = first_reply_after(&out, dead);
        let wait = resumed - api;
        eprintln!("{what} (encrypt {encrypt}): pings resumed {wait:.3} s after the API answered");
        assert!(
            wait <= 1.0,
            "{what} (encrypt {encrypt}): pings resumed {wait:.3} s after the API answered"
        );
        // Pings flow steadily again before the next fault.
        let _ = first_reply_after(&out, epoch_secs(SystemTime::now()) + 0.5);
    }
    let _ = ping.kill();
    let _ = ping.wait();
}

#[test]
fn a_restarted_sleeve_router_costs_pods_at_most_a_second() {
    restarts_cost_at_most_a_second(false);
}

#[test]
fn a_restarted_encrypted_sleeve_router_costs_pods_at_most_a_second() {
    restarts_cost_at_most_a_second(true);
}

fn rolling_restart_keeps_tcp(datapath: Datapath, tag: &str) {
    let _serial = serial();
    let name = unique_with("ft", tag);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 1;
    spec.datapath = datapath;
    let info = lab::up(&spec).unwrap();
    let mut server = lab::exec_command(&name, "h2/p1", &["iperf3", "-s", "-1"])
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&name, "h2/p1", 5201);
    // A steady stream (10 Mb/s) for 30 s, one connection; iperf3 fails if it breaks.
    let client = lab::exec_command(
        &name,
        "h1/p1",
        &[
            "iperf3",
            "-c",
            &pod_ip(&info, 2),
            "-t",
            "30",
            "-b",
            "10M",
            "--connect-timeout",
            "3000",
        ],
    )
    .unwrap()
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2)); // let the stream start before the first restart
    for node in ["h1", "h2", "h3"] {
        lab::router_action(&name, node, RouterAction::Restart).unwrap();
        let _ = api_answers(&name, node);
        // The next router restarts once this one has its mesh back.
        let start = Instant::now();
        loop {
            let report = lab::report(&name, node).unwrap();
            let established = report["connections"].as_array().map_or(0, |c| {
                c.iter().filter(|c| c["state"] == "established").count()
            });
            if established >= 2 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{node}: mesh not back"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{datapath:?}: the TCP stream broke during the rolling restart: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_rolling_restart_keeps_a_tcp_stream_on_fastdp() {
    rolling_restart_keeps_tcp(Datapath::Fastdp, "f");
}

#[test]
fn a_rolling_restart_keeps_a_tcp_stream_on_the_sleeve() {
    rolling_restart_keeps_tcp(Datapath::Sleeve, "s");
}

/// `lab up` returns once every router is ready, and ready includes a route to every connected
/// peer: the first ping crosses at once (no ARP retry, which would cost a second).
#[test]
fn the_first_ping_after_lab_up_needs_no_arp_retry() {
    let _serial = serial();
    for (datapath, encrypt, tag) in [
        (Datapath::Auto, false, "ra"),
        (Datapath::Fastdp, false, "rf"),
        (Datapath::Sleeve, false, "rs"),
        (Datapath::Sleeve, true, "re"),
    ] {
        let name = unique_with("ft", tag);
        let _guard = LabGuard::new(&name);
        let mut spec = LabSpec::new(&name);
        spec.nodes = 2;
        spec.pods = 1;
        spec.datapath = datapath;
        spec.encrypt = encrypt;
        let info = lab::up(&spec).unwrap();
        let out = lab::exec_output(
            &name,
            "h1/p1",
            &["ping", "-c", "1", "-W", "3", &pod_ip(&info, 2)],
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let ms: f64 = text
            .split("time=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{datapath:?}: no reply: {text}"));
        eprintln!("{datapath:?} (encrypt {encrypt}): first ping {ms} ms");
        assert!(
            ms <= 50.0,
            "{datapath:?} (encrypt {encrypt}): first ping took {ms} ms"
        );
    }
}

fn veths(name: &str, node: &str) -> usize {
    let out = lab::exec_output(name, node, &["ip", "-o", "link", "show", "type", "veth"]).unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// With the router down, CNI ADD answers 11 (try again later) and leaves nothing behind, and
/// CNI DEL succeeds: the veth goes and the release waits in the queue, which the router applies
/// when it starts, so no address leaks.
#[test]
fn a_pod_deleted_while_its_router_is_down_loses_no_address() {
    let _serial = serial();
    let name = unique_with("ft", "q");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    lab::up(&spec).unwrap();
    let held = common::active(&name, "h1");
    let queue = std::path::Path::new(lab::RUN_DIR)
        .join(&name)
        .join("h1")
        .join("release-queue");
    lab::router_action(&name, "h1", RouterAction::Stop).unwrap();

    let veths_before = veths(&name, "h1");
    let err = lab::pod_add(&name, "h1", "p2", None).unwrap_err();
    assert!(format!("{err:#}").contains("\"code\":11"), "{err:#}");
    assert_eq!(veths(&name, "h1"), veths_before, "a failed ADD left a veth");

    lab::pod_del(&name, "h1", "p1").unwrap();
    assert_eq!(veths(&name, "h1"), veths_before - 1, "DEL left the veth");
    let queued: Vec<_> = std::fs::read_dir(&queue).unwrap().flatten().collect();
    assert_eq!(queued.len(), 1, "{queued:?}");

    lab::router_action(&name, "h1", RouterAction::Start).unwrap();
    let _ = api_answers(&name, "h1");
    assert_eq!(common::settled_active(&name, "h1", held - 1), held - 1);
    let start = Instant::now();
    while std::fs::read_dir(&queue).unwrap().next().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "queue not emptied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Twenty CNI ADDs at once on one node all succeed with distinct addresses, and twenty DELs
/// at once release them all.
#[test]
fn twenty_cni_calls_at_once() {
    let _serial = serial();
    let name = unique_with("ft", "c");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 0;
    lab::up(&spec).unwrap();
    let held = common::active(&name, "h1");
    let pods: Vec<String> = (100..120).map(|j| format!("{name}-h1-p{j}")).collect();
    for ns in &pods {
        lab::netns::ip(&["netns", "add", ns]).unwrap();
    }
    let at_once = |del: bool| -> Vec<anyhow::Result<String>> {
        let calls: Vec<_> = pods
            .iter()
            .map(|ns| {
                let (name, ns) = (name.clone(), ns.clone());
                std::thread::spawn(move || {
                    if del {
                        lab::cni_del(&name, "h1", &ns).map(|()| String::new())
                    } else {
                        lab::cni_add(&name, "h1", &ns)
                    }
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    };
    let added: Vec<String> = at_once(false).into_iter().map(|r| r.unwrap()).collect();
    let unique: std::collections::BTreeSet<&String> = added.iter().collect();
    assert_eq!(unique.len(), pods.len(), "duplicate addresses: {added:?}");
    assert_eq!(common::settled_active(&name, "h1", held + 20), held + 20);
    for r in at_once(true) {
        r.unwrap();
    }
    assert_eq!(common::settled_active(&name, "h1", held), held);
}
