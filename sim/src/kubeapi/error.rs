//! The errors the API answers with, as `Status` objects.

use std::fmt;

use serde_json::{Value, json};

use super::kind::Kind;

/// An error the API answers with: an HTTP code, a `Status` reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status code, e.g. 404.
    pub code: u16,
    /// The `Status` reason, e.g. `NotFound`.
    pub reason: &'static str,
    /// A human-readable message.
    pub message: String,
    /// The `Status` details (`Value::Null` for none).
    pub details: Value,
}

impl ApiError {
    /// Builds an error from its parts, without details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// Returns the `Status` object a real API server sends for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }

    pub(crate) fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(kind: Kind, name: &str) -> Self {
        Self {
            details: json!({"name": name, "kind": kind.plural()}),
            ..Self::new(404, "NotFound", format!("{kind} {name:?} not found"))
        }
    }

    pub(crate) fn gone(message: String) -> Self {
        Self::new(410, "Expired", message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}
