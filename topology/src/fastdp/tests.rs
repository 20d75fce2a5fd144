#![allow(clippy::unwrap_used)]
// An arbitrary base instant; the core never reads the clock itself.
#![allow(clippy::disallowed_methods)]

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;

fn name(i: u8) -> PeerName {
    PeerName::from_bytes([0x02, 0, 0, 0, 0, i])
}

fn ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))
}

const MAC: MacAddr = MacAddr::from_bytes([0x02, 0xaa, 0, 0, 0, 1]);

/// Runs probe rounds from `t` answering (or not) every probe; returns the time after.
fn rounds(core: &mut Fastdp, mut t: Instant, n: u32, answer: bool) -> Instant {
    let step = core.config().probe_interval;
    for _ in 0..n {
        core.handle_timeout(t);
        while let Some(p) = core.poll_probe() {
            if answer {
                core.handle_probe_answer(p.addr);
            }
        }
        t += step;
    }
    t
}

fn events(core: &mut Fastdp) -> Vec<Event> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn auto() -> Fastdp {
    Fastdp::new(Config::every_round(Mode::Auto, 6784))
}

#[test]
fn answered_probes_bring_a_peer_onto_fastdp_after_up_after() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    assert_eq!(core.path(name(2)), Some(Path::Sleeve(Reason::Probing)));
    // No bridge MAC yet: nothing to probe.
    let t = rounds(&mut core, t0, 5, true);
    assert_eq!(core.path(name(2)), Some(Path::Sleeve(Reason::Probing)));
    core.handle_bridge_mac(name(2), MAC);
    let t = rounds(&mut core, t, 2, true);
    assert!(events(&mut core).is_empty(), "two answers are not enough");
    rounds(&mut core, t, 1, true);
    assert_eq!(
        events(&mut core),
        [Event::Joined {
            peer: name(2),
            addr: ip(2)
        }]
    );
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    assert_eq!(
        core.fastdp_peers().into_iter().collect::<Vec<_>>(),
        [name(2)]
    );
}

#[test]
fn missed_probes_move_a_peer_to_the_sleeve_within_down_after_rounds_and_back() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    let t = rounds(&mut core, t0, 3, true);
    events(&mut core);
    // Round 1 sends an unanswered probe; rounds 2..4 count the misses.
    let t = rounds(&mut core, t, 3, false);
    assert!(events(&mut core).is_empty());
    let t = rounds(&mut core, t, 1, false);
    assert_eq!(
        events(&mut core),
        [Event::Left {
            peer: name(2),
            addr: ip(2),
            reason: Reason::NoAnswer { port: 6784 }
        }]
    );
    assert_eq!(
        core.path(name(2))
            .map(|p| matches!(p, Path::Sleeve(Reason::NoAnswer { .. }))),
        Some(true)
    );
    rounds(&mut core, t, 3, true);
    assert_eq!(
        events(&mut core),
        [Event::Joined {
            peer: name(2),
            addr: ip(2)
        }]
    );
    let v = &core.views()[0];
    assert_eq!(v.switches, 3);
    assert!(v.probes_sent > v.probes_answered);
}

#[test]
fn a_single_lost_probe_does_not_switch() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    let mut t = rounds(&mut core, t0, 3, true);
    events(&mut core);
    for _ in 0..10 {
        t = rounds(&mut core, t, 1, false);
        t = rounds(&mut core, t, 2, true);
    }
    assert!(events(&mut core).is_empty());
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
}

#[test]
fn a_trusted_subnet_peer_stays_on_fastdp_while_encryption_is_required() {
    let mut core = auto();
    let t0 = Instant::now();
    for n in [2, 3] {
        core.handle_peer_up(t0, name(n), ip(n), false);
        core.handle_bridge_mac(name(n), MAC);
    }
    let t = rounds(&mut core, t0, 3, true);
    core.set_encryption_exempt(name(3), true);
    core.set_encryption_required(true);
    assert_eq!(core.path(name(2)), Some(Path::Sleeve(Reason::Encryption)));
    assert_eq!(core.path(name(3)), Some(Path::Fastdp));
    core.set_encryption_exempt(name(3), false);
    assert_eq!(core.path(name(3)), Some(Path::Sleeve(Reason::Encryption)));
    core.set_encryption_exempt(name(2), true);
    rounds(&mut core, t, 1, true);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
}

