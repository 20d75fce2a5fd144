//! What the runtime hands the plugin: the environment (`CNI_*`), the request configuration on
//! stdin (netconf plus `prevResult`), and the result the plugin prints back, per CNI version.
//!
//! Parsing is strict about what weft reads and keeps every other key, so that a parsed value
//! serialises back to an equivalent document (the fuzz targets check this).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, code};

/// The CNI versions weft speaks, oldest first (what VERSION reports).
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The default router API socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";
/// The bridge every pod's host veth joins; the router creates it.
pub const BRIDGE: &str = "weft";

/// A CNI specification version weft supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.4.0: CHECK, prevResult on DEL, `version` in `ips`.
    V0_4_0,
    /// 1.0.0: no `version` in `ips`.
    V1_0_0,
    /// 1.1.0: STATUS, GC, `mtu` in `interfaces`.
    V1_1_0,
}

impl CniVersion {
    /// Parses a version string; `None` for versions weft does not speak.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "0.4.0" => Some(Self::V0_4_0),
            "1.0.0" => Some(Self::V1_0_0),
            "1.1.0" => Some(Self::V1_1_0),
            _ => None,
        }
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

/// The CNI operation named by `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Verify an attachment.
    Check,
    /// Detach a container.
    Del,
    /// Release stale allocations.
    Gc,
    /// Report readiness.
    Status,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ADD" => Some(Self::Add),
            "CHECK" => Some(Self::Check),
            "DEL" => Some(Self::Del),
            "GC" => Some(Self::Gc),
            "STATUS" => Some(Self::Status),
            "VERSION" => Some(Self::Version),
            _ => None,
        }
    }
}

/// The `CNI_*` environment of one invocation (unset and empty are both `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
    /// Names of `CNI_*` variables that were set but not valid UTF-8.
    pub not_utf8: Vec<&'static str>,
}

impl Env {
    /// Reads the `CNI_*` variables of this process.
    pub fn from_process() -> Self {
        let mut env = Self::default();
        let mut read = |name: &'static str| match std::env::var_os(name) {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => match v.into_string() {
                Ok(s) => Some(s),
                Err(_) => {
                    env.not_utf8.push(name);
                    None
                }
            },
        };
        let command = read("CNI_COMMAND");
        let container_id = read("CNI_CONTAINERID");
        let netns = read("CNI_NETNS");
        let ifname = read("CNI_IFNAME");
        let args = read("CNI_ARGS");
        let path = read("CNI_PATH");
        Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            not_utf8: env.not_utf8,
        }
    }
}

/// The request configuration on stdin: weft's netconf keys, the protocol's keys, and every
/// other key kept as it came.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// `cniVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    /// Network name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Plugin type (`weft`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The router's API socket path (default `/run/weft/weft.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Pod MTU (default: the bridge's MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Where a DEL that cannot reach the router queues its release (default
    /// `/var/lib/weft/release-queue`; the router's `--release-queue`).
    #[serde(
        default,
        rename = "releaseQueue",
        skip_serializing_if = "Option::is_none"
    )]
    pub release_queue: Option<String>,
    /// Hairpin mode of the pod's bridge port (default true, as Weave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hairpin_mode: Option<bool>,
    /// Not supported: weft's IPAM is built in. Kept so that its presence can be reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    /// Not supported when true: the router masquerades (`--masquerade`), not the plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_masq: Option<bool>,
    /// DNS settings copied into the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// The previous result (chained ADD, DEL, CHECK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// GC: the attachments that are still valid.
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// Every other key, kept unchanged.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    /// `CNI_CONTAINERID` of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of the attachment.
    pub ifname: String,
}

/// DNS settings (netconf `dns` and result `dns`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers in priority order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<Vec<String>>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
}

