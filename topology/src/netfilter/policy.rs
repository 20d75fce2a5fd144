//! NetworkPolicy in nftables: one node's compiled [`RuleSet`] as chains and sets of weft's
//! table.
//!
//! # Layout
//!
//! - Base chain [`FORWARD`] (filter, hook forward, priority 0; bridged pod traffic reaches it
//!   through `br_netfilter`, routed traffic directly):
//!   1. `ct state established,related accept`: replies and the rest of an allowed
//!      connection pass, so only connection initiations are judged;
//!   2. `ip saddr vmap @pol-out-4`: a verdict map from each local pod isolated for egress to
//!      its chain `pol-out-<pod>` (one hash lookup, whatever the number of pods);
//!   3. `ip daddr vmap @pol-in-4`, the same for ingress (and `-6` maps for IPv6);
//!   4. policy accept.
//! - Per isolated pod and direction, a regular chain: `return` (allowed, go on) for the pod's
//!   own addresses, for the node's addresses (set `pol-node-4`/`-6`), and for each [`Allow`]
//!   (the other end in the peer's set, then the port); then count and drop. An egress chain
//!   returns into [`FORWARD`], which goes on to the destination's ingress chain, so a
//!   connection passes only when both ends' policies allow it.
//! - Per [`SetName`] and address family, a hash set `pol-<hash>-4`/`-6` of the set's host
//!   addresses (pods: O(1) membership whatever their number); the set's wider prefixes (an
//!   `ipBlock` minus its `except`s, which change only with the policy) are one rule each. A
//!   rule with a peer always has its lookup rule, even while the set is empty, so pods
//!   coming and going change set elements, never chains.
//!
//! Names are hashes of the pod's or set's identity, stable across restarts: a router that
//! starts again finds its rules in place and changes nothing.
//!
//! # Until the first sync
//!
//! [`Want::Pending`] (policy on, the cluster view not yet listed): rules a previous router
//! left are kept as they are (a restart opens no window); when there are none (the node
//! booted), the [`hold`] chain drops new forwarded connections from and to the pod range, so
//! a pod started before the first sync is not forwarded until its rules are in place. Traffic
//! between the node and its pods passes (it is not forwarded).
//!
//! Pure: builds the wanted state; [`super::reconcile`] plans the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::reconcile::Present;
use super::{
    Addr, BaseChain, Chain, ChainType, CmpOp, Expr, Hook, MetaKey, PayloadBase, Rule, Set, Verdict,
    match_addr,
};
use crate::cluster::Protocol;
use crate::policy::{Allow, Direction, PodKey, PortMatch, RuleSet, SetName};

/// The base chain's name.
pub const FORWARD: &str = "policy";
/// The prefix of every other chain and set of this module.
pub const PREFIX: &str = "pol-";
/// The filter slot, beside kube-proxy's and Docker's forward chains.
pub const PRIORITY: i32 = 0;
/// The name of the rule that drops what a pod's chain does not allow.
pub const DROP_RULE: &str = "drop";
/// `ct state` bits: established (1 << 1) and related (1 << 2).
const CT_ESTABLISHED_RELATED: u32 = 0b110;

/// Whether a chain or set of weft's table belongs to policy enforcement.
pub fn owns(name: &str) -> bool {
    name == FORWARD || name.starts_with(PREFIX)
}

/// What enforcement wants of the table.
#[derive(Clone, Copy, Debug)]
pub enum Want<'a> {
    /// `--network-policy off`: no policy chain or set.
    Off,
    /// On, but the cluster view is not listed yet: keep what is there, or hold the pods.
    Pending {
        /// The cluster's pod range.
        pod_range: IpNet,
    },
    /// Enforce this rule state.
    Rules(&'a RuleSet),
}

/// The policy part of weft's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Chains, each before the chains that jump to it.
    pub chains: Vec<Chain>,
    /// Sets.
    pub sets: Vec<Set>,
    /// Leave every policy chain and set the kernel holds as it is.
    pub keep_present: bool,
    /// Pod chains' names to the pod and direction they judge (for counters and logs).
    pub pod_chains: BTreeMap<String, (PodKey, Direction)>,
}

