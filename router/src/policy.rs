//! NetworkPolicy enforcement's shell: what the rules task needs to program a node's policy
//! (`--network-policy on`), and what it reports.
//!
//! The decisions are in the pure core: `topology::policy` compiles the cluster view into the
//! node's rule state, `topology::netfilter::policy` turns that into chains and sets and
//! tallies drops; `node_net`'s rules task programs them with the rest of weft's table, in one
//! batch per change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use topology::cluster::ClusterView;
use topology::netfilter::policy::{DropTally, NewDrops, Programmed};
use topology::policy::{Direction, RuleSet};
use tracing::warn;

/// The cluster view as the rules task receives it: `None` until Namespaces, Pods and
/// NetworkPolicies have each been listed once.
pub type ViewFeed = watch::Receiver<Option<PublishedView>>;

/// One revision of the cluster view, and when the watch event that made it arrived.
#[derive(Debug, Clone)]
pub struct PublishedView {
    /// The view.
    pub view: Arc<ClusterView>,
    /// When it was published.
    pub at: Instant,
}

/// The sysctl without which bridged pod traffic never meets the rules.
pub const BRIDGE_NF_SYSCTL: &str = "net/bridge/bridge-nf-call-iptables";

/// How often one pod's blocked connections are logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What enforcement needs: the view, and which node this is.
#[derive(Debug, Clone)]
pub struct PolicyFeed {
    /// The cluster view.
    pub view: ViewFeed,
    /// This node's name (pods are scheduled by it).
    pub node: String,
    /// This node's addresses: traffic between them and local pods always passes.
    pub node_ips: Vec<IpAddr>,
}

/// Where enforcement stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyState {
    /// The cluster view is not listed yet and no earlier rules were found: new forwarded
    /// connections of pods are held (dropped) until the first sync.
    #[default]
    Holding,
    /// The cluster view is not listed yet: the rules a previous router left stay in force.
    Kept,
    /// The kernel holds the rules of the view's revision `revision`.
    Enforcing,
    /// The rules could not be programmed, or bridged traffic bypasses them (see `error`).
    NotEnforced,
}

/// `weft status policy` and the report's `policy` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Where enforcement stands.
    pub state: PolicyState,
    /// The cluster view revision the kernel's rules were compiled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// NetworkPolicies in the cluster view.
    pub policies: usize,
    /// Pods on this node.
    pub local_pods: usize,
    /// Pods on this node some policy isolates (in either direction).
    pub isolated_pods: usize,
    /// Address sets and rules of the policy part of weft's table.
    pub sets: usize,
    /// See `sets`.
    pub rules: usize,
    /// When the last change reached the kernel (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_unix_ms: Option<u64>,
    /// How long it took from the view's change to the kernel, at the last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_lag_ms: Option<u64>,
    /// New connections dropped by pods' egress rules, ingress rules, and while holding.
    pub dropped_egress: u64,
    /// See `dropped_egress`.
    pub dropped_ingress: u64,
    /// See `dropped_egress`.
    pub dropped_held: u64,
    /// Why rules are not enforced, or the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether bridged traffic reaches the rules: `None` when it does, else why not.
pub fn bridge_check(proc_sys: &Path) -> Option<String> {
    let path = proc_sys.join(BRIDGE_NF_SYSCTL);
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => None,
        Ok(v) => Some(format!(
            "net.bridge.bridge-nf-call-iptables is {}: pod-to-pod traffic bypasses the rules",
            v.trim()
        )),
        Err(e) => Some(format!(
            "net.bridge.bridge-nf-call-iptables cannot be read ({e}): is br_netfilter loaded? \
             pod-to-pod traffic bypasses the rules"
        )),
    }
}

/// The rules task's policy bookkeeping between reconciles.
#[derive(Debug, Default)]
pub struct Enforcer {
    /// The status being built.
    pub status: PolicyStatus,
    tally: DropTally,
    logged: BTreeMap<(topology::policy::PodKey, Direction), Instant>,
    /// The view revision and when it arrived, not yet in the kernel.
    pending: Option<(u64, Instant)>,
}

impl Enforcer {
    /// Notes that the view is at `revision`, published at `at`. Of several revisions that
    /// reach the kernel together, the oldest one's time counts.
    pub fn view_changed(&mut self, revision: u64, at: Instant) {
        if self.status.revision == Some(revision) {
            return;
        }
        match &mut self.pending {
            Some((r, _)) => *r = revision.max(*r),
            None => self.pending = Some((revision, at)),
        }
    }

    /// Records a reconcile that succeeded with `rules` (`None` while the view is unlisted),
    /// the policy part `programmed`, and the policy rules' counters; returns the sync
    /// latency when it brought a newer view to the kernel.
    pub fn synced(
        &mut self,
        view: Option<&ClusterView>,
        rules: Option<&RuleSet>,
        programmed: &Programmed,
        counts: &[topology::netfilter::policy::RuleCount],
        now: Instant,
    ) -> Option<Duration> {
        let new = self.tally.observe(counts, &programmed.pod_chains);
        self.log_drops(&new, now);
        let s = &mut self.status;
        s.dropped_egress = self.tally.egress;
        s.dropped_ingress = self.tally.ingress;
        s.dropped_held = self.tally.held;
        s.error = None;
        let (Some(view), Some(rules)) = (view, rules) else {
            s.state = if programmed.keep_present {
                PolicyState::Kept
            } else {
                PolicyState::Holding
            };
            return None;
        };
        s.state = PolicyState::Enforcing;
        s.policies = view.policy_count();
        s.local_pods = view.pods_on(&rules.node).count();
        s.isolated_pods = rules
            .pods
            .values()
            .filter(|p| p.ingress.is_some() || p.egress.is_some())
            .count();
        s.sets = programmed.sets.len();
        s.rules = programmed.chains.iter().map(|c| c.rules.len()).sum();
        let revision = view.revision();
        let lag = self
            .pending
            .take_if(|(r, _)| *r <= revision)
            .map(|(_, at)| now.saturating_duration_since(at));
        if s.revision != Some(revision) || lag.is_some() {
            s.revision = Some(revision);
            s.last_sync_unix_ms = Some(unix_ms());
            s.last_sync_lag_ms = lag.map(|l| l.as_millis() as u64);
        }
        lag
    }

