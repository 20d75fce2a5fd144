//! fastdp decisions: which peers the kernel VXLAN path carries, and what routers tell each
//! other about it.
//!
//! Sans-IO. The router's shell sends the probes [`Fastdp::poll_probe`] asks for, reports the
//! answers its AF_PACKET socket sees ([`Fastdp::handle_probe_answer`]), calls
//! [`Fastdp::handle_timeout`] at [`Fastdp::poll_timeout`], and applies the
//! [`Event`]s, asking [`fdb::Pins`] for the forwarding-database changes each one means.
//!
//! Per peer, health is a data-plane fact: a probe is a VXLAN-encapsulated ARP request the
//! peer's kernel answers (docs/PROTOCOL.md, "fastdp probe"). A peer is healthy after
//! [`Config::up_after`] answered probes in a row and unhealthy after [`Config::down_after`]
//! unanswered ones in a row (hysteresis).
//!
//! Probes cost every pair of routers packets and wake-ups, so the cadence follows need
//! (docs/ARCHITECTURE.md, "What a peer costs"): a peer is probed every round
//! ([`Config::probe_interval`]) while its state is in question (not yet healthy, a probe just
//! missed, a healthy answer after failures) or while traffic flows to it
//! ([`Fastdp::handle_traffic`], evidence the shell reads from the kernel's forwarding
//! entries); otherwise every [`Config::idle_probe_interval`], its answer judged one round
//! later. An idle peer whose path breaks is thus found in at most `idle_probe_interval` +
//! `down_after` rounds, a busy one in `down_after` + 1 rounds.
//! Whether a healthy peer is actually on fastdp also depends on the mode (`--datapath`) and
//! on whether its traffic must be encrypted (this kernel has no ESP, so encrypted traffic
//! takes the sealed sleeve): [`Fastdp::set_encryption_required`] is a runtime input.
//!
//! A peer stays known while it is on fastdp even when its control connection closes: a
//! router that is down or restarting keeps its fastdp entries while its kernel answers.
//!
//! [`Announcement`] is the control message (channel byte 0x05) each router floods: its bridge
//! MAC (the probe target), the peers it currently sends to over fastdp, and its own pods'
//! MACs. [`Announcements`] keeps the newest per origin.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::PeerName;

pub mod fdb;
pub mod probe;

pub use probe::{Answer, parse_answer, probe_frame};

pub use crate::mac::MacAddr;

/// The VXLAN network identifier weft uses (the kernel-VXLAN bench baseline uses 42).
pub const VNI: u32 = 0x00_77_65; // "we"

/// Which data paths a router may use (`--datapath`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// fastdp where the probe answers, sleeve elsewhere.
    Auto,
    /// fastdp for every peer whatever the probe says (unless encryption requires the sleeve).
    Fastdp,
    /// The sleeve only.
    Sleeve,
}

/// Timing of the probe and its hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The data paths allowed.
    pub mode: Mode,
    /// Time between two probes to one peer.
    pub probe_interval: Duration,
    /// Unanswered probes in a row that make a healthy peer unhealthy.
    pub down_after: u32,
    /// Answered probes in a row that make an unhealthy peer healthy.
    pub up_after: u32,
    /// Time between two probes to a peer that is settled (healthy and answering, or failed
    /// for `down_after` rounds) and carries no traffic. Equal to `probe_interval`, every
    /// peer is probed every round.
    pub idle_probe_interval: Duration,
    /// How long evidence of traffic to a peer keeps it on the round-by-round cadence.
    pub busy_for: Duration,
    /// The VXLAN UDP port, for the reasons shown in status.
    pub vxlan_port: u16,
}

impl Config {
    /// 100 ms rounds; down after 3 misses (≤ 400 ms after the path breaks while traffic
    /// flows, ≤ 2.3 s when idle), up after 3 answers (≈ 300 ms after it heals, ≤ 2.3 s when
    /// it had failed); settled idle peers probed every 2 s; traffic seen keeps a peer on
    /// 100 ms rounds for 2 s.
    pub fn new(mode: Mode, vxlan_port: u16) -> Self {
        Self {
            mode,
            probe_interval: Duration::from_millis(100),
            down_after: 3,
            up_after: 3,
            idle_probe_interval: Duration::from_secs(2),
            busy_for: Duration::from_secs(2),
            vxlan_port,
        }
    }

