//! NetworkPolicy (`networking.k8s.io/v1`) enforcement over a [`ClusterView`].
//!
//! - [`mod@reference`] is the specification: [`reference::allowed`] judges one connection
//!   initiation against the cluster's policies, written straight from the API's text, one
//!   object at a time and without any index or precomputation. It is meant to be read, not to
//!   be fast.
//! - [`compile`] turns the view into the rule state one node enforces for its own pods
//!   ([`RuleSet`]: named address sets and per-pod allow lists per direction, named ports
//!   resolved, the always-allowed traffic explicit), in a shape an nftables layer programs
//!   directly; [`interpret`] judges a connection from compiled state only, and
//!   `topology/tests/policy.rs` checks on random clusters and policies that it agrees with
//!   the reference for every pair of endpoints.
//! - [`diff`] lists what changed between two rule states, in an order safe to program (sets
//!   before the rules that use them, removals last); a label change on one pod touches only
//!   the sets that hold its addresses.
//!
//! [`crate::netfilter::policy`] programs a [`RuleSet`] into nftables.
//!
//! The evaluator judges *connection initiations* only (the first packet of a TCP, UDP or SCTP
//! flow, from `src` to `dst`'s `port`). Replies and the rest of an allowed connection pass by
//! connection tracking, as the API requires: a policy never needs a rule for return traffic,
//! and a reply is never judged against the replier's egress or the initiator's ingress.
//!
//! [`ClusterView`]: crate::cluster::ClusterView

pub mod compile;
pub mod diff;
pub mod interpret;
pub mod reference;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use compile::{Allow, IpSet, PodKey, PodRules, PortMatch, RuleSet, SetName};
pub use diff::Change;
pub use interpret::ClusterRules;
pub use reference::{Direction, Endpoint, allowed, isolated};
