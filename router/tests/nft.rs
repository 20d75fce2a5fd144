//! weft's nftables layer against the real kernel, in a network namespace of its own: the
//! reconcile builds the table, rests when it is in place, repairs what was changed by hand,
//! reports a rule the kernel refuses with its reason, spots another table's forward drop, and
//! uninstall removes the table. `nft` only looks from the outside. Needs root.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::process::{Command, Stdio};

use ipnet::IpNet;
use topology::netfilter::{BaseChain, Chain, ChainType, Expr, Hook, Rule};
use weft_router::nft::Nft;
use weft_router::node_net::wanted_chains;

mod common;
use common::in_netns;

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn namespace(tag: &str) -> Namespace {
    let name = format!("wnft-{tag}-{}", std::process::id());
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Namespace(name)
}

fn nft(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn range() -> IpNet {
    "10.32.0.0/12".parse().unwrap()
}

#[test]
fn the_masquerade_table_is_built_kept_repaired_and_removed() {
    let ns = namespace("masq");
    let name = ns.0.clone();
    let wanted = wanted_chains(range(), true, &["198.51.100.0/24".parse().unwrap()]);
    let ops = in_netns(&name, {
        let wanted = wanted.clone();
        move || Nft::open().unwrap().reconcile(&wanted).unwrap().ops
    });
    assert!(!ops.is_empty());
    let table = nft(&name, &["list", "table", "inet", "weft"]);
    assert!(
        table.contains("type nat hook postrouting priority srcnat; policy accept;"),
        "{table}"
    );
    assert!(
        table.contains("ip saddr 10.32.0.0/12 ip daddr 198.51.100.0/24 return"),
        "{table}"
    );
    assert!(
        table.contains(
            "ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 counter packets 0 bytes 0 masquerade"
        ),
        "{table}"
    );
    // The return comes before the masquerade.
    assert!(table.find("return") < table.find("masquerade"), "{table}");

    // In place: nothing is sent.
    let again = in_netns(&name, {
        let wanted = wanted.clone();
        move || Nft::open().unwrap().reconcile(&wanted).unwrap().ops
    });
    assert!(again.is_empty(), "{again:?}");

    // A rule added by hand is noticed and the chain brought back to exactly weft's rules.
    nft(
        &name,
        &[
            "insert",
            "rule",
            "inet",
            "weft",
            "postrouting",
            "ip",
            "saddr",
            "10.32.0.9",
            "accept",
        ],
    );
    let repaired = in_netns(&name, move || {
        Nft::open().unwrap().reconcile(&wanted).unwrap().ops
    });
    assert!(!repaired.is_empty());
    let table = nft(&name, &["list", "table", "inet", "weft"]);
    assert!(!table.contains("10.32.0.9"), "{table}");
    assert_eq!(table.matches("masquerade").count(), 1, "{table}");

    // --masquerade off: the chain stays, empty.
    let off = wanted_chains(range(), false, &[]);
    in_netns(&name, move || Nft::open().unwrap().reconcile(&off).unwrap());
    let table = nft(&name, &["list", "table", "inet", "weft"]);
    assert!(
        !table.contains("masquerade") && table.contains("chain postrouting"),
        "{table}"
    );

    // Uninstall removes the table; removing it again is no error.
    in_netns(&name, || {
        let mut n = Nft::open().unwrap();
        n.remove_table().unwrap();
        n.remove_table().unwrap();
    });
    assert!(!nft(&name, &["list", "tables"]).contains("weft"));
}

#[test]
fn a_refused_rule_is_reported_with_the_kernels_reason_and_nothing_is_applied() {
    let ns = namespace("refused");
    let name = ns.0.clone();
    // Masquerade is only valid in a nat chain: the kernel refuses it in a filter chain.
    let bad = vec![Chain {
        name: "forward".to_owned(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: 0,
        }),
        rules: vec![Rule {
            name: "bad".to_owned(),
            exprs: vec![Expr::Masquerade],
        }],
    }];
    let err = in_netns(&name, move || {
        Nft::open().unwrap().reconcile(&bad).unwrap_err()
    });
    let text = err.to_string();
    assert!(text.contains("add rule weft:bad:"), "{text}");
    // The batch was all or nothing: not even the table was made.
    assert!(!nft(&name, &["list", "tables"]).contains("weft"), "{text}");
}

#[test]
fn another_tables_forward_drop_is_reported() {
    let ns = namespace("fwd");
    let name = ns.0.clone();
    nft(&name, &["add", "table", "ip", "filter"]);
    nft(
        &name,
        &[
            "add",
            "chain",
            "ip",
            "filter",
            "FORWARD",
            "{ type filter hook forward priority 0; policy drop; }",
        ],
    );
    let wanted = wanted_chains(range(), true, &[]);
    let found = in_netns(&name, move || {
        Nft::open().unwrap().reconcile(&wanted).unwrap()
    });
    assert_eq!(found.forward_drop, vec!["ip filter/FORWARD".to_owned()]);
}

/// A policy for 2,000 pods of this node in one batch (maps of 2,000 elements, more than one
/// message holds): larger than the socket's default
/// buffers (the kernel refused it with EMSGSIZE, and would drop acknowledgements), programmed
/// whole, then read back as in place.
#[test]
fn a_batch_larger_than_the_default_socket_buffers_goes_through() {
    use std::collections::BTreeMap;
    use topology::netfilter::policy::Want;
    use topology::policy::{PodRules, RuleSet};
    let ns = namespace("big");
    let name = ns.0.clone();
    let pods: BTreeMap<_, _> = (0..2_000_u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x0a20_0000 + i + 2);
            let rules = PodRules {
                ips: vec![ip.into()],
                ingress: Some(Vec::new()),
                egress: Some(Vec::new()),
            };
            (("default".to_owned(), format!("pod-{i}")), rules)
        })
        .collect();
    let rules = RuleSet {
        node: "n1".to_owned(),
        pods,
        ..RuleSet::default()
    };
    let (ops, again) = in_netns(&name, move || {
        let mut nft = Nft::open().unwrap();
        let first = nft
            .reconcile_table(&[], &[], false, Want::Rules(&rules))
            .unwrap();
        let again = nft
            .reconcile_table(&[], &[], false, Want::Rules(&rules))
            .unwrap();
        (first.ops.len(), again.ops.len())
    });
    assert!(ops > 10_000, "only {ops} operations");
    assert_eq!(again, 0, "the table is not as programmed");
    // (`policy` is an nft keyword: `list chain` cannot name it.)
    let listed = nft(&name, &["list", "table", "inet", "weft"]);
    assert_eq!(listed.matches("jump pol-").count(), 4_000);
}

/// The ruleset generation the rules task skips quiet reconciles by: it grows with a commit,
/// weft's or anyone's, and only then.
#[test]
fn the_generation_grows_with_every_commit_and_only_then() {
    let ns = namespace("gen");
    let name = ns.0.clone();
    let wanted = wanted_chains(range(), true, &[]);
    let (before, after, rested) = in_netns(&name, move || {
        let mut nft = Nft::open().unwrap();
        let before = nft.generation().unwrap();
        nft.reconcile(&wanted).unwrap();
        let after = nft.generation().unwrap();
        assert!(nft.reconcile(&wanted).unwrap().ops.is_empty());
        (before, after, nft.generation().unwrap())
    });
    assert!(after > before, "{before} -> {after}");
    assert_eq!(rested, after, "a reconcile that changed nothing committed");
    nft(&name, &["add", "table", "ip", "other"]);
    let outside = in_netns(&name, move || Nft::open().unwrap().generation().unwrap());
    assert!(outside > after, "another table's commit did not move it");
}
