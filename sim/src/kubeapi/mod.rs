//! A stand-in Kubernetes API server: test infrastructure that lets integration tests and the
//! netns lab run weft's router, with the `kube` client and `kube::runtime::watcher`, without a
//! cluster.
//!
//! **What it serves.** Plain HTTP/1.1 (or TLS with a given certificate) for four kinds, stored
//! as the JSON a real server sends ([`serde_json::Value`]):
//!
//! | Kind | Collection paths |
//! |---|---|
//! | Node | `/api/v1/nodes` |
//! | Namespace | `/api/v1/namespaces` |
//! | Pod | `/api/v1/pods`, `/api/v1/namespaces/NS/pods` |
//! | NetworkPolicy | `/apis/networking.k8s.io/v1/networkpolicies`, `/apis/networking.k8s.io/v1/namespaces/NS/networkpolicies` |
//!
//! Lists page with `limit` and `continue` (a token holding the list's resourceVersion and the
//! last key; pages are consistent: later pages show the state at the first page's version) and
//! filter with `fieldSelector` (any dotted field, `=`, `==`, `!=`) and `labelSelector`. Watches
//! (`watch=true`) stream newline-delimited events from a `resourceVersion` (`""` or `"0"`:
//! synthetic ADDED events for the current objects first), send BOOKMARKs when idle (every
//! second by default) if `allowWatchBookmarks=true`, end after `timeoutSeconds`, and honour
//! `sendInitialEvents=true` (initial events, then a bookmark annotated
//! `k8s.io/initial-events-end`). An object that starts or stops matching a watch's selector
//! arrives as ADDED or DELETED, as from a real server. GET, POST (409 AlreadyExists), PUT
//! (409 Conflict on a stale `metadata.resourceVersion`), DELETE (404 NotFound) and PATCH
//! (merge, strategic merge, apply approximated as merge) work on objects and on their
//! `/status` subresource. One resourceVersion counter covers all kinds. Namespaces carry the
//! label `kubernetes.io/metadata.name`; deleting one deletes the objects in it.
//!
//! **Where it differs from a real server.** Writes keep `status` as given (a real server
//! drops a Pod's status on create and ignores status on the main resource). Deletion is
//! immediate (no graceful termination, finalizers or deletionTimestamp). Objects are not
//! validated beyond kind, name and namespace, and a namespaced object may be created in a
//! namespace that does not exist. JSON patch (`application/json-patch+json`), protobuf,
//! discovery and every other kind are not served.
//!
//! **Faults** ([`Fault`], from Rust with [`StandIn::fault`] or over HTTP): drop every
//! connection and watch at once; answer 429 with `Retry-After` or a 5xx for the next N requests
//! or for a while; go silent for a while; compact, so older resourceVersions get 410 Gone (a
//! watch gets an `ERROR` event with a `Status` of code 410 and reason `Expired`; a list
//! continue gets HTTP 410). Optional bearer tokens answer 401 to anyone else. [`Counts`] counts
//! requests per verb and kind and the watches opened, so tests can assert there was no relist
//! storm.
//!
//! **Admin interface** (never faulted nor authenticated), under `/weft-standin/`:
//! `POST faults` with a JSON fault (see [`Fault`]; e.g. `{"fault":"throttle","retryAfter":2,
//! "requests":3}`, `{"fault":"fail","code":503,"seconds":1.5}`, `{"fault":"silence",
//! "seconds":2}`, `{"fault":"drop"}`, `{"fault":"compact"}`, `{"fault":"clear"}`);
//! `GET counts`; `DELETE counts` (reset); `PUT tokens` with `{"tokens":["a","b"]}` or
//! `{"tokens":null}`; `PUT bookmarks` with `{"intervalMs":N}`.
//!
//! **Running it**: [`serve`] on a listener inside a tokio runtime, [`start`] on a thread of its
//! own (tests), or `weft-sim kube-api --listen ADDR` (the lab). It is a shell: it uses the wall
//! clock and threads, and nothing in the pure crates depends on it.

mod error;
mod faults;
mod http;
mod kind;
mod meta;
mod patch;
mod server;
mod store;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch as signal;

pub use error::ApiError;
pub use faults::{Fault, Span};
pub use kind::Kind;
pub use server::{KubeApiArgs, Server, Tls, run, serve, serve_tls, start, start_tls};

