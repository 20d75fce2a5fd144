//! Seeding consensus: single-decree Paxos carried as a state-based CRDT over IPAM gossip.
//!
//! Used only while no ring exists anywhere we can hear, with `--ipalloc-init consensus[=N]`.
//! The decided value is the sorted set of peer names the winning proposer had heard from;
//! every peer that learns the decision builds the same ring from it ([`super::ring::Ring::seeded`]).
//!
//! Each participant gossips its own claims (promise, accepted proposal and value) and the
//! claims it has heard from others. Claims of one node only grow (ordered by promise, then
//! accepted proposal), so the merge is a per-node maximum. Acceptors promise the highest
//! proposal they see and accept a value only from a node that accepted it under the proposal
//! they promised; a proposer picks the value accepted under the highest proposal among a
//! quorum of promises, or its own. Two different values can never both reach a quorum under
//! any proposals (the Paxos argument), so two rings cannot both be seeded by consensus.
//! Liveness: a proposer that has not seen a decision re-proposes with a higher round after a
//! randomised delay; status names the quorum and who is known (no silent wedge).

use std::collections::{BTreeMap, BTreeSet};

use crate::peer::PeerName;

/// A proposal number: round first, then the proposer's name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Ballot {
    /// Zero means none.
    pub round: u32,
    /// The proposing peer.
    pub proposer: PeerName,
}

impl Ballot {
    fn is_none(&self) -> bool {
        self.round == 0
    }
}

/// What one node has promised and accepted.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Claims {
    /// The node accepts no proposal lower than this.
    pub promise: Ballot,
    /// The highest proposal the node accepted (round 0: none).
    pub accepted: Ballot,
    /// The value accepted with `accepted`: sorted, deduplicated seed names.
    pub value: Vec<PeerName>,
}

impl Claims {
    fn key(&self) -> (Ballot, Ballot) {
        (self.promise, self.accepted)
    }
}

/// One participant's view.
#[derive(Clone, Debug)]
pub(super) struct Paxos {
    me: PeerName,
    quorum: usize,
    knows: BTreeMap<PeerName, Claims>,
    observer: bool,
}

impl Paxos {
    /// Starts a participant needing `quorum` agreeing nodes. An observer never votes.
    pub(super) fn new(me: PeerName, quorum: usize, observer: bool) -> Self {
        let mut knows = BTreeMap::new();
        if !observer {
            knows.insert(me, Claims::default());
        }
        Self {
            me,
            quorum: quorum.max(1),
            knows,
            observer,
        }
    }

    /// Returns how many participants we have heard of, ourselves included.
    pub(super) fn known(&self) -> usize {
        self.knows.len()
    }

    /// Returns every node's claims, for gossip.
    pub(super) fn claims(&self) -> &BTreeMap<PeerName, Claims> {
        &self.knows
    }

    /// Returns true when some proposal of ours or others is under way.
    pub(super) fn started(&self) -> bool {
        self.knows.values().any(|c| !c.promise.is_none())
    }

    /// Merges claims heard from gossip; returns true when our view changed.
    pub(super) fn merge(&mut self, theirs: &BTreeMap<PeerName, Claims>) -> bool {
        let mut changed = false;
        for (&node, claims) in theirs {
            match self.knows.get_mut(&node) {
                Some(ours) if ours.key() >= claims.key() => {}
                Some(ours) => {
                    *ours = claims.clone();
                    changed = true;
                }
                None => {
                    self.knows.insert(node, claims.clone());
                    changed = true;
                }
            }
        }
        if changed {
            self.think();
        }
        changed
    }

    /// Returns true when `theirs` lacks claims we know (a node missing, or older): the sender
    /// should hear our view.
    pub(super) fn behind(&self, theirs: &BTreeMap<PeerName, Claims>) -> bool {
        self.knows
            .iter()
            .any(|(n, ours)| theirs.get(n).is_none_or(|t| t.key() < ours.key()))
    }

    /// Starts (or restarts) a proposal with a round above any seen.
    pub(super) fn propose(&mut self) {
        if self.observer {
            return;
        }
        let top = self
            .knows
            .values()
            .map(|c| c.promise.round.max(c.accepted.round))
            .max()
            .unwrap_or(0);
        let ballot = Ballot {
            round: top.saturating_add(1),
            proposer: self.me,
        };
        if let Some(ours) = self.knows.get_mut(&self.me) {
            ours.promise = ballot;
        }
        self.think();
    }

