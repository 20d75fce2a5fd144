//! CNI error results: the spec's well-known codes and the JSON object printed on failure.

use std::fmt;

use serde::Serialize;

/// A failed CNI operation: the code, a short message and the details that name what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    /// Numeric code (see the `code` module).
    pub code: u32,
    /// Short message characterising the error.
    pub msg: String,
    /// Longer description naming the offending variable, key, device or address.
    pub details: String,
}

/// The error codes weft uses; 1–99 are the spec's, 100+ are weft's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (the message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (stdin, netlink, the router's socket).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin JSON, prevResult, the router's answer).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the router or its IPAM is not up, or the range is exhausted.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (STATUS: the router is unreachable or not ready).
    pub const NOT_AVAILABLE: u32 = 50;
    /// weft's own: CHECK found the attachment not as `prevResult` describes it.
    pub const CHECK_FAILED: u32 = 100;
}

impl CniError {
    /// Makes an error with a code, a short message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Renders the spec's error object for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        let wire = Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // Serialising a struct of strings and an integer cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {}): {}", self.msg, self.code, self.details)
    }
}

impl std::error::Error for CniError {}
