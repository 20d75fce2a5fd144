//! A real container runtime: containerd 1.6 (`ctr run --cni`, the go-cni/libcni path the CRI
//! plugin uses) runs a container on lab node h1 with a weft + portmap conflist, through the
//! shared harness (`../shared/harness/ctr-cni.sh`, run inside h1's namespace). The container gets
//! its address from weft's IPAM, reaches a pod on h2 across the mesh, and CNI DEL gives the
//! address back: checked through weft's IPAM API.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_sim::lab::{self, LabGuard, LabSpec};

mod common;
use common::{active, settled_active};

#[test]
fn a_containerd_container_gets_a_weft_address_reaches_another_node_and_gives_it_back() {
    let harness = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/harness/ctr-cni.sh");
    assert!(harness.is_file(), "{} is missing", harness.display());
    let name = format!("lt{}k", std::process::id() % 100_000);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    let info = lab::up(&spec).unwrap();
    let remote = info.nodes[1].pods[0]
        .ip
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let dir = PathBuf::from(lab::RUN_DIR).join(&name);
    let conf = dir.join("ctr.conflist");
    // Debian's containerd 1.6 and portmap speak CNI up to 1.0.0.
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "plugins": [
            {"type": "weft", "socket": dir.join("h1/weft.sock")},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    std::fs::write(&conf, conflist.to_string()).unwrap();
    // h1's pod and gateway.
    let baseline = settled_active(&name, "h1", spec.pods as u64 + 1);
    assert_eq!(
        baseline,
        spec.pods as u64 + 1,
        "h1's addresses before the container"
    );

    let cmd = format!("ip -4 addr show eth0; ping -c1 -W2 {remote}; sleep 2");
    let run = {
        let (conf, plugins, ns) = (conf, dir.join("cni-bin"), format!("{name}-h1"));
        std::thread::spawn(move || {
            Command::new("timeout")
                .arg("120")
                .arg("nsenter")
                .arg(format!("--net=/var/run/netns/{ns}"))
                .arg(harness)
                .arg(conf)
                .arg(plugins)
                .arg(cmd)
                .env("CNIH_WORKDIR", format!("/tmp/cnih-{ns}"))
                .output()
                .unwrap()
        })
    };
    // While the container runs, weft's IPAM holds one more address on h1.
    let start = Instant::now();
    let mut held = false;
    while start.elapsed() < Duration::from_secs(60) && !run.is_finished() {
        held |= active(&name, "h1") == baseline + 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASS command in container"), "{text}");
    assert!(text.contains("1 packets received"), "{text}");
    assert!(text.contains("inet 10."), "{text}");
    assert!(held, "weft's IPAM never showed the container's address");
    assert_eq!(
        settled_active(&name, "h1", baseline),
        baseline,
        "CNI DEL did not give the address back"
    );
}
