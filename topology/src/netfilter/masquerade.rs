//! Egress masquerade: pods reach the outside world, and other nodes' addresses, with their
//! node's address, as Weave, Flannel (`ipMasq`) and Calico (`natOutgoing`) do.
//!
//! Rules, in chain `postrouting` (nat, hook postrouting, priority srcnat):
//! - traffic from the pod range to a `--no-masq-cidrs` destination leaves untranslated
//!   (`return`, one rule per CIDR, before the masquerade);
//! - traffic from the pod range to anywhere outside the pod range is masqueraded to the
//!   outgoing interface's address;
//! - pod ↔ pod (inside the range) and node → pod are never translated.
//!
//! With `--masquerade off` the chain exists but is empty, so turning it back on is a rule
//! change, not a new hook.

use ipnet::IpNet;

use super::{
    Addr, BaseChain, Chain, ChainType, CmpOp, Expr, Hook, Rule, Verdict, match_addr, match_family,
};

/// The NAT chain's name.
pub const CHAIN: &str = "postrouting";
/// `srcnat`: where iptables' nat POSTROUTING runs; kube-proxy's KUBE-POSTROUTING runs there too.
pub const PRIORITY_SRCNAT: i32 = 100;

/// What the masquerade depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqueradeSettings {
    /// The pod range (`--ipalloc-range`).
    pub pod_range: IpNet,
    /// `--masquerade on|off`.
    pub enabled: bool,
    /// `--no-masq-cidrs`: destinations reached without translation.
    pub no_masq_cidrs: Vec<IpNet>,
}

/// The NAT chain for these settings.
pub fn chain(settings: &MasqueradeSettings) -> Chain {
    let mut rules = Vec::new();
    if settings.enabled {
        let range = settings.pod_range.trunc();
        let from_pods = || {
            let mut e = match_family(&range);
            e.extend(match_addr(Addr::Source, CmpOp::Eq, &range));
            e
        };
        for cidr in &settings.no_masq_cidrs {
            // A CIDR of the other family can never match this range's packets.
            if cidr.network().is_ipv4() != range.network().is_ipv4() {
                continue;
            }
            let mut exprs = from_pods();
            exprs.extend(match_addr(Addr::Destination, CmpOp::Eq, &cidr.trunc()));
            exprs.push(Expr::Verdict(Verdict::Return));
            rules.push(Rule {
                name: format!("no-masquerade {}", cidr.trunc()),
                exprs,
            });
        }
        let mut exprs = from_pods();
        exprs.extend(match_addr(Addr::Destination, CmpOp::Neq, &range));
        exprs.push(Expr::Counter);
        exprs.push(Expr::Masquerade);
        rules.push(Rule {
            name: "masquerade".to_owned(),
            exprs,
        });
    }
    Chain {
        name: CHAIN.to_owned(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: PRIORITY_SRCNAT,
        }),
        rules,
    }
}
