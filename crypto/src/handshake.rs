//! The control-channel handshake: a cleartext preamble, then Noise `XX` (or `XXpsk3` when a mesh
//! password is set) over `snow`, then a key-confirmation frame from the responder.
//!
//! Message-driven and pure: the shell feeds received bytes to [`Handshake::handle_input`] and
//! writes whatever lands in `out`; the shell also owns the deadline ([`HANDSHAKE_TIMEOUT`]) and
//! reports [`HandshakeError::Timeout`] itself. Internally each step is its own struct and a
//! transition consumes it (rustls style), so no step can be skipped; the result,
//! [`Established`], carries the [`Authenticated`] proof.
//!
//! ```text
//! initiator                                   responder
//!   preamble ("weft", min, max, flags)  ──►
//!                                        ◄──  preamble
//!   HELLO    (Noise -> e)               ──►
//!                                        ◄──  RESPONSE (Noise <- e, ee, s, es)
//!   FINISH   (Noise -> s, se [, psk])   ──►
//!                                        ◄──  CONTROL (empty message: keys confirmed)
//!                                             or REJECT (wrong password)
//! ```
//!
//! Both preambles go into the Noise prologue, so tampering with versions or flags fails the
//! handshake. A version or password-presence mismatch is caught from the preambles alone, before
//! any Noise message; a wrong password shows as the FINISH message failing to decrypt, which
//! the responder reports back in a REJECT frame. Byte layouts: `docs/PROTOCOL.md`.

use std::fmt;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, CryptoRngCore, RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher as NoiseCipher, Dh, Hash, Random};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Authenticated;
use crate::control::{ControlChannel, ControlError, Frame, FrameKind, split_frame, write_frame};
use crate::kdf::{self, ChainKey};
use crate::keys::{KEY_LEN, NodeKey, PublicKey, peer_name_bytes};
use crate::session::DataKeys;

/// A node's handshake settings: its static key and the optional mesh password.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    key: NodeKey,
    password: Option<MeshPassword>,
}

impl HandshakeConfig {
    /// Creates a configuration; with `password`, only peers that know it can complete a
    /// handshake with this node.
    pub fn new(key: NodeKey, password: Option<MeshPassword>) -> Self {
        Self { key, password }
    }

    /// Returns this node's public key.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }
}

/// The mesh password, stretched with Argon2id into the Noise pre-shared key. Zeroized on drop;
/// never printed.
///
/// The PSK is `Argon2id(password, salt = "weft mesh password v1", m = 19 MiB, t = 2, p = 1)`.
/// The stretching matters because a node that accepts a connection learns enough to test
/// password guesses offline against the initiator's FINISH message; a long random password
/// remains the real defence.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MeshPassword {
    psk: [u8; KEY_LEN],
}

impl MeshPassword {
    /// Derives the PSK from a password (takes tens of milliseconds on purpose).
    ///
    /// # Errors
    ///
    /// [`PasswordError::Empty`] for an empty password.
    pub fn new(password: &[u8]) -> Result<Self, PasswordError> {
        if password.is_empty() {
            return Err(PasswordError::Empty);
        }
        let params =
            argon2::Params::new(19 * 1024, 2, 1, Some(KEY_LEN)).map_err(|_| PasswordError::Kdf)?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut psk = [0u8; KEY_LEN];
        argon
            .hash_password_into(password, PASSWORD_SALT, &mut psk)
            .map_err(|_| PasswordError::Kdf)?;
        Ok(Self { psk })
    }

    /// The stretched password, for keys derived from it in this crate.
    pub(crate) fn psk_bytes(&self) -> &[u8] {
        &self.psk
    }
}

impl fmt::Debug for MeshPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshPassword(<redacted>)")
    }
}

/// Why a mesh password could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The password is empty.
    #[error("the mesh password is empty")]
    Empty,
    /// The key-derivation function failed.
    #[error("the mesh password could not be stretched")]
    Kdf,
}