/// The policy part of the table for `want`, given what the kernel holds.
pub fn resolve(want: Want<'_>, present: &Present) -> Programmed {
    match want {
        Want::Off => Programmed::default(),
        Want::Pending { .. } if present.chains.contains_key(FORWARD) => Programmed {
            keep_present: true,
            ..Programmed::default()
        },
        Want::Pending { pod_range } => Programmed {
            chains: vec![hold(pod_range)],
            ..Programmed::default()
        },
        Want::Rules(rules) => program(rules),
    }
}

fn forward_chain(rules: Vec<Rule>) -> Chain {
    Chain {
        name: FORWARD.to_owned(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: PRIORITY,
        }),
        rules,
    }
}

fn established() -> Rule {
    Rule {
        name: "established".to_owned(),
        exprs: vec![
            Expr::CtState,
            Expr::Mask(CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec()),
            Expr::Cmp(CmpOp::Neq, vec![0; 4]),
            Expr::Verdict(Verdict::Accept),
        ],
    }
}

/// The chain that holds every pod until the first sync: new forwarded connections from or to
/// `pod_range` are counted and dropped.
pub fn hold(pod_range: IpNet) -> Chain {
    let mut rules = vec![established()];
    for (name, which) in [("hold-from", Addr::Source), ("hold-to", Addr::Destination)] {
        let mut exprs = super::match_family(&pod_range);
        exprs.extend(match_addr(which, CmpOp::Eq, &pod_range.trunc()));
        exprs.push(Expr::Counter);
        exprs.push(Expr::Verdict(Verdict::Drop));
        rules.push(Rule {
            name: name.to_owned(),
            exprs,
        });
    }
    forward_chain(rules)
}

/// A short, stable hash of `s` (FNV-1a, 64 bits).
fn hash(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The kernel set holding `set`'s host addresses of one family.
pub fn set_name(set: &SetName, v6: bool) -> String {
    format!("{PREFIX}{}-{}", hash(set), if v6 { 6 } else { 4 })
}

/// The verdict map from local pods' addresses to their chains of `direction`.
fn jump_map(direction: Direction, v6: bool) -> String {
    let d = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    format!("{PREFIX}{d}-{}", if v6 { 6 } else { 4 })
}

fn node_set(v6: bool) -> String {
    format!("{PREFIX}node-{}", if v6 { 6 } else { 4 })
}

/// The chain judging `pod`'s connections in `direction`.
pub fn pod_chain(pod: &PodKey, direction: Direction) -> String {
    let d = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    format!("{PREFIX}{d}-{}", hash(&format!("{}/{}", pod.0, pod.1)))
}

fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

fn family_matches(net: &IpNet, v6: bool) -> bool {
    matches!(net, IpNet::V6(_)) == v6
}

/// The address families the rule state needs: IPv4 always, IPv6 when the node or one of its
/// pods has an IPv6 address. Only local addresses count: an IPv6 packet enters a pod chain
/// only through a jump on a local pod's IPv6 address, and deciding on a set's elements would
/// make a remote pod's relabelling add or remove chains' rules, not just set elements.
fn families(rules: &RuleSet) -> Vec<bool> {
    let v6 = rules.node_addresses.iter().any(IpAddr::is_ipv6)
        || rules
            .pods
            .values()
            .flat_map(|p| &p.ips)
            .any(IpAddr::is_ipv6);
    if v6 { vec![false, true] } else { vec![false] }
}

fn nfproto(v6: bool) -> Vec<Expr> {
    let proto = if v6 {
        super::NFPROTO_IPV6
    } else {
        super::NFPROTO_IPV4
    };
    vec![
        Expr::Meta(MetaKey::NfProto),
        Expr::Cmp(CmpOp::Eq, vec![proto]),
    ]
}

fn load_addr(which: Addr, v6: bool) -> Expr {
    let offset = match (which, v6) {
        (Addr::Source, false) => 12,
        (Addr::Destination, false) => 16,
        (Addr::Source, true) => 8,
        (Addr::Destination, true) => 24,
    };
    Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: if v6 { 16 } else { 4 },
    }
}

