//! `weft-sim ipam` on 60 nodes: the start converges, and at steady state and under a churn of
//! allocations inside the nodes' own ranges each node sends only the periodic digests.

use weft_sim::ipam::{self, InitMode, IpamArgs};

/// A Digest message: version, type, flags, range base (4), prefix, digest (8)
/// (docs/PROTOCOL.md, "IPAM gossip").
const DIGEST_LEN: f64 = 16.0;
/// The router's gossip interval (`ipam::Config::new`).
const GOSSIP_INTERVAL_S: f64 = 30.0;

#[test]
fn sixty_nodes_converge_and_gossip_only_digests_when_nothing_moves() {
    let mut args = IpamArgs::with_nodes(60);
    args.init = InitMode::Seed;
    args.settle_s = 5.0;
    args.steady_s = 60.0;
    args.churn_s = 30.0;
    args.churn_interval_s = 5.0;
    let r = ipam::run(&args).unwrap();
    assert!(r.converged, "{r:?}");
    assert!(r.churn_replacements >= 60 * 6, "{r:?}");
    // Each node sends one digest per interval to each neighbour, framed: the window holds
    // two intervals, so the mean is exactly that; one more interval's worth of slack covers a
    // window that catches a third tick.
    let framed = DIGEST_LEN + 1.0 + r.frame_overhead_bytes as f64;
    let per_s = framed * r.mean_connections_per_node / GOSSIP_INTERVAL_S;
    assert!(
        r.steady_bytes_per_node_per_s_mean <= per_s * 1.5 + 1e-6,
        "steady {} > {per_s} B/s: {r:?}",
        r.steady_bytes_per_node_per_s_mean
    );
    // Replacing one pod of ten in a range of about 17,000 addresses moves the free count by
    // far less than the eighth that is republished: churn gossips nothing more.
    assert!(
        r.churn_bytes_per_node_per_s_mean <= per_s * 2.0 + 1e-6,
        "churn {} B/s: {r:?}",
        r.churn_bytes_per_node_per_s_mean
    );
}

#[test]
fn consensus_start_converges_on_a_small_mesh() {
    let mut args = IpamArgs::with_nodes(10);
    args.settle_s = 1.0;
    args.steady_s = 30.0;
    args.churn_s = 0.0;
    let r = ipam::run(&args).unwrap();
    assert!(r.converged, "{r:?}");
    assert!(r.ring_entries >= 2, "{r:?}");
}
