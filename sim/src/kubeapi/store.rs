//! The object store: current objects per kind, one resourceVersion counter, and the history of
//! changes that watches and paginated lists read.
//!
//! Every write takes the next resourceVersion and appends one event to the history. The
//! history is the single source for watches (events after a version) and for consistent
//! pagination (the state at a version is the current state with later events undone). The
//! compaction point gates both: a version older than it is answered with 410 Gone.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde_json::{Value, json};

use super::error::ApiError;
use super::kind::{Filter, Kind};
use super::meta::{
    check_precondition, check_type, decode_continue, encode_continue, metadata_mut, namespace_of,
    random_suffix, stamp, timestamp, uid,
};
use super::patch;

/// The type of a change, as watch events name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Deleted,
    Modified,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Deleted => "DELETED",
            Self::Modified => "MODIFIED",
        }
    }
}

/// One change in the history.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) ty: EventType,
    /// The object after the change (for a deletion: its last state, stamped with `rv`).
    pub(crate) object: Value,
    /// The object before a modification or deletion.
    pub(crate) prev: Option<Value>,
}

/// Which part of an object a write changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The object (the stand-in keeps the status given here too, unlike a real server).
    Main,
    /// The `status` subresource: only `status` changes.
    Status,
}

/// How a PATCH body is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/apply-patch+yaml`, approximated as a merge patch that creates.
    Apply,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

/// Query of a list: filter, page size, continue token, resourceVersion semantics.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListQuery {
    pub(crate) filter: Filter,
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
    /// `resourceVersion` with `resourceVersionMatch=Exact`: the state at that version.
    pub(crate) exact_rv: Option<u64>,
}

/// Namespace and name: the key objects sort by.
pub(crate) type Key = (String, String);

/// The store. It is a plain value; `StandIn` holds it behind a mutex.
#[derive(Debug, Default)]
pub(crate) struct Store {
    rv: u64,
    /// Versions older than this are gone for watches and continue tokens.
    compacted: u64,
    /// Events up to this version have left the history.
    trimmed: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    history: VecDeque<Event>,
}

impl Store {
    /// Returns the current resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// Returns the compaction point.
    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Moves the compaction point to the current version.
    pub(crate) fn compact(&mut self) {
        self.compacted = self.rv;
    }