#[test]
fn encryption_forces_the_sleeve_at_run_time_and_releases_it() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    let t = rounds(&mut core, t0, 3, true);
    events(&mut core);
    core.set_encryption_required(true);
    assert_eq!(core.path(name(2)), Some(Path::Sleeve(Reason::Encryption)));
    assert_eq!(events(&mut core).len(), 1);
    let t = rounds(&mut core, t, 5, true);
    assert!(
        events(&mut core).is_empty(),
        "healthy but encrypted stays on the sleeve"
    );
    core.set_encryption_required(false);
    rounds(&mut core, t, 1, true);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    assert!(
        Reason::Encryption.to_string().contains("encrypted sleeve"),
        "status says so in words"
    );
}

#[test]
fn modes_sleeve_and_fastdp_ignore_the_probe() {
    let t0 = Instant::now();
    let mut core = Fastdp::new(Config::new(Mode::Sleeve, 6784));
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    rounds(&mut core, t0, 5, true);
    assert_eq!(core.path(name(2)), Some(Path::Sleeve(Reason::ModeSleeve)));
    let mut core = Fastdp::new(Config::new(Mode::Fastdp, 6784));
    core.handle_peer_up(t0, name(2), ip(2), false);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    rounds(&mut core, t0, 10, false);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
}

#[test]
fn a_fastdp_peer_whose_router_is_down_stays_while_its_kernel_answers() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    let t = rounds(&mut core, t0, 3, true);
    events(&mut core);
    core.handle_peer_down(name(2));
    let t = rounds(&mut core, t, 20, true);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    assert!(events(&mut core).is_empty());
    // The kernel stops answering too: the peer leaves fastdp and is forgotten.
    rounds(&mut core, t, 5, false);
    assert_eq!(events(&mut core).len(), 1);
    assert_eq!(core.path(name(2)), None);
}

#[test]
fn a_sleeve_peer_is_forgotten_when_its_connection_closes() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_peer_down(name(2));
    assert_eq!(core.path(name(2)), None);
    assert_eq!(core.poll_timeout().map(|(t, _)| t), Some(t0));
    core.handle_timeout(t0);
    assert_eq!(core.poll_timeout(), None, "no peers, no probes");
}

#[test]
fn a_restarted_router_keeps_an_inherited_peer_on_fastdp() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), true);
    assert_eq!(
        events(&mut core),
        [Event::Joined {
            peer: name(2),
            addr: ip(2)
        }]
    );
    core.handle_bridge_mac(name(2), MAC);
    rounds(&mut core, t0, 10, true);
    assert!(events(&mut core).is_empty());
}

#[test]
fn a_peer_at_a_new_address_leaves_and_is_probed_afresh() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), true);
    events(&mut core);
    core.handle_peer_up(t0, name(2), ip(9), false);
    assert_eq!(
        events(&mut core),
        [Event::Left {
            peer: name(2),
            addr: ip(2),
            reason: Reason::Probing
        }]
    );
}

#[test]
fn answers_from_unknown_addresses_and_duplicates_are_ignored() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    core.handle_timeout(t0);
    core.poll_probe();
    for _ in 0..5 {
        core.handle_probe_answer(ip(2));
        core.handle_probe_answer(ip(7));
    }
    assert_eq!(core.views()[0].probes_answered, 1);
    assert_eq!(core.path(name(2)), Some(Path::Sleeve(Reason::Probing)));
}

fn sample() -> Announcement {
    Announcement {
        origin: name(1),
        seq: 7,
        bridge_mac: MAC,
        fastdp_peers: [name(2), name(3)].into_iter().collect(),
        macs: [[2, 0, 0, 0, 0, 5], [2, 0, 0, 0, 0, 9]]
            .into_iter()
            .map(MacAddr::from_bytes)
            .collect(),
    }
}

#[test]
fn announcement_layout_is_as_documented() {
    let bytes = sample().encode();
    assert_eq!(bytes.len(), 1 + 6 + 8 + 6 + 2 + 12 + 2 + 12);
    assert_eq!(bytes[0], 1);
    assert_eq!(&bytes[1..7], &name(1).bytes());
    assert_eq!(&bytes[7..15], &7u64.to_be_bytes());
    assert_eq!(&bytes[15..21], &MAC.bytes());
    assert_eq!(&bytes[21..23], &[0, 2]);
    assert_eq!(Announcement::decode(&bytes), Ok(sample()));
}

