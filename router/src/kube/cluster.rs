//! The cluster view: Namespaces, Pods and NetworkPolicies followed through three watchers and
//! kept in the pure [`ClusterView`], published for whoever enforces policy, and summed up in
//! the status (counts, the revision, this node's pods).

use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy as KubePolicy;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use topology::cluster::{ClusterView, Event};
use tracing::{debug, warn};

use super::convert;
use super::health::{Health, KubeHealth};
use super::watch::{Change, PAGE_SIZE, Skipped, follow};

/// The cluster view in the status: its size and revision, and the pods on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Grows by one with every change of the view.
    pub revision: u64,
    /// Namespaces held.
    pub namespaces: usize,
    /// Pods held (every node's).
    pub pods: usize,
    /// NetworkPolicies held.
    pub policies: usize,
    /// The pods scheduled on this node, by namespace and name.
    pub local_pods: Vec<LocalPod>,
}

/// One pod on this node, as the API has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its addresses.
    pub ips: Vec<std::net::IpAddr>,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ClusterSummary {
    /// Sums `view` up for node `me`.
    pub fn of(view: &ClusterView, me: &str) -> Self {
        let counts = view.counts();
        Self {
            revision: counts.revision,
            namespaces: counts.namespaces,
            pods: counts.pods,
            policies: counts.policies,
            local_pods: view
                .pods_on(me)
                .map(|p| LocalPod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    ips: p.ips.clone(),
                    labels: p.labels.clone(),
                })
                .collect(),
        }
    }
}

/// Follows the three kinds until `shutdown`, publishing the view after every change.
pub async fn run(
    client: kube::Client,
    me: String,
    health: KubeHealth,
    view_tx: watch::Sender<Option<crate::policy::PublishedView>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let kinds = [
        Kind::new(&health, "Namespace"),
        Kind::new(&health, "Pod"),
        Kind::new(&health, "NetworkPolicy"),
    ];
    let config = || watcher::Config::default().page_size(PAGE_SIZE);
    let namespaces = follow::<KubeNamespace, _, _>(
        client.clone(),
        config(),
        convert::namespace,
        kinds[0].skipped.clone(),
    );
    let pods = follow::<KubePod, _, _>(
        client.clone(),
        config(),
        convert::pod,
        kinds[1].skipped.clone(),
    );
    let policies = follow::<KubePolicy, _, _>(
        client,
        config(),
        convert::network_policy,
        kinds[2].skipped.clone(),
    );
    let (mut namespaces, mut pods, mut policies) = (pin!(namespaces), pin!(pods), pin!(policies));
    let mut view = ClusterView::new();
    // The view is published once every kind has been listed: enforcing a half-listed view
    // would open (or close) what the cluster's policies do not.
    let mut listed = [false; 3];
    loop {
        let changed = tokio::select! {
            Some(c) = namespaces.next() => kinds[0].event(c, &mut listed[0]).is_some_and(|e| {
                let changed = e.is_some_and(|e| view.handle_namespaces(e));
                kinds[0].ok(view.namespace_count());
                changed
            }),
            Some(c) = pods.next() => kinds[1].event(c, &mut listed[1]).is_some_and(|e| {
                let changed = e.is_some_and(|e| view.handle_pods(e));
                kinds[1].ok(view.pod_count());
                changed
            }),
            Some(c) = policies.next() => kinds[2].event(c, &mut listed[2]).is_some_and(|e| {
                let changed = e.is_some_and(|e| view.handle_policies(e));
                kinds[2].ok(view.policy_count());
                changed
            }),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let complete = listed.iter().all(|l| *l);
        if changed || (complete && view_tx.borrow().is_none()) {
            if complete {
                view_tx.send_replace(Some(crate::policy::PublishedView {
                    view: Arc::new(view.clone()),
                    at: std::time::Instant::now(),
                }));
            }
            health.cluster(ClusterSummary::of(&view, &me));
        }
    }
    debug!("cluster watch stopped");
}

/// One followed kind: its health and skip counter.
struct Kind {
    health: Health,
    skipped: Skipped,
    name: &'static str,
}

impl Kind {
    fn new(health: &KubeHealth, name: &'static str) -> Self {
        Self {
            health: health.watch(name),
            skipped: Skipped::default(),
            name,
        }
    }

    /// The view's event for one item of the stream: `None` when the watch failed (reported
    /// here), `Some(None)` when nothing is to change; a relist sets `listed`.
    fn event<T>(
        &self,
        item: Result<Change<T>, watcher::Error>,
        listed: &mut bool,
    ) -> Option<Option<Event<T>>> {
        match item {
            Err(e) => {
                let e = super::chain(&e);
                warn!(
                    kind = self.name,
                    "watch: {e}; retrying (the last view is kept)"
                );
                self.health.failed(e);
                None
            }
            Ok(Change::Restarted(all)) => {
                *listed = true;
                Some(Some(Event::Restarted(all)))
            }
            Ok(Change::Applied(t)) => Some(Some(Event::Applied(t))),
            Ok(Change::Deleted { namespace, name }) => {
                Some(Some(Event::Deleted { namespace, name }))
            }
            Ok(Change::Skipped) => Some(None),
        }
    }

    /// The watch delivered: in sync, holding `objects`.
    fn ok(&self, objects: usize) {
        self.health.ok(objects, self.skipped.get());
    }
}
