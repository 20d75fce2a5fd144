//! Who may open a control connection, decided from the source address before the handshake.
//!
//! With a mesh password, the Noise handshake itself proves membership, so every address is
//! let through to it. Without one, any node key completes the handshake; when the router knows
//! the cluster's Nodes (`--kube-peers`), only their addresses and the addresses the operator
//! named (`--peers`, the peers file, `weft connect`: direct targets) are admitted. Without
//! either, there is nothing to judge by and every address is admitted, as before.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::targets::Targets;

/// What the control port does with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on to the handshake.
    Admit,
    /// Close at once: not a Node of the cluster nor an address the operator named.
    NotANode,
}

/// Judges a connection from `source`. `password_set`: a mesh password guards the handshake;
/// `nodes`: every address of every Node, when Kubernetes discovery runs; `targets`: what the
/// router dials (its direct targets are the addresses the operator named).
pub fn judge(
    password_set: bool,
    nodes: Option<&BTreeSet<IpAddr>>,
    targets: &Targets,
    source: IpAddr,
) -> Verdict {
    let source = source.to_canonical();
    let Some(nodes) = nodes.filter(|_| !password_set) else {
        return Verdict::Admit;
    };
    let named = || {
        targets
            .iter()
            .any(|t| t.direct && t.addr.ip().to_canonical() == source)
    };
    if nodes.contains(&source) || named() {
        Verdict::Admit
    } else {
        Verdict::NotANode
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn targets(direct: &[&str], discovered: &[&str]) -> Targets {
        let mut t = Targets::default();
        for (list, is_direct) in [(direct, true), (discovered, false)] {
            for a in list {
                t.add(a.parse::<SocketAddr>().unwrap(), is_direct);
            }
        }
        t
    }

    fn nodes(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|a| ip(a)).collect()
    }

    #[test]
    fn without_discovery_or_with_a_password_everyone_reaches_the_handshake() {
        let t = targets(&[], &[]);
        let stranger = ip("198.51.100.7");
        assert_eq!(judge(false, None, &t, stranger), Verdict::Admit);
        let n = nodes(&["192.0.2.1"]);
        assert_eq!(judge(true, Some(&n), &t, stranger), Verdict::Admit);
    }

    #[test]
    fn discovery_without_a_password_admits_nodes_and_named_addresses_only() {
        let n = nodes(&["192.0.2.1", "2001:db8::1"]);
        let judge = |source: &str, t: &Targets| judge(false, Some(&n), t, ip(source));
        let t = targets(&["198.51.100.2:6783"], &["203.0.113.3:6783"]);
        assert_eq!(judge("192.0.2.1", &t), Verdict::Admit);
        assert_eq!(judge("2001:db8::1", &t), Verdict::Admit);
        // A dual-stack listener sees IPv4 sources as mapped addresses.
        assert_eq!(judge("::ffff:192.0.2.1", &t), Verdict::Admit);
        // --peers (direct), on any port.
        assert_eq!(judge("198.51.100.2", &t), Verdict::Admit);
        // A peer learned by gossip is not enough: gossip comes from anyone already admitted.
        assert_eq!(judge("203.0.113.3", &t), Verdict::NotANode);
        assert_eq!(judge("192.0.2.250", &t), Verdict::NotANode);
        // No Nodes listed yet: only named addresses.
        let none = nodes(&[]);
        assert_eq!(
            super::judge(false, Some(&none), &t, ip("192.0.2.1")),
            Verdict::NotANode
        );
    }

    proptest! {
        /// Admission without a password is exactly membership in nodes ∪ direct targets.
        #[test]
        fn admits_exactly_nodes_and_direct_targets(
            node_ips in proptest::collection::btree_set(any::<[u8; 4]>(), 0..6),
            direct in proptest::collection::vec(any::<[u8; 4]>(), 0..4),
            source in any::<[u8; 4]>(),
            password_set in any::<bool>(),
        ) {
            let mut t = Targets::default();
            for d in &direct {
                t.add(SocketAddr::new(IpAddr::from(*d), 6783), true);
            }
            let n: BTreeSet<IpAddr> = node_ips.iter().map(|b| IpAddr::from(*b)).collect();
            let member = node_ips.contains(&source) || direct.contains(&source);
            let want = if password_set || member { Verdict::Admit } else { Verdict::NotANode };
            prop_assert_eq!(judge(password_set, Some(&n), &t, IpAddr::from(source)), want);
        }
    }
}