#[test]
fn announcement_decoder_is_strict() {
    let good = sample().encode();
    let mut v = good.clone();
    v[0] = 2;
    assert_eq!(Announcement::decode(&v), Err(AnnounceError::BadVersion));
    let mut v = good.clone();
    v.push(0);
    assert_eq!(Announcement::decode(&v), Err(AnnounceError::TrailingBytes));
    assert_eq!(
        Announcement::decode(&good[..good.len() - 1]),
        Err(AnnounceError::Truncated)
    );
    // Swap the two peers: unsorted.
    let mut v = good.clone();
    let (a, b) = (name(2).bytes(), name(3).bytes());
    v[23..29].copy_from_slice(&b);
    v[29..35].copy_from_slice(&a);
    assert_eq!(Announcement::decode(&v), Err(AnnounceError::Unsorted));
    // A multicast pod MAC.
    let mut v = good.clone();
    let n = v.len();
    v[n - 6] = 0x01;
    assert!(Announcement::decode(&v).is_err());
    // The origin listing itself.
    let mut a = sample();
    a.fastdp_peers.insert(name(1));
    assert_eq!(
        Announcement::decode(&a.encode()),
        Err(AnnounceError::SelfListed)
    );
    // A count above the bound.
    let mut v = good[..21].to_vec();
    v.extend_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(Announcement::decode(&v), Err(AnnounceError::TooLong));
}

#[test]
fn newer_announcements_replace_older_ones() {
    let mut table = Announcements::new();
    assert!(table.merge(sample()));
    assert!(!table.merge(sample()), "the same one again is not news");
    let mut older = sample();
    older.seq = 3;
    assert!(!table.merge(older));
    let mut newer = sample();
    newer.seq = 8;
    newer.macs.clear();
    assert!(table.merge(newer));
    assert!(table.get(name(1)).unwrap().macs.is_empty());
    table.remove(name(1));
    assert!(table.get(name(1)).is_none());
}

fn arb_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(|mut m| {
        m[0] &= 0xfe;
        m[5] |= 1;
        MacAddr::from_bytes(m)
    })
}

proptest! {
    #[test]
    fn announcements_round_trip(
        origin in any::<[u8; 6]>(),
        seq in any::<u64>(),
        bridge in arb_mac(),
        peers in proptest::collection::btree_set(any::<[u8; 6]>(), 0..20),
        macs in proptest::collection::btree_set(arb_mac(), 0..40),
    ) {
        let origin = PeerName::from_bytes(origin);
        let a = Announcement {
            origin,
            seq,
            bridge_mac: bridge,
            fastdp_peers: peers.into_iter().map(PeerName::from_bytes).filter(|p| *p != origin).collect(),
            macs,
        };
        prop_assert_eq!(Announcement::decode(&a.encode()), Ok(a));
    }

    #[test]
    fn announcement_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(a) = Announcement::decode(&bytes) {
            // Whatever decodes re-encodes to the same bytes (one canonical form).
            prop_assert_eq!(a.encode(), bytes);
        }
    }

    #[test]
    fn probe_outcomes_decide_the_path(answers in proptest::collection::vec(any::<bool>(), 1..60)) {
        let mut core = auto();
        let t0 = Instant::now();
        core.handle_peer_up(t0, name(2), ip(2), false);
        core.handle_bridge_mac(name(2), MAC);
        let mut t = t0;
        let mut run_ok = 0u32;
        let mut run_miss = 0u32;
        let mut healthy = false;
        let mut pending = false;
        for a in answers {
            // Model: the probe sent in the previous round is judged at this round.
            if pending {
                run_miss += 1;
                run_ok = 0;
                if run_miss >= 3 { healthy = false; }
            }
            core.handle_timeout(t);
            let p = core.poll_probe().unwrap();
            pending = true;
            if a {
                core.handle_probe_answer(p.addr);
                pending = false;
                run_ok += 1;
                run_miss = 0;
                if run_ok >= 3 { healthy = true; }
            }
            t += core.config().probe_interval;
            prop_assert_eq!(core.path(name(2)) == Some(Path::Fastdp), healthy);
        }
    }
}

#[test]
fn an_answer_counts_for_every_peer_at_that_address() {
    let mut core = auto();
    let t0 = Instant::now();
    for p in [2, 3] {
        core.handle_peer_up(t0, name(p), ip(2), false);
        core.handle_bridge_mac(name(p), MAC);
    }
    rounds(&mut core, t0, 3, true);
    assert_eq!(core.fastdp_peers().len(), 2);
}

