//! Spec tests: the `weft-cni` binary driven exactly as a runtime drives it (environment and
//! stdin, result on stdout), inside throwaway network namespaces, against a fake router IPAM.
//!
//! ```text
//!   ct<pid>x<n>h  (the "node": plugin runs here)         ct<pid>x<n>c<k>  (a "pod")
//!  ┌──────────────────────────────────────────┐          ┌──────────────┐
//!  │ bridge weft 10.32.0.1/12 ── vw<hash> ────┼── veth ──┼── eth0       │
//!  │ fake IPAM: unix socket in a temp dir     │          └──────────────┘
//!  └──────────────────────────────────────────┘
//! ```
//!
//! Needs root (network namespaces). Never touches the root namespace's links; every namespace
//! is deleted by an RAII guard, also when a test panics.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");
const VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
const GATEWAY: &str = "10.32.0.1";

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn add_check_del_in_every_version() {
    let node = Node::new();
    for (k, v) in VERSIONS.iter().enumerate() {
        let pod = node.pod(k);
        let cid = format!("ctr-{k}");
        let conf = node.conf(v, json!({"mtu": 1400}));
        let add = node.run("ADD", &cid, Some(&pod.path()), "eth0", &conf);
        let result = add.ok_json();
        assert_eq!(result["cniVersion"], *v);
        let ifaces = result["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 2, "{result}");
        let host_name = ifaces[0]["name"].as_str().unwrap().to_owned();
        assert!(
            host_name.starts_with("vw") && host_name.len() == 13,
            "{host_name}"
        );
        assert!(ifaces[0].get("sandbox").is_none());
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[1]["sandbox"], pod.path());
        for i in ifaces {
            assert_eq!(i["mac"].as_str().unwrap().len(), 17, "{i}");
            // `mtu` in interfaces exists only from 1.1.0.
            assert_eq!(i.get("mtu").is_some(), *v == "1.1.0", "{result}");
        }
        let ip = &result["ips"][0];
        assert_eq!(ip["interface"], 1);
        assert_eq!(ip["gateway"], GATEWAY);
        assert_eq!(ip.get("version").is_some(), *v == "0.4.0", "{result}");
        let address = ip["address"].as_str().unwrap().to_owned();
        assert!(address.starts_with("10.32.") && address.ends_with("/12"));
        assert_eq!(
            result["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}])
        );
        assert_eq!(result["dns"], json!({}));

        // The kernel agrees with the result.
        let addr = ip_out(&["-n", &pod.name, "-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&address), "{addr}");
        let link = ip_out(&["-n", &pod.name, "-o", "link", "show", "dev", "eth0"]);
        assert!(
            link.contains("mtu 1400") && link.contains("state UP"),
            "{link}"
        );
        let route = ip_out(&["-n", &pod.name, "-4", "route", "show", "default"]);
        assert!(route.contains("default via 10.32.0.1 dev eth0"), "{route}");
        let port = ip_out(&[
            "-n",
            &node.host.name,
            "-d",
            "link",
            "show",
            "dev",
            &host_name,
        ]);
        assert!(
            port.contains("master weft") && port.contains("hairpin on"),
            "{port}"
        );
        pod.ping(GATEWAY);

        // CHECK with the cached result: success, no output.
        let check_conf = with_prev(&conf, &result);
        let check = node.run("CHECK", &cid, Some(&pod.path()), "eth0", &check_conf);
        assert_eq!(check.code, 0, "{check:?}");
        assert!(check.stdout.is_empty());

        // DEL the way containerd's ctr does: empty CNI_NETNS, prevResult only.
        let del = node.run("DEL", &cid, Some(""), "eth0", &check_conf);
        assert_eq!((del.code, del.stdout.as_slice()), (0, &b""[..]), "{del:?}");
        assert!(!link_exists(&node.host.name, &host_name));
        assert!(!link_exists(&pod.name, "eth0"));
        assert!(node.ipam.held().is_empty());
        // DEL again (and with no netns at all): still success.
        let del = node.run("DEL", &cid, None, "eth0", &check_conf);
        assert_eq!(del.code, 0, "{del:?}");
        // CHECK after DEL: the interface is gone.
        let check = node.run("CHECK", &cid, Some(&pod.path()), "eth0", &check_conf);
        check.err_code(100, "does not exist");
    }
    let releases = node.ipam.calls("/ipam/release");
    assert_eq!(releases.len(), 6);
    assert_eq!(releases[0]["network"], "weftnet");
    assert_eq!(releases[0]["ifname"], "eth0");
}

#[test]
fn repeated_add_fails_and_keeps_the_first_attachment() {
    let node = Node::new();
    let pod = node.pod(0);
    let conf = node.conf("1.0.0", json!({}));
    let first = node
        .run("ADD", "again", Some(&pod.path()), "eth0", &conf)
        .ok_json();
    let again = node.run("ADD", "again", Some(&pod.path()), "eth0", &conf);
    again.err_code(4, "exists already");
    // Nothing of the first attachment was undone.
    assert!(node.ipam.calls("/ipam/release").is_empty());
    assert_eq!(node.ipam.held().len(), 1);
    pod.ping(GATEWAY);
    // A second interface of the same container is a different attachment.
    let second = node
        .run("ADD", "again", Some(&pod.path()), "net1", &conf)
        .ok_json();
    assert_ne!(first["ips"][0]["address"], second["ips"][0]["address"]);
    assert_ne!(
        first["interfaces"][0]["name"],
        second["interfaces"][0]["name"]
    );
    // The container's interface name taken by something else: error, nothing allocated.
    ip_ok(&[
        "-n", &pod.name, "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ]);
    let taken = node.run("ADD", "other", Some(&pod.path()), "eth9", &conf);
    taken.err_code(4, "CNI_IFNAME");
    assert_eq!(node.ipam.calls("/ipam/allocate").len(), 2);
    for ifname in ["eth0", "net1"] {
        let del = node.run("DEL", "again", Some(""), ifname, &conf);
        assert_eq!(del.code, 0, "{del:?}");
    }
    assert!(node.ipam.held().is_empty());
}

#[test]
fn chained_with_prev_result_and_portmap() {
    let node = Node::new();
    let pod = node.pod(0);
    // weft after a plugin that produced a result: weft appends and indexes correctly.
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": pod.path()}],
        "ips": [], "dns": {"nameservers": ["10.96.0.10"]}, "x-other": 1});
    let conf = with_prev(&node.conf("1.0.0", json!({})), &prev);
    let result = node
        .run("ADD", "chain", Some(&pod.path()), "eth0", &conf)
        .ok_json();
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(result["ips"][0]["interface"], 2);
    assert_eq!(result["dns"]["nameservers"][0], "10.96.0.10");
    assert_eq!(result["x-other"], 1);
    assert_eq!(node.run("DEL", "chain", Some(""), "eth0", &conf).code, 0);

    // The conflist of docs/CNI.md: weft then the reference portmap, at 1.0.0.
    let portmap = Path::new("/usr/lib/cni/portmap");
    if !portmap.exists() {
        eprintln!("SKIP portmap chain: /usr/lib/cni/portmap missing (containernetworking-plugins)");
        return;
    }
    let weft_conf = node.conf("1.0.0", json!({}));
    let weft_result = node
        .run("ADD", "pm", Some(&pod.path()), "eth0", &weft_conf)
        .ok_json();
    let pm_conf = json!({"cniVersion": "1.0.0", "name": "weftnet", "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": weft_result});
    let pm_env = |cmd: &str| {
        vec![
            ("CNI_COMMAND", cmd.to_owned()),
            ("CNI_CONTAINERID", "pm".to_owned()),
            ("CNI_NETNS", pod.path()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", "/usr/lib/cni".to_owned()),
        ]
    };
    let pm_add = node.run_bin(portmap, &pm_env("ADD"), &pm_conf.to_string());
    let final_result = pm_add.ok_json();
    assert_eq!(final_result["ips"], weft_result["ips"]);
    let pm_del = node.run_bin(portmap, &pm_env("DEL"), &pm_conf.to_string());
    assert_eq!(pm_del.code, 0, "{pm_del:?}");
    let del_conf = with_prev(&weft_conf, &final_result);
    assert_eq!(node.run("DEL", "pm", Some(""), "eth0", &del_conf).code, 0);
    assert!(node.ipam.held().is_empty());
}

#[test]
fn bad_configurations() {
    let node = Node::new();
    let pod = node.pod(0);
    let sock = node.ipam.path.display().to_string();
    let cases: &[(&str, u64, &str)] = &[
        ("{", 6, "EOF"),
        ("[]", 6, "invalid type"),
        (
            r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#,
            6,
            "invalid type",
        ),
        (r#"{"name":"n","type":"weft"}"#, 1, "cniVersion"),
        (
            r#"{"cniVersion":"0.3.1","name":"n","type":"weft"}"#,
            1,
            "0.3.1",
        ),
        (r#"{"cniVersion":"1.0.0","type":"weft"}"#, 7, "name"),
        (
            r#"{"cniVersion":"1.0.0","name":"-bad","type":"weft"}"#,
            7,
            "-bad",
        ),
        (r#"{"cniVersion":"1.0.0","name":"n","mtu":40}"#, 7, "mtu"),
        (
            r#"{"cniVersion":"1.0.0","name":"m","socket":"rel/sock"}"#,
            7,
            "socket",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#,
            2,
            "host-local",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","ipMasq":true}"#,
            2,
            "ipMasq",
        ),
    ];
    for (conf, code, needle) in cases {
        let conf = conf.replace(
            "\"name\":\"n\"",
            &format!("\"name\":\"n\",\"socket\":\"{sock}\""),
        );
        for cmd in ["ADD", "DEL", "CHECK"] {
            let out = node.run(cmd, "bad", Some(&pod.path()), "eth0", &conf);
            out.err_code(*code, needle);
        }
    }
    // prevResult that is not a result.
    let conf = with_prev(&node.conf("1.0.0", json!({})), &json!({"ips": "nope"}));
    node.run("ADD", "bad", Some(&pod.path()), "eth0", &conf)
        .err_code(6, "prevResult");
    node.run("CHECK", "bad", Some(&pod.path()), "eth0", &conf)
        .err_code(6, "prevResult");
    // CHECK without prevResult.
    let conf = node.conf("1.1.0", json!({}));
    node.run("CHECK", "bad", Some(&pod.path()), "eth0", &conf)
        .err_code(7, "prevResult");
    assert!(node.ipam.calls("/ipam/allocate").is_empty());
    assert_eq!(links_matching(&node.host.name, "vw"), 0);
}

#[test]
fn missing_and_invalid_environment() {
    let node = Node::new();
    let pod = node.pod(0);
    let conf = node.conf("1.1.0", json!({}));
    let p = pod.path();
    let hp = node.host.path();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "CNI_COMMAND"),
        (vec![("CNI_COMMAND", "FROB")], "FROB"),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_NETNS",
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_NETNS", &p),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_CONTAINERID",
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", &p),
            ],
            "CNI_IFNAME",
        ),
        (
            vec![
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_NETNS",
        ),
        (
            vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c")],
            "CNI_IFNAME",
        ),
        (
            vec![("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")],
            "CNI_CONTAINERID",
        ),
        (vec![("CNI_COMMAND", "GC")], "CNI_PATH"),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "/etc"),
                ("CNI_NETNS", &p),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_CONTAINERID",
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", &p),
                ("CNI_IFNAME", "a-very-long-ifname"),
            ],
            "CNI_IFNAME",
        ),
        // The runtime's own namespace is not a container.
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", &hp),
                ("CNI_IFNAME", "eth0"),
            ],
            "own network namespace",
        ),
    ];
    for (env, needle) in cases {
        let env: Vec<(&str, String)> = env.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
        node.run_bin(Path::new(BIN), &env, &conf)
            .err_code(4, needle);
    }
    assert!(node.ipam.calls("/ipam/allocate").is_empty());
}

