//! The kinds the stand-in serves, and the field and label selectors that filter them.

use std::fmt;

use serde_json::Value;

use super::error::ApiError;

/// A kind of object the stand-in stores and serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `networking.k8s.io/v1` NetworkPolicy (namespaced).
    NetworkPolicy,
    /// `v1` Node (cluster-scoped).
    Node,
    /// `v1` Pod (namespaced).
    Pod,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 4] = [Self::Namespace, Self::NetworkPolicy, Self::Node, Self::Pod];

    /// Returns the kind's `kind` field, e.g. `Node`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::Node => "Node",
            Self::Pod => "Pod",
        }
    }

    /// Returns the kind's `apiVersion`, e.g. `v1` or `networking.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "networking.k8s.io/v1",
            Self::Namespace | Self::Node | Self::Pod => "v1",
        }
    }

    /// Returns the resource name used in URLs, e.g. `nodes`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::NetworkPolicy => "networkpolicies",
            Self::Node => "nodes",
            Self::Pod => "pods",
        }
    }

    /// Returns true for kinds that live in a namespace.
    pub fn namespaced(self) -> bool {
        match self {
            Self::NetworkPolicy | Self::Pod => true,
            Self::Namespace | Self::Node => false,
        }
    }

    /// Returns the kind named by a `kind` field (`Node`) or a URL resource name (`nodes`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s || k.plural() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

/// Which objects a list or watch returns: a namespace, field and label requirements.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub(crate) namespace: Option<String>,
    fields: Vec<Requirement>,
    labels: Vec<Requirement>,
}

impl Filter {
    /// Builds a filter from a URL namespace and the `fieldSelector` and `labelSelector`
    /// query parameters.
    pub(crate) fn new(
        namespace: Option<String>,
        fields: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Self, ApiError> {
        let fields = match fields {
            Some(s) => parse_fields(s)?,
            None => Vec::new(),
        };
        let labels = match labels {
            Some(s) => parse_labels(s)?,
            None => Vec::new(),
        };
        Ok(Self {
            namespace,
            fields,
            labels,
        })
    }

    /// Builds a filter that passes the objects of one namespace, or all.
    pub(crate) fn namespace(namespace: Option<&str>) -> Self {
        Self {
            namespace: namespace.map(str::to_owned),
            ..Self::default()
        }
    }

    /// Returns true if the filter has no field or label requirements.
    pub(crate) fn has_selectors(&self) -> bool {
        !self.fields.is_empty() || !self.labels.is_empty()
    }

    /// Returns true if `obj` passes the filter.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && obj["metadata"]["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        let field = |key: &str| Some(field_value(obj, key));
        let label = |key: &str| obj["metadata"]["labels"][key].as_str().map(str::to_owned);
        self.fields.iter().all(|r| r.matches(field)) && self.labels.iter().all(|r| r.matches(label))
    }
}

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    Exists(String),
    In(String, Vec<String>),
    NotEquals(String, String),
    NotExists(String),
    NotIn(String, Vec<String>),
}

impl Requirement {
    /// Evaluates the requirement, `lookup` giving a key's value (None: absent).
    fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Self::Equals(k, v) => lookup(k).as_deref() == Some(v.as_str()),
            Self::Exists(k) => lookup(k).is_some(),
            Self::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Self::NotEquals(k, v) => lookup(k).as_deref() != Some(v.as_str()),
            Self::NotExists(k) => lookup(k).is_none(),
            Self::NotIn(k, vs) => !lookup(k).is_some_and(|x| vs.contains(&x)),
        }
    }
}

/// Returns the value of a dotted field path as the API server compares it: strings as they
/// are, numbers and booleans printed, anything absent as the empty string.
fn field_value(obj: &Value, path: &str) -> String {
    let mut v = obj;
    for part in path.split('.') {
        v = &v[part];
    }
    if let Some(s) = v.as_str() {
        s.to_owned()
    } else if v.is_null() {
        String::new()
    } else {
        v.to_string()
    }
}

/// Parses `a=b,c!=d` (also `a==b`).
fn parse_fields(s: &str) -> Result<Vec<Requirement>, ApiError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector {s:?}: {part:?} has no operator"
            )));
        };
        out.push(req);
    }
    Ok(out)
}

/// Parses a label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`,
/// joined by commas.
fn parse_labels(s: &str) -> Result<Vec<Requirement>, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid label selector {s:?}: {why}"));
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0_i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(bad("unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced parentheses"));
    }
    parts.push(&s[start..]);
    let mut out = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let set = |rest: &str| -> Result<Vec<String>, ApiError> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad("expected (values) after in/notin"))?;
            Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
        };
        let req = if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, rest)) = part.split_once(" notin ") {
            Requirement::NotIn(k.trim().to_owned(), set(rest)?)
        } else if let Some((k, rest)) = part.split_once(" in ") {
            Requirement::In(k.trim().to_owned(), set(rest)?)
        } else if part.contains(char::is_whitespace) || part.contains('(') {
            return Err(bad("unknown operator"));
        } else {
            Requirement::Exists(part.to_owned())
        };
        out.push(req);
    }
    Ok(out)
}