    /// Records a failure (the last rules stay in force in the kernel).
    pub fn failed(&mut self, error: String) {
        self.status.state = PolicyState::NotEnforced;
        self.status.error = Some(error);
    }

    /// Logs each pod's blocked connections, at most once per [`LOG_EVERY`] per pod and
    /// direction (drops read in between are counted in the metrics, not logged).
    fn log_drops(&mut self, new: &NewDrops, now: Instant) {
        for ((pod, direction), packets) in new {
            let key = (pod.clone(), *direction);
            if self
                .logged
                .get(&key)
                .is_some_and(|t| now.saturating_duration_since(*t) < LOG_EVERY)
            {
                continue;
            }
            self.logged.insert(key, now);
            let direction = match direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            warn!(
                pod = %format!("{}/{}", pod.0, pod.1),
                direction,
                packets,
                "NetworkPolicy blocked connections"
            );
        }
        self.logged
            .retain(|_, t| now.saturating_duration_since(*t) < LOG_EVERY);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use topology::cluster::{Event, Namespace};

    fn view(revisions: usize) -> ClusterView {
        let mut v = ClusterView::new();
        for i in 0..revisions {
            v.handle_namespaces(Event::Applied(Namespace {
                name: format!("ns{i}"),
                labels: Default::default(),
            }));
        }
        v
    }

    #[test]
    fn the_lag_runs_from_the_oldest_unsynced_revision_and_is_counted_once() {
        let mut e = Enforcer::default();
        let t0 = Instant::now();
        let (v1, v2) = (view(1), view(2));
        let rules = RuleSet::compile(&v2, "n1", &[]);
        let programmed = Programmed::default();
        e.view_changed(v1.revision(), t0);
        // A second revision arrives before the first reached the kernel: the first's time counts.
        e.view_changed(v2.revision(), t0 + Duration::from_millis(30));
        let lag = e.synced(
            Some(&v2),
            Some(&rules),
            &programmed,
            &[],
            t0 + Duration::from_millis(50),
        );
        assert_eq!(lag, Some(Duration::from_millis(50)));
        assert_eq!(e.status.state, PolicyState::Enforcing);
        assert_eq!(e.status.revision, Some(2));
        assert_eq!(e.status.last_sync_lag_ms, Some(50));
        // The periodic reconcile of the same revision measures nothing.
        e.view_changed(v2.revision(), t0 + Duration::from_millis(30));
        let again = e.synced(
            Some(&v2),
            Some(&rules),
            &programmed,
            &[],
            t0 + Duration::from_secs(10),
        );
        assert_eq!(again, None);
        assert_eq!(e.status.last_sync_lag_ms, Some(50));
    }

    #[test]
    fn unlisted_views_hold_or_keep_and_failures_say_why() {
        let mut e = Enforcer::default();
        let now = Instant::now();
        e.synced(None, None, &Programmed::default(), &[], now);
        assert_eq!(e.status.state, PolicyState::Holding);
        let kept = Programmed {
            keep_present: true,
            ..Programmed::default()
        };
        e.synced(None, None, &kept, &[], now);
        assert_eq!(e.status.state, PolicyState::Kept);
        e.failed("no socket".to_owned());
        assert_eq!(e.status.state, PolicyState::NotEnforced);
        assert_eq!(e.status.error.as_deref(), Some("no socket"));
        e.synced(None, None, &kept, &[], now);
        assert_eq!(e.status.error, None);
    }

    #[test]
    fn drops_add_up_across_rule_replacements_and_hold() {
        let mut e = Enforcer::default();
        let now = Instant::now();
        let pod = ("default".to_owned(), "web".to_owned());
        let chain = topology::netfilter::policy::pod_chain(&pod, Direction::Ingress);
        let programmed = Programmed {
            pod_chains: [(chain.clone(), (pod, Direction::Ingress))].into(),
            ..Programmed::default()
        };
        let drop_key = Some("weft:drop:0123".to_owned());
        let hold_key = Some("weft:hold-to:0123".to_owned());
        let counts = [
            (chain.clone(), 7, drop_key.clone(), 5),
            ("policy".to_owned(), 3, hold_key.clone(), 2),
            (chain.clone(), 6, Some("weft:self:0".to_owned()), 99),
        ];
        e.synced(None, None, &programmed, &counts, now);
        // The chain was rebuilt: a new handle starts again at 1.
        let counts = [
            (chain, 9, drop_key, 1),
            ("policy".to_owned(), 3, hold_key, 2),
        ];
        e.synced(None, None, &programmed, &counts, now);
        assert_eq!(
            (
                e.status.dropped_ingress,
                e.status.dropped_egress,
                e.status.dropped_held
            ),
            (6, 0, 2)
        );
    }

    #[test]
    fn the_bridge_check_names_the_sysctl() {
        let dir = tempfile::TempDir::new().unwrap();
        assert!(bridge_check(dir.path()).unwrap().contains("br_netfilter"));
        let path = dir.path().join(BRIDGE_NF_SYSCTL);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "0\n").unwrap();
        assert!(
            bridge_check(dir.path())
                .unwrap()
                .contains("bridge-nf-call-iptables is 0")
        );
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(bridge_check(dir.path()), None);
    }
}