    pub(crate) fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&kind)?.get(&key(kind, ns, name))
    }

    /// Returns the current objects of a kind that pass `filter`, in key order.
    pub(crate) fn objects(&self, kind: Kind, filter: &Filter) -> Vec<Value> {
        self.objects
            .get(&kind)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|o| filter.matches(o))
            .cloned()
            .collect()
    }

    /// Creates an object in namespace `ns` (ignored for cluster-scoped kinds; for namespaced
    /// kinds, the object's own namespace is used when `ns` is empty).
    ///
    /// # Errors
    ///
    /// BadRequest for a wrong kind or namespace, Invalid without a name, AlreadyExists.
    pub(crate) fn create(
        &mut self,
        kind: Kind,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        check_type(kind, &obj)?;
        let ns = namespace_of(kind, ns, &obj)?;
        let meta = metadata_mut(&mut obj)?;
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if prefix.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("{kind}: metadata.name or metadata.generateName is required"),
                ));
            }
            name = format!("{prefix}{}", random_suffix());
        }
        let k = key(kind, &ns, &name);
        if self.objects.get(&kind).is_some_and(|m| m.contains_key(&k)) {
            return Err(ApiError {
                details: json!({"name": name, "kind": kind.plural()}),
                ..ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{kind} {name:?} already exists"),
                )
            });
        }
        meta.insert("name".into(), name.into());
        if kind.namespaced() {
            meta.insert("namespace".into(), ns.into());
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), uid().into());
        meta.insert(
            "creationTimestamp".into(),
            timestamp(SystemTime::now()).into(),
        );
        meta.insert("generation".into(), 1.into());
        meta.remove("deletionTimestamp");
        self.rv += 1;
        stamp(kind, &mut obj, self.rv);
        self.objects.entry(kind).or_default().insert(k, obj.clone());
        self.record(kind, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an object, or its status.
    ///
    /// # Errors
    ///
    /// NotFound, BadRequest for a mismatched kind or name, Conflict when `obj` carries a
    /// resourceVersion other than the stored one and `check_rv` is set.
    pub(crate) fn replace(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        obj: Value,
        part: Part,
        check_rv: bool,
    ) -> Result<Value, ApiError> {
        check_type(kind, &obj)?;
        let Some(existing) = self.get(kind, ns, name).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        if let Some(n) = obj["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if check_rv {
            check_precondition(kind, name, &obj, &existing)?;
        }
        let new = match part {
            Part::Main => obj,
            Part::Status => {
                let mut new = existing.clone();
                new["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
                new
            }
        };
        self.update(kind, existing, new)
    }

    /// Patches an object, or its status. An apply patch creates a missing object.
    ///
    /// # Errors
    ///
    /// NotFound, Conflict on a failed resourceVersion precondition, the errors of `create`.
    pub(crate) fn patch(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        ty: PatchType,
        body: &Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "a patch must be a JSON object".into(),
            ));
        }
        let Some(existing) = self.get(kind, ns, name).cloned() else {
            if ty == PatchType::Apply {
                let mut obj = body.clone();
                patch::strip_directives(&mut obj);
                metadata_mut(&mut obj)?.insert("name".into(), name.into());
                return self.create(kind, ns, obj);
            }
            return Err(ApiError::not_found(kind, name));
        };
        check_precondition(kind, name, body, &existing)?;
        let mut patched = existing.clone();
        match ty {
            PatchType::Apply | PatchType::Merge => patch::merge(&mut patched, body),
            PatchType::Strategic => patch::strategic(&mut patched, body),
        }
        let new = match part {
            Part::Main => patched,
            Part::Status => {
                let mut new = existing.clone();
                new["status"] = patched["status"].take();
                new
            }
        };
        self.update(kind, existing, new)
    }

    /// Deletes an object; deleting a namespace deletes the objects in it first.
    ///
    /// # Errors
    ///
    /// NotFound.
    pub(crate) fn delete(&mut self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        let k = key(kind, ns, name);
        if !self.objects.get(&kind).is_some_and(|m| m.contains_key(&k)) {
            return Err(ApiError::not_found(kind, name));
        }
        if kind == Kind::Namespace {
            for inner in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
                let names: Vec<String> = self
                    .objects
                    .get(&inner)
                    .into_iter()
                    .flat_map(BTreeMap::keys)
                    .filter(|(n, _)| n == name)
                    .map(|(_, object)| object.clone())
                    .collect();
                for object in names {
                    self.delete(inner, name, &object)?;
                }
            }
        }
        let Some(mut obj) = self.objects.get_mut(&kind).and_then(|m| m.remove(&k)) else {
            return Err(ApiError::not_found(kind, name));
        };
        let prev = obj.clone();
        self.rv += 1;
        stamp(kind, &mut obj, self.rv);
        self.record(kind, EventType::Deleted, obj.clone(), Some(prev));
        Ok(obj)
    }

    /// Lists objects: one page of the state at the list's version.
    ///
    /// # Errors
    ///
    /// BadRequest for a malformed continue token, Expired (410) for a version older than the
    /// compaction point.
    pub(crate) fn list(&self, kind: Kind, query: &ListQuery) -> Result<Value, ApiError> {
        let (at, start) = match &query.continue_token {
            Some(token) => {
                let (rv, start) = decode_continue(token).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid continue token {token:?}"))
                })?;
                (rv, Some(start))
            }
            None => (query.exact_rv.unwrap_or(self.rv), None),
        };
        if at < self.compacted {
            return Err(ApiError::gone(if start.is_some() {
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter."
                    .into()
            } else {
                format!("too old resource version: {at} ({})", self.compacted)
            }));
        }
        let state = self.state_at(kind, at);
        let limit = query.limit.filter(|&l| l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more = false;
        let mut last = None;
        let after = state.range::<Key, _>((
            start
                .as_ref()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            std::ops::Bound::Unbounded,
        ));
        let mut remaining = 0_usize;
        for (k, obj) in after {
            if !query.filter.matches(obj) {
                continue;
            }
            if items.len() == limit {
                more = true;
                remaining += 1;
                continue;
            }
            items.push(obj.clone());
            last = Some(k.clone());
        }
        let mut metadata = json!({"resourceVersion": at.to_string()});
        if more && let Some(last) = last {
            metadata["continue"] = encode_continue(at, &last).into();
            if !query.filter.has_selectors() {
                metadata["remainingItemCount"] = remaining.into();
            }
        }
        Ok(json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Returns the events of `kind` after version `pos`, and the version they reach.
    ///
    /// # Errors
    ///
    /// Expired when events after `pos` have left the history.
    pub(crate) fn events_since(&self, kind: Kind, pos: u64) -> Result<(Vec<Event>, u64), ApiError> {
        if pos < self.trimmed {
            return Err(ApiError::gone(format!(
                "too old resource version: {pos} ({})",
                self.trimmed
            )));
        }
        let first = self.history.partition_point(|e| e.rv <= pos);
        let events = self
            .history
            .range(first..)
            .filter(|e| e.kind == kind)
            .cloned()
            .collect();
        Ok((events, self.rv.max(pos)))
    }

    /// Writes `new` over `existing`, unless nothing but the version would change.
    fn update(&mut self, kind: Kind, existing: Value, mut new: Value) -> Result<Value, ApiError> {
        let meta = metadata_mut(&mut new)?;
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "name",
            "namespace",
        ] {
            match existing["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if existing.get("spec") != new.get("spec") {
            let generation = existing["metadata"]["generation"].as_u64().unwrap_or(0);
            new["metadata"]["generation"] = (generation + 1).into();
        }
        let old_rv = existing["metadata"]["resourceVersion"].clone();
        stamp(kind, &mut new, 0);
        new["metadata"]["resourceVersion"] = old_rv;
        if new == existing {
            return Ok(existing);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = self.rv.to_string().into();
        let ns = existing["metadata"]["namespace"].as_str().unwrap_or("");
        let name = existing["metadata"]["name"].as_str().unwrap_or("");
        let k = key(kind, ns, name);
        self.objects.entry(kind).or_default().insert(k, new.clone());
        self.record(kind, EventType::Modified, new.clone(), Some(existing));
        Ok(new)
    }

    /// Appends an event, trimming the oldest ones past `MAX_HISTORY`.
    fn record(&mut self, kind: Kind, ty: EventType, object: Value, prev: Option<Value>) {
        self.history.push_back(Event {
            rv: self.rv,
            kind,
            ty,
            object,
            prev,
        });
        while self.history.len() > MAX_HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.trimmed = e.rv;
                self.compacted = self.compacted.max(e.rv);
            }
        }
    }

    /// Returns the objects of `kind` as they were at version `at` (not older than the
    /// compaction point): the current ones with later events undone.
    fn state_at(&self, kind: Kind, at: u64) -> BTreeMap<Key, Value> {
        let mut state = self.objects.get(&kind).cloned().unwrap_or_default();
        let first = self.history.partition_point(|e| e.rv <= at);
        for e in self.history.range(first..).rev().filter(|e| e.kind == kind) {
            let ns = e.object["metadata"]["namespace"].as_str().unwrap_or("");
            let name = e.object["metadata"]["name"].as_str().unwrap_or("");
            let k = key(kind, ns, name);
            match (e.ty, &e.prev) {
                (EventType::Added, _) => {
                    state.remove(&k);
                }
                (EventType::Deleted | EventType::Modified, Some(prev)) => {
                    state.insert(k, prev.clone());
                }
                // Every modification and deletion records the object before it.
                (EventType::Deleted | EventType::Modified, None) => {}
            }
        }
        state
    }
}

/// Returns the store key of an object.
fn key(kind: Kind, ns: &str, name: &str) -> Key {
    let ns = if kind.namespaced() { ns } else { "" };
    (ns.to_owned(), name.to_owned())
}

/// Events kept for watches and continue tokens; older ones leave and move the compaction
/// point with them.
const MAX_HISTORY: usize = 100_000;
