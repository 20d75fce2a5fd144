//! Engines wired together in memory (quinn's `Pair` idea): a line A–B–C relays through B,
//! a crashed peer is noticed by heartbeat and collected, targets back off.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)] // test helpers

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use topology::targets::TargetState;
use topology::{Config, ConnId, Event, Mesh, PeerName};

struct Net {
    now: Instant,
    nodes: Vec<Mesh>,
    alive: Vec<bool>,
    /// (deliver at, conn, to, bytes)
    wire: VecDeque<(Instant, ConnId, usize, Vec<u8>)>,
    links: Vec<(ConnId, usize, usize)>,
    /// When true, every dial is refused at once (and logged in `dials`); otherwise dials are
    /// left unanswered.
    refuse_dials: bool,
    /// (when, dialler, address) of each dial refused.
    dials: Vec<(Instant, usize, SocketAddr)>,
    /// (node, event) of every peer event, in order.
    peer_events: Vec<(usize, Event)>,
}

fn name(i: usize) -> PeerName {
    PeerName::from_bytes([2, 0, 0, 0, 0, i as u8 + 1])
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i as u8 + 1], 6783))
}

impl Net {
    fn new(n: usize) -> Self {
        #[allow(clippy::disallowed_methods)] // an arbitrary base instant for the test
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| Mesh::new(Config::new(name(i), format!("n{i}")), now, i as u64))
            .collect();
        Self {
            now,
            nodes,
            alive: vec![true; n],
            wire: VecDeque::new(),
            links: Vec::new(),
            refuse_dials: false,
            dials: Vec::new(),
            peer_events: Vec::new(),
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        let id = ConnId(self.links.iter().map(|l| l.0.0).max().unwrap_or(0) + 1);
        self.links.push((id, a, b));
        let (na, ua) = (name(a), self.nodes[a].uid());
        let (nb, ub) = (name(b), self.nodes[b].uid());
        self.nodes[a].handle_connection_up(self.now, id, nb, ub, "", addr(b), true);
        self.nodes[b].handle_connection_up(self.now, id, na, ua, "", addr(a), false);
    }

    /// Closes the connection between `a` and `b` at both ends, as a cut link would.
    fn disconnect(&mut self, a: usize, b: usize) {
        let pos = self
            .links
            .iter()
            .position(|&(_, x, y)| (x, y) == (a, b) || (x, y) == (b, a))
            .unwrap();
        let (id, x, y) = self.links.remove(pos);
        self.nodes[x].handle_connection_down(self.now, id, "cut");
        self.nodes[y].handle_connection_down(self.now, id, "cut");
    }

    /// A line A–B–C, run for 2 s: everyone knows everyone.
    fn settled_line() -> Self {
        let mut net = Self::new(3);
        net.connect(0, 1);
        net.connect(1, 2);
        net.run(Duration::from_secs(2));
        net
    }

    fn other(&self, conn: ConnId, me: usize) -> Option<usize> {
        let &(_, a, b) = self.links.iter().find(|l| l.0 == conn)?;
        Some(if a == me { b } else { a })
    }

    /// Runs for `d` of virtual time in 1 ms steps with 1 ms links.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(1);
            for i in 0..self.nodes.len() {
                if !self.alive[i] {
                    continue;
                }
                if self.nodes[i]
                    .poll_timeout()
                    .is_some_and(|(t, _)| t <= self.now)
                {
                    self.nodes[i].handle_timeout(self.now);
                }
                while let Some((conn, bytes)) = self.nodes[i].poll_transmit() {
                    if let Some(to) = self.other(conn, i) {
                        self.wire
                            .push_back((self.now + Duration::from_millis(1), conn, to, bytes));
                    }
                }
                while let Some(e) = self.nodes[i].poll_event() {
                    match e {
                        Event::Dial(a) if self.refuse_dials => self.dials.push((self.now, i, a)),
                        Event::PeerAdded(_)
                        | Event::PeerRemoved(_)
                        | Event::PeerCutOff(_)
                        | Event::PeerBack(_) => self.peer_events.push((i, e)),
                        Event::CloseConnection { .. } | Event::Dial(_) | Event::RoutesChanged => {}
                    }
                }
                for &(_, _, a) in self.dials.iter().filter(|d| d.0 == self.now && d.1 == i) {
                    self.nodes[i].handle_dial_started(self.now, a);
                    self.nodes[i].handle_dial_failed(self.now, a, "connection refused");
                }
            }
            while self.wire.front().is_some_and(|m| m.0 <= self.now) {
                let (_, conn, to, bytes) = self.wire.pop_front().unwrap();
                if self.alive[to] {
                    self.nodes[to]
                        .handle_control(self.now, conn, &bytes)
                        .unwrap();
                }
            }
        }
    }
}

