//! Only peers reach the tunnels: the kernel's VXLAN device accepts frames from any sender, and
//! the sleeve port is open to anyone, so datagrams to either port from an address that is not
//! a mesh peer are dropped (and counted) before they reach a socket or a device.
//!
//! Rules, in chain `tunnels` (filter, hook input, priority −150, before anything else of the
//! node's sees the packet):
//! - per family and per port (the sleeve's UDP `--port`, the VXLAN port): UDP to the port from
//!   a source address not in the family's peer set → count, drop;
//! - everything else passes (policy accept): the chain judges only the tunnel ports.
//!
//! The sets `peers4` and `peers6` hold the underlay addresses of the peers the router knows;
//! the router keeps them equal to that list as peers come and go. A spoofed peer source
//! address on the underlay is not stopped by this (docs/OPERATIONS.md says so).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{BaseChain, Chain, ChainType, Expr, Hook, Rule, Set, Verdict, match_saddr_not_in};

/// The filter chain's name.
pub const CHAIN: &str = "tunnels";
/// The IPv4 peer set's name.
pub const PEERS4: &str = "peers4";
/// The IPv6 peer set's name.
pub const PEERS6: &str = "peers6";
/// The mangle slot: after conntrack (−200), ahead of any filter chain (0).
pub const PRIORITY: i32 = -150;

/// The sets for these peer addresses.
pub fn sets(peers: &BTreeSet<IpAddr>) -> Vec<Set> {
    [false, true]
        .into_iter()
        .map(|v6| {
            let elements = peers.iter().filter(|a| a.is_ipv6() == v6).copied();
            Set::addresses(if v6 { PEERS6 } else { PEERS4 }, v6, elements.collect())
        })
        .collect()
}

/// The filter chain for the sleeve port and the VXLAN port.
pub fn chain(sleeve_port: u16, vxlan_port: u16) -> Chain {
    let mut rules = Vec::new();
    for v6 in [false, true] {
        let family = if v6 {
            super::NFPROTO_IPV6
        } else {
            super::NFPROTO_IPV4
        };
        for (what, port) in [("sleeve", sleeve_port), ("vxlan", vxlan_port)] {
            let mut exprs = vec![
                Expr::Meta(super::MetaKey::NfProto),
                Expr::Cmp(super::CmpOp::Eq, vec![family]),
            ];
            exprs.extend(super::match_udp_dport(port));
            exprs.extend(match_saddr_not_in(if v6 { PEERS6 } else { PEERS4 }, v6));
            exprs.push(Expr::Counter);
            exprs.push(Expr::Verdict(Verdict::Drop));
            rules.push(Rule {
                name: format!("non-peer-{what}-{}", if v6 { "ip6" } else { "ip" }),
                exprs,
            });
        }
    }
    Chain {
        name: CHAIN.to_owned(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority: PRIORITY,
        }),
        rules,
    }
}
