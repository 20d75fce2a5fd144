//! The router's IPAM API, shared by the router (server) and the CNI plugin (client): request
//! and response bodies of the HTTP/1.1 routes on the router's unix socket. JSON keys are
//! snake_case.
//!
//! Plain serde data. Unknown fields are accepted, so either side can add fields.

use serde::{Deserialize, Serialize};

/// Route that allocates (or returns the existing) address of one attachment.
pub const ALLOCATE_PATH: &str = "/ipam/allocate";
/// Route that returns the address held for one attachment, without allocating (CNI CHECK).
pub const LOOKUP_PATH: &str = "/ipam/lookup";
/// Route that releases the addresses of one attachment.
pub const RELEASE_PATH: &str = "/ipam/release";
/// Route that releases this node's allocations of a network that are not in a list.
pub const GC_PATH: &str = "/ipam/gc";
/// Route that reports whether the router can serve IPAM requests.
pub const READY_PATH: &str = "/ready";

/// Body of `POST /ipam/allocate`. The same `container_id` and `ifname` always get the same
/// address while the allocation is held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateRequest {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The netconf `name`.
    pub network: String,
}

/// Answer of `POST /ipam/allocate` (HTTP 200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateResponse {
    /// Address with prefix length, e.g. `10.32.0.5/12`.
    pub ip: String,
    /// The gateway: the address of the node's bridge, e.g. `10.32.0.1`.
    pub gateway: String,
}

/// Body of `POST /ipam/lookup`: which attachment's address to report. Read-only: nothing is
/// allocated; an attachment without an address answers 404.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The netconf `name`.
    pub network: String,
}

/// Answer of `POST /ipam/lookup` (HTTP 200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    /// Address with prefix length, e.g. `10.32.0.5/12`.
    pub ip: String,
}

/// Body of `POST /ipam/release`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The netconf `name`.
    pub network: String,
}

/// Answer of `POST /ipam/release` and `POST /ipam/gc` (HTTP 200): the addresses given back,
/// empty when nothing was held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// Released addresses with prefix length.
    #[serde(default)]
    pub released: Vec<String>,
}

/// One attachment that is still in use, as listed in a GC request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID` of the attachment.
    pub container_id: String,
    /// `CNI_IFNAME` of the attachment.
    pub ifname: String,
}

/// Body of `POST /ipam/gc`: release this node's allocations for `network` that are not in
/// `valid` (never another node's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// The netconf `name`.
    pub network: String,
    /// Attachments whose allocations stay.
    pub valid: Vec<Attachment>,
}

/// Answer of `GET /ready`: HTTP 200 with `ready: true`, or 503 with `ready: false` and a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyResponse {
    /// Whether the router serves IPAM requests.
    pub ready: bool,
    /// Why it does not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Body of every non-200 answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: String,
}
