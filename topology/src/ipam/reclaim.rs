//! Reclaiming the space of dead peers: the fence, the votes and the takeover
//! (docs/IPAM.md, "Reclaiming").

use super::*;

impl Ipam {
    /// Tracks whether the owners we cannot see could form a majority without us.
    pub(super) fn update_fence(&mut self, now: Instant) {
        let Some(ring) = &self.ring else { return };
        let owners = ring.totals();
        let me = self.config.name;
        let unseen = owners
            .keys()
            .filter(|&&p| p != me && !self.live.get(&p).is_some_and(|l| l.seen))
            .count();
        let minority = unseen * 2 > owners.len();
        match (minority, self.minority_since) {
            (true, None) => self.minority_since = Some(now),
            (false, Some(since)) => {
                self.minority_since = None;
                let fenced = self
                    .config
                    .reclaim_after
                    .is_some_and(|after| now >= since + after / 2);
                if fenced {
                    // We may have been reclaimed meanwhile: allocate again only after every
                    // live owner has told us its ring.
                    self.resync = owners
                        .keys()
                        .filter(|&&p| p != me && self.live.get(&p).is_some_and(|l| l.seen))
                        .copied()
                        .collect();
                }
            }
            _ => {}
        }
    }

    pub(super) fn dead_owners(&self, now: Instant) -> Vec<PeerName> {
        let (Some(after), Some(ring)) = (self.config.reclaim_after, &self.ring) else {
            return Vec::new();
        };
        ring.totals()
            .keys()
            .filter(|&&p| p != self.config.name)
            .filter(|&&p| match self.live.get(&p) {
                Some(l) => !l.seen && now >= l.since + after,
                None => now >= self.started + after,
            })
            .take(wire::MAX_VOTE_TARGETS)
            .copied()
            .collect()
    }

    pub(super) fn update_vote(&mut self, now: Instant) {
        let Some(ring) = &self.ring else { return };
        let dead = self.dead_owners(now);
        let vote = if dead.is_empty() || self.blocked(now).is_some() {
            None
        } else {
            Some(Vote {
                owners_hash: owners_hash(ring.totals().keys().copied()),
                dead,
            })
        };
        let me = self.config.name;
        if let Some(r) = self.records.get_mut(&me)
            && r.vote != vote
        {
            r.vote = vote;
            r.seq = r.seq.saturating_add(1);
            self.broadcast_record(me);
        }
    }

    /// Performs an agreed reclaim: we are the lowest-named live owner, every owner not voted
    /// dead voted the same dead set under the same owner set, and they are a strict majority.
    pub(super) fn try_reclaim(&mut self, now: Instant) {
        let me = self.config.name;
        let Some(my_vote) = self.records.get(&me).and_then(|r| r.vote.clone()) else {
            return;
        };
        let Some(ring) = &self.ring else { return };
        let owners: Vec<PeerName> = ring.totals().keys().copied().collect();
        let voters: Vec<PeerName> = owners
            .iter()
            .filter(|p| !my_vote.dead.contains(p))
            .copied()
            .collect();
        if voters.first() != Some(&me) || voters.len() * 2 <= owners.len() {
            return;
        }
        let agreed = voters.iter().all(|p| {
            self.records
                .get(p)
                .and_then(|r| r.vote.as_ref())
                .is_some_and(|v| *v == my_vote)
        });
        if !agreed {
            return;
        }
        for dead in my_vote.dead {
            if let Some(ring) = self.ring.as_mut() {
                let taken = ring.take_over(dead, me);
                if taken > 0 {
                    self.stats.reclaimed += 1;
                    self.events.push_back(Event::Reclaimed {
                        peer: dead,
                        addresses: taken,
                    });
                }
            }
        }
        self.update_free();
        self.dirty = true;
        self.broadcast_full();
        self.update_vote(now);
        self.fill_pending(now);
    }
}
