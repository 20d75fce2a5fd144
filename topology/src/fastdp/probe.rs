//! The fastdp probe on the wire (docs/PROTOCOL.md, "fastdp probe"): the VXLAN-encapsulated ARP
//! request a router sends to a peer's kernel, and the ARP reply that kernel sends back.
//!
//! A probe is an ARP request with sender address 0.0.0.0 (a "probe" in RFC 5227's sense, so
//! the answering kernel creates no neighbour entry) for the peer's underlay address, from this
//! node's bridge MAC to the peer's bridge MAC, behind a VXLAN header with weft's [`VNI`]. It is
//! padded to a full-size frame so that a path that cannot carry one loses it. The shell reads
//! answers from an AF_PACKET socket on the bridge; [`Answer`] checks one such Ethernet frame.

use std::net::{IpAddr, Ipv4Addr};

use super::{MacAddr, VNI};

/// The VXLAN header's length.
pub const VXLAN_HDR_LEN: usize = 8;
/// The Ethernet header's length.
pub const ETH_HDR_LEN: usize = 14;
/// An ARP packet for IPv4 over Ethernet.
pub const ARP_LEN: usize = 28;
/// The shortest probe: VXLAN header, Ethernet header, ARP for IPv4.
pub const PROBE_LEN: usize = VXLAN_HDR_LEN + ETH_HDR_LEN + ARP_LEN;
/// The shortest answer: Ethernet header and ARP (the kernel may pad it).
pub const ANSWER_LEN: usize = ETH_HDR_LEN + ARP_LEN;
/// The ARP EtherType.
pub const ETH_P_ARP: u16 = 0x0806;

/// ARP's fixed fields for IPv4 over Ethernet: hardware type 1, protocol 0x0800, lengths 6
/// and 4.
const ARP_ETHER_IPV4: [u8; 6] = [0, 1, 0x08, 0x00, 6, 4];
const OP_REQUEST: [u8; 2] = [0, 1];
const OP_REPLY: [u8; 2] = [0, 2];

/// Builds the probe for `target` (an IPv4 underlay address) from `src_mac` to `dst_mac`,
/// its ARP request padded with zeros to `pod_mtu` bytes of Ethernet payload (at least the ARP).
pub fn probe_frame(src_mac: MacAddr, dst_mac: MacAddr, target: Ipv4Addr, pod_mtu: u32) -> Vec<u8> {
    let len = (VXLAN_HDR_LEN + ETH_HDR_LEN + pod_mtu as usize).max(PROBE_LEN);
    let mut f = vec![0u8; len];
    // VXLAN: flags (I bit), 3 reserved, VNI (24 bits), 1 reserved.
    f[0] = 0x08;
    f[4..7].copy_from_slice(&VNI.to_be_bytes()[1..4]);
    let e = &mut f[VXLAN_HDR_LEN..];
    e[0..6].copy_from_slice(&dst_mac.bytes());
    e[6..12].copy_from_slice(&src_mac.bytes());
    e[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let a = &mut e[ETH_HDR_LEN..];
    a[0..6].copy_from_slice(&ARP_ETHER_IPV4);
    a[6..8].copy_from_slice(&OP_REQUEST);
    a[8..14].copy_from_slice(&src_mac.bytes());
    // Sender address 0.0.0.0 and target MAC zero (unknown): the zeros already there.
    a[24..28].copy_from_slice(&target.octets());
    f
}

/// The ARP reply a peer's kernel sends to a probe from `target_mac`: an Ethernet frame from
/// `sender_mac` to `target_mac`, saying `sender_ip` is at `sender_mac`. The simulator and the
/// tests stand in for that kernel with it.
pub fn answer_frame(
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
) -> [u8; ANSWER_LEN] {
    let mut f = [0u8; ANSWER_LEN];
    f[0..6].copy_from_slice(&target_mac.bytes());
    f[6..12].copy_from_slice(&sender_mac.bytes());
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let a = &mut f[ETH_HDR_LEN..];
    a[0..6].copy_from_slice(&ARP_ETHER_IPV4);
    a[6..8].copy_from_slice(&OP_REPLY);
    a[8..14].copy_from_slice(&sender_mac.bytes());
    a[14..18].copy_from_slice(&sender_ip.octets());
    a[18..24].copy_from_slice(&target_mac.bytes());
    a[24..28].copy_from_slice(&target_ip.octets());
    f
}

/// A checked view of an Ethernet frame holding an ARP reply for IPv4 over Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    arp: &'a [u8; ARP_LEN],
}