#[test]
fn line_relays_through_the_middle_and_collects_a_crashed_peer() {
    let mut net = Net::settled_line();
    for i in 0..3 {
        net.nodes[i].recalculate_routes();
        assert_eq!(net.nodes[i].peers().len(), 3, "node {i} knows everyone");
    }
    assert_eq!(net.nodes[0].unicast_next_hop(name(2)), Some(name(1)));
    assert_eq!(net.nodes[2].unicast_next_hop(name(0)), Some(name(1)));
    assert_eq!(net.nodes[0].broadcast_next_hops(name(0)), vec![name(1)]);
    assert_eq!(net.nodes[1].broadcast_next_hops(name(0)), vec![name(2)]);
    assert!(net.nodes[2].broadcast_next_hops(name(0)).is_empty());
    let status = net.nodes[0].status(net.now);
    assert_eq!(status.routes.len(), 2);
    assert!(serde_json_like(&status.peers[0].name.to_string()));

    // C crashes: B notices by heartbeat timeout within 1.5 s, and A forgets C.
    net.alive[2] = false;
    net.run(Duration::from_secs(3));
    assert!(net.nodes[1].connection_to(name(2)).is_none());
    assert!(net.nodes[0].peers().get(name(2)).is_none(), "A collected C");
    assert!(net.nodes[1].peers().get(name(2)).is_none(), "B collected C");
}

fn serde_json_like(s: &str) -> bool {
    s.len() == 17 && s.split(':').count() == 6
}

#[test]
fn targets_dial_back_off_and_refuse_ourselves() {
    let mut net = Net::new(1);
    let m = &mut net.nodes[0];
    let t0 = net.now;
    m.add_target(addr(5));
    m.handle_timeout(t0);
    assert_eq!(m.poll_event(), Some(Event::Dial(addr(5))));
    m.handle_dial_started(t0, addr(5));
    m.handle_dial_failed(t0, addr(5), "connection refused");
    let mut waits = Vec::new();
    let mut now = t0;
    for _ in 0..6 {
        let Some(TargetState::Retrying { next_attempt, .. }) =
            m.targets().get(addr(5)).map(|t| t.state.clone())
        else {
            panic!("retrying")
        };
        waits.push(next_attempt - now);
        now = next_attempt;
        m.handle_timeout(now);
        assert_eq!(m.poll_event(), Some(Event::Dial(addr(5))));
        m.handle_dial_failed(now, addr(5), "connection refused");
    }
    // Jittered exponential growth: the last wait is well above the first.
    assert!(waits[5] > waits[0] * 2, "{waits:?}");
    assert!(waits.iter().all(|w| *w <= Duration::from_secs(90)));

    // Connecting to ourselves closes the connection and stops retrying.
    m.add_target(addr(0));
    m.handle_timeout(now);
    while m.poll_event().is_some() {}
    let uid = m.uid();
    m.handle_connection_up(now, ConnId(9), name(0), uid, "", addr(0), true);
    assert!(matches!(
        m.poll_event(),
        Some(Event::CloseConnection { .. })
    ));
    assert!(matches!(
        m.targets().get(addr(0)).unwrap().state,
        TargetState::Failed { .. }
    ));
}

