//! What makes the node a Kubernetes node beyond pod ↔ pod: forwarding, bridged traffic through
//! conntrack, and weft's nftables rules (egress masquerade), kept in place while the router runs.
//!
//! - Sysctls, set at start, idempotently, each change logged: `net.ipv4.ip_forward=1` (pods reach
//!   other nodes and the world through their node) and `net.bridge.bridge-nf-call-iptables=1`
//!   (bridged replies meet the node's conntrack, so kube-proxy's DNAT is undone for pod ↔ pod
//!   Service traffic).
//! - Rules: a task reconciles weft's table every [`RECONCILE_INTERVAL`] (sooner after a
//!   failure, backing off to [`RETRY_MAX`]), publishing what it found for `weft status`.
//!   Stopping the router leaves the rules in place; the next router reconciles them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use std::time::Instant;
use tokio::sync::watch;
use topology::netfilter::masquerade::{self, MasqueradeSettings};
use topology::netfilter::policy::Want;
use topology::netfilter::{Chain, Set, tunnels};
use topology::policy::RuleSet;
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::nft::{NetfilterStatus, Nft, Reconciled};
use crate::policy::{Enforcer, PolicyFeed, PolicyStatus};

/// How often the rules are checked while all is well.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// How long after start the peer sets keep the addresses they held (the router learns its
/// peers again by then; until then a peer must not lose the tunnels).
pub const PEERS_GRACE: Duration = Duration::from_secs(60);
/// The longest wait between retries after a failure.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The sysctls weft needs in its node's network namespace, with the value it sets.
pub const SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
];

/// Sets [`SYSCTLS`] under `proc_sys` (`/proc/sys`), logging each change; returns a warning per
/// sysctl that could not be set (for status).
pub fn ensure_sysctls(proc_sys: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, want) in SYSCTLS {
        let path = proc_sys.join(key);
        let name = key.replace('/', ".");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == want => {}
            Ok(v) => match std::fs::write(&path, want) {
                Ok(()) => info!(sysctl = %name, from = v.trim(), to = want, "sysctl set"),
                Err(e) => {
                    warn!(sysctl = %name, error = %e, "cannot set sysctl");
                    warnings.push(format!("{name} is {} and cannot be set: {e}", v.trim()));
                }
            },
            Err(e) => {
                let why = if key.starts_with("net/bridge") {
                    " (is br_netfilter loaded? bridged Service replies miss conntrack without it)"
                } else {
                    ""
                };
                warn!(sysctl = %name, error = %e, "cannot read sysctl{why}");
                warnings.push(format!("{name} cannot be read: {e}{why}"));
            }
        }
    }
    warnings
}

/// The chains weft wants in its table for these settings.
pub fn wanted_chains(pod_range: IpNet, masquerade: bool, no_masq_cidrs: &[IpNet]) -> Vec<Chain> {
    vec![masquerade::chain(&MasqueradeSettings {
        pod_range,
        enabled: masquerade,
        no_masq_cidrs: no_masq_cidrs.to_vec(),
    })]
}

/// What weft's table depends on besides the peers.
#[derive(Debug, Clone)]
pub struct RuleSettings {
    /// The pod range.
    pub pod_range: IpNet,
    /// `--masquerade`.
    pub masquerade: bool,
    /// `--no-masq-cidrs`.
    pub no_masq_cidrs: Vec<IpNet>,
    /// The sleeve's UDP port.
    pub sleeve_port: u16,
    /// The VXLAN port.
    pub vxlan_port: u16,
}

impl RuleSettings {
    /// The chains and sets weft wants with these peers' addresses.
    pub fn wanted(&self, peers: &BTreeSet<IpAddr>) -> (Vec<Chain>, Vec<Set>) {
        let mut chains = wanted_chains(self.pod_range, self.masquerade, &self.no_masq_cidrs);
        chains.push(tunnels::chain(self.sleeve_port, self.vxlan_port));
        (chains, tunnels::sets(peers))
    }
}

/// Timer reconciles skipped in a row at most while nothing changed: the table (and the
/// policy drop counters in the status) are read in full at least every
/// `RECONCILE_INTERVAL * (QUIET_SKIPS + 1)`.
pub const QUIET_SKIPS: u32 = 5;