impl<'a> Answer<'a> {
    /// Checks `frame`: at least [`ANSWER_LEN`] bytes (padding after the ARP is ignored), the
    /// ARP EtherType, hardware Ethernet, protocol IPv4, lengths 6 and 4, operation reply.
    pub fn new_checked(frame: &'a [u8]) -> Option<Self> {
        if frame.get(12..14)? != ETH_P_ARP.to_be_bytes() {
            return None;
        }
        let arp: &[u8; ARP_LEN] = frame.get(ETH_HDR_LEN..ANSWER_LEN)?.try_into().ok()?;
        if arp[0..6] != ARP_ETHER_IPV4 || arp[6..8] != OP_REPLY {
            return None;
        }
        Some(Self { arp })
    }

    /// The MAC the reply says [`Self::sender_ip`] is at.
    pub fn sender_mac(&self) -> MacAddr {
        mac(&self.arp[8..14])
    }

    /// The address answered for: the probed peer's underlay address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip(&self.arp[14..18])
    }

    /// Who asked: the prober's bridge MAC.
    pub fn target_mac(&self) -> MacAddr {
        mac(&self.arp[18..24])
    }

    /// The asker's address (0.0.0.0 for a probe's answer).
    pub fn target_ip(&self) -> Ipv4Addr {
        ip(&self.arp[24..28])
    }
}

/// Returns the sender address of an ARP reply addressed to `our_mac`, from an Ethernet frame.
pub fn parse_answer(frame: &[u8], our_mac: &MacAddr) -> Option<IpAddr> {
    let a = Answer::new_checked(frame)?;
    (a.target_mac() == *our_mac).then(|| IpAddr::V4(a.sender_ip()))
}

