//! The upstream NetworkPolicy e2e model (`weft_sim::netpol`): namespaces x, y, z with pods
//! a, b, c on three nodes, every pair probed over TCP and UDP 80 and 81.
//!
//! - `the_case_table_agrees_with_the_reference` (no root, no lab): every step of every case,
//!   applied to a cluster view with fake addresses through the router's own conversion, gives
//!   the hand-written matrices under `topology::policy::reference::allowed`; each step changes
//!   what it claims to change.
//! - `netpol_cases_on_the_default_datapath`: thirteen cases, in sequence, on a 3-node `--kube`
//!   lab, the matrices probed for real (policies deleted and every pair open again before each
//!   case). The `#[ignore]`d tests run every case on fastdp and on the sleeve:
//!   `cargo test -p weft-sim --test netpol -- --ignored`.

#![allow(clippy::unwrap_used, clippy::print_stderr)] // test helpers panic on setup failures by design

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use topology::cluster::Protocol;
use weft_sim::lab::{self, Datapath, LabGuard, LabSpec};
use weft_sim::netpol::{Case, LABELS, Matrix, Model, Pods, Reference, cases, explain};

mod common;
use common::{serial, unique_with};

#[test]
fn the_case_table_agrees_with_the_reference() {
    let all = cases::all();
    assert!(all.len() >= 25, "{} cases", all.len());
    let names: BTreeSet<&str> = all.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), all.len(), "case names are unique");
    assert_eq!(cases::quick().len(), 13, "every quick case exists");
    // The addresses are the lab's business: the same table holds on two layouts.
    let odd = Pods::layout(|i, j| Ipv4Addr::new(10, 40 + i as u8, 7, 10 * j as u8 + 3));
    for pods in [Pods::fake(), odd] {
        for case in &all {
            check_case(case, &pods);
        }
    }
}

/// Runs `case` on the reference: each step's expectations hold, the diagonal is open, and a
/// step changes some expected matrix unless it says it does not.
fn check_case(case: &Case, pods: &Pods) {
    let mut reference = Reference::new(pods.clone()).unwrap();
    let steps = (case.steps)(pods);
    assert!(!steps.is_empty(), "{}: no steps", case.name);
    for (k, step) in steps.iter().enumerate() {
        let at = format!("case {}, step {} ({})", case.name, k + 1, step.what);
        assert!(!step.expect.is_empty(), "{at}: expects nothing");
        let before: Vec<Matrix> = step
            .expect
            .iter()
            .map(|e| reference.matrix(e.protocol, e.port))
            .collect();
        reference
            .step(step)
            .unwrap_or_else(|e| panic!("{at}: {e:#}"));
        for e in &step.expect {
            assert!(
                (0..9).all(|i| e.matrix.0[i][i]),
                "{at}: a pod always reaches itself\n{}",
                e.matrix.render()
            );
            let got = reference.matrix(e.protocol, e.port);
            assert!(
                got == e.matrix,
                "{at}: the hand-written matrix is not the reference's\n{}",
                explain(e.protocol, e.port, &e.matrix, &got)
            );
        }
        let changed = step
            .expect
            .iter()
            .zip(&before)
            .any(|(e, before)| e.matrix != *before);
        assert_eq!(
            changed, !step.unchanged,
            "{at}: a step changes an expected matrix exactly when it does not say `unchanged`"
        );
    }
}

#[test]
fn matrices_parse_and_render() {
    let m = Matrix::only_into("y/b", &["x/a"]);
    let text = m.render();
    let rows: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(rows[0], "x/a 111 111 111");
    assert_eq!(rows[2], "x/c 111 1.1 111");
    assert_eq!(Matrix::rows(rows.try_into().unwrap()), m);
    assert_eq!(
        Matrix::OPEN.differences(&m),
        [
            "x/b -> y/b",
            "x/c -> y/b",
            "y/a -> y/b",
            "y/c -> y/b",
            "z/a -> y/b",
            "z/b -> y/b",
            "z/c -> y/b"
        ]
    );
    assert_eq!(LABELS.len(), 9);
    let explained = explain(Protocol::Udp, 81, &Matrix::OPEN, &m);
    assert!(explained.starts_with("UDP 81"), "{explained}");
}

#[test]
fn the_pods_block_holds_every_pod_strictly() {
    assert_eq!(Pods::fake().supernet(), "10.32.0.0/22");
    let pods = Pods::layout(|i, j| Ipv4Addr::new(10, 32, 0, (3 * i + j) as u8));
    assert_eq!(pods.supernet(), "10.32.0.0/28");
    let one = Pods::layout(|_, _| Ipv4Addr::new(10, 32, 0, 1));
    assert_eq!(one.supernet(), "10.32.0.0/30", "never narrower than /30");
    let pod = Pods::fake().get("y/b").clone();
    assert_eq!((pod.node.as_str(), pod.lab_pod.as_str()), ("h2", "p2"));
    assert_eq!(pod.object, "h2-p2");
    assert_eq!(Pods::fake().cidr32("y/b"), "10.32.2.2/32");
}

/// Runs `cases` on a fresh 3-node `--kube` lab on `datapath`.
fn lab_run(tag: &str, datapath: Datapath, cases: &[Case]) {
    let _serial = serial();
    let name = unique_with("np", tag);
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 3;
    spec.pods = 0;
    spec.kube = true;
    spec.datapath = datapath;
    lab::up(&spec).unwrap();
    // Dropped before the guard: the servers go before the lab.
    let model = Model::up(&name).unwrap_or_else(|e| panic!("{e:#}"));
    for case in cases {
        eprintln!("netpol: case {} ({})", case.name, case.upstream);
    }
    if let Err(e) = model.run_cases(cases) {
        panic!("{e:#}");
    }
}

#[test]
fn netpol_cases_on_the_default_datapath() {
    lab_run("a", Datapath::Auto, &cases::quick());
}

#[test]
#[ignore = "every case, several minutes; run with --ignored"]
fn netpol_all_cases_on_fastdp() {
    lab_run("f", Datapath::Fastdp, &cases::all());
}

#[test]
#[ignore = "every case, several minutes; run with --ignored"]
fn netpol_all_cases_on_sleeve() {
    lab_run("s", Datapath::Sleeve, &cases::all());
}
