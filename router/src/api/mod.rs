//! The local API: routes on the unix socket and the read-only HTTP address, the commands it
//! sends to the daemon loop, and the client the `weft` subcommands use.
//!
//! - [`server`] serves every route on `--api-socket` and only the read-only ones on
//!   `--http-addr`; it reads the published [`crate::status::RouterStatus`] snapshot and sends
//!   [`ApiCommand`]s to the daemon loop over an mpsc channel, each with a oneshot [`Reply`].
//! - [`client`] speaks HTTP/1.1 over the unix socket or TCP, as `--api`/`WEFT_API` says.
//!
//! The routes and bodies are documented in docs/API.md. JSON keys are snake_case; every error
//! is `{"error": "<one line>"}` with a fitting status code.
//!
//! This module never touches the engine: it reads snapshots and sends commands.

pub mod client;
pub mod limits;
pub mod server;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// A command from the API to the daemon loop. Each carries the [`Reply`] to answer it with.
#[derive(Debug)]
pub enum ApiCommand {
    /// Add a connection target (`POST /connect`); persisted with the peers.
    Connect {
        /// `host` or `host:port`, as the user gave it.
        addr: String,
        /// Where to send the outcome.
        reply: Reply,
    },
    /// Remove a connection target (`POST /forget`); existing connections stay up.
    Forget {
        /// `host` or `host:port`, as the user gave it.
        addr: String,
        /// Where to send the outcome.
        reply: Reply,
    },
    /// Remove a peer that is gone for good and reclaim what it held (`POST /rmpeer`).
    RmPeer {
        /// The peer's name or nickname.
        name: String,
        /// Where to send the outcome.
        reply: Reply,
    },
    /// Switch mesh encryption on or off at run time (`POST /encryption`).
    SetEncryption {
        /// The wanted state.
        enabled: bool,
        /// The setting version the change is for (required with `proof`).
        version: Option<u64>,
        /// Hex proof of the mesh password over the record asked for (required to disable
        /// where a password is set).
        proof: Option<String>,
        /// Where to send the outcome.
        reply: Reply,
    },
    /// `POST /ipam/allocate` (from the CNI plugin).
    IpamAllocate {
        /// What to allocate.
        request: topology::api::ipam::AllocateRequest,
        /// Answered with an `AllocateResponse`.
        reply: JsonReply,
    },
    /// `POST /ipam/lookup` (CNI CHECK): the address held, never allocating.
    IpamLookup {
        /// Which attachment.
        request: topology::api::ipam::LookupRequest,
        /// Answered with a `LookupResponse`, or 404.
        reply: JsonReply,
    },
    /// `POST /ipam/release`.
    IpamRelease {
        /// What to release.
        request: topology::api::ipam::ReleaseRequest,
        /// Answered with a `ReleaseResponse`.
        reply: JsonReply,
    },
    /// `POST /ipam/gc`.
    IpamGc {
        /// What to keep.
        request: topology::api::ipam::GcRequest,
        /// Answered with a `ReleaseResponse`.
        reply: JsonReply,
    },
}

/// Where the daemon loop answers a command whose answer is a JSON document.
#[derive(Debug)]
pub struct JsonReply(oneshot::Sender<Result<serde_json::Value, CommandError>>);

impl JsonReply {
    /// Creates a reply and the receiver the API handler waits on.
    pub fn new() -> (
        Self,
        oneshot::Receiver<Result<serde_json::Value, CommandError>>,
    ) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }

    /// Sends the answer; a requester that gave up is ignored.
    pub fn send<T: Serialize>(self, outcome: Result<T, CommandError>) {
        let value = outcome.and_then(|v| {
            serde_json::to_value(v)
                .map_err(|e| CommandError::engine_unavailable(format!("encoding the answer: {e}")))
        });
        let _ = self.0.send(value);
    }
}

/// The channel a command's outcome goes back on.
#[derive(Debug)]
pub struct Reply(oneshot::Sender<Result<CommandOutcome, CommandError>>);

impl Reply {
    /// Creates a reply and the receiver the API server waits on.
    pub fn new() -> (
        Self,
        oneshot::Receiver<Result<CommandOutcome, CommandError>>,
    ) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }

    /// Sends the outcome. A caller that has given up (timeout, closed connection) is ignored.
    pub fn send(self, outcome: Result<CommandOutcome, CommandError>) {
        let _ = self.0.send(outcome);
    }
}

/// What a successful command reports: `{"message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOutcome {
    /// One line for the user.
    pub message: String,
}

impl CommandOutcome {
    /// Creates an outcome with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Why a command failed; the kind picks the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// What kind of failure.
    pub kind: CommandErrorKind,
    /// One line for the user.
    pub message: String,
}