#[test]
fn unknown_containers() {
    let node = Node::new();
    let conf = node.conf("1.0.0", json!({}));
    // DEL of something never added: success, and the router was asked to release.
    let del = node.run("DEL", "never-added", Some(""), "eth0", &conf);
    assert_eq!((del.code, del.stdout.is_empty()), (0, true), "{del:?}");
    let del = node.run(
        "DEL",
        "never-added",
        Some("/run/netns/does-not-exist"),
        "eth0",
        &conf,
    );
    assert_eq!(del.code, 0, "{del:?}");
    assert_eq!(node.ipam.calls("/ipam/release").len(), 2);
    // ADD into a namespace that does not exist: code 3, nothing allocated.
    let add = node.run(
        "ADD",
        "ghost",
        Some("/run/netns/weft-does-not-exist"),
        "eth0",
        &conf,
    );
    add.err_code(3, "weft-does-not-exist");
    // CHECK of a container whose namespace is gone.
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "vw0"}, {"name": "eth0", "sandbox": "/run/netns/weft-gone"}],
        "ips": [{"address": "10.32.0.9/12", "interface": 1}]});
    let conf = with_prev(&conf, &prev);
    node.run(
        "CHECK",
        "ghost",
        Some("/run/netns/weft-gone"),
        "eth0",
        &conf,
    )
    .err_code(3, "weft-gone");
    assert!(node.ipam.calls("/ipam/allocate").is_empty());
}

