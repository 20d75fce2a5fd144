//! The Kubernetes objects weft follows for NetworkPolicy: namespaces, pods and network
//! policies, as plain values, and [`ClusterView`], the current set of each.
//!
//! The types in [`types`] carry only what NetworkPolicy (`networking.k8s.io/v1`) enforcement
//! reads, with the API's defaults applied, so that a policy engine never sees the API's
//! optional fields:
//!
//! - `policyTypes` is held effectively: [`NetworkPolicy::ingress`] and
//!   [`NetworkPolicy::egress`] are `Some` exactly for the directions the policy isolates. When
//!   `policyTypes` is absent, ingress always is and egress is iff the policy has at least one
//!   egress rule (the API server's defaulting); rules of a direction that `policyTypes` leaves
//!   out are dropped;
//! - a port's protocol defaults to TCP, and `endPort` absent is a one-port range;
//! - a peer's absent `podSelector` is the empty selector, while an absent
//!   `namespaceSelector` stays `None` (the policy's own namespace; the empty selector is every
//!   namespace);
//! - a namespace carries the `kubernetes.io/metadata.name` label the API server sets;
//! - a finished pod (phase `Succeeded` or `Failed`) has no addresses.
//!
//! The router's shell (its `kube` module) watches the three kinds, converts each object from
//! the API's types (`kube::convert`; objects the API server would have refused are errors
//! there and never reach this module) and hands them over as [`Event`]s: a full relist as
//! [`Event::Restarted`], then [`Event::Applied`] and [`Event::Deleted`] as the watch reports
//! them. [`ClusterView::revision`] grows by one with each event that changed the view, so a
//! policy engine recomputes only when it moved. Pure: no I/O, no clock.

pub mod types;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use types::{
    ContainerPort, LabelSelector, Labels, NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy, Operator,
    Peer, Pod, PolicyPort, PolicyTypes, PortSpec, Protocol, Requirement, Rule,
};

/// A change to one kind of object, as a watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// A full list (at start, or after the watch was lost): it replaces every object of the
    /// kind. When it names an object twice, the later one wins.
    Restarted(Vec<T>),
    /// An object was created or changed.
    Applied(T),
    /// An object was deleted. For namespaces, `namespace` is empty (and ignored).
    Deleted {
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
    },
}

/// A namespaced object's key: (namespace, name).
pub type ObjectKey = (String, String);

/// The cluster's current namespaces, pods and network policies.
///
/// Inputs are the `handle_*` methods, one per kind; each returns whether the view changed,
/// and every call that changed it bumps [`revision`](Self::revision) by exactly one (a
/// relist that changes a hundred objects is one bump). Applying an object equal to the one
/// held, or deleting one that is not there, changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<ObjectKey, Pod>,
    policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// Node name to the pods scheduled there (an index over `pods`).
    by_node: BTreeMap<String, BTreeSet<ObjectKey>>,
    revision: u64,
}

/// The view's size, for status and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterCounts {
    /// Namespaces held.
    pub namespaces: usize,
    /// Pods held.
    pub pods: usize,
    /// Network policies held.
    pub policies: usize,
    /// [`ClusterView::revision`].
    pub revision: u64,
}

impl ClusterView {
    /// An empty view at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one change per call that changed something.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Applies a namespace event; true when the view changed.
    pub fn handle_namespaces(&mut self, event: Event<Namespace>) -> bool {
        let changed = apply(
            &mut self.namespaces,
            event,
            |ns| ns.name.clone(),
            |_, name| name,
            |_, _| {},
        );
        self.bump(changed)
    }

    /// Applies a pod event; true when the view changed.
    pub fn handle_pods(&mut self, event: Event<Pod>) -> bool {
        let by_node = &mut self.by_node;
        let changed = apply(
            &mut self.pods,
            event,
            |p| (p.namespace.clone(), p.name.clone()),
            |namespace, name| (namespace, name),
            |old, new| {
                if let Some(p) = old
                    && let Some(node) = &p.node
                    && let Some(set) = by_node.get_mut(node)
                {
                    set.remove(&(p.namespace.clone(), p.name.clone()));
                    if set.is_empty() {
                        by_node.remove(node);
                    }
                }
                if let Some(p) = new
                    && let Some(node) = &p.node
                {
                    by_node
                        .entry(node.clone())
                        .or_default()
                        .insert((p.namespace.clone(), p.name.clone()));
                }
            },
        );
        self.bump(changed)
    }

    /// Applies a network policy event; true when the view changed.
    pub fn handle_policies(&mut self, event: Event<NetworkPolicy>) -> bool {
        let changed = apply(
            &mut self.policies,
            event,
            |p| (p.namespace.clone(), p.name.clone()),
            |namespace, name| (namespace, name),
            |_, _| {},
        );
        self.bump(changed)
    }

    fn bump(&mut self, changed: bool) -> bool {
        if changed {
            self.revision = self.revision.saturating_add(1);
        }
        changed
    }

    /// The namespace called `name`.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> + '_ {
        self.namespaces.values()
    }

    /// The pod `name` in `namespace`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every pod, by namespace then name.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> + '_ {
        self.pods.values()
    }

    /// The pods of `namespace`, by name.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .range((namespace.to_owned(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, p)| p)
    }

    /// The pods scheduled on `node`, by namespace then name.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// The network policy `name` in `namespace`.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&NetworkPolicy> {
        self.policies.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every network policy, by namespace then name.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> + '_ {
        self.policies.values()
    }

    /// How many namespaces are held.
    pub fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    /// How many pods are held.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// How many network policies are held.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The counts and the revision.
    pub fn counts(&self) -> ClusterCounts {
        ClusterCounts {
            namespaces: self.namespaces.len(),
            pods: self.pods.len(),
            policies: self.policies.len(),
            revision: self.revision,
        }
    }
}

/// Applies `event` to `map`, calling `changed(old, new)` for every object that was added
/// (`None`, `Some`), replaced (`Some`, `Some`) or removed (`Some`, `None`). True when anything
/// changed.
fn apply<K: Ord + Clone, T: PartialEq>(
    map: &mut BTreeMap<K, T>,
    event: Event<T>,
    key_of: impl Fn(&T) -> K,
    deleted_key: impl FnOnce(String, String) -> K,
    mut changed: impl FnMut(Option<&T>, Option<&T>),
) -> bool {
    match event {
        Event::Applied(object) => {
            let key = key_of(&object);
            if map.get(&key) == Some(&object) {
                return false;
            }
            changed(map.get(&key), Some(&object));
            map.insert(key, object);
            true
        }
        Event::Deleted { namespace, name } => match map.remove(&deleted_key(namespace, name)) {
            Some(old) => {
                changed(Some(&old), None);
                true
            }
            None => false,
        },
        Event::Restarted(objects) => {
            let mut fresh = BTreeMap::new();
            for object in objects {
                fresh.insert(key_of(&object), object);
            }
            let mut any = false;
            for (key, old) in map.iter() {
                if !fresh.contains_key(key) {
                    changed(Some(old), None);
                    any = true;
                }
            }
            for (key, new) in &fresh {
                let old = map.get(key);
                if old != Some(new) {
                    changed(old, Some(new));
                    any = true;
                }
            }
            if any {
                *map = fresh;
            }
            any
        }
    }
}
