//! Space moving between peers: a peer short of addresses asks the one with the most to
//! spare, which donates the largest free run it owns (docs/IPAM.md, "Donation").

use super::*;

impl Ipam {
    /// The largest free run in our ranges, as `[start, end)`.
    pub(super) fn largest_free_run(&self) -> Option<(u32, u32)> {
        let ring = self.ring.as_ref()?;
        let last = self.config.range.size() - 1;
        let mut best: Option<(u32, u32)> = None;
        let mut consider = |s: u32, e: u32| {
            if e > s && best.is_none_or(|(bs, be)| e - s > be - bs) {
                best = Some((s, e));
            }
        };
        let held = self.foreign_held();
        for (s, e) in ring.owned_by(self.config.name) {
            let lo = s.max(1);
            let hi = e.min(last);
            if lo >= hi {
                continue;
            }
            let mut cur = lo;
            for a in self.used_in(&held, lo, hi) {
                consider(cur, a);
                cur = a + 1;
            }
            consider(cur, hi);
        }
        best
    }

    pub(super) fn donate(&mut self, now: Instant, to: PeerName, want: u32) {
        if to == self.config.name || self.ring.is_none() {
            return;
        }
        // A fenced peer gives nothing away, nor does one waiting for space itself.
        if self.blocked(now).is_some() || !self.pending.is_empty() {
            self.stats.denied += 1;
            self.broadcast_full();
            return;
        }
        // Half our free space at most, as weave does; `want` is a hint for future use.
        let _ = want;
        let free = self.free_count();
        let give_max = free / 2;
        let me = self.config.name;
        let Some((s, e)) = self.largest_free_run() else {
            self.stats.denied += 1;
            self.broadcast_full();
            return;
        };
        let give = give_max.min(e - s);
        if give == 0 {
            self.stats.denied += 1;
            self.broadcast_full();
            return;
        }
        // Give the top of the run, keeping our allocations' neighbourhood.
        let start = e - give;
        let mut done = true;
        if let Some(ring) = self.ring.as_mut() {
            // The run may span several of our entries; transfer each piece.
            let mut from = start;
            while from < e {
                let Some((_, ee, _)) = ring.owner_of(from) else {
                    break;
                };
                let to_end = ee.min(e);
                done &= ring.transfer(from, to_end, me, to);
                from = to_end;
            }
        }
        if done {
            self.stats.donated += u64::from(give);
        }
        self.update_free();
        self.changed_ring(now);
    }

    pub(super) fn choose_donor(&self) -> Option<PeerName> {
        let ring = self.ring.as_ref()?;
        let owners = ring.totals();
        self.records
            .iter()
            .filter(|&(&p, r)| {
                p != self.config.name
                    && r.free > 1
                    && owners.contains_key(&p)
                    && !self.tried.contains(&p)
                    && self.live.get(&p).is_some_and(|l| l.seen)
            })
            .max_by_key(|&(&p, r)| (r.free, p))
            .map(|(&p, _)| p)
    }

    pub(super) fn request_space(&mut self, now: Instant) {
        if self.pending.is_empty() || self.request.is_some() || self.blocked(now).is_some() {
            return;
        }
        let donor = match self.choose_donor() {
            Some(d) => d,
            None if !self.tried.is_empty() => {
                self.tried.clear();
                match self.choose_donor() {
                    Some(d) => d,
                    None => return,
                }
            }
            None => return,
        };
        let want = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        self.transmit.push_back((
            Destination::Peer(donor),
            Message::SpaceRequest { want }.to_bytes(),
        ));
        self.request = Some(Request {
            donor,
            deadline: now + self.config.request_timeout,
        });
    }
}