#[test]
fn router_and_bridge_failures_leave_nothing_behind() {
    let node = Node::new();
    let pod = node.pod(0);
    // Router down: 11, naming the socket.
    let queue = node.dir.0.join("release-queue");
    let down = json!({"socket": "/run/weft-test-no-such/weft.sock",
        "releaseQueue": queue.display().to_string()});
    let add = node.run(
        "ADD",
        "c1",
        Some(&pod.path()),
        "eth0",
        &node.conf("1.0.0", down.clone()),
    );
    add.err_code(11, "weft-test-no-such");
    // DEL with the router down succeeds: the release waits in the queue for the router.
    let del = node.run("DEL", "c1", Some(""), "eth0", &node.conf("1.0.0", down));
    assert_eq!(del.code, 0, "{del:?}");
    let queued = std::fs::read(queue.join("weftnet_c1_eth0.json")).unwrap();
    let entry = topology::api::release_queue::decode(&queued).unwrap();
    assert_eq!(
        (entry.container_id.as_str(), entry.ifname.as_str()),
        ("c1", "eth0")
    );
    // IPAM not ready and range exhausted: 11.
    node.ipam.set_mode(Mode::NotReady);
    let add = node.run(
        "ADD",
        "c1",
        Some(&pod.path()),
        "eth0",
        &node.conf("1.0.0", json!({})),
    );
    add.err_code(11, "not ready");
    node.ipam.set_mode(Mode::Exhausted);
    let add = node.run(
        "ADD",
        "c1",
        Some(&pod.path()),
        "eth0",
        &node.conf("1.0.0", json!({})),
    );
    add.err_code(11, "exhausted");
    // A failure after the veth exists (the gateway is the subnet's broadcast address, so the
    // kernel refuses the default route): everything is rolled back.
    node.ipam.set_mode(Mode::BroadcastGateway);
    let add = node.run(
        "ADD",
        "c1",
        Some(&pod.path()),
        "eth0",
        &node.conf("1.0.0", json!({})),
    );
    add.err_code(5, "default route");
    assert_eq!(node.ipam.calls("/ipam/release").len(), 1);
    assert!(node.ipam.held().is_empty());
    node.ipam.set_mode(Mode::Ready);
    assert_eq!(
        links_matching(&node.host.name, "vw") + links_matching(&node.host.name, "vt"),
        0
    );
    assert!(!link_exists(&pod.name, "eth0"));
    // No bridge: 11 naming it, before anything is allocated.
    ip_ok(&["-n", &node.host.name, "link", "del", "weft"]);
    let allocs = node.ipam.calls("/ipam/allocate").len();
    let add = node.run(
        "ADD",
        "c1",
        Some(&pod.path()),
        "eth0",
        &node.conf("1.1.0", json!({})),
    );
    add.err_code(11, "no bridge");
    assert_eq!(node.ipam.calls("/ipam/allocate").len(), allocs);
    assert_eq!(links_matching(&node.host.name, "vw"), 0);
}