/// Why a handshake failed. Display strings name the reason only, never key or password bytes;
/// [`HandshakeError::code`] gives a stable short form for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's first bytes are not a weft preamble.
    #[error("peer does not speak the weft protocol (bad magic)")]
    BadMagic,
    /// The Noise library refused an operation it should accept; a bug, not the peer's fault.
    #[error("internal handshake error")]
    Internal,
    /// A handshake message did not parse or did not decrypt (not a password issue).
    #[error("malformed handshake message")]
    Malformed,
    /// One side has a mesh password and the other has none.
    #[error(
        "{}",
        if *local_has_password {
            "password mismatch: a password is set here but the peer has none"
        } else {
            "password mismatch: the peer requires a password but none is set here"
        }
    )]
    PasswordMismatch {
        /// Whether this node has a password.
        local_has_password: bool,
    },
    /// The peer aborted the handshake for a reason other than the password.
    #[error("peer rejected the handshake")]
    Rejected,
    /// The handshake did not finish within its deadline (reported by the shell).
    #[error("handshake timed out")]
    Timeout,
    /// A frame of the wrong kind arrived for the handshake's current step.
    #[error("unexpected frame during the handshake")]
    UnexpectedFrame,
    /// The peer's protocol version range does not overlap ours.
    #[error(
        "unknown protocol version: peer speaks {remote_min}..={remote_max}, \
         we speak {local_min}..={local_max}"
    )]
    UnknownVersion {
        /// Lowest version we speak.
        local_min: u8,
        /// Highest version we speak.
        local_max: u8,
        /// Lowest version the peer speaks.
        remote_min: u8,
        /// Highest version the peer speaks.
        remote_max: u8,
    },
    /// The peer's mesh password differs from ours.
    #[error("wrong mesh password")]
    WrongPassword,
}

impl HandshakeError {
    /// Returns a stable snake_case code for status output and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic",
            Self::Internal => "internal",
            Self::Malformed => "malformed",
            Self::PasswordMismatch { .. } => "password_mismatch",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::UnknownVersion { .. } => "unknown_version",
            Self::WrongPassword => "wrong_password",
        }
    }
}

/// A handshake in progress, on either side. Feed it every byte read from the connection.
pub struct Handshake {
    state: Option<State>,
    failed: Option<HandshakeError>,
    inbuf: Vec<u8>,
}

impl Handshake {
    /// Starts a handshake as the side that opened the connection; appends the preamble to
    /// `out`.
    pub fn initiate(
        config: &HandshakeConfig,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Self {
        Self::start(config, rng, out, true)
    }

    /// Starts a handshake as the side that accepted the connection; appends the preamble to
    /// `out`.
    pub fn respond(
        config: &HandshakeConfig,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Self {
        Self::start(config, rng, out, false)
    }

    /// Consumes bytes received from the peer, appending anything to send to `out`.
    ///
    /// Returns `Ok(None)` while the handshake goes on and `Ok(Some(established))` once it has
    /// finished; bytes that arrived after the last handshake frame are already queued in the
    /// established [`ControlChannel`]. Write `out` to the peer even when an error is returned:
    /// it may hold a REJECT frame that tells the peer why.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`] says why the handshake failed; every later call returns the same
    /// error.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Established>, HandshakeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = self.advance(input, out);
        if let Err(e) = result {
            self.failed = Some(e);
            self.state = None;
            self.inbuf.clear();
        }
        result
    }

    fn start(
        config: &HandshakeConfig,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
        initiator: bool,
    ) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        let preamble = Preamble::ours(config.password.is_some());
        out.extend_from_slice(&preamble.to_bytes());
        let common = Common {
            key: config.key.clone(),
            password: config.password.clone(),
            seed,
            local: preamble,
        };
        let state = if initiator {
            State::InitAwaitPreamble(Box::new(InitAwaitPreamble { common }))
        } else {
            State::RespAwaitPreamble(Box::new(RespAwaitPreamble { common }))
        };
        Self {
            state: Some(state),
            failed: None,
            inbuf: Vec::new(),
        }
    }

