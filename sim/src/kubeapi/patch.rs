//! JSON merge patch (RFC 7386) and the part of strategic merge patch that weft's objects use.
//!
//! Strategic merge differs from a merge patch in lists that have a merge key: `conditions`
//! and `addresses` merge by `type`, `containers` and the like by `name`, and so on (the
//! `patchMergeKey` tags of the Kubernetes types, for the fields listed in `MERGE_KEYS`). An
//! item whose key is already in the list merges into that item, the others are appended, and
//! `$patch: delete` removes one. Other directives (`$setElementOrder/…`, `$retainKeys`) are
//! dropped; `$deleteFromPrimitiveList/…` removes values from a list of strings.

use serde_json::{Map, Value};

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    let t = object_mut(target);
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies a strategic merge patch to `target`.
pub(crate) fn strategic(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        strip_directives(&mut replacement);
        *target = replacement;
        return;
    }
    let t = object_mut(target);
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(gone)) =
                (t.get_mut(field).and_then(Value::as_array_mut), v.as_array())
            {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let merge_key = MERGE_KEYS
            .iter()
            .find(|(field, _)| field == k)
            .map(|(_, key)| *key);
        match (merge_key, v.as_array()) {
            (Some(merge_key), Some(items)) => {
                merge_list(t.entry(k.clone()).or_insert(Value::Null), items, merge_key);
            }
            (None, _) | (Some(_), None) if v.is_object() => {
                strategic(t.entry(k.clone()).or_insert(Value::Null), v);
            }
            (None, _) | (Some(_), None) => {
                let mut v = v.clone();
                strip_directives(&mut v);
                t.insert(k.clone(), v);
            }
        }
    }
}

/// Removes `$`-prefixed directive keys everywhere in `v`.
pub(crate) fn strip_directives(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| !k.starts_with('$'));
        o.values_mut().for_each(strip_directives);
    } else if let Some(a) = v.as_array_mut() {
        a.iter_mut().for_each(strip_directives);
    }
}

/// Merges patch `items` into the list `target` by the field `key`.
fn merge_list(target: &mut Value, items: &[Value], key: &str) {
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Some(list) = target.as_array_mut() else {
        return;
    };
    for item in items {
        let Some(id) = item.get(key) else {
            let mut item = item.clone();
            strip_directives(&mut item);
            list.push(item);
            continue;
        };
        let pos = list.iter().position(|x| x.get(key) == Some(id));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(pos) = pos {
                list.remove(pos);
            }
            continue;
        }
        match pos {
            Some(pos) => strategic(&mut list[pos], item),
            None => {
                let mut item = item.clone();
                strip_directives(&mut item);
                list.push(item);
            }
        }
    }
}

/// Makes `v` an object (replacing anything else) and returns its map.
fn object_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        // Set to an object just above.
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_) => {
            unreachable!("object_mut: not an object after replacing it")
        }
    }
}

/// List fields that merge by a key in strategic merge patches, and the key (the
/// `patchMergeKey` of the Kubernetes API types, by field name).
const MERGE_KEYS: &[(&str, &str)] = &[
    ("addresses", "type"),
    ("conditions", "type"),
    ("containers", "name"),
    ("env", "name"),
    ("ephemeralContainers", "name"),
    ("hostIPs", "ip"),
    ("initContainers", "name"),
    ("ownerReferences", "uid"),
    ("podIPs", "ip"),
    ("volumeMounts", "mountPath"),
    ("volumes", "name"),
];
