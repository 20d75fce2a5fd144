//! Object metadata as a real API server keeps it: type checks, namespaces, preconditions,
//! stamping (versions, defaults), UIDs, timestamps, and the opaque continue tokens of lists.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::kind::Kind;
use super::store::Key;

/// Rejects an object whose `apiVersion` or `kind` names another kind.
pub(crate) fn check_type(kind: Kind, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "{kind}: the body is not an object"
        )));
    }
    for (field, want) in [("kind", kind.name()), ("apiVersion", kind.api_version())] {
        if let Some(got) = obj.get(field).and_then(Value::as_str)
            && !got.is_empty()
            && got != want
        {
            return Err(ApiError::bad_request(format!(
                "{kind}: {field} {got:?} does not match the URL's {want:?}"
            )));
        }
    }
    Ok(())
}

/// Returns the namespace a new object goes to: the URL's, which the body may repeat.
pub(crate) fn namespace_of(kind: Kind, url_ns: &str, obj: &Value) -> Result<String, ApiError> {
    if !kind.namespaced() {
        return Ok(String::new());
    }
    let body_ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    match (url_ns.is_empty(), body_ns.is_empty()) {
        (true, true) => Ok("default".into()),
        (true, false) => Ok(body_ns.into()),
        (false, true) => Ok(url_ns.into()),
        (false, false) if url_ns == body_ns => Ok(url_ns.into()),
        (false, false) => Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({body_ns}) does not match the namespace \
             sent on the request ({url_ns})"
        ))),
    }
}

/// Fails with Conflict when `obj` names a resourceVersion other than the stored one.
pub(crate) fn check_precondition(
    kind: Kind,
    name: &str,
    obj: &Value,
    existing: &Value,
) -> Result<(), ApiError> {
    let want = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !want.is_empty() && Some(want) != existing["metadata"]["resourceVersion"].as_str() {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {kind} {name:?}: the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the body is not an object".into()));
    };
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not an object".into()))
}

/// Sets `apiVersion`, `kind`, the version (unless 0) and the defaults a real server adds.
pub(crate) fn stamp(kind: Kind, obj: &mut Value, rv: u64) {
    obj["apiVersion"] = kind.api_version().into();
    obj["kind"] = kind.name().into();
    if rv != 0 {
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
    }
    match kind {
        Kind::Namespace => {
            let name = obj["metadata"]["name"].clone();
            if !obj["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj["status"]["phase"].is_null() {
                obj["status"]["phase"] = "Active".into();
            }
        }
        Kind::Pod => {
            if obj["status"]["phase"].is_null() {
                obj["status"]["phase"] = "Pending".into();
            }
        }
        Kind::NetworkPolicy | Kind::Node => {}
    }
}

/// A continue token: the list's version and the last key served, as hex of a small JSON.
pub(crate) fn encode_continue(rv: u64, last: &Key) -> String {
    let raw = json!({"rv": rv, "ns": last.0, "name": last.1}).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_continue(token: &str) -> Option<(u64, Key)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let rv = v["rv"].as_u64()?;
    Some((
        rv,
        (v["ns"].as_str()?.to_owned(), v["name"].as_str()?.to_owned()),
    ))
}

/// A random version-4 UUID.
pub(crate) fn uid() -> String {
    let r: u128 = rand::random();
    let r = (r & !(0xf_u128 << 76) | (0x4_u128 << 76)) & !(0x3_u128 << 62) | (0x2_u128 << 62);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Five characters for `generateName`, from the alphabet the API server uses.
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[rand::random::<usize>() % ALPHABET.len()]))
        .collect()
}

/// RFC 3339 in UTC with second precision, as `metav1.Time` serialises.
pub(crate) fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}