impl NetConf {
    /// Parses the request configuration.
    ///
    /// # Errors
    ///
    /// Code 6 when the bytes are not a JSON object of the expected shape.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network configuration on stdin",
                e.to_string(),
            )
        })
    }

    /// Checks `cniVersion`, `name`, `mtu` and the unsupported keys, and returns the version.
    ///
    /// # Errors
    ///
    /// Code 1 for a missing or unsupported `cniVersion`, 7 for a bad `name` or `mtu`, 2 for an
    /// `ipam` section or `ipMasq: true`.
    pub fn validate(&self) -> Result<CniVersion, CniError> {
        let version = self.version()?;
        let Some(name) = self.name.as_deref() else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                "the network configuration has no \"name\"",
            ));
        };
        if !valid_name(name) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                format!(
                    "network name {name:?} must start with an alphanumeric character followed by \
                     alphanumerics, '_', '.' or '-'"
                ),
            ));
        }
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                format!("\"mtu\": {mtu} is outside {MIN_MTU}..={MAX_MTU}"),
            ));
        }
        for (key, path) in [
            ("socket", self.socket.as_deref()),
            ("releaseQueue", self.release_queue.as_deref()),
        ] {
            if let Some(path) = path
                && !path.starts_with('/')
            {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "invalid network configuration",
                    format!("\"{key}\": {path:?} is not an absolute path"),
                ));
            }
        }
        if let Some(ipam) = &self.ipam {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "unsupported field in network configuration",
                format!("\"ipam\": {ipam} (weft's IPAM is built in; remove the ipam section)"),
            ));
        }
        if self.ip_masq == Some(true) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "unsupported field in network configuration",
                "\"ipMasq\": true (the weft router masquerades pod egress itself: set \
                 --masquerade / WEFT_MASQUERADE on the router, not ipMasq here)",
            ));
        }
        Ok(version)
    }

    /// The configuration's `cniVersion` if weft speaks it.
    ///
    /// # Errors
    ///
    /// Code 1 when it is missing or not one of [`SUPPORTED_VERSIONS`].
    pub fn version(&self) -> Result<CniVersion, CniError> {
        let Some(v) = self.cni_version.as_deref() else {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "the network configuration has no \"cniVersion\"; weft supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        };
        CniVersion::parse(v).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "\"cniVersion\": {v:?} is not supported; weft supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })
    }

    /// The router socket path.
    pub fn socket_path(&self) -> &str {
        self.socket.as_deref().unwrap_or(DEFAULT_SOCKET)
    }

    /// The release queue's directory.
    pub fn release_queue_dir(&self) -> &str {
        self.release_queue
            .as_deref()
            .unwrap_or(topology::api::release_queue::DEFAULT_DIR)
    }

    /// The validated network name (empty before [`NetConf::validate`]).
    pub fn network(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// A CNI success result; the same type reads `prevResult` and writes the ADD result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// `cniVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    /// Interfaces of the attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses of the attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes of the attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
    /// Every other key, kept unchanged.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// An interface of a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for container interfaces, absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Every other key, kept unchanged.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// An address of a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpConfig {
    /// `"4"` or `"6"` (0.4.0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address in CIDR notation.
    pub address: String,
    /// Gateway of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
    /// Every other key, kept unchanged.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A route of a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Destination in CIDR notation.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// Every other key (mtu, advmss, priority, table, scope), kept unchanged.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl CniResult {
    /// Parses a `prevResult` value.
    ///
    /// # Errors
    ///
    /// Code 6 when it does not have the shape of a CNI result.
    pub fn from_value(value: &Value) -> Result<Self, CniError> {
        Self::deserialize(value).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode prevResult",
                e.to_string(),
            )
        })
    }

    /// Rewrites the result into `version`'s shape: 0.4.0 carries `version` in each `ips` entry,
    /// 1.x does not; `mtu` in `interfaces` exists only from 1.1.0.
    pub fn convert_to(&mut self, version: CniVersion) {
        self.cni_version = Some(version.as_str().to_owned());
        for ip in &mut self.ips {
            ip.version = match version {
                CniVersion::V0_4_0 => Some(if ip.address.contains(':') { "6" } else { "4" }.into()),
                CniVersion::V1_0_0 | CniVersion::V1_1_0 => None,
            };
        }
        if version < CniVersion::V1_1_0 {
            for iface in &mut self.interfaces {
                iface.mtu = None;
            }
        }
    }
}

/// An IPv4 address with its prefix length (`10.32.0.5/12`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        (prefix <= 32).then_some(Self { addr, prefix })
    }

    /// Whether `other` lies in this address's subnet.
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(other) & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `s` is a valid network name or container id (spec: an alphanumeric followed by
/// alphanumerics, `_`, `.` or `-`).
pub fn valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `s` can name a Linux network interface.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= IFNAMSIZ_MAX
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// Longest interface name (IFNAMSIZ 16 minus the NUL).
const IFNAMSIZ_MAX: usize = 15;
/// Smallest MTU the kernel allows for IPv4.
const MIN_MTU: u32 = 68;
/// Largest MTU weft accepts.
const MAX_MTU: u32 = 65_535;

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.32.0.5/12").unwrap();
        assert_eq!(c.prefix, 12);
        assert!(c.contains("10.32.0.1".parse().unwrap()));
        assert!(c.contains("10.47.255.255".parse().unwrap()));
        assert!(!c.contains("10.48.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.32.0.5/33").is_none());
        assert!(Cidr::parse("10.32.0.5/+1").is_none());
        assert!(Cidr::parse("10.32.0.5").is_none());
        assert!(
            Cidr::parse("10.32.0.5/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("weft"));
        assert!(valid_name("cnih-cnih-c1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a b"));
    }

    #[test]
    fn validate_codes() {
        let c = |s: &str| {
            NetConf::parse(s.as_bytes())
                .unwrap()
                .validate()
                .map_err(|e| e.code)
        };
        assert_eq!(
            c(r#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#),
            Ok(CniVersion::V1_0_0)
        );
        assert_eq!(c(r#"{"name":"n","type":"weft"}"#), Err(1));
        assert_eq!(c(r#"{"cniVersion":"0.3.1","name":"n"}"#), Err(1));
        assert_eq!(c(r#"{"cniVersion":"1.1.0"}"#), Err(7));
        assert_eq!(c(r#"{"cniVersion":"1.1.0","name":"n","mtu":10}"#), Err(7));
        assert_eq!(
            c(r#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local"}}"#),
            Err(2)
        );
        assert_eq!(
            c(r#"{"cniVersion":"1.1.0","name":"n","ipMasq":true}"#),
            Err(2)
        );
        assert_eq!(
            NetConf::parse(br#"{"mtu":"x"}"#).map_err(|e| e.code),
            Err(6)
        );
        assert_eq!(NetConf::parse(b"[").map_err(|e| e.code), Err(6));
    }

    #[test]
    fn result_versions() {
        let mut r = CniResult {
            ips: vec![IpConfig {
                address: "10.32.0.5/12".into(),
                ..IpConfig::default()
            }],
            interfaces: vec![Interface {
                name: "eth0".into(),
                mtu: Some(1400),
                ..Interface::default()
            }],
            ..CniResult::default()
        };
        r.convert_to(CniVersion::V0_4_0);
        assert_eq!(r.ips[0].version.as_deref(), Some("4"));
        assert_eq!(r.interfaces[0].mtu, None);
        r.convert_to(CniVersion::V1_0_0);
        assert_eq!(r.ips[0].version, None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["dns"], serde_json::json!({}));
    }
}