#[test]
fn a_connection_is_sealed_only_once_neither_end_sends_over_fastdp() {
    let mut core = auto();
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    let t = rounds(&mut core, t0, 3, true);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    // Encryption off, both ends on fastdp: plain and settled.
    assert_eq!(
        core.path_encryption(name(2), false, true),
        PathEncryption::Fastdp
    );
    // Only this end on fastdp so far (the peer still uses the sleeve): the sleeve link tells.
    assert_eq!(
        core.path_encryption(name(2), false, false),
        PathEncryption::Sleeve
    );
    // Sealing required but this router's core has not moved yet.
    assert_eq!(
        core.path_encryption(name(2), true, true),
        PathEncryption::LeavingFastdp {
            ours: true,
            theirs: true
        }
    );
    core.set_encryption_required(true);
    // Moved here; the peer still announces fastdp towards us: still changing over.
    assert_eq!(
        core.path_encryption(name(2), true, true),
        PathEncryption::LeavingFastdp {
            ours: false,
            theirs: true
        }
    );
    assert_eq!(
        core.path_encryption(name(2), true, false),
        PathEncryption::SleeveForEncryption
    );
    assert!(
        PathEncryption::SleeveForEncryption
            .note()
            .unwrap()
            .contains("no ESP")
    );
    // Back off: the peer returns to fastdp only once it learned the change.
    core.set_encryption_required(false);
    rounds(&mut core, t, 1, true);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    assert_eq!(
        core.path_encryption(name(2), false, false),
        PathEncryption::Sleeve
    );
    assert_eq!(
        core.path_encryption(name(2), false, true),
        PathEncryption::Fastdp
    );
    // The sleeve-only mode: fastdp plays no part.
    let mut sleeve = Fastdp::new(Config::new(Mode::Sleeve, 6784));
    sleeve.handle_peer_up(t0, name(2), ip(2), false);
    assert_eq!(
        sleeve.path_encryption(name(2), true, false),
        PathEncryption::Sleeve
    );
}

/// A default-cadence core with one healthy, settled peer at `t0`; returns the time after.
fn settled(core: &mut Fastdp, t0: Instant) -> Instant {
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    let t = rounds(core, t0, 4, true);
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    events(core);
    t
}

/// Runs the core's own timer from `t` to `end`, answering probes while `answer(now)`;
/// returns the probes sent and the first time the peer left fastdp.
fn run_timer(
    core: &mut Fastdp,
    t: Instant,
    end: Instant,
    answer: impl Fn(Instant) -> bool,
) -> (u32, Option<Instant>) {
    let (mut sent, mut left) = (0, None);
    let mut now = t;
    while now < end {
        let (due, _) = core.poll_timeout().unwrap();
        now = due.max(now);
        core.handle_timeout(now);
        while let Some(p) = core.poll_probe() {
            sent += 1;
            if answer(now) {
                core.handle_probe_answer(p.addr);
            }
        }
        if left.is_none() && events(core).iter().any(|e| matches!(e, Event::Left { .. })) {
            left = Some(now);
        }
    }
    (sent, left)
}

#[test]
fn a_settled_idle_peer_is_probed_every_idle_interval_and_the_core_sleeps_between() {
    let mut core = Fastdp::new(Config::new(Mode::Auto, 6784));
    let t0 = Instant::now();
    let t = settled(&mut core, t0);
    // 20 s idle: one probe per 2 s, and the timer wakes about twice per probe (send, judge).
    let mut wakeups = 0;
    let mut now = t;
    let mut sent = 0;
    while now < t + Duration::from_secs(20) {
        now = core.poll_timeout().unwrap().0.max(now);
        core.handle_timeout(now);
        wakeups += 1;
        while let Some(p) = core.poll_probe() {
            sent += 1;
            core.handle_probe_answer(p.addr);
        }
    }
    assert!((9..=11).contains(&sent), "{sent} probes in 20 s");
    assert!(
        wakeups <= 2 * sent + 2,
        "{wakeups} wake-ups for {sent} probes"
    );
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
}