use faults::FaultState;
use kind::Filter;
use store::{Part, Store};

/// A handle on the stand-in's state: objects, faults, tokens and counters. Cheap to clone;
/// every clone is the same server.
#[derive(Clone, Default)]
pub struct StandIn {
    inner: Arc<Inner>,
}

impl StandIn {
    /// Returns an empty stand-in: no objects, no faults, no tokens required.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates the object, or replaces it if it exists (whatever its resourceVersion). Its
    /// kind comes from its `kind` field; a namespaced object without a namespace goes to
    /// `default`.
    ///
    /// # Errors
    ///
    /// BadRequest for an unknown kind, the store's errors otherwise.
    pub fn apply(&self, obj: Value) -> Result<Value, ApiError> {
        let kind = kind_of(&obj)?;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        self.write(|s| {
            if s.get(kind, &ns, &name).is_some() {
                s.replace(kind, &ns, &name, obj, Part::Main, false)
            } else {
                s.create(kind, &ns, obj)
            }
        })
    }

    /// Creates the object (as `POST`).
    ///
    /// # Errors
    ///
    /// BadRequest for an unknown kind, AlreadyExists, Invalid without a name.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let kind = kind_of(&obj)?;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        self.write(|s| s.create(kind, &ns, obj))
    }

    /// Deletes an object (`ns` is ignored for cluster-scoped kinds) and returns its last state.
    ///
    /// # Errors
    ///
    /// NotFound.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.write(|s| s.delete(kind, ns, name))
    }

    /// Returns an object (`ns` is ignored for cluster-scoped kinds).
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        lock(&self.inner.store).get(kind, ns, name).cloned()
    }

    /// Returns the objects of a kind, in one namespace or all, sorted by namespace and name.
    pub fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<Value> {
        lock(&self.inner.store).objects(kind, &Filter::namespace(ns))
    }

    /// Returns the current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv()
    }

    /// Creates the namespaces every cluster has: `default`, `kube-node-lease`, `kube-public`
    /// and `kube-system` (those missing).
    ///
    /// # Errors
    ///
    /// None in practice; the store's errors.
    pub fn add_default_namespaces(&self) -> Result<(), ApiError> {
        for name in ["default", "kube-node-lease", "kube-public", "kube-system"] {
            if self.get(Kind::Namespace, "", name).is_none() {
                self.create(json!({"kind": "Namespace", "metadata": {"name": name}}))?;
            }
        }
        Ok(())
    }

    /// Injects a fault; see [`Fault`].
    pub fn fault(&self, fault: Fault) {
        self.fault_sparing(fault, None);
    }

    /// Returns the request counters.
    pub fn counts(&self) -> Counts {
        lock(&self.inner.counts).clone()
    }

    /// Zeroes the request counters (the number of open watches stays).
    pub fn reset_counts(&self) {
        let mut counts = lock(&self.inner.counts);
        *counts = Counts {
            watches_open: counts.watches_open,
            ..Counts::default()
        };
    }

    /// Requires `Authorization: Bearer T` with T among `tokens` on API requests (401
    /// otherwise); `None` lets every request in.
    pub fn set_tokens(&self, tokens: Option<Vec<String>>) {
        *lock(&self.inner.tokens) = tokens.map(|t| t.into_iter().collect());
    }

    /// Sets how long a watch that asked for bookmarks stays idle before it gets one.
    pub fn set_bookmark_interval(&self, every: Duration) {
        *lock(&self.inner.bookmark_interval) = every;
        self.inner.faults_changed.send_modify(|g| *g += 1);
    }

    /// Injects a fault; a connection drop spares connection `spare` (the admin request's).
    fn fault_sparing(&self, fault: Fault, spare: Option<u64>) {
        match &fault {
            Fault::Compact => lock(&self.inner.store).compact(),
            Fault::DropConnections => self.inner.drops.send_modify(|d| *d = (d.0 + 1, spare)),
            Fault::Clear
            | Fault::Fail { .. }
            | Fault::FailKind { .. }
            | Fault::Silence { .. }
            | Fault::Throttle { .. } => {
                lock(&self.inner.faults).set(&fault, tokio::time::Instant::now());
            }
        }
        self.inner.faults_changed.send_modify(|g| *g += 1);
    }

    /// Runs a write on the store and wakes the watches if it changed anything.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = lock(&self.inner.store);
        let out = f(&mut store);
        let rv = store.rv();
        drop(store);
        self.inner.changed.send_if_modified(|old| {
            let changed = *old != rv;
            *old = rv;
            changed
        });
        out
    }

    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut lock(&self.inner.counts));
    }
}