/// The kinds of command failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandErrorKind {
    /// The request made no sense (400).
    BadRequest,
    /// The engine is not running or did not answer (503).
    EngineUnavailable,
    /// The address range has no free address (507).
    Exhausted,
    /// The request lacks a required proof (403).
    Forbidden,
    /// The request was made against state that changed meanwhile (409).
    Conflict,
    /// The feature is not built yet (501).
    NotAvailable,
    /// The named target or peer does not exist (404).
    NotFound,
}

impl CommandError {
    /// A request that made no sense (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            kind: CommandErrorKind::BadRequest,
            message: message.into(),
        }
    }

    /// The engine is not running or did not answer (503).
    pub fn engine_unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: CommandErrorKind::EngineUnavailable,
            message: message.into(),
        }
    }

    /// A feature that a later piece of work provides (501).
    /// The address range is full.
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self {
            kind: CommandErrorKind::Exhausted,
            message: message.into(),
        }
    }

    pub fn not_available(message: impl Into<String>) -> Self {
        Self {
            kind: CommandErrorKind::NotAvailable,
            message: message.into(),
        }
    }

    /// The request lacks a required proof (403).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            kind: CommandErrorKind::Forbidden,
            message: message.into(),
        }
    }

    /// The request was made against state that changed meanwhile (409).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            kind: CommandErrorKind::Conflict,
            message: message.into(),
        }
    }

    /// The named target or peer does not exist (404).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            kind: CommandErrorKind::NotFound,
            message: message.into(),
        }
    }

    /// Returns the HTTP status code for this error.
    pub fn status_code(&self) -> u16 {
        match self.kind {
            CommandErrorKind::BadRequest => 400,
            CommandErrorKind::EngineUnavailable => 503,
            CommandErrorKind::Exhausted => 507,
            CommandErrorKind::Forbidden => 403,
            CommandErrorKind::Conflict => 409,
            CommandErrorKind::NotAvailable => 501,
            CommandErrorKind::NotFound => 404,
        }
    }
}

/// Body of `POST /connect` and `POST /forget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddrRequest {
    /// `host` or `host:port`.
    pub addr: String,
}

/// Body of `POST /rmpeer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmPeerRequest {
    /// The peer's name or nickname.
    pub name: String,
}

/// Body of `POST /encryption`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionRequest {
    /// The wanted state.
    pub enabled: bool,
    /// The version of the record asked for: one more than `GET /encryption`'s `version`.
    /// Required with `proof`; checked when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// 64 hex digits: HMAC-SHA256, keyed from the mesh password, over the record
    /// `{enabled, version, origin = local_origin}` (docs/PROTOCOL.md, "Mesh settings").
    /// Required to disable encryption where a password is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// Every error response: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line for the user.
    pub error: String,
}

/// Where a `weft` subcommand finds its router: `unix:PATH` or `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddr {
    /// HTTP over TCP; only the read-only routes answer here.
    Http {
        /// Host name or address (IPv6 in brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// HTTP over the router's unix socket; every route answers here.
    Unix(PathBuf),
}

impl FromStr for ApiAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "expected unix:PATH or http://HOST:PORT";
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: empty socket path; {form}"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let Some(rest) = s.strip_prefix("http://") else {
            return Err(format!("{s:?}: {form}"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(format!("{s:?}: missing port; {form}"));
        };
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: bad port {port:?}; {form}"))?;
        if host.is_empty() || host.contains('/') {
            return Err(format!("{s:?}: bad host; {form}"));
        }
        Ok(Self::Http {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { host, port } => write!(f, "http://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The default `--api`/`WEFT_API`.
pub const DEFAULT_API: &str = "unix:/run/weft/weft.sock";

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn api_addr_forms() {
        assert_eq!(
            "unix:/run/weft/weft.sock".parse::<ApiAddr>().unwrap(),
            ApiAddr::Unix(PathBuf::from("/run/weft/weft.sock"))
        );
        assert_eq!(
            "http://127.0.0.1:6784".parse::<ApiAddr>().unwrap(),
            ApiAddr::Http {
                host: "127.0.0.1".to_owned(),
                port: 6784
            }
        );
        assert_eq!(
            "http://[::1]:6784/".parse::<ApiAddr>().unwrap(),
            ApiAddr::Http {
                host: "[::1]".to_owned(),
                port: 6784
            }
        );
        for bad in [
            "/run/weft.sock",
            "unix:",
            "http://host",
            "http://:1",
            "tcp://a:1",
            "http://a:x",
        ] {
            let err = bad.parse::<ApiAddr>().unwrap_err();
            assert!(
                err.contains("unix:PATH or http://HOST:PORT"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            DEFAULT_API.parse::<ApiAddr>().unwrap().to_string(),
            DEFAULT_API
        );
    }
}
