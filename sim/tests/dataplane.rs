//! `weft-sim dataplane` on small meshes (no root): every underlay passes its checks, relays
//! where the underlay is partial, finds moved pods, and the same seed gives the same figures.

#![allow(clippy::unwrap_used)]

use weft_sim::dataplane::{DataplaneArgs, DataplaneReport, UnderlayKind, run};

fn args(nodes: usize, underlay: UnderlayKind) -> DataplaneArgs {
    DataplaneArgs {
        underlay,
        moves: 4,
        ..DataplaneArgs::with_nodes(nodes)
    }
}

fn passes(a: &DataplaneArgs) -> DataplaneReport {
    let r = run(a).unwrap();
    assert!(r.passed, "{:?}: {:#?}", a.underlay, r);
    let n = a.nodes as u64;
    assert_eq!(r.broadcasts, n);
    assert_eq!(r.open_failures, 0);
    assert_eq!(r.moves_followed, r.moves);
    r
}

#[test]
fn every_underlay_carries_every_pair_and_broadcast() {
    let full = passes(&args(12, UnderlayKind::Full));
    // Everyone reaches everyone: one hop, nothing relayed.
    assert_eq!((full.max_hops, full.relayed), (1, 0));
    assert_eq!(full.broadcast_delivered, 12 * 11);

    let random = passes(&args(40, UnderlayKind::Random));
    assert!(random.relayed > 0, "{random:#?}");
    assert!(random.max_hops > 1);
    assert_eq!(random.beyond_hop_limit, 0);
    assert!(random.multi_chunk_frames > 0);
    assert_eq!(random.unicast_delivered, random.unicast_sent);
}

#[test]
fn a_long_line_relays_up_to_the_hop_limit() {
    let line = passes(&args(20, UnderlayKind::Line));
    // Ends 19 hops apart: pairs more than 16 hops apart are beyond the sleeve's hop limit.
    assert_eq!(line.max_hops, 16);
    // Pairs (i, j) with |i − j| > 16, both directions: 3 + 2 + 1 = 6 each way.
    assert_eq!(line.beyond_hop_limit, 12);
    assert_eq!(
        line.unicast_delivered + line.beyond_hop_limit,
        line.unicast_sent
    );
}

#[test]
fn loss_while_converging_changes_nothing_once_converged() {
    let lossy = passes(&DataplaneArgs {
        loss: 5.0,
        ..args(30, UnderlayKind::Random)
    });
    assert!(lossy.control_lost > 0);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = args(25, UnderlayKind::Random);
    let (x, y) = (run(&a).unwrap(), run(&a).unwrap());
    let strip =
        |r: DataplaneReport| serde_json::to_string(&DataplaneReport { wall_s: 0.0, ..r }).unwrap();
    assert_eq!(strip(x), strip(y));
}
