//! The 10-byte `struct virtio_net_hdr` that a TAP opened with `IFF_VNET_HDR` puts before every
//! frame. The sleeve carries it opaquely with the frame and writes it unchanged to the far TAP
//! (the kernel then rebuilds the GSO, checksum-partial skb); here it is only checked for safety,
//! so a peer cannot hand the far kernel offsets outside the frame.
//!
//! Layout (little-endian, as the kernel uses on x86 without `TUNSETVNETBE`): `u8 flags;
//! u8 gso_type; u16 hdr_len; u16 gso_size; u16 csum_start; u16 csum_offset`. Offsets count from
//! the start of the Ethernet header.

use super::Error;

/// Length of `struct virtio_net_hdr` (without the mergeable-buffers field).
pub const VNET_HDR_LEN: usize = 10;
/// Shortest Ethernet frame accepted after the virtio header (an Ethernet header).
pub const MIN_ETHERNET_LEN: usize = 14;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 0x01;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was verified.
pub const F_DATA_VALID: u8 = 0x02;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0x00;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 0x01;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO).
pub const GSO_UDP: u8 = 0x03;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 0x04;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 0x05;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into a TCP `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// A decoded, checked virtio net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` and/or `F_DATA_VALID`.
    pub flags: u8,
    /// One of the `GSO_*` values, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers to replicate per segment.
    pub hdr_len: u16,
    /// Payload bytes per segment (MSS); non-zero when `gso_type` is not `GSO_NONE`.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field sits.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads and checks the header at the start of `frame` (virtio header + Ethernet frame).
    ///
    /// # Errors
    /// [`Error::BadVnetHdr`] when the frame is too short, a flag or GSO type is unknown, or an
    /// offset points outside the Ethernet frame.
    pub fn parse(frame: &[u8]) -> Result<Self, Error> {
        let Some((hdr, eth)) = frame.split_first_chunk::<VNET_HDR_LEN>() else {
            return Err(Error::BadVnetHdr);
        };
        let le = |i: usize| u16::from_le_bytes([hdr[i], hdr[i + 1]]);
        let v = Self {
            flags: hdr[0],
            gso_type: hdr[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        };
        let len = eth.len();
        if len < MIN_ETHERNET_LEN || v.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(Error::BadVnetHdr);
        }
        let base = v.gso_type & !GSO_ECN;
        let known = matches!(
            base,
            GSO_NONE | GSO_TCPV4 | GSO_UDP | GSO_TCPV6 | GSO_UDP_L4
        );
        let ecn_ok = v.gso_type & GSO_ECN == 0 || matches!(base, GSO_TCPV4 | GSO_TCPV6);
        if !known || !ecn_ok || usize::from(v.hdr_len) > len {
            return Err(Error::BadVnetHdr);
        }
        if base != GSO_NONE && v.gso_size == 0 {
            return Err(Error::BadVnetHdr);
        }
        if v.flags & F_NEEDS_CSUM != 0
            && usize::from(v.csum_start) + usize::from(v.csum_offset) + 2 > len
        {
            return Err(Error::BadVnetHdr);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The header the probe saw on a TSO frame: NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1448,
    // csum_start 34, csum_offset 16.
    static TSO: [u8; 10] = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];

    fn frame(hdr: &[u8; 10], eth_len: usize) -> Vec<u8> {
        let mut f = hdr.to_vec();
        f.resize(VNET_HDR_LEN + eth_len, 0);
        f
    }

    #[test]
    fn parses_probe_header() {
        let v = VnetHdr::parse(&frame(&TSO, 65_216)).unwrap();
        assert_eq!(
            v,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(VnetHdr::parse(&frame(&[0; 10], 42)).is_ok());
    }

    #[test]
    fn rejects_unsafe_headers() {
        let cases: [([u8; 10], usize); 7] = [
            (TSO, 65),                                    // hdr_len beyond the frame
            ([0x01, 0x00, 0, 0, 0, 0, 60, 0, 16, 0], 64), // checksum field beyond the frame
            ([0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], 64),   // unknown gso_type
            ([0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0], 64),   // GSO without gso_size
            ([0x00, 0x83, 0, 0, 1, 0, 0, 0, 0, 0], 64),   // ECN on UDP
            ([0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 0], 64),   // unknown flag
            ([0; 10], 13),                                // shorter than an Ethernet header
        ];
        for (hdr, len) in cases {
            assert_eq!(VnetHdr::parse(&frame(&hdr, len)), Err(Error::BadVnetHdr));
        }
        assert_eq!(VnetHdr::parse(&[0; 9]), Err(Error::BadVnetHdr));
    }
}