fn lookup(which: Addr, set: String, v6: bool) -> Vec<Expr> {
    vec![load_addr(which, v6), Expr::Lookup { set, invert: false }]
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn dport(protocol: Protocol, first: u16, last: u16) -> Vec<Expr> {
    let mut exprs = vec![
        Expr::Meta(MetaKey::L4Proto),
        Expr::Cmp(CmpOp::Eq, vec![protocol_number(protocol)]),
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
        },
    ];
    if first == last {
        exprs.push(Expr::Cmp(CmpOp::Eq, first.to_be_bytes().to_vec()));
    } else {
        exprs.push(Expr::Cmp(CmpOp::Gte, first.to_be_bytes().to_vec()));
        exprs.push(Expr::Cmp(CmpOp::Lte, last.to_be_bytes().to_vec()));
    }
    exprs
}

/// The port part of an allow rule (a named port also requires its destination set).
fn port_exprs(ports: &PortMatch, v6: bool) -> Vec<Expr> {
    match ports {
        PortMatch::Any => Vec::new(),
        PortMatch::Range {
            protocol,
            first,
            last,
        } => dport(*protocol, *first, *last),
        PortMatch::Named {
            protocol,
            port,
            destinations,
        } => {
            let mut exprs = dport(*protocol, *port, *port);
            exprs.extend(lookup(Addr::Destination, set_name(destinations, v6), v6));
            exprs
        }
    }
}

/// The rules of one pod's chain for `direction`.
fn pod_rules(
    rules: &RuleSet,
    ips: &[IpAddr],
    allows: &[Allow],
    direction: Direction,
    families: &[bool],
) -> Vec<Rule> {
    // The other end of the connection: the destination for egress, the source for ingress.
    let other = match direction {
        Direction::Egress => Addr::Destination,
        Direction::Ingress => Addr::Source,
    };
    let allowed = |name: String, exprs: Vec<Expr>| {
        let mut exprs = exprs;
        exprs.push(Expr::Verdict(Verdict::Return));
        Rule { name, exprs }
    };
    let mut out = Vec::new();
    for ip in ips {
        let net = IpNet::from(*ip);
        let mut exprs = super::match_family(&net);
        exprs.extend(match_addr(other, CmpOp::Eq, &net));
        out.push(allowed("self".to_owned(), exprs));
    }
    for &v6 in families {
        let mut exprs = nfproto(v6);
        exprs.extend(lookup(other, node_set(v6), v6));
        out.push(allowed("node".to_owned(), exprs));
    }
    for (i, allow) in allows.iter().enumerate() {
        for &v6 in families {
            let ports = port_exprs(&allow.ports, v6);
            let Some(peer) = &allow.peer else {
                let mut exprs = nfproto(v6);
                exprs.extend(ports);
                out.push(allowed(format!("allow-{i}"), exprs));
                continue;
            };
            let mut exprs = nfproto(v6);
            exprs.extend(lookup(other, set_name(peer, v6), v6));
            exprs.extend(ports.iter().cloned());
            out.push(allowed(format!("allow-{i}"), exprs));
            let prefixes = rules.sets.get(peer).into_iter().flatten();
            for net in prefixes.filter(|n| !is_host(n) && family_matches(n, v6)) {
                let mut exprs = nfproto(v6);
                exprs.extend(match_addr(other, CmpOp::Eq, net));
                exprs.extend(ports.iter().cloned());
                out.push(allowed(format!("allow-{i}"), exprs));
            }
        }
    }
    out.push(Rule {
        name: DROP_RULE.to_owned(),
        exprs: vec![Expr::Counter, Expr::Verdict(Verdict::Drop)],
    });
    out
}