#[test]
fn status_gc_and_version() {
    let node = Node::new();
    let v11 = node.conf("1.1.0", json!({}));
    // STATUS: ready, not ready, unreachable.
    let ok = node.run_env(&[("CNI_COMMAND", "STATUS")], &v11);
    assert_eq!((ok.code, ok.stdout.is_empty()), (0, true), "{ok:?}");
    node.ipam.set_mode(Mode::NotReady);
    node.run_env(&[("CNI_COMMAND", "STATUS")], &v11)
        .err_code(50, "warming up");
    node.ipam.set_mode(Mode::Ready);
    let down = node.conf(
        "1.1.0",
        json!({"socket": "/run/weft-test-no-such/weft.sock"}),
    );
    node.run_env(&[("CNI_COMMAND", "STATUS")], &down)
        .err_code(50, "weft-test-no-such");
    // STATUS and GC only in 1.1.0 configurations.
    for v in ["0.4.0", "1.0.0"] {
        let conf = node.conf(v, json!({"cni.dev/valid-attachments": []}));
        node.run_env(&[("CNI_COMMAND", "STATUS")], &conf)
            .err_code(1, "STATUS");
        node.run_env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], &conf)
            .err_code(1, "GC");
    }
    // GC: the valid list goes to the router for this network.
    let pod = node.pod(0);
    for cid in ["keep", "stale"] {
        node.run(
            "ADD",
            cid,
            Some(&pod.path()),
            if cid == "keep" { "eth0" } else { "eth1" },
            &v11,
        )
        .ok_json();
    }
    let gc_conf = node.conf(
        "1.1.0",
        json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
    );
    let gc = node.run_env(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc_conf,
    );
    assert_eq!((gc.code, gc.stdout.is_empty()), (0, true), "{gc:?}");
    let calls = node.ipam.calls("/ipam/gc");
    assert_eq!(
        calls,
        vec![json!({"network": "weftnet", "valid": [{"container_id": "keep", "ifname": "eth0"}]})]
    );
    let held = node.ipam.held();
    assert_eq!(
        held.keys().map(|k| k.0.as_str()).collect::<Vec<_>>(),
        ["keep"]
    );
    node.run_env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], &v11)
        .err_code(7, "valid-attachments");
    for (cid, ifname) in [("keep", "eth0"), ("stale", "eth1")] {
        assert_eq!(node.run("DEL", cid, Some(""), ifname, &v11).code, 0);
    }
    // VERSION echoes the asked version and lists exactly 0.4.0, 1.0.0, 1.1.0.
    for v in VERSIONS.iter().chain(&["0.3.1"]) {
        let out = node.run_env(
            &[("CNI_COMMAND", "VERSION")],
            &format!(r#"{{"cniVersion":"{v}"}}"#),
        );
        assert_eq!(
            out.ok_json(),
            json!({"cniVersion": v, "supportedVersions": VERSIONS})
        );
    }
    let out = node.run_env(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(out.ok_json()["cniVersion"], "1.1.0");
    node.run_env(&[("CNI_COMMAND", "VERSION")], "{")
        .err_code(6, "VERSION");
}

#[test]
fn check_detects_damage() {
    let node = Node::new();
    let pod = node.pod(0);
    let conf = node.conf("1.1.0", json!({"hairpinMode": false}));
    let result = node
        .run("ADD", "dmg", Some(&pod.path()), "eth0", &conf)
        .ok_json();
    let host_name = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
    let port = ip_out(&[
        "-n",
        &node.host.name,
        "-d",
        "link",
        "show",
        "dev",
        &host_name,
    ]);
    assert!(port.contains("hairpin off"), "{port}");
    let check_conf = with_prev(&conf, &result);
    assert_eq!(
        node.run("CHECK", "dmg", Some(&pod.path()), "eth0", &check_conf)
            .code,
        0
    );
    // CHECK only looks the address up: it never allocates.
    assert_eq!(node.ipam.calls("/ipam/allocate").len(), 1, "ADD only");
    assert_eq!(node.ipam.calls("/ipam/lookup").len(), 1);
    // The router lost the claim: CHECK says so, and does not allocate a new one.
    node.ipam.forget_all();
    node.run("CHECK", "dmg", Some(&pod.path()), "eth0", &check_conf)
        .err_code(100, "router holds no address for dmg/eth0");
    assert!(node.ipam.held().is_empty(), "CHECK allocated");
    assert_eq!(node.ipam.calls("/ipam/allocate").len(), 1);
    // The address is removed from the interface.
    let addr = result["ips"][0]["address"].as_str().unwrap();
    ip_ok(&["-n", &pod.name, "addr", "del", addr, "dev", "eth0"]);
    node.run("CHECK", "dmg", Some(&pod.path()), "eth0", &check_conf)
        .err_code(100, "lacks address");
    // The host end leaves the bridge.
    ip_ok(&["-n", &node.host.name, "link", "set", &host_name, "nomaster"]);
    node.run("CHECK", "dmg", Some(&pod.path()), "eth0", &check_conf)
        .err_code(100, "not attached");
    assert_eq!(
        node.run("DEL", "dmg", Some(&pod.path()), "eth0", &check_conf)
            .code,
        0
    );
    assert!(!link_exists(&node.host.name, &host_name));
}

// ---------------------------------------------------------------------------------------------
// Fixtures

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace named after this process, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(suffix: &str) -> Self {
        let name = format!("ct{}x{suffix}", std::process::id());
        ip_ok(&["netns", "add", &name]);
        let ns = Self { name };
        ip_ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A node: a host namespace with the `weft` bridge holding the gateway address, a fake router
/// IPAM, and pod namespaces.
struct Node {
    pods: Mutex<Vec<Netns>>,
    host: Netns,
    ipam: FakeIpam,
    seq: u32,
    /// Dropped last: the fake IPAM's socket lives in it.
    dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Node {
    fn new() -> Self {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("weft-cni-test-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ipam = FakeIpam::start(&dir.join("weft.sock"));
        let host = Netns::new(&format!("{seq}h"));
        let n = host.name.as_str();
        ip_ok(&["-n", n, "link", "add", "weft", "type", "bridge"]);
        ip_ok(&["-n", n, "link", "set", "weft", "mtu", "1376", "up"]);
        ip_ok(&["-n", n, "addr", "add", "10.32.0.1/12", "dev", "weft"]);
        Self {
            host,
            ipam,
            pods: Mutex::new(Vec::new()),
            seq,
            dir: TempDir(dir),
        }
    }

    /// A pod namespace (owned by the node, deleted with it).
    fn pod(&self, k: usize) -> PodRef {
        let ns = Netns::new(&format!("{}c{k}", self.seq));
        let pod = PodRef {
            name: ns.name.clone(),
        };
        self.pods.lock().unwrap().push(ns);
        pod
    }

    fn conf(&self, version: &str, extra: Value) -> String {
        // The release queue in the test's directory, never the host's default.
        let mut conf = json!({"cniVersion": version, "name": "weftnet", "type": "weft",
            "socket": self.ipam.path.display().to_string(),
            "releaseQueue": self.dir.0.join("release-queue").display().to_string()});
        if let (Some(c), Value::Object(extra)) = (conf.as_object_mut(), extra) {
            c.extend(extra);
        }
        conf.to_string()
    }

    fn run(&self, cmd: &str, cid: &str, netns: Option<&str>, ifname: &str, stdin: &str) -> Run {
        let mut env = vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_IFNAME", ifname),
        ];
        env.push(("CNI_PATH", "/opt/cni/bin"));
        if let Some(n) = netns {
            env.push(("CNI_NETNS", n));
        }
        self.run_env(&env, stdin)
    }

    fn run_env(&self, env: &[(&str, &str)], stdin: &str) -> Run {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.run_bin(Path::new(BIN), &env, stdin)
    }

    /// Runs a plugin binary inside the host namespace with exactly `env` and `stdin`.
    fn run_bin(&self, bin: &Path, env: &[(&str, String)], stdin: &str) -> Run {
        let ns = File::open(self.host.path()).unwrap();
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("WEFT_CNI_LOG", self.dir.0.join("cni.log"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setns is async-signal-safe; it moves only the child into the host namespace.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        // A plugin that rejects its environment may exit without reading stdin.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        drop(ns);
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A pod namespace's name (the namespace itself belongs to its node).
struct PodRef {
    name: String,
}

impl PodRef {
    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn ping(&self, addr: &str) {
        let out = Command::new("nsenter")
            .args([
                &format!("--net={}", self.path()),
                "ping",
                "-c1",
                "-W2",
                addr,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ping {addr} from {}: {out:?}",
            self.name
        );
    }
}

/// One plugin run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    /// Success with exactly one JSON document on stdout.
    fn ok_json(&self) -> Value {
        assert_eq!(
            self.code,
            0,
            "plugin failed: {} {}",
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        serde_json::from_slice(&self.stdout).unwrap()
    }

    /// Failure with the spec's error object of `code`, whose text mentions `needle`.
    fn err_code(&self, code: u64, needle: &str) {
        let text = String::from_utf8_lossy(&self.stdout);
        assert_ne!(self.code, 0, "expected error {code}, got success: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert_eq!(v["code"], code, "{text}");
        assert!(
            v["cniVersion"].is_string() && v["msg"].is_string(),
            "{text}"
        );
        assert!(
            text.contains(needle),
            "error {text} does not mention {needle:?}"
        );
    }
}

fn with_prev(conf: &str, prev: &Value) -> String {
    let mut v: Value = serde_json::from_str(conf).unwrap();
    v["prevResult"] = prev.clone();
    v.to_string()
}

fn ip_ok(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn link_exists(netns: &str, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", name])
        .output()
        .unwrap()
        .status
        .success()
}

fn links_matching(netns: &str, prefix: &str) -> usize {
    ip_out(&["-n", netns, "-o", "link", "show"])
        .lines()
        .filter(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with(prefix)))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Fake router IPAM

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Exhausted,
    NotReady,
    Ready,
    /// Answers with the broadcast address of 10.32.0.0/12 as the gateway.
    BroadcastGateway,
}

type Key = (String, String, String);

struct IpamState {
    mode: Mode,
    held: BTreeMap<Key, String>,
    next: u32,
    calls: Vec<(String, Value)>,
}

struct FakeIpam {
    path: PathBuf,
    state: Arc<Mutex<IpamState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeIpam {
    fn start(path: &Path) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        let state = Arc::new(Mutex::new(IpamState {
            mode: Mode::Ready,
            held: BTreeMap::new(),
            next: 10,
            calls: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    serve(s, &st);
                }
            }
        });
        Self {
            path: path.to_owned(),
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn held(&self) -> BTreeMap<Key, String> {
        self.state.lock().unwrap().held.clone()
    }

    fn forget_all(&self) {
        self.state.lock().unwrap().held.clear();
    }

    fn calls(&self, path: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.calls
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

impl Drop for FakeIpam {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut s: UnixStream, state: &Mutex<IpamState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, length) = loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            break (pos + 4, length);
        }
    };
    while buf.len() < head_len + length {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let body: Value = serde_json::from_slice(&buf[head_len..]).unwrap_or(Value::Null);
    let (status, answer) = answer(state, &path, body);
    let text = answer.to_string();
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = s.write_all(reply.as_bytes());
}

fn answer(state: &Mutex<IpamState>, path: &str, body: Value) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    st.calls.push((path.to_owned(), body.clone()));
    let key = |b: &Value| -> Key {
        let f = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
        (f("container_id"), f("ifname"), f("network"))
    };
    match (path, st.mode) {
        ("/ready", Mode::NotReady) => (503, json!({"ready": false, "reason": "warming up"})),
        ("/ready", _) => (200, json!({"ready": true})),
        (_, Mode::NotReady) => (503, json!({"error": "IPAM not ready"})),
        ("/ipam/allocate", Mode::Exhausted) => {
            (507, json!({"error": "range 10.32.0.0/12 exhausted"}))
        }
        ("/ipam/allocate", mode) => {
            let k = key(&body);
            let ip = match st.held.get(&k) {
                Some(ip) => ip.clone(),
                None => {
                    let n = st.next;
                    st.next += 1;
                    let ip = format!("10.32.{}.{}/12", n / 256, n % 256);
                    st.held.insert(k, ip.clone());
                    ip
                }
            };
            let gateway = if mode == Mode::BroadcastGateway {
                "10.47.255.255".to_owned()
            } else {
                GATEWAY.to_owned()
            };
            (200, json!({"ip": ip, "gateway": gateway}))
        }
        ("/ipam/lookup", _) => match st.held.get(&key(&body)) {
            Some(ip) => (200, json!({"ip": ip})),
            None => (404, json!({"error": "no address held"})),
        },
        ("/ipam/release", _) => {
            let released: Vec<String> = st.held.remove(&key(&body)).into_iter().collect();
            (200, json!({"released": released}))
        }
        ("/ipam/gc", _) => {
            let network = body["network"].as_str().unwrap_or_default().to_owned();
            let valid: Vec<(String, String)> = body["valid"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| {
                            (
                                v["container_id"].as_str().unwrap_or_default().to_owned(),
                                v["ifname"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let stale: Vec<Key> = st
                .held
                .keys()
                .filter(|k| k.2 == network && !valid.contains(&(k.0.clone(), k.1.clone())))
                .cloned()
                .collect();
            let released: Vec<String> = stale.iter().filter_map(|k| st.held.remove(k)).collect();
            (200, json!({"released": released}))
        }
        _ => (404, json!({"error": format!("no route {path}")})),
    }
}
