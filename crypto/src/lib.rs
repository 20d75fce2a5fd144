//! weft crypto: node identity, the Noise control-channel handshake, the control channel and
//! the data-plane sessions that seal sleeve packets.
//!
//! Pure, sans-IO. Time (`Instant`) and randomness (a caller's [`rand_core::CryptoRngCore`])
//! come in as arguments; nothing in this crate reads a clock, opens a socket, spawns a thread
//! or reads the OS RNG, except [`keyfile`], the one module that touches files (the pure parts
//! never call it).
//!
//! Layers, bottom up:
//! - [`keys`]: the static X25519 [`NodeKey`], its [`PublicKey`] and [`peer_name_bytes`].
//! - [`handshake`]: preamble + Noise `XX`/`XXpsk3` state machine yielding [`Established`].
//! - [`control`]: framing of the TCP stream and the encrypted [`ControlChannel`].
//! - [`session`]: the data-plane [`Session`] (epochs, replay window, sealed/plain modes,
//!   in-place batch API).
//! - [`settings`]: the [`SettingsKey`] that proves knowledge of the mesh password for
//!   mesh-wide settings (turning encryption off).
//!
//! Wire formats: `docs/PROTOCOL.md` ("Control-channel handshake and framing", "Data-plane
//! sealing"). AEAD choice and figures: `docs/BENCHMARKS.md` ("Crypto").

mod aead;
pub mod control;
pub mod handshake;
mod kdf;
pub mod keyfile;
pub mod keys;
mod replay;
pub mod session;
pub mod settings;

#[cfg(fuzzing)]
pub mod fuzzing;

pub use aead::TAG_LEN;
pub use control::{ControlChannel, ControlError};
pub use handshake::{
    Established, Handshake, HandshakeConfig, HandshakeError, MeshPassword, PasswordError,
};
pub use keys::{NodeKey, PublicKey, peer_name_bytes};
pub use replay::REPLAY_WINDOW;
pub use session::{
    DataKeys, HEADER_LEN, Mode, OVERHEAD, OpenError, Opened, PacketBuf, PacketStatus, SealError,
    Session, SessionConfig,
};
pub use settings::SettingsKey;

/// Proof that a peer or a packet authenticated. Only this crate can make one: the handshake
/// does when the peer proved its static key, and [`Session::open`] does when a packet's tag
/// and counter checked out. Code that acts on peer data can demand it as an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    _private: (),
}

impl Authenticated {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }
}