#[test]
fn duplicate_connections_keep_the_one_the_lower_name_dialled() {
    let mut net = Net::new(2);
    net.connect(0, 1); // 0 dials 1: 0 is the lower name, so this one stays.
    net.connect(1, 0);
    let closed: Vec<Event> = std::iter::from_fn(|| net.nodes[0].poll_event()).collect();
    assert!(closed.contains(&Event::CloseConnection {
        conn: ConnId(2),
        reason: topology::CloseReason::Duplicate
    }));
    let closed: Vec<Event> = std::iter::from_fn(|| net.nodes[1].poll_event()).collect();
    assert!(closed.contains(&Event::CloseConnection {
        conn: ConnId(2),
        reason: topology::CloseReason::Duplicate
    }));
    assert_eq!(net.nodes[0].connection_to(name(1)).unwrap().id, ConnId(1));
    assert_eq!(net.nodes[1].connection_to(name(0)).unwrap().id, ConnId(1));
}

#[test]
fn a_burst_of_heartbeat_timeouts_makes_one_version_and_a_lone_crash_is_published_at_once() {
    // A star around node 0. Nodes 2, 3 and 4 crash together (a partition, as node 0 sees it):
    // their heartbeats stop at different phases, so node 0's connections to them time out up to
    // one heartbeat interval apart, but node 0 publishes one version for all of them.
    let mut net = Net::new(5);
    for i in 1..5 {
        net.connect(0, i);
    }
    net.run(Duration::from_secs(2));
    let v = net.nodes[0].version();
    for i in 2..5 {
        net.alive[i] = false;
    }
    net.run(Duration::from_secs(3));
    for i in 2..5 {
        assert!(net.nodes[0].connection_to(name(i)).is_none(), "node {i}");
    }
    assert_eq!(net.nodes[0].version(), v + 1, "one version for the burst");
    assert_eq!(
        net.nodes[0].peers().get(name(0)).unwrap().connections.len(),
        1
    );

    // Node 1 then crashes alone: no other connection is a suspect, so the removal is
    // published in the same step the timeout is noticed.
    let v = net.nodes[0].version();
    net.alive[1] = false;
    for _ in 0..300 {
        net.run(Duration::from_millis(10));
        if net.nodes[0].connection_to(name(1)).is_none() {
            break;
        }
    }
    assert!(net.nodes[0].connection_to(name(1)).is_none());
    assert_eq!(net.nodes[0].version(), v + 1, "published at once");
    assert!(
        net.nodes[0]
            .peers()
            .get(name(0))
            .unwrap()
            .connections
            .is_empty()
    );
}

#[test]
fn reconnections_after_a_cut_make_one_version() {
    // Node 0 is connected to 1, 2 and 3; 1-2 and 2-3 are connected too. The links 0-2 and
    // 0-3 are cut (a partition, as node 0 sees it) and come back one second apart, as after a
    // heal: node 0 still sees 2 and 3 alive (through 1), so it holds the first reconnection
    // until the second instead of publishing a version for each.
    let mut net = Net::new(4);
    for i in 1..4 {
        net.connect(0, i);
    }
    net.connect(1, 2);
    net.connect(2, 3);
    net.run(Duration::from_secs(2));
    net.disconnect(0, 2);
    net.disconnect(0, 3);
    net.run(Duration::from_secs(1));
    let own = |net: &Net| net.nodes[0].peers().get(name(0)).unwrap().connections.len();
    assert_eq!(own(&net), 1, "the cut is published");
    assert!(
        net.nodes[0].peers().get(name(3)).is_some(),
        "3 is alive via 1"
    );
    let v = net.nodes[0].version();
    net.connect(0, 2);
    net.run(Duration::from_secs(1));
    assert_eq!(net.nodes[0].version(), v, "held while 3 is away");
    net.connect(0, 3);
    net.run(Duration::from_secs(1));
    assert_eq!(net.nodes[0].version(), v + 1, "one version for both");
    assert_eq!(own(&net), 3);

    // A former peer that does not come back holds an addition for at most 3 s
    // (`own_update_interval` × 10).
    net.disconnect(0, 2);
    net.disconnect(0, 3);
    net.run(Duration::from_secs(1));
    let v = net.nodes[0].version();
    net.connect(0, 2);
    net.run(Duration::from_millis(2_900));
    assert_eq!(net.nodes[0].version(), v);
    net.run(Duration::from_millis(200));
    assert_eq!(net.nodes[0].version(), v + 1);
    assert_eq!(own(&net), 2);
}

