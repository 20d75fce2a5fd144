//! The release queue: a CNI DEL that cannot reach the router (stopped, restarting, not ready)
//! leaves its release here as a file, and the router applies every file when it runs again, so
//! a pod deleted while its node's router was down does not leak its address. Cilium's deletion
//! queue does the same.
//!
//! One file per attachment, `<network>_<container id>_<ifname>.json` (characters outside
//! `[A-Za-z0-9._-]` written as `_`), holding the [`ReleaseRequest`] as JSON. The directory is
//! the netconf's `releaseQueue` and the router's `--release-queue` (both default
//! [`DEFAULT_DIR`]); `install-cni` writes the router's into the conflist.

use super::ipam::ReleaseRequest;

/// Where the queue lives unless configured: beside the router's state, which survives reboots.
pub const DEFAULT_DIR: &str = "/var/lib/weft/release-queue";
/// The longest field accepted (container ids are 64 hex digits; names are short).
pub const MAX_FIELD: usize = 256;
/// A queued file's suffix; anything else in the directory is not the queue's.
pub const SUFFIX: &str = ".json";

/// The file name of `req`'s entry.
pub fn file_name(req: &ReleaseRequest) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .take(MAX_FIELD)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "{}_{}_{}{SUFFIX}",
        clean(&req.network),
        clean(&req.container_id),
        clean(&req.ifname)
    )
}

/// The bytes of `req`'s entry.
pub fn encode(req: &ReleaseRequest) -> Vec<u8> {
    serde_json::to_vec(req).unwrap_or_default()
}

/// Reads an entry: a JSON [`ReleaseRequest`] whose container id and ifname are non-empty and
/// every field at most [`MAX_FIELD`] bytes.
///
/// # Errors
///
/// Says what is wrong; the caller sets the file aside.
pub fn decode(bytes: &[u8]) -> Result<ReleaseRequest, String> {
    let req: ReleaseRequest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a queued release: {e}"))?;
    for (field, value) in [
        ("container_id", &req.container_id),
        ("ifname", &req.ifname),
        ("network", &req.network),
    ] {
        if value.len() > MAX_FIELD {
            return Err(format!("{field} longer than {MAX_FIELD} bytes"));
        }
    }
    if req.container_id.is_empty() || req.ifname.is_empty() {
        return Err("container_id or ifname empty".to_owned());
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn req(network: &str, container_id: &str, ifname: &str) -> ReleaseRequest {
        ReleaseRequest {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            network: network.to_owned(),
        }
    }

    #[test]
    fn names_are_safe_file_names() {
        assert_eq!(
            file_name(&req("weft", "abc123", "eth0")),
            "weft_abc123_eth0.json"
        );
        assert_eq!(
            file_name(&req("a/b", "../x", "e th0")),
            "a_b_.._x_e_th0.json"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(decode(b"").is_err());
        assert!(decode(b"{}").is_err());
        assert!(decode(br#"{"container_id":"","ifname":"eth0","network":"w"}"#).is_err());
        let long = "x".repeat(MAX_FIELD + 1);
        assert!(decode(&encode(&req("w", &long, "eth0"))).is_err());
        assert_eq!(
            decode(br#"{"container_id":"c","ifname":"eth0","network":"w"}"#),
            Ok(req("w", "c", "eth0"))
        );
    }

    proptest! {
        /// Entries read back; names never hold a path separator or start a hidden file.
        #[test]
        fn entries_round_trip(network in "[a-z.-]{0,20}", id in "[0-9a-f]{1,64}", ifname in "[a-z0-9]{1,15}") {
            let r = req(&network, &id, &ifname);
            prop_assert_eq!(decode(&encode(&r)), Ok(r.clone()));
            let name = file_name(&r);
            prop_assert!(!name.contains('/') && name.ends_with(SUFFIX));
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_strings_make_a_safe_name(a in ".{0,40}", b in ".{0,40}", c in ".{0,40}") {
            let name = file_name(&req(&a, &b, &c));
            prop_assert!(!name.contains('/') && !name.contains('\0'));
        }
    }
}
