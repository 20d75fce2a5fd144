//! Typed views of an Ethernet frame's header, checked once on construction.

use crate::mac::MacAddr;
use crate::sleeve::VNET_HDR_LEN;

/// The Ethernet header's length (no VLAN tag).
pub const HEADER_LEN: usize = 14;

/// A view of a buffer that starts with an Ethernet header.
#[derive(Clone, Copy, Debug)]
pub struct Ethernet<'a> {
    header: &'a [u8; HEADER_LEN],
}

impl<'a> Ethernet<'a> {
    /// Views `buf`; `None` when it is shorter than a header.
    pub fn new_checked(buf: &'a [u8]) -> Option<Self> {
        let header = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self { header })
    }

    /// Views a frame as the TAP hands it (and takes it): a virtio_net_hdr, then Ethernet.
    pub fn from_tap(frame: &'a [u8]) -> Option<Self> {
        Self::new_checked(frame.get(VNET_HDR_LEN..)?)
    }

    /// The destination address.
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_bytes(self.mac(0))
    }

    /// The source address.
    pub fn src(&self) -> MacAddr {
        MacAddr::from_bytes(self.mac(6))
    }

    /// The EtherType.
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.header[12], self.header[13]])
    }

    fn mac(&self, at: usize) -> [u8; 6] {
        let h = self.header;
        [h[at], h[at + 1], h[at + 2], h[at + 3], h[at + 4], h[at + 5]]
    }
}