    /// The same, with every peer probed every round whatever its state (the cadence before
    /// idle peers were probed less often; tests of the hysteresis use it).
    pub fn every_round(mode: Mode, vxlan_port: u16) -> Self {
        let mut c = Self::new(mode, vxlan_port);
        c.idle_probe_interval = c.probe_interval;
        c
    }
}

/// The path a peer's pod traffic takes from this router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// The kernel VXLAN device.
    Fastdp,
    /// The userspace sleeve, and why.
    Sleeve(Reason),
}

/// Why a peer is on the sleeve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No probe answer yet (the peer has not announced its bridge, or probing just began).
    Probing,
    /// Probes on the VXLAN port went unanswered.
    NoAnswer {
        /// The VXLAN port probed.
        port: u16,
    },
    /// Traffic must be encrypted and the kernel has no ESP: the sealed sleeve carries it.
    Encryption,
    /// `--datapath sleeve`.
    ModeSleeve,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Probing => f.write_str("probing the VXLAN path"),
            Self::NoAnswer { port } => write!(
                f,
                "no answer to VXLAN probes on UDP {port} (full-size probes: a filtered port, or a path MTU below the pod MTU + 50)"
            ),
            Self::Encryption => f.write_str(
                "encryption is on and the kernel has no ESP: traffic goes through the encrypted sleeve",
            ),
            Self::ModeSleeve => f.write_str("--datapath sleeve"),
        }
    }
}

/// What the shell must do to the VXLAN forwarding database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `peer` (reached at `addr`) joined fastdp: add its flood entry and its MACs.
    Joined {
        /// The peer.
        peer: PeerName,
        /// Its underlay address (the VXLAN remote).
        addr: IpAddr,
    },
    /// `peer` left fastdp: remove every entry pointing at `addr` and flush the bridge's
    /// entries on the VXLAN port for its MACs.
    Left {
        /// The peer.
        peer: PeerName,
        /// Its underlay address.
        addr: IpAddr,
        /// Why it is on the sleeve now.
        reason: Reason,
    },
}

/// What the data paths mean for one connection's encryption, as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathEncryption {
    /// The sleeve carries the traffic (or fastdp plays no part): the sleeve link's own mode
    /// holds.
    Sleeve,
    /// Traffic must be sealed and the peer is on the sealed sleeve because of it: the kernel
    /// has no ESP, so a fastdp peer's traffic goes through the encrypted sleeve.
    SleeveForEncryption,
    /// Both ends send over fastdp (kernel VXLAN, in clear): plain, settled.
    Fastdp,
    /// Traffic must be sealed but an end still sends over fastdp, in clear: changing over.
    LeavingFastdp {
        /// This router still sends to the peer over fastdp.
        ours: bool,
        /// The peer still announces that it sends to this router over fastdp.
        theirs: bool,
    },
}

impl PathEncryption {
    /// The note status adds to the connection's reason, if any.
    pub fn note(self) -> Option<&'static str> {
        match self {
            Self::Sleeve => None,
            Self::SleeveForEncryption => Some(
                "the kernel has no ESP, so this fastdp peer's traffic goes through the encrypted sleeve",
            ),
            Self::Fastdp => Some("both ends on fastdp (kernel VXLAN, not encrypted)"),
            Self::LeavingFastdp { ours: true, .. } => {
                Some("still on fastdp here (in clear), moving to the encrypted sleeve")
            }
            Self::LeavingFastdp { ours: false, .. } => {
                Some("the peer still sends over fastdp (in clear), moving to the encrypted sleeve")
            }
        }
    }
}

/// A probe to send: an ARP request for `addr` to the bridge `mac`, VXLAN-encapsulated to
/// `addr` on the VXLAN port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The peer probed.
    pub peer: PeerName,
    /// Its underlay address.
    pub addr: IpAddr,
    /// Its bridge's MAC.
    pub mac: MacAddr,
}