/// What a reconcile depends on: the peers' addresses, the view's revision, the peers' grace,
/// and why bridged traffic bypasses the rules (if it does).
type QuietInputs = (BTreeSet<IpAddr>, Option<u64>, bool, Option<String>);

/// Waits for `wait`, a change of the peers or the view, or shutdown (then false).
async fn wait_for_change(
    peers: &mut watch::Receiver<BTreeSet<IpAddr>>,
    view_rx: &mut Option<crate::policy::ViewFeed>,
    shutdown: &mut watch::Receiver<bool>,
    wait: Duration,
) -> bool {
    let view_changed = async {
        match view_rx.as_mut() {
            Some(v) => v.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    };
    let alive = tokio::select! {
        () = tokio::time::sleep(wait) => true,
        changed = peers.changed() => changed.is_ok(),
        alive = view_changed => {
            if !alive {
                *view_rx = None;
            }
            true
        }
        _ = shutdown.changed() => false,
    };
    alive && !*shutdown.borrow()
}

/// Reconciles weft's table until `shutdown`: every [`RECONCILE_INTERVAL`], and at once when
/// `peers` (the underlay addresses the tunnel ports accept) or, with `policy`, the cluster
/// view changes. Returns the status.
pub fn spawn_rules(
    settings: RuleSettings,
    mut peers: watch::Receiver<BTreeSet<IpAddr>>,
    policy: Option<PolicyFeed>,
    sysctl_warnings: Vec<String>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<NetfilterStatus> {
    let rules = settings
        .wanted(&BTreeSet::new())
        .0
        .iter()
        .map(|c| c.rules.len())
        .sum();
    let initial = NetfilterStatus {
        in_place: false,
        rules,
        masquerade: settings.masquerade,
        error: None,
        forward_drop: Vec::new(),
        sysctl_warnings,
        tunnel_peers: 0,
        tunnel_drops: 0,
        policy: policy.as_ref().map(|_| PolicyStatus::default()),
    };
    let (tx, rx) = watch::channel(initial.clone());
    let started = tokio::time::Instant::now();
    let mut view_rx = policy.as_ref().map(|p| p.view.clone());
    let mut enforcer = Enforcer::default();
    // (kernel generation after the last reconcile, its inputs, timer reconciles skipped since)
    let mut quiet: Option<(u32, QuietInputs, u32)> = None;
    tokio::spawn(async move {
        let mut nft: Option<Nft> = None;
        let mut retry = Duration::from_secs(1);
        loop {
            let addrs = peers.borrow_and_update().clone();
            let (chains, sets) = settings.wanted(&addrs);
            let keep = started.elapsed() < PEERS_GRACE;
            let published = view_rx.as_mut().and_then(|v| v.borrow_and_update().clone());
            if let Some(p) = &published {
                enforcer.view_changed(p.view.revision(), p.at);
            }
            let view = published.map(|p| p.view);
            let feed = policy.clone();
            let pod_range = settings.pod_range;
            // A timer's reconcile with the same inputs is skipped while the kernel's ruleset
            // generation shows no commit since the last one (up to QUIET_SKIPS in a row).
            let bridge = policy
                .as_ref()
                .and_then(|_| crate::policy::bridge_check(Path::new("/proc/sys")));
            let inputs = (
                addrs.clone(),
                view.as_ref().map(|v| v.revision()),
                keep,
                bridge.clone(),
            );
            // Only with NetworkPolicy on: its table is the large one worth not re-reading, and
            // without it the tunnel drop counters are read every interval (as status promises).
            let quiet_since = match &quiet {
                Some((generation, last, skips))
                    if policy.is_some() && *last == inputs && *skips < QUIET_SKIPS =>
                {
                    Some(*generation)
                }
                _ => None,
            };
            let mut socket = nft.take();
            let (outcome, socket) = tokio::task::spawn_blocking(move || {
                let run = |s: &mut Nft| -> std::io::Result<Option<(Reconciled, u32)>> {
                    if quiet_since.is_some() && quiet_since == Some(s.generation()?) {
                        return Ok(None);
                    }
                    let compiled = match (&feed, &view) {
                        (Some(f), Some(v)) => Some(RuleSet::compile(v, &f.node, &f.node_ips)),
                        _ => None,
                    };
                    let want = match (&feed, &compiled) {
                        (None, _) => Want::Off,
                        (Some(_), None) => Want::Pending { pod_range },
                        (Some(_), Some(rules)) => Want::Rules(rules),
                    };
                    let mut done = s.reconcile_table(&chains, &sets, keep, want)?;
                    done.compiled = compiled.map(|c| (c, view.clone()));
                    Ok(Some((done, s.generation()?)))
                };
                let result = match socket.as_mut() {
                    Some(s) => run(s),
                    None => Nft::open().and_then(|mut s| {
                        let r = run(&mut s);
                        socket = Some(s);
                        r
                    }),
                };
                // A large table's dumps and batch are freed here, in one of the blocking pool's
                // threads, whose malloc arena would otherwise keep the pages (RSS).
                // SAFETY: malloc_trim only returns free memory to the kernel.
                unsafe {
                    libc::malloc_trim(0);
                }
                (result, socket)
            })
            .await
            .unwrap_or_else(|e| (Err(std::io::Error::other(e.to_string())), None));
            let outcome = match outcome {
                Ok(None) => {
                    nft = socket;
                    if let Some((_, _, skips)) = &mut quiet {
                        *skips += 1;
                    }
                    if !wait_for_change(&mut peers, &mut view_rx, &mut shutdown, RECONCILE_INTERVAL)
                        .await
                    {
                        return;
                    }
                    continue;
                }
                Ok(Some((done, generation))) => {
                    quiet = Some((generation, inputs, 0));
                    Ok(done)
                }
                Err(e) => {
                    quiet = None;
                    Err(e)
                }
            };
            let mut outcome = outcome;
            let compiled = outcome.as_mut().ok().and_then(|d| d.compiled.take());
            nft = socket;
            let mut status = initial.clone();
            status.tunnel_peers = addrs.len();
            status.tunnel_drops = tx.borrow().tunnel_drops;
            let wait = match outcome {
                Ok(done) => {
                    if !done.ops.is_empty() {
                        let what: Vec<String> =
                            done.ops.iter().take(20).map(|o| o.describe()).collect();
                        info!(ops = done.ops.len(), first = ?what, "nftables rules reconciled");
                    }
                    if done.forward_drop != tx.borrow().forward_drop
                        && !done.forward_drop.is_empty()
                    {
                        warn!(chains = ?done.forward_drop, "another table's forward hook drops by policy: routed pod traffic may be lost");
                    }
                    if policy.is_some() {
                        let (rules, view) = compiled.map_or((None, None), |(r, v)| (Some(r), v));
                        let lag = enforcer.synced(
                            view.as_deref(),
                            rules.as_ref(),
                            &done.policy,
                            &done.policy_counts,
                            Instant::now(),
                        );
                        if let Some(lag) = lag {
                            metrics.observe_policy_sync(lag);
                        }
                        if let Some(why) = bridge {
                            if enforcer.status.error.is_none() {
                                error!("NetworkPolicy is NOT enforced: {why}");
                            }
                            enforcer.failed(why);
                        }
                        status.policy = Some(enforcer.status.clone());
                    }
                    status.in_place = true;
                    status.forward_drop = done.forward_drop;
                    status.tunnel_drops = done.tunnel_drops;
                    retry = Duration::from_secs(1);
                    RECONCILE_INTERVAL
                }
                Err(e) => {
                    metrics.inc_nft_sync_error();
                    warn!(error = %e, retry_in = ?retry, "nftables rules not in place");
                    status.error = Some(e.to_string());
                    if policy.is_some() {
                        enforcer.failed(format!("rules not programmed: {e}"));
                        status.policy = Some(enforcer.status.clone());
                    }
                    // A socket in an unknown state is not reused.
                    nft = None;
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            tx.send_replace(status);
            if !wait_for_change(&mut peers, &mut view_rx, &mut shutdown, wait).await {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_set_once_and_missing_ones_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("net/ipv4")).expect("mkdir");
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").expect("write");
        // No net/bridge: br_netfilter is not loaded.
        let warnings = ensure_sysctls(dir.path());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).expect("read"),
            "1"
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("bridge-nf-call-iptables"),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("br_netfilter"), "{warnings:?}");
        // Set again: nothing changes, the same warning.
        assert_eq!(ensure_sysctls(dir.path()), warnings);
    }
}
