//! What the router knows of its link to the Kubernetes API, for `weft status` and `/report`:
//! per watched kind, whether the watch is in sync, the last error while it retries, how many
//! objects it holds and how many it skipped; and this node's condition.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The Kubernetes section of the router's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeStatus {
    /// The API's URL.
    pub api: String,
    /// One entry per watched kind, in the order they started.
    pub watches: Vec<WatchStatus>,
    /// This node's `NetworkUnavailable` condition as weft last set it, or why it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_condition: Option<String>,
    /// The cluster view (namespaces, pods, policies), once it has changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::cluster::ClusterSummary>,
}

/// One watched kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// `Node`, `Namespace`, `Pod` or `NetworkPolicy`.
    pub kind: String,
    /// The watch has listed and is following changes; false while it retries.
    pub synced: bool,
    /// The last error, while the watch retries (it keeps the last view meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Objects held.
    pub objects: usize,
    /// Objects skipped since the start because weft could not decode or use them.
    pub skipped: u64,
    /// When `error` was last reported: a watch that recovers without a change to deliver says
    /// nothing, so an error older than [`ERROR_FRESH`] counts as over.
    #[serde(skip)]
    pub failed_at: Option<std::time::Instant>,
}

/// How long a watch error stands without a new one. kube's back-off between attempts reaches
/// 30 s (jittered up to half more), so a watch that still fails reports again within this.
pub const ERROR_FRESH: std::time::Duration = std::time::Duration::from_secs(60);

impl KubeStatus {
    /// This status at `now`: watches whose last error is older than [`ERROR_FRESH`] are in
    /// sync again.
    pub fn at(mut self, now: std::time::Instant) -> Self {
        for w in &mut self.watches {
            if w.failed_at
                .is_some_and(|t| now.duration_since(t) > ERROR_FRESH)
            {
                w.synced = true;
                w.error = None;
                w.failed_at = None;
            }
        }
        self
    }
}

/// The shared, published [`KubeStatus`].
#[derive(Debug, Clone)]
pub struct KubeHealth(Arc<watch::Sender<KubeStatus>>);

impl KubeHealth {
    /// A status for the API at `api`, and the receiver the engine's snapshot reads.
    pub fn new(api: &str) -> (Self, watch::Receiver<KubeStatus>) {
        let (tx, rx) = watch::channel(KubeStatus {
            api: api.to_owned(),
            ..KubeStatus::default()
        });
        (Self(Arc::new(tx)), rx)
    }

    /// The handle one watcher of `kind` reports through.
    pub fn watch(&self, kind: &str) -> Health {
        self.0.send_modify(|s| {
            if !s.watches.iter().any(|w| w.kind == kind) {
                s.watches.push(WatchStatus {
                    kind: kind.to_owned(),
                    ..WatchStatus::default()
                });
            }
        });
        Health {
            status: self.clone(),
            kind: kind.to_owned(),
        }
    }

    /// Records this node's condition (or why setting it failed).
    pub fn node_condition(&self, what: String) {
        self.0.send_if_modified(|s| {
            let changed = s.node_condition.as_ref() != Some(&what);
            s.node_condition = Some(what);
            changed
        });
    }

    /// Records the cluster view's summary.
    pub fn cluster(&self, summary: super::cluster::ClusterSummary) {
        self.0.send_if_modified(|s| {
            let changed = s.cluster.as_ref() != Some(&summary);
            s.cluster = Some(summary);
            changed
        });
    }
}

/// One watcher's reporting handle.
#[derive(Debug, Clone)]
pub struct Health {
    status: KubeHealth,
    kind: String,
}

impl Health {
    fn update(&self, f: impl FnOnce(&mut WatchStatus) -> bool) {
        self.status.0.send_if_modified(|s| {
            s.watches
                .iter_mut()
                .find(|w| w.kind == self.kind)
                .is_some_and(f)
        });
    }

    /// The watch delivered a change: in sync, holding `objects`, having skipped `skipped`.
    pub fn ok(&self, objects: usize, skipped: u64) {
        self.update(|w| {
            let new = WatchStatus {
                kind: w.kind.clone(),
                synced: true,
                error: None,
                objects,
                skipped,
                failed_at: None,
            };
            let changed = *w != new;
            *w = new;
            changed
        });
    }

    /// The watch failed and retries; the last view is kept.
    pub fn failed(&self, error: String) {
        self.update(|w| {
            w.synced = false;
            w.error = Some(error);
            w.failed_at = Some(std::time::Instant::now());
            true
        });
    }
}