fn mac(b: &[u8]) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(b);
    MacAddr::from_bytes(m)
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    const OURS: MacAddr = MacAddr::from_bytes([0x02, 1, 2, 3, 4, 5]);
    const THEIRS: MacAddr = MacAddr::from_bytes([0x02, 9, 8, 7, 6, 5]);

    #[test]
    fn probe_layout() {
        let f = probe_frame(OURS, THEIRS, Ipv4Addr::new(192, 0, 2, 2), 1450);
        // Full size: VXLAN header + Ethernet header + 1450 bytes, zero after the ARP.
        assert_eq!(f.len(), 8 + 14 + 1450);
        assert!(f[50..].iter().all(|b| *b == 0));
        assert_eq!(
            probe_frame(OURS, THEIRS, Ipv4Addr::LOCALHOST, 0).len(),
            PROBE_LEN
        );
        assert_eq!(&f[..8], &[0x08, 0, 0, 0, 0x00, 0x77, 0x65, 0]);
        assert_eq!(&f[8..14], &THEIRS.bytes());
        assert_eq!(&f[14..20], &OURS.bytes());
        assert_eq!(&f[20..22], &[0x08, 0x06]);
        assert_eq!(&f[22..28], &[0, 1, 8, 0, 6, 4]);
        assert_eq!(&f[28..30], &[0, 1], "ARP request");
        assert_eq!(&f[30..36], &OURS.bytes());
        assert_eq!(&f[36..40], &[0, 0, 0, 0], "sender address 0.0.0.0");
        assert_eq!(&f[40..46], &[0; 6]);
        assert_eq!(&f[46..50], &[192, 0, 2, 2]);
    }

    #[test]
    fn answer_parsing() {
        // The reply the kernel sends: sender = peer, target MAC = ours.
        let peer = Ipv4Addr::new(192, 0, 2, 2);
        let reply = answer_frame(THEIRS, peer, OURS, Ipv4Addr::UNSPECIFIED);
        assert_eq!(parse_answer(&reply, &OURS), Some(IpAddr::V4(peer)));
        assert_eq!(parse_answer(&reply, &THEIRS), None, "not addressed to us");
        let probe = probe_frame(OURS, THEIRS, peer, 1450);
        assert_eq!(
            parse_answer(&probe[VXLAN_HDR_LEN..], &OURS),
            None,
            "a request is no answer"
        );
        assert_eq!(parse_answer(&reply[..30], &OURS), None);
        assert_eq!(parse_answer(&reply[..ANSWER_LEN - 1], &OURS), None);
        assert_eq!(parse_answer(&[], &OURS), None);
        // Padding to Ethernet's 60-byte minimum is ignored.
        let mut padded = reply.to_vec();
        padded.resize(60, 0);
        assert_eq!(parse_answer(&padded, &OURS), Some(IpAddr::V4(peer)));
        let a = Answer::new_checked(&padded).unwrap();
        assert_eq!(
            (a.sender_mac(), a.sender_ip(), a.target_mac(), a.target_ip()),
            (THEIRS, peer, OURS, Ipv4Addr::UNSPECIFIED)
        );
    }

    fn any_mac() -> impl Strategy<Value = MacAddr> {
        any::<[u8; 6]>().prop_map(MacAddr::from_bytes)
    }

    fn any_ip() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    proptest! {
        /// Every answer reads back field by field, whatever the padding.
        #[test]
        fn answers_read_back(
            sender in any_mac(), sip in any_ip(), target in any_mac(), tip in any_ip(),
            pad in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut f = answer_frame(sender, sip, target, tip).to_vec();
            f.extend_from_slice(&pad);
            let a = Answer::new_checked(&f).unwrap();
            prop_assert_eq!(
                (a.sender_mac(), a.sender_ip(), a.target_mac(), a.target_ip()),
                (sender, sip, target, tip)
            );
            prop_assert_eq!(parse_answer(&f, &target), Some(IpAddr::V4(sip)));
        }

        /// A change to any checked byte (EtherType, ARP's fixed fields, the operation) or a
        /// shorter frame is refused; the MACs in the Ethernet header are not checked.
        #[test]
        fn checked_bytes_refuse(
            sender in any_mac(), sip in any_ip(), target in any_mac(),
            at in 12usize..22, flip in 1u8..=255, cut in 0usize..ANSWER_LEN,
        ) {
            let f = answer_frame(sender, sip, target, Ipv4Addr::UNSPECIFIED);
            let mut bad = f;
            bad[at] ^= flip;
            prop_assert_eq!(Answer::new_checked(&bad), None);
            prop_assert_eq!(Answer::new_checked(&f[..cut]), None);
            let mut other = f;
            other[0] ^= flip;
            other[6] ^= flip;
            prop_assert!(Answer::new_checked(&other).is_some());
        }

        /// Probes have the layout for any addresses and MTU, and are never taken for answers.
        #[test]
        fn probes_are_requests(
            src in any_mac(), dst in any_mac(), target in any_ip(), mtu in 0u32..9000,
        ) {
            let f = probe_frame(src, dst, target, mtu);
            prop_assert_eq!(f.len(), (VXLAN_HDR_LEN + ETH_HDR_LEN + mtu as usize).max(PROBE_LEN));
            prop_assert_eq!(&f[VXLAN_HDR_LEN..VXLAN_HDR_LEN + 6], &dst.bytes()[..]);
            prop_assert_eq!(&f[46..50], &target.octets()[..]);
            prop_assert!(f[PROBE_LEN..].iter().all(|b| *b == 0));
            prop_assert_eq!(parse_answer(&f[VXLAN_HDR_LEN..], &src), None);
            prop_assert_eq!(parse_answer(&f[VXLAN_HDR_LEN..], &MacAddr::ZERO), None);
        }

        /// Arbitrary bytes never panic, and what is accepted has the checked fields.
        #[test]
        fn arbitrary_bytes(f in proptest::collection::vec(any::<u8>(), 0..64), ours in any_mac()) {
            if let Some(sender) = parse_answer(&f, &ours) {
                prop_assert!(f.len() >= ANSWER_LEN);
                prop_assert_eq!(&f[12..22], &[8, 6, 0, 1, 8, 0, 6, 4, 0, 2][..]);
                prop_assert_eq!(&f[32..38], &ours.bytes()[..]);
                prop_assert_eq!(sender, IpAddr::V4(ip(&f[28..32])));
            }
        }
    }
}