#[test]
fn an_idle_peer_whose_path_breaks_leaves_within_the_idle_interval_and_three_rounds() {
    let mut core = Fastdp::new(Config::new(Mode::Auto, 6784));
    let t0 = Instant::now();
    let t = settled(&mut core, t0);
    let broken = t + Duration::from_millis(50);
    let (_, left) = run_timer(&mut core, t, t + Duration::from_secs(10), |now| {
        now < broken
    });
    let took = left.expect("the peer never left fastdp") - broken;
    let bound = core.config().idle_probe_interval + core.config().probe_interval * 3;
    assert!(
        took <= bound,
        "left {took:?} after the break (bound {bound:?})"
    );
    assert!(took <= Duration::from_secs(3), "{took:?}");
}

#[test]
fn traffic_keeps_a_peer_on_every_round_so_a_break_is_found_within_four_rounds() {
    let mut core = Fastdp::new(Config::new(Mode::Auto, 6784));
    let t0 = Instant::now();
    let t = settled(&mut core, t0);
    // Traffic seen now and every 500 ms (the shell's sampling), the path breaking 1 s in.
    let broken = t + Duration::from_millis(1_030);
    let mut now = t;
    let mut left = None;
    let mut next_sample = t;
    let mut sent = 0;
    while now < t + Duration::from_secs(3) && left.is_none() {
        if now >= next_sample {
            core.handle_traffic(now, ip(2));
            next_sample += Duration::from_millis(500);
        }
        now = core.poll_timeout().unwrap().0.max(now).min(next_sample);
        core.handle_timeout(now);
        while let Some(p) = core.poll_probe() {
            sent += 1;
            if now < broken {
                core.handle_probe_answer(p.addr);
            }
        }
        if events(&mut core)
            .iter()
            .any(|e| matches!(e, Event::Left { .. }))
        {
            left = Some(now);
        }
    }
    let took = left.expect("the peer never left fastdp") - broken;
    assert!(took <= core.config().probe_interval * 4, "{took:?}");
    assert!(sent >= 10, "busy: probed every round ({sent} probes)");
    // Traffic at an address no peer has is ignored.
    core.handle_traffic(now, ip(9));
}

#[test]
fn a_failed_peer_settles_to_the_idle_cadence_and_comes_back_within_three_seconds() {
    let mut core = Fastdp::new(Config::new(Mode::Auto, 6784));
    let t0 = Instant::now();
    core.handle_peer_up(t0, name(2), ip(2), false);
    core.handle_bridge_mac(name(2), MAC);
    // Never answers for 20 s: it fails, then is probed at the idle cadence only.
    let (sent, _) = run_timer(&mut core, t0, t0 + Duration::from_secs(20), |_| false);
    assert!(
        matches!(
            core.path(name(2)),
            Some(Path::Sleeve(Reason::NoAnswer { .. }))
        ),
        "{:?}",
        core.path(name(2))
    );
    assert!(sent <= 4 + 10 + 1, "{sent} probes to a failed peer in 20 s");
    // The path heals: on fastdp again within an idle interval and up_after rounds.
    let healed = t0 + Duration::from_secs(20);
    let mut now = healed;
    while core.path(name(2)) != Some(Path::Fastdp) {
        now = core.poll_timeout().unwrap().0.max(now);
        assert!(now - healed <= Duration::from_secs(3), "not back after 3 s");
        core.handle_timeout(now);
        while let Some(p) = core.poll_probe() {
            core.handle_probe_answer(p.addr);
        }
    }
}

#[test]
fn a_round_brought_forward_does_not_count_a_fresh_probe_as_missed() {
    let mut core = Fastdp::new(Config::new(Mode::Auto, 6784));
    let t0 = Instant::now();
    let t = settled(&mut core, t0);
    // A busy peer probed at t; a second peer connects 10 ms later, bringing a round forward
    // before the first probe's answer arrives.
    core.handle_traffic(t, ip(2));
    core.handle_timeout(core.poll_timeout().unwrap().0.max(t));
    let p = core.poll_probe().unwrap();
    let at = core.poll_timeout().unwrap().0;
    core.handle_peer_up(t + Duration::from_millis(10), name(3), ip(3), false);
    core.handle_timeout(t + Duration::from_millis(10));
    core.handle_probe_answer(p.addr);
    for _ in 0..5 {
        let now = core.poll_timeout().unwrap().0.max(at);
        core.handle_timeout(now);
        while let Some(p) = core.poll_probe() {
            core.handle_probe_answer(p.addr);
        }
    }
    assert_eq!(core.path(name(2)), Some(Path::Fastdp));
    assert_eq!(core.views()[0].probes_sent, core.views()[0].probes_answered);
}
