//! The nftables interpreter of the policy tests ([`common::nft_eval`]) on hand-written rules,
//! and on the chain that holds the pods until the first sync.

#![allow(clippy::unwrap_used)] // test helpers

mod common;

use std::net::IpAddr;

use common::nft_eval::{CT_ESTABLISHED, CT_NEW, CT_RELATED, Packet, Table};
use ipnet::IpNet;
use topology::netfilter::policy::{FORWARD, hold};
use topology::netfilter::{
    Addr, BaseChain, Chain, ChainType, CmpOp, Expr, Hook, MetaKey, PayloadBase, Rule, Set, Verdict,
    match_addr, match_family, match_udp_dport,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn rule(name: &str, exprs: Vec<Expr>) -> Rule {
    Rule {
        name: name.to_owned(),
        exprs,
    }
}

fn new_tcp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet {
        saddr: ip(src),
        daddr: ip(dst),
        l4proto: 6,
        dport,
        ct_state: CT_NEW,
    }
}

/// `policy` (base): established accept; `ip saddr 10.0.0.1 jump out`. `out`: `ip daddr @peers
/// tcp dport 80-81 return`; `ip daddr 192.0.2.0/24 return`; `ip daddr != @peers udp dport 53
/// return`; counter drop.
fn hand_written() -> (Vec<Chain>, Vec<Set>) {
    let tcp_80_81 = vec![
        Expr::Meta(MetaKey::L4Proto),
        Expr::Cmp(CmpOp::Eq, vec![6]),
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
        },
        Expr::Cmp(CmpOp::Gte, 80_u16.to_be_bytes().to_vec()),
        Expr::Cmp(CmpOp::Lte, 81_u16.to_be_bytes().to_vec()),
    ];
    let daddr = |invert| {
        vec![
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 4,
            },
            Expr::Lookup {
                set: "peers".to_owned(),
                invert,
            },
        ]
    };
    let v4 = match_family(&net("10.0.0.0/8"));
    let out = Chain {
        name: "out".to_owned(),
        base: None,
        rules: vec![
            rule(
                "peers-tcp",
                [
                    v4.clone(),
                    daddr(false),
                    tcp_80_81,
                    vec![Expr::Verdict(Verdict::Return)],
                ]
                .concat(),
            ),
            rule(
                "block",
                [
                    v4.clone(),
                    match_addr(Addr::Destination, CmpOp::Eq, &net("192.0.2.0/24")),
                    vec![Expr::Verdict(Verdict::Return)],
                ]
                .concat(),
            ),
            rule(
                "dns-elsewhere",
                [
                    v4.clone(),
                    daddr(true),
                    match_udp_dport(53),
                    vec![Expr::Verdict(Verdict::Return)],
                ]
                .concat(),
            ),
            rule("drop", vec![Expr::Counter, Expr::Verdict(Verdict::Drop)]),
        ],
    };
    let established = rule(
        "established",
        vec![
            Expr::CtState,
            Expr::Mask((CT_ESTABLISHED | CT_RELATED).to_ne_bytes().to_vec()),
            Expr::Cmp(CmpOp::Neq, vec![0; 4]),
            Expr::Verdict(Verdict::Accept),
        ],
    );
    let jump = rule(
        "to-out",
        [
            v4,
            match_addr(Addr::Source, CmpOp::Eq, &net("10.0.0.1/32")),
            vec![Expr::Jump("out".to_owned())],
        ]
        .concat(),
    );
    let forward = Chain {
        name: FORWARD.to_owned(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: 0,
        }),
        rules: vec![established, jump],
    };
    let peers = Set::addresses("peers", false, [ip("10.0.0.2")].into());
    (vec![out, forward], vec![peers])
}