    /// Returns the decided seed list, once a quorum accepted one value under one proposal.
    pub(super) fn decided(&self) -> Option<Vec<PeerName>> {
        let mut counts: BTreeMap<Ballot, usize> = BTreeMap::new();
        for c in self.knows.values() {
            if !c.accepted.is_none() {
                *counts.entry(c.accepted).or_insert(0) += 1;
            }
        }
        let (&ballot, _) = counts.iter().find(|&(_, &n)| n >= self.quorum)?;
        self.knows
            .values()
            .find(|c| c.accepted == ballot)
            .map(|c| c.value.clone())
    }

    /// Applies the acceptor and proposer rules to our own claims.
    fn think(&mut self) {
        if self.observer {
            return;
        }
        let Some(mut ours) = self.knows.get(&self.me).cloned() else {
            return;
        };
        // Acceptor: promise the highest proposal seen.
        let top = self
            .knows
            .values()
            .map(|c| c.promise)
            .max()
            .unwrap_or_default();
        if top > ours.promise {
            ours.promise = top;
        }
        // Acceptor: accept the value some node accepted under the proposal we promised.
        if ours.accepted != ours.promise
            && let Some(c) = self
                .knows
                .values()
                .find(|c| !c.accepted.is_none() && c.accepted == ours.promise)
        {
            ours.accepted = c.accepted;
            ours.value = c.value.clone();
        }
        // Proposer: a quorum promised our proposal and nobody accepted under it yet.
        if ours.promise.proposer == self.me
            && !ours.promise.is_none()
            && ours.accepted != ours.promise
        {
            let promised: Vec<&Claims> = self
                .knows
                .iter()
                .filter(|&(&n, c)| n != self.me && c.promise == ours.promise)
                .map(|(_, c)| c)
                .chain(std::iter::once(&ours))
                .collect();
            if promised.len() >= self.quorum {
                let value = promised
                    .iter()
                    .filter(|c| !c.accepted.is_none())
                    .max_by_key(|c| c.accepted)
                    .map(|c| c.value.clone())
                    .unwrap_or_else(|| {
                        let all: BTreeSet<PeerName> = self.knows.keys().copied().collect();
                        all.into_iter().collect()
                    });
                ours.accepted = ours.promise;
                ours.value = value;
            }
        }
        self.knows.insert(self.me, ours);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, b])
    }

    fn exchange(ps: &mut [Paxos]) {
        for _ in 0..4 {
            for i in 0..ps.len() {
                let c = ps[i].claims().clone();
                for (j, p) in ps.iter_mut().enumerate() {
                    if i != j {
                        p.merge(&c);
                    }
                }
            }
        }
    }

    #[test]
    fn lone_quorum_one_decides_at_once() {
        let mut p = Paxos::new(n(1), 1, false);
        p.propose();
        assert_eq!(p.decided(), Some(vec![n(1)]));
    }

    #[test]
    fn three_agree_even_with_duelling_proposers() {
        let mut ps: Vec<Paxos> = (1..=3).map(|i| Paxos::new(n(i), 2, false)).collect();
        exchange(&mut ps);
        ps[0].propose();
        ps[2].propose();
        exchange(&mut ps);
        let d: Vec<_> = ps.iter().map(Paxos::decided).collect();
        assert!(d[0].is_some());
        assert!(d.iter().all(|x| *x == d[0]));
    }

    #[test]
    fn behind_spots_a_sender_missing_claims() {
        let mut a = Paxos::new(n(1), 2, false);
        let mut b = Paxos::new(n(2), 2, false);
        a.propose();
        assert!(a.behind(b.claims()), "b lacks a's proposal");
        b.merge(a.claims());
        assert!(!a.behind(b.claims()), "b now has all a knows");
        assert!(b.behind(a.claims()), "a lacks b's promise");
        // a gets the quorum of promises and accepts: now b is the one behind.
        a.merge(b.claims());
        assert!(!b.behind(a.claims()));
        assert!(a.behind(b.claims()), "b lacks a's acceptance");
    }

    #[test]
    fn minority_cannot_decide() {
        let mut a = Paxos::new(n(1), 2, false);
        a.propose();
        assert_eq!(a.decided(), None);
        assert_eq!(a.known(), 1);
    }
}
