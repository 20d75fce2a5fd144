//! Connection targets: the addresses a node wants connections to, their state, and back-off.
//!
//! A target is *direct* (added by command, like `--peers` or `weft connect`) or *discovered*
//! (learnt from gossip). Dial attempts back off exponentially with jitter: after the `n`-th
//! consecutive failure the next attempt waits `U[i/2, 3i/2)` with
//! `i = initial × 1.5^(n-1)`, capped at `max` (Weave's rule with our constants). A connection
//! that lived longer than `max` resets the count. A peer that reappears in the topology after
//! having been collected is retried within `U[0, initial / 4)`, so a healed partition reconnects
//! without waiting out a long back-off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::peer::{ConnId, PeerName};

/// Where a target stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// The shell is dialling or handshaking.
    Connecting {
        /// When the attempt started.
        since: Instant,
    },
    /// A connection to the target is up.
    Established {
        /// The connection.
        conn: ConnId,
    },
    /// The target is not retried (connecting to ourselves, or a name collision).
    Failed {
        /// Why.
        last_error: String,
    },
    /// Waiting for the first attempt, due at once.
    Pending,
    /// Waiting for the next attempt after a failure.
    Retrying {
        /// When the next attempt is due.
        next_attempt: Instant,
        /// Why the previous attempt failed.
        last_error: String,
    },
    /// A `Dial` event was emitted and the shell has not reported starting it.
    Requested {
        /// When the event was emitted.
        since: Instant,
    },
}

/// One address we want to be connected to.
#[derive(Clone, Debug)]
pub struct Target {
    /// The address to dial.
    pub addr: SocketAddr,
    /// True for targets added by command; false for discovered ones.
    pub direct: bool,
    /// The state.
    pub state: TargetState,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// The peer last reached at this address.
    pub peer: Option<PeerName>,
    /// When the current connection came up.
    pub connected_at: Option<Instant>,
}

/// Back-off constants.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first retry interval.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

/// The table of targets.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    map: BTreeMap<SocketAddr, Target>,
}

impl Targets {
    /// Adds a target (or makes an existing discovered one direct). Returns true if new.
    pub fn add(&mut self, addr: SocketAddr, direct: bool) -> bool {
        if let Some(t) = self.map.get_mut(&addr) {
            t.direct |= direct;
            return false;
        }
        self.map.insert(
            addr,
            Target {
                addr,
                direct,
                state: TargetState::Pending,
                attempts: 0,
                peer: None,
                connected_at: None,
            },
        );
        true
    }

    /// Removes a target.
    pub fn remove(&mut self, addr: SocketAddr) -> Option<Target> {
        self.map.remove(&addr)
    }

    /// Returns a target.
    pub fn get(&self, addr: SocketAddr) -> Option<&Target> {
        self.map.get(&addr)
    }

    /// Returns all targets in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.map.values()
    }

    /// Returns the number of targets.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Returns true when there are no targets.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn get_mut(&mut self, addr: SocketAddr) -> Option<&mut Target> {
        self.map.get_mut(&addr)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Target> {
        self.map.values_mut()
    }

    pub(crate) fn retain(&mut self, f: impl FnMut(&SocketAddr, &mut Target) -> bool) {
        self.map.retain(f);
    }

    /// Returns the earliest time a target wants attention.
    pub fn next_deadline(&self, request_timeout: Duration) -> Option<Instant> {
        self.map
            .values()
            .filter_map(|t| match &t.state {
                TargetState::Retrying { next_attempt, .. } => Some(*next_attempt),
                TargetState::Requested { since } => Some(*since + request_timeout),
                TargetState::Connecting { .. }
                | TargetState::Established { .. }
                | TargetState::Failed { .. }
                | TargetState::Pending => None,
            })
            .min()
    }
}

impl Target {
    /// Records a failed attempt and schedules the next one.
    pub(crate) fn fail(&mut self, now: Instant, error: &str, b: Backoff, rng: &mut impl Rng) {
        self.attempts = self.attempts.saturating_add(1);
        let exp = self.attempts.saturating_sub(1).min(64) as i32;
        let i = b.initial.as_secs_f64() * 1.5f64.powi(exp);
        let i = i.min(b.max.as_secs_f64());
        let wait = i * rng.gen_range(0.5..1.5);
        self.state = TargetState::Retrying {
            next_attempt: now + Duration::from_secs_f64(wait),
            last_error: error.to_owned(),
        };
        self.connected_at = None;
    }

    /// Records that the connection to this target went down.
    pub(crate) fn disconnected(&mut self, now: Instant, b: Backoff, rng: &mut impl Rng) {
        if self
            .connected_at
            .is_some_and(|t| now.saturating_duration_since(t) > b.max)
        {
            self.attempts = 0;
        }
        self.fail(now, "connection closed", b, rng);
    }
}