#[test]
fn the_interpreter_runs_hand_written_rules_as_the_kernel_would() {
    let (chains, sets) = hand_written();
    let table = Table::new(&chains, &sets);
    let run = |p: Packet| table.run(FORWARD, &p).unwrap();
    // A return comes back to the base chain, whose policy accepts.
    let r = run(new_tcp("10.0.0.1", "10.0.0.2", 80));
    assert!(r.accepted);
    assert_eq!(r.trace, ["policy/to-out", "out/peers-tcp"]);
    assert!(run(new_tcp("10.0.0.1", "10.0.0.2", 81)).accepted);
    // Range edges, another peer, another protocol: dropped by the chain's last rule.
    for p in [
        new_tcp("10.0.0.1", "10.0.0.2", 79),
        new_tcp("10.0.0.1", "10.0.0.2", 82),
        new_tcp("10.0.0.1", "10.0.0.3", 80),
        Packet {
            l4proto: 17,
            ..new_tcp("10.0.0.1", "10.0.0.2", 80)
        },
    ] {
        let r = run(p);
        assert!(!r.accepted, "{p:?}");
        assert_eq!(r.trace.last().map(String::as_str), Some("out/drop"));
    }
    // A masked prefix.
    assert!(run(new_tcp("10.0.0.1", "192.0.2.77", 9)).accepted);
    assert!(!run(new_tcp("10.0.0.1", "192.0.3.1", 9)).accepted);
    // An inverted lookup: UDP 53 anywhere but to the peers.
    let udp = |dst| Packet {
        l4proto: 17,
        dport: 53,
        ..new_tcp("10.0.0.1", dst, 0)
    };
    assert!(run(udp("10.0.0.9")).accepted);
    assert!(!run(udp("10.0.0.2")).accepted);
    // Replies pass before any jump; other sources and families never jump.
    let reply = Packet {
        ct_state: CT_ESTABLISHED,
        ..new_tcp("10.0.0.2", "10.0.0.1", 40000)
    };
    assert_eq!(run(reply).trace, ["policy/established"]);
    assert!(run(new_tcp("10.0.0.5", "10.0.0.3", 80)).accepted);
    let r = run(new_tcp("fd00::1", "fd00::2", 80));
    assert!(r.accepted && r.trace.is_empty());
}

#[test]
fn the_interpreter_fails_on_what_it_does_not_know() {
    let (chains, sets) = hand_written();
    let p = new_tcp("10.0.0.1", "10.0.0.2", 80);
    let with_rule = |exprs: Vec<Expr>| {
        let mut chains = chains.clone();
        chains[1].rules.insert(0, rule("odd", exprs));
        Table::new(&chains, &sets).run(FORWARD, &p)
    };
    let transport = |offset| Expr::Payload {
        base: PayloadBase::Transport,
        offset,
        len: 2,
    };
    let network = |offset| Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: 4,
    };
    for exprs in [
        vec![Expr::Masquerade],
        vec![
            network(16),
            Expr::Lookup {
                set: "gone".to_owned(),
                invert: false,
            },
        ],
        vec![Expr::Cmp(CmpOp::Eq, vec![1])],
        vec![
            Expr::Meta(MetaKey::NfProto),
            Expr::Lookup {
                set: "peers".to_owned(),
                invert: true,
            },
        ],
        vec![Expr::CtState, Expr::Cmp(CmpOp::Eq, vec![0; 8])],
        vec![transport(0)],
        vec![network(0)],
        vec![network(24)],
        vec![Expr::Jump("missing".to_owned())],
        vec![Expr::Jump(FORWARD.to_owned())],
    ] {
        assert!(with_rule(exprs.clone()).is_err(), "{exprs:?}");
    }
    // A family mismatch.
    let mixed = new_tcp("10.0.0.1", "fd00::2", 80);
    let table = Table::new(&chains, &sets);
    assert!(table.run(FORWARD, &mixed).is_err());
    // A regular chain is no hook.
    assert!(table.run("out", &p).is_err());
}

#[test]
fn the_hold_chain_drops_new_connections_of_the_pod_range_only() {
    let chains = [hold(net("10.32.0.0/12"))];
    let table = Table::new(&chains, &[]);
    let run = |p: Packet| table.run(FORWARD, &p).unwrap().accepted;
    assert!(!run(new_tcp("10.32.0.2", "203.0.113.1", 443)));
    assert!(!run(new_tcp("203.0.113.1", "10.47.255.254", 80)));
    assert!(!run(new_tcp("10.32.0.2", "10.33.0.2", 80)));
    // Outside the range, another family, replies: through.
    assert!(run(new_tcp("10.48.0.1", "203.0.113.1", 443)));
    assert!(run(new_tcp("fd00::1", "fd00::2", 80)));
    for ct_state in [CT_ESTABLISHED, CT_RELATED] {
        assert!(run(Packet {
            ct_state,
            ..new_tcp("10.32.0.2", "203.0.113.1", 443)
        }));
    }
}
