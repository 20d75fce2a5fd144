//! The fastdp probe's answer parser (ARP replies read from the bridge's AF_PACKET socket) and
//! the probe builder. Properties: no input panics; an accepted answer has the checked fields
//! and re-emits to the same ARP bytes; it is taken only when addressed to our MAC; a probe
//! built from any addresses has its layout and is never taken for an answer.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use topology::mac::MacAddr;
use topology::fastdp::probe::{
    ANSWER_LEN, Answer, ETH_HDR_LEN, PROBE_LEN, VXLAN_HDR_LEN, answer_frame, parse_answer,
    probe_frame,
};

fuzz_target!(|data: &[u8]| {
    if let Some(a) = Answer::new_checked(data) {
        assert!(data.len() >= ANSWER_LEN);
        let again = answer_frame(a.sender_mac(), a.sender_ip(), a.target_mac(), a.target_ip());
        assert_eq!(again[12..], data[12..ANSWER_LEN]);
        let ours = a.target_mac();
        assert_eq!(parse_answer(data, &ours), Some(IpAddr::V4(a.sender_ip())));
        let mut other = ours.bytes();
        other[5] ^= 1;
        let other = MacAddr::from_bytes(other);
        assert_eq!(parse_answer(data, &other), None);
    } else {
        assert_eq!(parse_answer(data, &MacAddr::ZERO), None);
    }
    // The builder, from the first 20 bytes: two MACs, an address, an MTU up to 9000.
    if let Some(b) = data.get(..20) {
        let (src, dst) = (mac(&b[..6]), mac(&b[6..12]));
        let target = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let mtu = u32::from_be_bytes([b[16], b[17], b[18], b[19]]) % 9001;
        let f = probe_frame(src, dst, target, mtu);
        assert_eq!(
            f.len(),
            (VXLAN_HDR_LEN + ETH_HDR_LEN + mtu as usize).max(PROBE_LEN)
        );
        assert_eq!(f[VXLAN_HDR_LEN..VXLAN_HDR_LEN + 6], dst.bytes());
        assert_eq!(f[PROBE_LEN - 4..PROBE_LEN], target.octets());
        assert!(f[PROBE_LEN..].iter().all(|b| *b == 0));
        assert!(Answer::new_checked(&f[VXLAN_HDR_LEN..]).is_none());
    }
});

fn mac(b: &[u8]) -> MacAddr {
    let mut m = [0; 6];
    m.copy_from_slice(b);
    MacAddr::from_bytes(m)
}
