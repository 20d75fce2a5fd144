//! The data plane's forwarding rules, for every frame the sleeve carries: where a frame read
//! from the TAP goes, and what becomes of a datagram that arrived from a peer.
//!
//! Sans-IO, like connlib's `handle_tun_input` and quinn-proto's `handle_*`: the shell
//! (`router/src/sleeve*`) owns the TAP, the socket, the buffers and the sessions; it parses and
//! opens, then asks the [`Forwarder`] and carries out the answer. The simulator drives the same
//! code without a kernel.
//!
//! - [`ForwardingTable`]: next hops, broadcast trees, which peers have a sleeve link and what
//!   is left to fastdp. Published by its owner as a snapshot that data-plane threads read.
//! - [`Forwarder`]: [`Forwarder::handle_captured`] decides a TAP frame's destination peer and
//!   next hops; [`Forwarder::handle_opened`] decides an authenticated datagram's fate (deliver,
//!   relay with the hop limit spent, a broadcast's tree, path MTU messages);
//!   [`Forwarder::handle_delivered`] returns what the MAC table learns from a delivered frame,
//!   as an effect that the table's owner applies.
//! - [`ethernet`]: typed views of the Ethernet header, as the TAP hands frames out.

pub mod ethernet;
mod forwarder;
mod table;

pub use forwarder::{Arrived, Captured, Forwarder, Learn, RELEARN_AFTER, Relays};
pub use table::{FastdpView, ForwardingTable, NextHops};

use crate::peer::PeerName;

/// The destination of a broadcast datagram. No real peer name is all ones: names are hashes of
/// keys, and this one is reserved.
pub const BROADCAST: PeerName = PeerName::from_bytes([0xff; 6]);

/// Why the forwarder drops a frame or a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a sealed sleeve datagram, a runt frame, or a path MTU message that did not come
    /// from the link's own peer to us.
    Malformed,
    /// No route (or no link) toward the destination.
    NoRoute,
    /// The hop limit ran out: a routing loop, or a path longer than the limit.
    HopLimit,
    /// This router's own frame came back (a loop or a reflection).
    Loop,
}

#[cfg(test)]
mod tests;
