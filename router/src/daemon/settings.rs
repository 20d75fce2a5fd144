//! The mesh-wide encryption setting as the daemon carries it out: the seal decision per
//! connection, the roll-out to the data paths when the setting changes, `POST /encryption`
//! with its password proof, and the setting records the settings machine sends.

use super::*;

impl Daemon {
    /// Whether traffic on connection `conn` is sealed, and why.
    pub(super) fn seal_decision(&self, conn: ConnId) -> Option<mesh_settings::SealDecision> {
        let (local, remote) = self.conn_addrs.get(&conn)?;
        Some(self.seal_policy.borrow().must_seal(*local, *remote))
    }

    /// Applies the held setting: the policy watch, the sleeve's mesh flag and every link.
    pub(super) fn apply_encryption(&mut self) {
        let record = *self.settings.record();
        self.seal_policy.send_if_modified(|p| {
            let changed = p.enabled != record.enabled || p.version != record.version;
            p.enabled = record.enabled;
            p.version = record.version;
            changed
        });
        if let Some(sleeve) = &self.sleeve {
            sleeve.set_mesh_encryption(record.enabled);
            for &conn in self.conn_addrs.keys() {
                if let Some(d) = self.seal_decision(conn) {
                    sleeve.set_link_seal(conn.0, d.seal);
                }
            }
        }
        // No kernel ESP: peers whose traffic must be sealed leave fastdp for the sealed sleeve
        // (the sleeve links were switched above, so they seal from their first frame).
        let exempt: Vec<(PeerName, bool)> = self
            .conn_addrs
            .keys()
            .filter_map(|&conn| {
                let peer = *self.conn_peer.get(&conn)?;
                Some((peer, !self.seal_decision(conn)?.seal))
            })
            .collect();
        if let Some(f) = &mut self.fastdp {
            for (peer, exempt) in exempt {
                f.set_encryption_exempt(peer, exempt);
            }
            f.set_encryption_required(record.enabled);
        }
    }

    /// `POST /encryption`: makes the next version here, after checking the proof a disable
    /// needs where a password is set.
    pub(super) fn set_encryption(
        &mut self,
        enabled: bool,
        version: Option<u64>,
        proof: Option<String>,
    ) -> Result<CommandOutcome, CommandError> {
        let word = if enabled { "enabled" } else { "disabled" };
        let current = *self.settings.record();
        let mut record = self.settings.next(enabled);
        if let Some(v) = version
            && v != record.version
        {
            return Err(CommandError::conflict(format!(
                "the mesh setting is at version {} now, the request was for version {v}: read it again and retry",
                current.version
            )));
        }
        if current.enabled == enabled {
            return Ok(CommandOutcome::new(format!(
                "encryption is already {word} (version {})",
                current.version
            )));
        }
        let key = self.identity.settings_key.as_ref();
        match (key, proof) {
            (Some(key), Some(proof)) => {
                let proof = encryption::parse_proof(&proof).map_err(CommandError::bad_request)?;
                if version.is_none() {
                    return Err(CommandError::bad_request(
                        "\"proof\" needs \"version\" too: the record it proves",
                    ));
                }
                record.proof = Some(proof);
                if !encryption::verify(Some(key), &record) {
                    warn!("refused an encryption change: its password proof does not verify");
                    return Err(CommandError::forbidden(
                        "the password proof does not verify: --password-file does not hold this mesh's password",
                    ));
                }
            }
            (Some(_), None) if !enabled => {
                return Err(CommandError::forbidden(
                    "disabling encryption needs proof of the mesh password: run `weft encryption disable --password-file FILE` (or set WEFT_PASSWORD_FILE)",
                ));
            }
            // Turning encryption on needs no proof; the router signs the record itself.
            (Some(_), None) => record = encryption::sign(key, record),
            (None, Some(_)) => {
                return Err(CommandError::bad_request(
                    "this router has no mesh password: drop --password-file",
                ));
            }
            (None, None) => {}
        }
        self.settings
            .propose(record)
            .map_err(|e| CommandError::conflict(e.to_string()))?;
        info!(
            enabled,
            version = record.version,
            "mesh encryption changed here"
        );
        self.apply_encryption();
        Ok(CommandOutcome::new(format!(
            "encryption {word} for the mesh (version {})",
            record.version
        )))
    }

    /// Sends what the settings machine queued.
    pub(super) fn drain_settings(&mut self) {
        while let Some((dest, msg)) = self.settings.poll_transmit() {
            let conns: Vec<ConnId> = match dest {
                mesh_settings::Destination::Conn(c) => vec![c],
                mesh_settings::Destination::AllExcept(except) => self
                    .conns
                    .keys()
                    .copied()
                    .filter(|c| Some(*c) != except)
                    .collect(),
            };
            for conn in conns {
                self.send_to(conn, msg.clone());
            }
        }
    }
}