/// The verbs the API counts requests by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// POST to a collection.
    Create,
    /// DELETE of an object.
    Delete,
    /// GET of an object.
    Get,
    /// GET of a collection.
    List,
    /// PATCH of an object or its status.
    Patch,
    /// PUT of an object or its status.
    Update,
    /// GET of a collection with `watch=true`.
    Watch,
}

impl Verb {
    /// Returns the verb as Kubernetes' audit logs name it, e.g. `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Get => "get",
            Self::List => "list",
            Self::Patch => "patch",
            Self::Update => "update",
            Self::Watch => "watch",
        }
    }
}

/// Request counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    requests: BTreeMap<(Verb, Kind), u64>,
    watches_opened: BTreeMap<Kind, u64>,
    watches_open: u64,
    connections: u64,
    unauthorized: u64,
    faulted: u64,
}

impl Counts {
    /// Returns the number of API requests with this verb and kind, whatever their answer
    /// (faulted, unauthorized and silenced ones included).
    pub fn requests(&self, verb: Verb, kind: Kind) -> u64 {
        self.requests.get(&(verb, kind)).copied().unwrap_or(0)
    }

    /// Returns the number of watches of `kind` that started streaming.
    pub fn watches_opened(&self, kind: Kind) -> u64 {
        self.watches_opened.get(&kind).copied().unwrap_or(0)
    }

    /// Returns the number of watches streaming now.
    pub fn watches_open(&self) -> u64 {
        self.watches_open
    }

    /// Returns the number of connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// Returns the number of requests answered 401.
    pub fn unauthorized(&self) -> u64 {
        self.unauthorized
    }

    /// Returns the number of requests answered by a throttle or fail fault.
    pub fn faulted(&self) -> u64 {
        self.faulted
    }

    /// Returns the counters as JSON: `{"requests":{"list nodes":2,...},"watchesOpened":
    /// {"nodes":1},"watchesOpen":1,"connections":3,"unauthorized":0,"faulted":0}`.
    pub fn to_json(&self) -> Value {
        let requests: serde_json::Map<String, Value> = self
            .requests
            .iter()
            .map(|((verb, kind), n)| (format!("{} {kind}", verb.as_str()), (*n).into()))
            .collect();
        let opened: serde_json::Map<String, Value> = self
            .watches_opened
            .iter()
            .map(|(kind, n)| (kind.to_string(), (*n).into()))
            .collect();
        json!({
            "requests": requests,
            "watchesOpened": opened,
            "watchesOpen": self.watches_open,
            "connections": self.connections,
            "unauthorized": self.unauthorized,
            "faulted": self.faulted,
        })
    }
}

/// The shared state behind every `StandIn` clone.
struct Inner {
    store: Mutex<Store>,
    /// The store's resourceVersion after each write; watches wait on it.
    changed: signal::Sender<u64>,
    faults: Mutex<FaultState>,
    /// Bumped on every fault or setting change; silenced watches and requests wait on it.
    faults_changed: signal::Sender<u64>,
    /// (epoch, spared connection): a new epoch closes every connection but the spared one.
    drops: signal::Sender<(u64, Option<u64>)>,
    tokens: Mutex<Option<BTreeSet<String>>>,
    counts: Mutex<Counts>,
    bookmark_interval: Mutex<Duration>,
    next_connection: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            store: Mutex::default(),
            changed: signal::Sender::new(0),
            faults: Mutex::default(),
            faults_changed: signal::Sender::new(0),
            drops: signal::Sender::new((0, None)),
            tokens: Mutex::default(),
            counts: Mutex::default(),
            bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
            next_connection: AtomicU64::new(1),
        }
    }
}

/// Locks a mutex; a panicked holder cannot leave the stand-in's state half-written in a way
/// that matters to a test, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Returns the kind an object names in its `kind` field.
fn kind_of(obj: &Value) -> Result<Kind, ApiError> {
    let name = obj["kind"].as_str().unwrap_or("");
    Kind::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| ApiError::bad_request(format!("unknown kind {name:?}")))
}

/// The default idle time before a watch gets a bookmark.
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