/// The chains and sets that enforce `rules`.
pub fn program(rules: &RuleSet) -> Programmed {
    let families = families(rules);
    let mut out = Programmed::default();
    for &v6 in &families {
        let node = rules.node_addresses.iter().filter(|a| a.is_ipv6() == v6);
        out.sets
            .push(Set::addresses(&node_set(v6), v6, node.copied().collect()));
        for (name, nets) in &rules.sets {
            let elements: BTreeSet<IpAddr> = nets
                .iter()
                .filter(|n| is_host(n) && family_matches(n, v6))
                .map(IpNet::addr)
                .collect();
            out.sets
                .push(Set::addresses(&set_name(name, v6), v6, elements));
        }
    }
    // Which chain judges each local pod's address, per direction and family.
    let mut jumps: BTreeMap<(Direction, bool), BTreeMap<IpAddr, String>> = BTreeMap::new();
    for (key, pod) in &rules.pods {
        for direction in [Direction::Egress, Direction::Ingress] {
            let Some(allows) = pod.chain(direction) else {
                continue;
            };
            let chain = pod_chain(key, direction);
            for ip in &pod.ips {
                let map = jumps.entry((direction, ip.is_ipv6())).or_default();
                map.insert(*ip, chain.clone());
            }
            out.chains.push(Chain {
                name: chain.clone(),
                base: None,
                rules: pod_rules(rules, &pod.ips, allows, direction, &families),
            });
            out.pod_chains.insert(chain, (key.clone(), direction));
        }
    }
    // One lookup per direction and family, whatever the number of pods.
    let mut forward = vec![established()];
    for direction in [Direction::Egress, Direction::Ingress] {
        for &v6 in &families {
            let name = jump_map(direction, v6);
            let which = match direction {
                Direction::Egress => Addr::Source,
                Direction::Ingress => Addr::Destination,
            };
            let mut exprs = nfproto(v6);
            exprs.push(load_addr(which, v6));
            exprs.push(Expr::Vmap(name.clone()));
            forward.push(Rule {
                name: name.clone(),
                exprs,
            });
            out.sets.push(Set {
                jumps: Some(jumps.remove(&(direction, v6)).unwrap_or_default()),
                ..Set::addresses(&name, v6, BTreeSet::new())
            });
        }
    }
    out.chains.push(forward_chain(forward));
    out
}

/// The packets a chain's rule counted, as a dump read them: (chain, rule handle, rule key,
/// packets).
pub type RuleCount = (String, u64, Option<String>, u64);

/// Drops by policy, summed across chain rebuilds: the kernel's counters start again at 0
/// when a rule is replaced, the totals never go down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropTally {
    /// (chain, handle) to the packets last read.
    last: BTreeMap<(String, u64), u64>,
    /// Packets dropped by egress chains, ingress chains, and the hold chain.
    pub egress: u64,
    /// See `egress`.
    pub ingress: u64,
    /// See `egress`.
    pub held: u64,
}

/// New drops since the last reading: per pod and direction, the packets dropped.
pub type NewDrops = BTreeMap<(PodKey, Direction), u64>;

impl DropTally {
    /// Takes a reading of the counters of weft's policy rules; `pod_chains` names the pod
    /// chains (from [`Programmed::pod_chains`]). Returns the new drops per pod.
    pub fn observe(
        &mut self,
        counts: &[RuleCount],
        pod_chains: &BTreeMap<String, (PodKey, Direction)>,
    ) -> NewDrops {
        let drop_key = format!("weft:{DROP_RULE}:");
        let mut seen = BTreeMap::new();
        let mut new = NewDrops::new();
        for (chain, handle, key, packets) in counts {
            let key = key.as_deref().unwrap_or_default();
            let is_hold = chain == FORWARD && key.starts_with("weft:hold-");
            let pod = pod_chains.get(chain).filter(|_| key.starts_with(&drop_key));
            if !is_hold && pod.is_none() {
                continue;
            }
            let id = (chain.clone(), *handle);
            let delta = packets.saturating_sub(self.last.get(&id).copied().unwrap_or(0));
            seen.insert(id, *packets);
            if delta == 0 {
                continue;
            }
            match pod {
                None => self.held = self.held.saturating_add(delta),
                Some((pod, direction)) => {
                    match direction {
                        Direction::Egress => self.egress = self.egress.saturating_add(delta),
                        Direction::Ingress => self.ingress = self.ingress.saturating_add(delta),
                    }
                    *new.entry((pod.clone(), *direction)).or_default() += delta;
                }
            }
        }
        self.last = seen;
        new
    }
}