#[test]
fn a_collected_peer_is_not_brought_back_by_a_stale_copy_until_its_tombstone_expires() {
    let mut net = Net::settled_line();
    let last = net.nodes[0].peers().get(name(2)).cloned().unwrap();
    let mut stale = Vec::new();
    topology::wire::encode_update([&*last].into_iter(), &mut stale);
    let ab = net.links.iter().find(|l| (l.1, l.2) == (0, 1)).unwrap().0;

    net.alive[2] = false;
    net.run(Duration::from_secs(3));
    assert!(net.nodes[0].peers().get(name(2)).is_none(), "A collected C");
    // A slower neighbour still has C's last record: refused while the tombstone lasts.
    net.nodes[0].handle_control(net.now, ab, &stale).unwrap();
    assert!(
        net.nodes[0].peers().get(name(2)).is_none(),
        "stale copy refused"
    );
    net.run(Duration::from_secs(5));
    net.nodes[0].handle_control(net.now, ab, &stale).unwrap();
    assert!(net.nodes[0].peers().get(name(2)).is_none(), "still refused");
    // Tombstones last 10 s, and are pruned every 1.25 s: after that the copy is news again.
    net.run(Duration::from_secs(8));
    net.nodes[0].handle_control(net.now, ab, &stale).unwrap();
    assert!(
        net.nodes[0].peers().get(name(2)).is_some(),
        "accepted once the tombstone expired"
    );
}

#[test]
fn a_split_keeps_the_cut_off_side_and_heals_without_a_full_exchange() {
    // Pairs 0–1 and 2–3, bridged by 1–2 (dialled by 1, one of its targets). The bridge is
    // cut and 1's redials are refused: 0 and 1 can no longer reach 2 and 3, which still list
    // each other (a split, not a crash).
    let mut net = Net::new(4);
    net.refuse_dials = true;
    net.connect(0, 1);
    net.connect(2, 3);
    net.nodes[1].add_target(addr(2));
    net.connect(1, 2);
    net.run(Duration::from_secs(2));
    net.disconnect(1, 2);
    net.peer_events.clear();
    net.run(Duration::from_secs(20));
    // Each side reports the other cut off once per peer (to IPAM, in the router), and removes
    // nothing.
    assert_eq!(net.peer_events.len(), 8, "{:?}", net.peer_events);
    for (i, j) in [
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 0),
        (2, 1),
        (3, 0),
        (3, 1),
    ] {
        let cut = (i, Event::PeerCutOff(name(j)));
        assert!(net.peer_events.contains(&cut), "{cut:?}");
    }
    for i in 0..2 {
        let m = &mut net.nodes[i];
        m.recalculate_routes();
        for j in 2..4 {
            assert!(m.peers().get(name(j)).is_some(), "node {i} keeps {j}");
            assert_eq!(m.unicast_next_hop(name(j)), None, "node {i}: {j} cut off");
        }
    }
    // Node 1's redials have backed off well beyond the quarter second a heal allows.
    let next = |net: &Net| match net.nodes[1].targets().get(addr(2)).map(|t| t.state.clone()) {
        Some(TargetState::Retrying { next_attempt, .. }) => next_attempt,
        other => panic!("retrying: {other:?}"),
    };
    assert!(next(&net) > net.now + Duration::from_millis(1_500));

    // The split heals through a new bridge 0–3: neither end sends a full exchange (the
    // bucket digest) to a peer cut off from it.
    let digests = |net: &Net, i: usize| net.nodes[i].stats().sent_bucket_digest_bytes;
    let (d0, d3) = (digests(&net, 0), digests(&net, 3));
    let healed = net.now;
    net.peer_events.clear();
    net.connect(0, 3);
    net.run(Duration::from_millis(100));
    assert_eq!((digests(&net, 0), digests(&net, 3)), (d0, d3));
    // A second connection across: still no full exchange, and nothing reported twice.
    let d2 = digests(&net, 2);
    net.connect(0, 2);
    net.run(Duration::from_millis(100));
    assert_eq!((digests(&net, 0), digests(&net, 2)), (d0, d2));
    // Node 1 hears 2's and 3's new versions through 0 and retries its target at once.
    net.run(Duration::from_secs(1));
    let redial = net
        .dials
        .iter()
        .find(|d| d.0 > healed && d.1 == 1 && d.2 == addr(2))
        .map(|d| d.0);
    assert!(
        redial.is_some_and(|t| t < healed + Duration::from_secs(1)),
        "redialled at {:?} after the heal",
        redial.map(|t| t - healed)
    );
    // And everyone knows everyone at the latest version, with routes across the new bridge.
    net.run(Duration::from_secs(3));
    for i in 0..4 {
        for j in 0..4 {
            let key = net.nodes[i].peers().key(name(j)).map(|k| k.version);
            assert_eq!(key, Some(net.nodes[j].version()), "node {i} knows {j}");
        }
    }
    net.nodes[1].recalculate_routes();
    assert_eq!(net.nodes[1].unicast_next_hop(name(2)), Some(name(0)));
    for i in 0..2 {
        for j in 2..4 {
            let back = (i, Event::PeerBack(name(j)));
            let times = net.peer_events.iter().filter(|e| **e == back).count();
            assert_eq!(times, 1, "{i} reports {j} back once");
        }
    }

    // Cut off again for good: kept for `cut_off_ttl` (60 s), then collected.
    net.disconnect(0, 3);
    net.disconnect(0, 2);
    net.run(Duration::from_secs(50));
    assert!(net.nodes[0].peers().get(name(3)).is_some(), "kept for 50 s");
    net.run(Duration::from_secs(15));
    for i in 0..2 {
        for j in 2..4 {
            assert!(
                net.nodes[i].peers().get(name(j)).is_none(),
                "{i} collected {j}"
            );
            let removed = (i, Event::PeerRemoved(name(j)));
            assert!(
                net.peer_events.contains(&removed),
                "{i} reports {j} removed"
            );
        }
    }
}

