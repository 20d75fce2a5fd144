//! One kind of object followed through `kube-runtime`'s watcher, as changes of weft's own
//! types.
//!
//! The watcher lists (paginated), watches from the list's version with bookmarks, lists again
//! after 410 Gone, and backs off (exponential, jittered) after errors, so a whole cluster of
//! routers does not retry in step after an API outage. Objects arrive untyped and are decoded
//! one by one: an object the router cannot decode or convert is counted, logged once with its
//! kind and name, and skipped; it never stops the stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt as _};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher::Config};
use tracing::warn;

/// What changed, in the converted type `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    /// A full (re)list: every object of the kind, replacing what was known.
    Restarted(Vec<T>),
    /// An object was added or changed.
    Applied(T),
    /// An object was deleted ("" namespace for cluster-scoped kinds).
    Deleted {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// An object arrived that weft cannot use: nothing changed, but the count of skipped
    /// objects did.
    Skipped,
}

/// Objects skipped because they did not decode or convert, over the router's life.
#[derive(Debug, Clone, Default)]
pub struct Skipped(Arc<AtomicU64>);

impl Skipped {
    /// How many were skipped.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Objects per page of a list (the initial one and each relist).
pub const PAGE_SIZE: u32 = 500;

/// The server ends each watch after this long and the client watches again from where it
/// was; a watch silent for this plus 5 s is given up as dead (so a silent server or a dead
/// connection is noticed within about a minute).
pub const WATCH_TIMEOUT_SECS: u32 = 55;

/// Follows every object of kind `K` (e.g. `k8s_openapi::api::core::v1::Node`) in the cluster,
/// converting each with `convert`. Errors are passed on (the stream backs off by itself before
/// its next attempt) so the caller can report them; the stream never ends.
pub fn follow<K, T, E>(
    client: kube::Client,
    config: Config,
    convert: fn(&K) -> Result<T, E>,
    skipped: Skipped,
) -> impl Stream<Item = Result<Change<T>, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Display,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let kind = resource.kind;
    let mut buffer: Option<Vec<T>> = None;
    let mut warned: BTreeSet<String> = BTreeSet::new();
    watcher::watcher(api, config.timeout(WATCH_TIMEOUT_SECS))
        .default_backoff()
        .filter_map(move |event| {
            let change = match event {
                Err(e) => Some(Err(e)),
                Ok(Event::Init) => {
                    buffer = Some(Vec::new());
                    None
                }
                Ok(Event::InitApply(obj)) => {
                    if let Some(t) = decode(&kind, obj, convert, &skipped, &mut warned) {
                        buffer.get_or_insert_with(Vec::new).push(t);
                    }
                    None
                }
                Ok(Event::InitDone) => {
                    Some(Ok(Change::Restarted(buffer.take().unwrap_or_default())))
                }
                Ok(Event::Apply(obj)) => Some(Ok(
                    match decode(&kind, obj, convert, &skipped, &mut warned) {
                        Some(t) => Change::Applied(t),
                        None => Change::Skipped,
                    },
                )),
                Ok(Event::Delete(obj)) => Some(Ok(Change::Deleted {
                    namespace: obj.metadata.namespace.unwrap_or_default(),
                    name: obj.metadata.name.unwrap_or_default(),
                })),
            };
            std::future::ready(change)
        })
}

/// Decodes and converts one object; `None` (counted, logged once per object) when it cannot.
fn decode<K, T, E>(
    kind: &str,
    obj: DynamicObject,
    convert: fn(&K) -> Result<T, E>,
    skipped: &Skipped,
    warned: &mut BTreeSet<String>,
) -> Option<T>
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    E: std::fmt::Display,
{
    let id = match &obj.metadata.namespace {
        Some(ns) => format!("{ns}/{}", obj.metadata.name.as_deref().unwrap_or("?")),
        None => obj.metadata.name.clone().unwrap_or_else(|| "?".to_owned()),
    };
    let result = obj
        .try_parse::<K>()
        .map_err(|e| e.to_string())
        .and_then(|k| convert(&k).map_err(|e| e.to_string()));
    match result {
        Ok(t) => {
            warned.remove(&id);
            Some(t)
        }
        Err(e) => {
            skipped.0.fetch_add(1, Ordering::Relaxed);
            if warned.insert(id.clone()) {
                warn!(kind, object = %id, "skipping an API object weft cannot use: {e}");
            }
            None
        }
    }
}