/// One peer as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The peer.
    pub peer: PeerName,
    /// Its underlay address.
    pub addr: IpAddr,
    /// The path its traffic takes.
    pub path: Path,
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes answered.
    pub probes_answered: u64,
    /// Times the path changed.
    pub switches: u64,
}

#[derive(Clone, Debug)]
struct PeerState {
    addr: IpAddr,
    mac: Option<MacAddr>,
    connected: bool,
    healthy: bool,
    /// A probe was sent and not answered yet.
    outstanding: bool,
    answered_in_row: u32,
    missed_in_row: u32,
    /// Whether the peer was unhealthy because probes went unanswered (vs. never answered).
    ever_failed: bool,
    path: Path,
    probes_sent: u64,
    probes_answered: u64,
    switches: u64,
    /// When the last probe went out.
    last_probe: Option<Instant>,
    /// Until when traffic evidence keeps the peer on round-by-round probes.
    busy_until: Option<Instant>,
}

impl PeerState {
    /// Whether the peer is probed every round: its state is in question, or traffic flows.
    fn needs_every_round(&self, now: Instant, down_after: u32) -> bool {
        let suspect = self.healthy && self.missed_in_row > 0;
        let confirming = !self.healthy && self.answered_in_row > 0;
        let starting = !self.healthy && !self.ever_failed;
        let failing = !self.healthy && self.missed_in_row < down_after;
        let busy = self.busy_until.is_some_and(|t| now < t);
        suspect || confirming || starting || failing || busy
    }
}

/// The per-peer fastdp decision core.
#[derive(Debug)]
pub struct Fastdp {
    config: Config,
    peers: BTreeMap<PeerName, PeerState>,
    encryption_required: bool,
    /// Peers the mesh encryption does not cover (both ends in a trusted subnet): they may
    /// stay on fastdp while encryption is required.
    exempt: BTreeSet<PeerName>,
    events: VecDeque<Event>,
    probes: VecDeque<Probe>,
    next_probe: Option<Instant>,
    /// The latest time an input brought, for inputs that come without one.
    last_now: Option<Instant>,
}