/// A peer that crashes and comes back (same name, new uid) is taken back at once when its new
/// incarnation starts at a higher version (the router starts at its clock in milliseconds);
/// starting again at version 1 with a lower uid, it is held off by the tombstone of its last
/// record until the tombstone expires.
#[test]
fn a_restarted_peer_is_taken_back_at_once_when_it_starts_at_a_higher_version() {
    let back_after = |initial_version: u64| -> Duration {
        let mut net = Net::new(2);
        net.connect(0, 1);
        net.run(Duration::from_secs(2));
        let (old_uid, old_version) = (net.nodes[1].uid(), net.nodes[1].version());
        net.alive[1] = false;
        net.disconnect(0, 1);
        net.run(Duration::from_secs(1));
        assert!(net.nodes[0].peers().get(name(1)).is_none(), "collected");
        // The new incarnation: a seed whose uid is below the old one, so only the version
        // can outrank the tombstone.
        let mut config = Config::new(name(1), "n1");
        config.initial_version = initial_version;
        let reborn = (100..)
            .map(|seed| Mesh::new(config.clone(), net.now, seed))
            .find(|m| m.uid() < old_uid)
            .unwrap();
        assert!(reborn.version() == initial_version.max(1) && old_version > 1);
        net.nodes[1] = reborn;
        net.alive[1] = true;
        net.connect(0, 1);
        let start = net.now;
        while net.nodes[0].peers().get(name(1)).is_none() {
            assert!(
                net.now - start < Duration::from_secs(30),
                "never taken back"
            );
            net.run(Duration::from_millis(50));
        }
        net.now - start
    };
    assert!(back_after(1_000_000) <= Duration::from_millis(500));
    assert!(
        back_after(1) >= Duration::from_secs(5),
        "the tombstone holds it off"
    );
}