    fn advance(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Established>, HandshakeError> {
        if self.inbuf.len() + input.len() > MAX_HANDSHAKE_BUFFER {
            return Err(HandshakeError::Malformed);
        }
        self.inbuf.extend_from_slice(input);
        loop {
            let Some(state) = self.state.take() else {
                return Err(HandshakeError::Internal);
            };
            if state.awaits_preamble() {
                if self.inbuf.len() < PREAMBLE_LEN {
                    self.state = Some(state);
                    return Ok(None);
                }
                let remote = Preamble::parse(&self.inbuf[..PREAMBLE_LEN])?;
                self.inbuf.drain(..PREAMBLE_LEN);
                self.state = Some(state.handle_preamble(remote, out)?);
                continue;
            }
            let Some(frame) = split_frame(&self.inbuf).map_err(|_| HandshakeError::Malformed)?
            else {
                self.state = Some(state);
                return Ok(None);
            };
            let consumed = frame.consumed;
            match state.handle_frame(frame, out)? {
                Step::Continue(next) => {
                    self.inbuf.drain(..consumed);
                    self.state = Some(next);
                }
                Step::Done(mut established) => {
                    self.inbuf.drain(..consumed);
                    let rest = std::mem::take(&mut self.inbuf);
                    established
                        .control
                        .handle_input(&rest)
                        .map_err(|_| HandshakeError::Malformed)?;
                    return Ok(Some(*established));
                }
            }
        }
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match &self.state {
            Some(State::InitAwaitPreamble(_)) => "initiator: awaiting preamble",
            Some(State::InitAwaitResponse(_)) => "initiator: awaiting response",
            Some(State::InitAwaitConfirm(_)) => "initiator: awaiting confirmation",
            Some(State::RespAwaitPreamble(_)) => "responder: awaiting preamble",
            Some(State::RespAwaitHello(_)) => "responder: awaiting hello",
            Some(State::RespAwaitFinish(_)) => "responder: awaiting finish",
            None => "finished or failed",
        };
        f.debug_struct("Handshake")
            .field("step", &step)
            .field("failed", &self.failed)
            .finish()
    }
}

/// A finished handshake: the authenticated peer, the control channel and the data keys.
pub struct Established {
    remote: PublicKey,
    version: u8,
    initiator: bool,
    proof: Authenticated,
    control: ControlChannel,
    data: DataKeys,
}

impl Established {
    /// Returns the peer's static public key, proven by the handshake.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }

    /// Returns the peer's 6-byte peer name, derived from its public key.
    pub fn peer_name(&self) -> [u8; 6] {
        peer_name_bytes(&self.remote)
    }

    /// Returns the negotiated protocol version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Says whether this side opened the connection.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Returns the proof that the peer authenticated.
    pub fn proof(&self) -> Authenticated {
        self.proof
    }

    /// Splits into the control channel and the data-plane keys (for [`crate::Session::new`]).
    pub fn into_parts(self) -> (ControlChannel, DataKeys) {
        (self.control, self.data)
    }
}

impl fmt::Debug for Established {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Established")
            .field("remote", &self.remote)
            .field("version", &self.version)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// The cleartext preamble each side sends first: magic, version range, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Preamble {
    pub(crate) min_version: u8,
    pub(crate) max_version: u8,
    pub(crate) flags: u8,
}

impl Preamble {
    fn ours(password: bool) -> Self {
        Self {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            flags: if password { FLAG_PASSWORD } else { 0 },
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = self.min_version;
        b[5] = self.max_version;
        b[6] = self.flags;
        b
    }

    pub(crate) fn parse(b: &[u8]) -> Result<Self, HandshakeError> {
        if b.len() < PREAMBLE_LEN || &b[..4] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let p = Self {
            min_version: b[4],
            max_version: b[5],
            flags: b[6],
        };
        if p.min_version > p.max_version || p.flags & !FLAG_PASSWORD != 0 {
            return Err(HandshakeError::Malformed);
        }
        Ok(p)
    }

    fn negotiate(self, remote: Self) -> Result<u8, HandshakeError> {
        let version = self.max_version.min(remote.max_version);
        if version < self.min_version.max(remote.min_version) {
            return Err(HandshakeError::UnknownVersion {
                local_min: self.min_version,
                local_max: self.max_version,
                remote_min: remote.min_version,
                remote_max: remote.max_version,
            });
        }
        let local_pw = self.flags & FLAG_PASSWORD != 0;
        if local_pw != (remote.flags & FLAG_PASSWORD != 0) {
            return Err(HandshakeError::PasswordMismatch {
                local_has_password: local_pw,
            });
        }
        Ok(version)
    }
}

// ---------------------------------------------------------------------------------------------
// States. Each consumes itself on a transition.

enum State {
    InitAwaitPreamble(Box<InitAwaitPreamble>),
    InitAwaitResponse(Box<InitAwaitResponse>),
    InitAwaitConfirm(Box<InitAwaitConfirm>),
    RespAwaitPreamble(Box<RespAwaitPreamble>),
    RespAwaitHello(Box<RespAwaitHello>),
    RespAwaitFinish(Box<RespAwaitFinish>),
}

enum Step {
    Continue(State),
    Done(Box<Established>),
}

impl State {
    fn awaits_preamble(&self) -> bool {
        matches!(
            self,
            Self::InitAwaitPreamble(_) | Self::RespAwaitPreamble(_)
        )
    }

