//! Merging what peers gossip: their ring and their records.

use super::*;

impl Ipam {
    pub(super) fn merge_ring(&mut self, now: Instant, from: PeerName, rs: RingState) {
        let size = self.config.range.size();
        let Ok(theirs) = Ring::from_entries(size, rs.entries) else {
            return;
        };
        match &mut self.ring {
            None => {
                // Adopting is safe: without a ring we never allocated.
                self.install_ring(theirs, rs.seeds);
                self.refused.remove(&from);
                self.changed_ring(now);
            }
            Some(ours) => {
                if rs.seeds != self.seeds {
                    // Two rings seeded apart may overlap; never merge them (docs/IPAM.md).
                    self.refused
                        .insert(from, "holds an IP ring seeded by different peers");
                    return;
                }
                self.refused.remove(&from);
                let merged = ours.merge(&theirs, self.config.name);
                if merged.changed {
                    self.recompute_conflicts();
                    self.update_free();
                    self.changed_ring(now);
                }
            }
        }
    }

    pub(super) fn install_ring(&mut self, ring: Ring, seeds: Vec<PeerName>) {
        self.ring = Some(ring);
        self.seeds = seeds;
        self.next_propose = None;
        self.dirty = true;
        self.broadcast_full();
        self.update_free();
    }

    /// Merges records heard from a peer; returns true when any record of ours changed.
    pub(super) fn merge_records(&mut self, peers: &BTreeMap<PeerName, PeerRecord>) -> bool {
        let me = self.config.name;
        let mut changed = false;
        for (&name, rec) in peers {
            if name == me {
                // A record of ours newer than what we hold comes from a previous incarnation:
                // jump past it so our current record wins everywhere.
                if let Some(mine) = self.records.get_mut(&me)
                    && rec.seq >= mine.seq
                    && *rec != *mine
                {
                    // Saturating: a peer may send any seq (u64::MAX included).
                    mine.seq = rec.seq.saturating_add(1);
                    self.broadcast_record(me);
                    changed = true;
                }
                continue;
            }
            match self.records.get_mut(&name) {
                Some(ours) if ours.seq >= rec.seq => {}
                Some(ours) => {
                    *ours = rec.clone();
                    self.broadcast_record(name);
                    changed = true;
                }
                None => {
                    if self.records.len() < wire::MAX_PEERS {
                        self.records.insert(name, rec.clone());
                        self.broadcast_record(name);
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}