impl Fastdp {
    /// A core with no peers.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            encryption_required: false,
            exempt: BTreeSet::new(),
            events: VecDeque::new(),
            probes: VecDeque::new(),
            next_probe: None,
            last_now: None,
        }
    }

    /// Returns the configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A control connection to `peer` at `addr` came up. `assume_healthy` starts the peer
    /// healthy (a restarted router found this peer's flood entry left by its previous run,
    /// so traffic keeps flowing while the probe confirms it).
    pub fn handle_peer_up(
        &mut self,
        now: Instant,
        peer: PeerName,
        addr: IpAddr,
        assume_healthy: bool,
    ) {
        let state = self.peers.entry(peer).or_insert_with(|| PeerState {
            addr,
            mac: None,
            connected: true,
            healthy: assume_healthy,
            outstanding: false,
            answered_in_row: 0,
            missed_in_row: 0,
            ever_failed: false,
            path: Path::Sleeve(Reason::Probing),
            probes_sent: 0,
            probes_answered: 0,
            switches: 0,
            last_probe: None,
            busy_until: None,
        });
        state.connected = true;
        if state.addr != addr {
            // Moved: the old address's entries go, the new one is probed afresh.
            if state.path == Path::Fastdp {
                self.events.push_back(Event::Left {
                    peer,
                    addr: state.addr,
                    reason: Reason::Probing,
                });
                state.path = Path::Sleeve(Reason::Probing);
            }
            state.addr = addr;
            state.healthy = false;
            state.answered_in_row = 0;
            state.missed_in_row = 0;
            state.outstanding = false;
        }
        self.last_now = Some(now);
        self.probe_soon(now);
        self.reevaluate(peer);
    }

    /// Brings the next round forward to `at` (a new peer or bridge MAC to probe, traffic).
    fn probe_soon(&mut self, at: Instant) {
        self.next_probe = Some(self.next_probe.map_or(at, |t| t.min(at)));
    }

    /// The control connection to `peer` closed. A peer on fastdp stays (its kernel may still
    /// answer while its router restarts); one on the sleeve is forgotten.
    pub fn handle_peer_down(&mut self, peer: PeerName) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        state.connected = false;
        if state.path != Path::Fastdp {
            self.peers.remove(&peer);
        }
    }

    /// Forgets `peer` at once (removed from the mesh by an operator); leaves fastdp if on it.
    pub fn forget(&mut self, peer: PeerName) {
        if let Some(state) = self.peers.remove(&peer)
            && state.path == Path::Fastdp
        {
            self.events.push_back(Event::Left {
                peer,
                addr: state.addr,
                reason: Reason::Probing,
            });
        }
    }

    /// `peer` announced its bridge MAC, the probe's target.
    pub fn handle_bridge_mac(&mut self, peer: PeerName, mac: MacAddr) {
        if let Some(state) = self.peers.get_mut(&peer) {
            let first = state.mac.is_none();
            state.mac = Some(mac);
            if first && let Some(now) = self.last_now {
                self.probe_soon(now);
            }
        }
    }

    /// A probe answer came from `addr` (the ARP reply's sender address). It answers every
    /// peer probed at that address (a node that came back with a new identity shares its old
    /// one's address until the old one is forgotten).
    pub fn handle_probe_answer(&mut self, addr: IpAddr) {
        let peers: Vec<PeerName> = self
            .peers
            .iter()
            .filter(|(_, s)| s.addr == addr)
            .map(|(p, _)| *p)
            .collect();
        for peer in peers {
            let Some(state) = self.peers.get_mut(&peer) else {
                continue;
            };
            if !state.outstanding {
                // A duplicate or late answer; the probe it answers was counted already.
                continue;
            }
            state.outstanding = false;
            state.probes_answered += 1;
            state.missed_in_row = 0;
            state.answered_in_row = state.answered_in_row.saturating_add(1);
            if !state.healthy && state.answered_in_row >= self.config.up_after {
                state.healthy = true;
                self.reevaluate(peer);
            }
        }
    }

    /// Sets whether traffic must be encrypted (no kernel ESP, so such peers take the sealed
    /// sleeve). A runtime input: the encryption toggle may flip it while traffic flows.
    pub fn set_encryption_required(&mut self, required: bool) {
        if self.encryption_required == required {
            return;
        }
        self.encryption_required = required;
        let peers: Vec<PeerName> = self.peers.keys().copied().collect();
        for peer in peers {
            self.reevaluate(peer);
        }
    }

    /// Sets whether `peer` is outside the mesh encryption (a trusted subnet holds both ends),
    /// so that required encryption does not move it off fastdp.
    pub fn set_encryption_exempt(&mut self, peer: PeerName, exempt: bool) {
        let changed = if exempt {
            self.exempt.insert(peer)
        } else {
            self.exempt.remove(&peer)
        };
        if changed {
            self.reevaluate(peer);
        }
    }

    /// Returns whether encryption currently forces the sleeve.
    pub fn encryption_required(&self) -> bool {
        self.encryption_required
    }

    /// Traffic to the peers at `addr` was seen at `now` (the shell reads it from the kernel's
    /// forwarding entries for their pods): they are probed every round for
    /// [`Config::busy_for`], so a path that breaks under traffic is left within
    /// `down_after` + 1 rounds.
    pub fn handle_traffic(&mut self, now: Instant, addr: IpAddr) {
        self.last_now = Some(now);
        let until = now + self.config.busy_for;
        let mut woke = false;
        for state in self.peers.values_mut().filter(|s| s.addr == addr) {
            woke |= !state.needs_every_round(now, self.config.down_after);
            state.busy_until = Some(state.busy_until.map_or(until, |t| t.max(until)));
        }
        if woke {
            // The next round is due at once rather than at the idle cadence.
            self.probe_soon(now);
        }
    }

    /// Counts unanswered probes and sends the round's probes: to every peer that needs
    /// every round, and to settled peers whose idle interval has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_probe else {
            return;
        };
        if now < due {
            return;
        }
        self.last_now = Some(now);
        let (interval, idle) = (self.config.probe_interval, self.config.idle_probe_interval);
        let mut next_idle: Option<Instant> = None;
        let mut every_round = false;
        let peers: Vec<PeerName> = self.peers.keys().copied().collect();
        for peer in peers {
            let Some(state) = self.peers.get_mut(&peer) else {
                continue;
            };
            let Some(mac) = state.mac else {
                continue;
            };
            if state.outstanding && state.last_probe.is_some_and(|t| now < t + interval / 2) {
                // Probed moments ago (a round brought forward): judged next round.
                every_round = true;
                continue;
            }
            if state.outstanding {
                state.missed_in_row = state.missed_in_row.saturating_add(1);
                state.answered_in_row = 0;
                if state.healthy && state.missed_in_row >= self.config.down_after {
                    state.healthy = false;
                    state.ever_failed = true;
                } else if !state.healthy && state.missed_in_row >= self.config.down_after {
                    state.ever_failed = true;
                }
            }
            let fast = state.needs_every_round(now, self.config.down_after);
            // Half a round of slack: a round that fires a little early still counts.
            let idle_due = state
                .last_probe
                .is_none_or(|t| now + interval / 2 >= t + idle);
            if fast || idle_due {
                state.outstanding = true;
                state.probes_sent += 1;
                state.last_probe = Some(now);
                self.probes.push_back(Probe {
                    peer,
                    addr: state.addr,
                    mac,
                });
                // Its answer is judged next round.
                every_round = true;
            } else if let Some(t) = state.last_probe {
                let at = t + idle;
                next_idle = Some(next_idle.map_or(at, |n| n.min(at)));
            }
            self.reevaluate(peer);
        }
        // Keep the cadence; after a long stall, restart it from now.
        let next = due + interval;
        let next_round = if next <= now { now + interval } else { next };
        self.next_probe = if self.peers.is_empty() {
            None
        } else if every_round {
            Some(next_round)
        } else {
            // Only settled idle peers (or none with a bridge MAC yet): sleep until the first
            // is due, never sooner than a round.
            Some(next_idle.map_or(next_round + idle, |t| t.max(next_round)))
        };
    }

    /// The next probe to send.
    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.probes.pop_front()
    }

    /// When [`Fastdp::handle_timeout`] wants calling, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.next_probe.map(|t| (t, "fastdp probe"))
    }

    /// The next change to the forwarding database.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The path `peer`'s traffic takes, if the peer is known.
    pub fn path(&self, peer: PeerName) -> Option<Path> {
        self.peers.get(&peer).map(|s| s.path)
    }

    /// What the data paths mean for the encryption of the traffic with `peer`: `seal` is
    /// whether it must be sealed, `theirs` whether the peer announces that it sends to this
    /// router over fastdp. A connection counts as sealed only once neither end sends over
    /// fastdp, and as plain on fastdp only once both do (so a sleeve link's stale "peer
    /// still sends sealed" does not hold up a change back to fastdp).
    pub fn path_encryption(&self, peer: PeerName, seal: bool, theirs: bool) -> PathEncryption {
        let path = self.path(peer);
        let ours = path == Some(Path::Fastdp);
        if seal {
            if ours || theirs {
                PathEncryption::LeavingFastdp { ours, theirs }
            } else if path == Some(Path::Sleeve(Reason::Encryption)) {
                PathEncryption::SleeveForEncryption
            } else {
                PathEncryption::Sleeve
            }
        } else if ours && theirs {
            PathEncryption::Fastdp
        } else {
            PathEncryption::Sleeve
        }
    }

    /// A hash of what status shows of each peer besides counters (address, path and why):
    /// it moves exactly when a peer's path or reason changes, or peers come and go.
    pub fn paths_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (peer, s) in &self.peers {
            (peer, s.addr, s.path).hash(&mut h);
        }
        h.finish()
    }

    /// Whether any peer is on fastdp.
    pub fn any_on_fastdp(&self) -> bool {
        self.peers.values().any(|s| s.path == Path::Fastdp)
    }

    /// The peers currently on fastdp.
    pub fn fastdp_peers(&self) -> BTreeSet<PeerName> {
        self.peers
            .iter()
            .filter(|(_, s)| s.path == Path::Fastdp)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Every known peer, for status.
    pub fn views(&self) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(p, s)| PeerView {
                peer: *p,
                addr: s.addr,
                path: s.path,
                probes_sent: s.probes_sent,
                probes_answered: s.probes_answered,
                switches: s.switches,
            })
            .collect()
    }

    fn wanted(&self, peer: PeerName, state: &PeerState) -> Path {
        match self.config.mode {
            Mode::Sleeve => Path::Sleeve(Reason::ModeSleeve),
            _ if self.encryption_required && !self.exempt.contains(&peer) => {
                Path::Sleeve(Reason::Encryption)
            }
            Mode::Fastdp => Path::Fastdp,
            Mode::Auto if state.healthy => Path::Fastdp,
            Mode::Auto if state.ever_failed => Path::Sleeve(Reason::NoAnswer {
                port: self.config.vxlan_port,
            }),
            Mode::Auto => Path::Sleeve(Reason::Probing),
        }
    }

    fn reevaluate(&mut self, peer: PeerName) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let wanted = self.wanted(peer, state);
        let (old, addr, connected) = (state.path, state.addr, state.connected);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.path = wanted;
        }
        match (old, wanted) {
            (Path::Fastdp, Path::Sleeve(reason)) => {
                self.bump_switches(peer);
                self.events.push_back(Event::Left { peer, addr, reason });
                if !connected {
                    self.peers.remove(&peer);
                }
            }
            (Path::Sleeve(_), Path::Fastdp) => {
                self.bump_switches(peer);
                self.events.push_back(Event::Joined { peer, addr });
            }
            (Path::Fastdp, Path::Fastdp) | (Path::Sleeve(_), Path::Sleeve(_)) => {}
        }
    }

    fn bump_switches(&mut self, peer: PeerName) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.switches += 1;
        }
    }
}