    fn handle_preamble(self, remote: Preamble, out: &mut Vec<u8>) -> Result<Self, HandshakeError> {
        match self {
            Self::InitAwaitPreamble(s) => s
                .handle(remote, out)
                .map(|n| Self::InitAwaitResponse(Box::new(n))),
            Self::RespAwaitPreamble(s) => {
                s.handle(remote).map(|n| Self::RespAwaitHello(Box::new(n)))
            }
            Self::InitAwaitResponse(_)
            | Self::InitAwaitConfirm(_)
            | Self::RespAwaitHello(_)
            | Self::RespAwaitFinish(_) => Err(HandshakeError::Internal),
        }
    }

    fn handle_frame(self, frame: Frame<'_>, out: &mut Vec<u8>) -> Result<Step, HandshakeError> {
        if frame.kind == FrameKind::Reject {
            return Err(reject_reason(frame.body));
        }
        match self {
            Self::InitAwaitResponse(s) => s
                .handle(frame, out)
                .map(|n| Step::Continue(Self::InitAwaitConfirm(Box::new(n)))),
            Self::InitAwaitConfirm(s) => s.handle(frame).map(|e| Step::Done(Box::new(e))),
            Self::RespAwaitHello(s) => s
                .handle(frame, out)
                .map(|n| Step::Continue(Self::RespAwaitFinish(Box::new(n)))),
            Self::RespAwaitFinish(s) => s.handle(frame, out).map(|e| Step::Done(Box::new(e))),
            Self::InitAwaitPreamble(_) | Self::RespAwaitPreamble(_) => {
                Err(HandshakeError::Internal)
            }
        }
    }
}

/// What every state carries until the Noise state exists.
struct Common {
    key: NodeKey,
    password: Option<MeshPassword>,
    seed: Zeroizing<[u8; 32]>,
    local: Preamble,
}

impl Common {
    /// Builds the Noise state once both preambles are known (they form the prologue).
    fn build(
        self,
        remote: Preamble,
        initiator: bool,
    ) -> Result<(snow::HandshakeState, u8), HandshakeError> {
        let version = self.local.negotiate(remote)?;
        let (pi, pr) = if initiator {
            (self.local, remote)
        } else {
            (remote, self.local)
        };
        let mut prologue = [0u8; PROLOGUE_LABEL.len() + 2 * PREAMBLE_LEN];
        prologue[..PROLOGUE_LABEL.len()].copy_from_slice(PROLOGUE_LABEL);
        prologue[PROLOGUE_LABEL.len()..][..PREAMBLE_LEN].copy_from_slice(&pi.to_bytes());
        prologue[PROLOGUE_LABEL.len() + PREAMBLE_LEN..].copy_from_slice(&pr.to_bytes());
        let pattern = if self.password.is_some() {
            NOISE_PSK
        } else {
            NOISE_PLAIN
        };
        let params: snow::params::NoiseParams =
            pattern.parse().map_err(|_| HandshakeError::Internal)?;
        let resolver = Box::new(SeededResolver { seed: *self.seed });
        let mut builder = snow::Builder::with_resolver(params, resolver)
            .local_private_key(self.key.secret_bytes())
            .prologue(&prologue);
        if let Some(pw) = &self.password {
            builder = builder.psk(3, &pw.psk);
        }
        let noise = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(|_| HandshakeError::Internal)?;
        Ok((noise, version))
    }
}

struct InitAwaitPreamble {
    common: Common,
}

impl InitAwaitPreamble {
    fn handle(
        self,
        remote: Preamble,
        out: &mut Vec<u8>,
    ) -> Result<InitAwaitResponse, HandshakeError> {
        let (mut noise, version) = self.common.build(remote, true)?;
        let mut msg = [0u8; NOISE_BUF];
        let n = noise
            .write_message(&[], &mut msg)
            .map_err(|_| HandshakeError::Internal)?;
        write_frame(out, FrameKind::Hello, &msg[..n]);
        Ok(InitAwaitResponse { noise, version })
    }
}

struct InitAwaitResponse {
    noise: snow::HandshakeState,
    version: u8,
}

impl InitAwaitResponse {
    fn handle(
        mut self,
        frame: Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<InitAwaitConfirm, HandshakeError> {
        expect(&frame, FrameKind::Response)?;
        let mut payload = [0u8; NOISE_BUF];
        self.noise
            .read_message(frame.body, &mut payload)
            .map_err(|_| HandshakeError::Malformed)?;
        let mut msg = [0u8; NOISE_BUF];
        let n = self
            .noise
            .write_message(&[], &mut msg)
            .map_err(|_| HandshakeError::Internal)?;
        write_frame(out, FrameKind::Finish, &msg[..n]);
        let (remote, control, data) = finish(&mut self.noise, true)?;
        Ok(InitAwaitConfirm {
            remote,
            control,
            data,
            version: self.version,
        })
    }
}

struct InitAwaitConfirm {
    remote: PublicKey,
    control: ControlChannel,
    data: DataKeys,
    version: u8,
}

impl InitAwaitConfirm {
    fn handle(mut self, frame: Frame<'_>) -> Result<Established, HandshakeError> {
        expect(&frame, FrameKind::Control)?;
        // The confirmation is an empty control message under the responder's key: it only
        // decrypts if both sides derived the same keys.
        match self.control.open_frame(frame.body) {
            Ok(Some(msg)) if msg.is_empty() => {}
            Ok(_) | Err(ControlError::BadTag | ControlError::Malformed) => {
                return Err(HandshakeError::Malformed);
            }
            Err(_) => return Err(HandshakeError::Malformed),
        }
        Ok(Established {
            remote: self.remote,
            version: self.version,
            initiator: true,
            proof: Authenticated::new(),
            control: self.control,
            data: self.data,
        })
    }
}

struct RespAwaitPreamble {
    common: Common,
}

impl RespAwaitPreamble {
    fn handle(self, remote: Preamble) -> Result<RespAwaitHello, HandshakeError> {
        let psk = self.common.password.is_some();
        let (noise, version) = self.common.build(remote, false)?;
        Ok(RespAwaitHello {
            noise,
            version,
            psk,
        })
    }
}

struct RespAwaitHello {
    noise: snow::HandshakeState,
    version: u8,
    psk: bool,
}

impl RespAwaitHello {
    fn handle(
        mut self,
        frame: Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<RespAwaitFinish, HandshakeError> {
        expect(&frame, FrameKind::Hello)?;
        let mut payload = [0u8; NOISE_BUF];
        self.noise
            .read_message(frame.body, &mut payload)
            .map_err(|_| HandshakeError::Malformed)?;
        let mut msg = [0u8; NOISE_BUF];
        let n = self
            .noise
            .write_message(&[], &mut msg)
            .map_err(|_| HandshakeError::Internal)?;
        write_frame(out, FrameKind::Response, &msg[..n]);
        Ok(RespAwaitFinish {
            noise: self.noise,
            version: self.version,
            psk: self.psk,
        })
    }
}

struct RespAwaitFinish {
    noise: snow::HandshakeState,
    version: u8,
    psk: bool,
}

impl RespAwaitFinish {
    fn handle(
        mut self,
        frame: Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Established, HandshakeError> {
        expect(&frame, FrameKind::Finish)?;
        let mut payload = [0u8; NOISE_BUF];
        if let Err(e) = self.noise.read_message(frame.body, &mut payload) {
            // With a password, FINISH is the first message whose keys depend on the PSK, so a
            // decryption failure there means the passwords differ (or the message was
            // corrupted in transit, which TCP makes unlikely).
            let (reason, err) = if matches!(e, snow::Error::Decrypt) && self.psk {
                (REJECT_WRONG_PASSWORD, HandshakeError::WrongPassword)
            } else {
                (REJECT_MALFORMED, HandshakeError::Malformed)
            };
            write_frame(out, FrameKind::Reject, &[reason]);
            return Err(err);
        }
        let (remote, mut control, data) = finish(&mut self.noise, false)?;
        control
            .seal_message(&[], out)
            .map_err(|_| HandshakeError::Internal)?;
        Ok(Established {
            remote,
            version: self.version,
            initiator: false,
            proof: Authenticated::new(),
            control,
            data,
        })
    }
}

/// Derives the control channel and data keys from a finished Noise state.
fn finish(
    noise: &mut snow::HandshakeState,
    initiator: bool,
) -> Result<(PublicKey, ControlChannel, DataKeys), HandshakeError> {
    if !noise.is_handshake_finished() {
        return Err(HandshakeError::Internal);
    }
    let mut remote = [0u8; KEY_LEN];
    let Some(rs) = noise.get_remote_static() else {
        return Err(HandshakeError::Internal);
    };
    if rs.len() != KEY_LEN {
        return Err(HandshakeError::Internal);
    }
    remote.copy_from_slice(rs);
    let hash = noise.get_handshake_hash().to_vec();
    let (i2r, r2i) = noise.dangerously_get_raw_split();
    let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
    let keys = kdf::split(&hash, &i2r, &r2i);
    let (control, data) = if initiator {
        (
            ControlChannel::new(&keys.control_i2r, &keys.control_r2i),
            DataKeys {
                send: ChainKey::new(keys.data_i2r.clone()),
                recv: ChainKey::new(keys.data_r2i.clone()),
            },
        )
    } else {
        (
            ControlChannel::new(&keys.control_r2i, &keys.control_i2r),
            DataKeys {
                send: ChainKey::new(keys.data_r2i.clone()),
                recv: ChainKey::new(keys.data_i2r.clone()),
            },
        )
    };
    Ok((PublicKey(remote), control, data))
}

fn expect(frame: &Frame<'_>, kind: FrameKind) -> Result<(), HandshakeError> {
    if frame.kind == kind {
        Ok(())
    } else {
        Err(HandshakeError::UnexpectedFrame)
    }
}

fn reject_reason(body: &[u8]) -> HandshakeError {
    match body.first() {
        Some(&REJECT_WRONG_PASSWORD) => HandshakeError::WrongPassword,
        Some(_) | None => HandshakeError::Rejected,
    }
}

/// snow's default primitives, with the ephemeral-key RNG seeded from the caller's RNG so the
/// handshake is deterministic under a seeded RNG (and never reads the OS RNG itself).
struct SeededResolver {
    seed: [u8; 32],
}

impl Drop for SeededResolver {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRng(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn NoiseCipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

struct SeededRng(ChaCha20Rng);

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

impl CryptoRng for SeededRng {}
impl Random for SeededRng {}

/// How long the shell should allow a handshake before reporting [`HandshakeError::Timeout`]
/// (Weave's header deadline).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Length of the cleartext preamble.
pub const PREAMBLE_LEN: usize = 7;
/// Lowest protocol version this build speaks.
pub const MIN_VERSION: u8 = 1;
/// Highest protocol version this build speaks.
pub const MAX_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"weft";
const FLAG_PASSWORD: u8 = 0x01;
const PROLOGUE_LABEL: &[u8] = b"weft handshake v1";
const NOISE_PLAIN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
const NOISE_PSK: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
const PASSWORD_SALT: &[u8] = b"weft mesh password v1";
/// Room for any XX message with an empty payload (the largest, RESPONSE, is 96 bytes) and for
/// a peer's unexpected payload up to this size.
const NOISE_BUF: usize = 1024;
const MAX_HANDSHAKE_BUFFER: usize = 2 * (crate::control::MAX_FRAME_LEN + 2) + PREAMBLE_LEN;
const REJECT_WRONG_PASSWORD: u8 = 0x01;
const REJECT_MALFORMED: u8 = 0x02;
