//! The router's IPAM API as the plugin sees it: the shared types of `topology::api::ipam`.

pub use topology::api::ipam::*;