/// What a router floods about itself on the control channel (byte 0x05): see
/// docs/PROTOCOL.md, "fastdp announcement".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The router this is about.
    pub origin: PeerName,
    /// Newer replaces older; a restarted router starts above its previous run (wall-clock
    /// microseconds at start).
    pub seq: u64,
    /// The origin's bridge MAC: probes are addressed to it.
    pub bridge_mac: MacAddr,
    /// The peers the origin sends to over fastdp (they get its broadcasts from the VXLAN
    /// device, so the sleeve must not deliver them a second time).
    pub fastdp_peers: BTreeSet<PeerName>,
    /// The origin's own pods' MACs.
    pub macs: BTreeSet<MacAddr>,
}

/// Why an announcement was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Shorter than its fixed part or its lists.
    #[error("truncated fastdp announcement")]
    Truncated,
    /// Not version 1.
    #[error("unknown fastdp announcement version")]
    BadVersion,
    /// Bytes after the last list.
    #[error("trailing bytes after fastdp announcement")]
    TrailingBytes,
    /// A list longer than its bound.
    #[error("fastdp announcement list too long")]
    TooLong,
    /// A list not strictly ascending (unsorted or with duplicates).
    #[error("fastdp announcement list not strictly ascending")]
    Unsorted,
    /// A MAC that is zero, multicast or broadcast.
    #[error("fastdp announcement holds a MAC that is not unicast")]
    BadMac,
    /// The origin lists itself as a fastdp peer.
    #[error("fastdp announcement lists its origin as a fastdp peer")]
    SelfListed,
}

