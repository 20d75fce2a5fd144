//! Property tests of decoders the router applies to bytes from disk and from API clients:
//! `peers.json`, the node discovery state and the JSON request bodies. Pure functions over
//! bytes, no devices or root needed; the fuzz targets (`fuzz/fuzz_targets/router_*.rs`) run
//! the same decoders on arbitrary input.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use proptest::prelude::*;
use serde_json::json;
use topology::api::ipam::{AllocateRequest, LookupRequest, ReleaseRequest};
use weft_router::api::{AddrRequest, EncryptionRequest, RmPeerRequest};
use weft_router::daemon::decode_persisted_peers;
use weft_router::kube::nodes::Saved;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(SocketAddr::from),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(SocketAddr::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-z0-9.-]{1,20}"]
}

proptest! {
    /// The peers the router saves read back (duplicates in a hand-edited file collapse);
    /// arbitrary bytes never panic.
    #[test]
    fn persisted_peers_read_back(
        peers in proptest::collection::vec(addr(), 0..8),
        junk in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let file = serde_json::to_vec_pretty(&peers).unwrap();
        let set: BTreeSet<SocketAddr> = peers.iter().copied().collect();
        prop_assert_eq!(decode_persisted_peers(&file).unwrap(), set);
        let _ = decode_persisted_peers(&junk);
    }

    /// The node discovery state reads back as written, and a file missing a field is
    /// refused.
    #[test]
    fn discovery_state_reads_back(
        known in proptest::collection::vec(text(), 0..4),
        dialled in proptest::collection::btree_map(text(), addr(), 0..4),
        unreclaimed in proptest::collection::vec(text(), 0..4),
        peer_names in proptest::collection::btree_map(text(), text(), 0..4),
    ) {
        let value = json!({
            "known": known,
            "dialled": dialled,
            "unreclaimed": unreclaimed,
            "peer_names": peer_names,
        });
        let saved = Saved::decode(&serde_json::to_vec(&value).unwrap()).unwrap();
        prop_assert_eq!(&serde_json::to_value(&saved).unwrap(), &value);
        let mut partial = value;
        partial.as_object_mut().unwrap().remove("dialled");
        prop_assert!(Saved::decode(&serde_json::to_vec(&partial).unwrap()).is_err());
    }

    /// Every POST body the API parses reads back as a client writes it; an unknown field
    /// is refused where the type says so.
    #[test]
    fn request_bodies_read_back(
        a in text(), b in text(), c in text(),
        enabled in any::<bool>(), version in any::<Option<u64>>(), proof in any::<Option<String>>(),
    ) {
        fn back<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
            v: &T,
        ) -> Result<(), TestCaseError> {
            let bytes = serde_json::to_vec(v).unwrap();
            prop_assert_eq!(&serde_json::from_slice::<T>(&bytes).unwrap(), v);
            Ok(())
        }
        back(&AddrRequest { addr: a.clone() })?;
        back(&RmPeerRequest { name: a.clone() })?;
        back(&EncryptionRequest { enabled, version, proof })?;
        back(&AllocateRequest { container_id: a.clone(), ifname: b.clone(), network: c.clone() })?;
        back(&LookupRequest { container_id: a.clone(), ifname: b.clone(), network: c.clone() })?;
        back(&ReleaseRequest { container_id: a.clone(), ifname: b, network: c })?;
        let extra = json!({ "addr": a, "port": 1 });
        prop_assert!(serde_json::from_value::<AddrRequest>(extra).is_err());
    }
}