/// Announcement format version.
pub const ANNOUNCE_VERSION: u8 = 1;
/// Most fastdp peers one announcement lists.
pub const MAX_ANNOUNCED_PEERS: usize = 1024;
/// Most MACs one announcement lists.
pub const MAX_ANNOUNCED_MACS: usize = 4096;
const FIXED_LEN: usize = 1 + 6 + 8 + 6;

fn unicast(mac: &MacAddr) -> bool {
    !mac.is_group() && *mac != MacAddr::ZERO
}

impl Announcement {
    /// Encodes the body (after the channel byte). Lists longer than their bound are cut.
    pub fn encode(&self) -> Vec<u8> {
        let peers: Vec<&PeerName> = self.fastdp_peers.iter().take(MAX_ANNOUNCED_PEERS).collect();
        let macs: Vec<&MacAddr> = self.macs.iter().take(MAX_ANNOUNCED_MACS).collect();
        let mut out = Vec::with_capacity(FIXED_LEN + 4 + 6 * (peers.len() + macs.len()));
        out.push(ANNOUNCE_VERSION);
        out.extend_from_slice(&self.origin.bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.bridge_mac.bytes());
        // Both counts are bounded above by u16::MAX.
        out.extend_from_slice(&(peers.len() as u16).to_be_bytes());
        for p in peers {
            out.extend_from_slice(&p.bytes());
        }
        out.extend_from_slice(&(macs.len() as u16).to_be_bytes());
        for m in macs {
            out.extend_from_slice(&m.bytes());
        }
        out
    }

    /// Decodes a body strictly: exact length, bounded sorted lists, unicast MACs.
    ///
    /// # Errors
    /// Any [`AnnounceError`].
    pub fn decode(body: &[u8]) -> Result<Self, AnnounceError> {
        let mut r = Reader(body);
        if r.take(1)?[0] != ANNOUNCE_VERSION {
            return Err(AnnounceError::BadVersion);
        }
        let origin = PeerName::from_bytes(r.six()?);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(r.take(8)?);
        let seq = u64::from_be_bytes(seq);
        let bridge_mac = MacAddr::from_bytes(r.six()?);
        if !unicast(&bridge_mac) {
            return Err(AnnounceError::BadMac);
        }
        let peers = r.list(MAX_ANNOUNCED_PEERS)?;
        let mut fastdp_peers = BTreeSet::new();
        for p in peers {
            let p = PeerName::from_bytes(p);
            if p == origin {
                return Err(AnnounceError::SelfListed);
            }
            fastdp_peers.insert(p);
        }
        let macs_list: Vec<MacAddr> = r
            .list(MAX_ANNOUNCED_MACS)?
            .into_iter()
            .map(MacAddr::from_bytes)
            .collect();
        if !macs_list.iter().all(unicast) {
            return Err(AnnounceError::BadMac);
        }
        if !r.0.is_empty() {
            return Err(AnnounceError::TrailingBytes);
        }
        Ok(Self {
            origin,
            seq,
            bridge_mac,
            fastdp_peers,
            macs: macs_list.into_iter().collect(),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AnnounceError> {
        if self.0.len() < n {
            return Err(AnnounceError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn six(&mut self) -> Result<[u8; 6], AnnounceError> {
        let mut out = [0u8; 6];
        out.copy_from_slice(self.take(6)?);
        Ok(out)
    }

    /// A u16 count, then that many strictly ascending 6-byte items.
    fn list(&mut self, max: usize) -> Result<Vec<[u8; 6]>, AnnounceError> {
        let n = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
        if n > max {
            return Err(AnnounceError::TooLong);
        }
        if self.0.len() < 6 * n {
            return Err(AnnounceError::Truncated);
        }
        let mut out: Vec<[u8; 6]> = Vec::with_capacity(n);
        for _ in 0..n {
            let item = self.six()?;
            if out.last().is_some_and(|last| *last >= item) {
                return Err(AnnounceError::Unsorted);
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// The newest announcement of every origin.
#[derive(Clone, Debug, Default)]
pub struct Announcements {
    by_origin: BTreeMap<PeerName, Announcement>,
}

impl Announcements {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `a` if it is newer than what is held for its origin; returns whether it was
    /// (then the caller passes it on to its other connections).
    pub fn merge(&mut self, a: Announcement) -> bool {
        match self.by_origin.get(&a.origin) {
            Some(held) if held.seq >= a.seq => false,
            _ => {
                self.by_origin.insert(a.origin, a);
                true
            }
        }
    }

    /// The announcement held for `origin`.
    pub fn get(&self, origin: PeerName) -> Option<&Announcement> {
        self.by_origin.get(&origin)
    }

    /// Every announcement held.
    pub fn iter(&self) -> impl Iterator<Item = &Announcement> {
        self.by_origin.values()
    }

    /// Drops `origin`'s announcement (the peer left the mesh).
    pub fn remove(&mut self, origin: PeerName) {
        self.by_origin.remove(&origin);
    }
}

#[cfg(test)]
mod tests;
