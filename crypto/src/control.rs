//! The control channel: framing of the TCP stream and the encrypted, length-limited control
//! messages carried in it after the handshake.
//!
//! Every frame on the stream is `u16 length (BE) | u8 kind | body`, where `length` counts the
//! kind byte and the body (1..=65,535). A control message is split into one or more CONTROL
//! frames; each body is `AES-256-GCM(flags u8 | chunk)` plus the 16-byte tag, nonce = the
//! frame's implicit per-direction counter (TCP delivers in order), associated data = the kind
//! byte. Flags bit 0 marks the last chunk of a message. Reassembled messages are bounded by
//! [`MAX_MESSAGE_LEN`], buffered input by [`MAX_INPUT_BUFFER`]. Layouts: `docs/PROTOCOL.md`.

use std::fmt;

use zeroize::Zeroizing;

use crate::aead::{Cipher, KEY_LEN, TAG_LEN};

/// The encrypted control channel of an established connection.
pub struct ControlChannel {
    send: Cipher,
    recv: Cipher,
    send_counter: u64,
    recv_counter: u64,
    inbuf: Vec<u8>,
    partial: Vec<u8>,
    failed: bool,
}

impl ControlChannel {
    pub(crate) fn new(send: &Zeroizing<[u8; KEY_LEN]>, recv: &Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self {
            send: Cipher::new(send),
            recv: Cipher::new(recv),
            send_counter: 0,
            recv_counter: 0,
            inbuf: Vec::new(),
            partial: Vec::new(),
            failed: false,
        }
    }

    /// Encrypts `msg` into one or more CONTROL frames appended to `out`, ready to write to the
    /// stream as they are.
    ///
    /// # Errors
    ///
    /// [`ControlError::MessageTooLong`] if `msg` exceeds [`MAX_MESSAGE_LEN`];
    /// [`ControlError::CounterExhausted`] after 2^64 frames (the connection must be replaced).
    pub fn seal_message(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<(), ControlError> {
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(ControlError::MessageTooLong);
        }
        let mut chunks = msg.chunks(MAX_CHUNK_LEN).peekable();
        let mut first = true;
        while first || chunks.peek().is_some() {
            first = false;
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            let counter = self.send_counter;
            self.send_counter = counter
                .checked_add(1)
                .ok_or(ControlError::CounterExhausted)?;
            let body_len = 1 + chunk.len() + TAG_LEN;
            // body_len <= 1 + MAX_CHUNK_LEN + TAG_LEN = MAX_FRAME_LEN - 1, so it fits the u16.
            let frame_len = (1 + body_len) as u16;
            out.extend_from_slice(&frame_len.to_be_bytes());
            out.push(FrameKind::Control.to_byte());
            let start = out.len();
            out.push(if last { FLAG_LAST } else { 0 });
            out.extend_from_slice(chunk);
            let tag = self
                .send
                .seal(counter, &[FrameKind::Control.to_byte()], &mut out[start..])
                .map_err(|_| ControlError::MessageTooLong)?;
            out.extend_from_slice(&tag);
        }
        Ok(())
    }

    /// Buffers bytes read from the stream; call [`ControlChannel::poll_message`] until it
    /// returns `Ok(None)` after each call.
    ///
    /// # Errors
    ///
    /// [`ControlError::BufferFull`] if more than [`MAX_INPUT_BUFFER`] bytes would be waiting.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        if self.inbuf.len() + bytes.len() > MAX_INPUT_BUFFER {
            return Err(ControlError::BufferFull);
        }
        self.inbuf.extend_from_slice(bytes);
        Ok(())
    }

    /// Returns the next complete control message, or `None` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// Any [`ControlError`] is fatal for the connection (the stream cannot resynchronise); later
    /// calls return [`ControlError::Failed`].
    pub fn poll_message(&mut self) -> Result<Option<Vec<u8>>, ControlError> {
        if self.failed {
            return Err(ControlError::Failed);
        }
        loop {
            let frame = match split_frame(&self.inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(_) => return Err(self.fail(ControlError::Malformed)),
            };
            let consumed = frame.consumed;
            let result = match frame.kind {
                FrameKind::Control => {
                    let mut body = std::mem::take(&mut self.inbuf);
                    let r = self.open_in(&mut body[3..consumed]);
                    self.inbuf = body;
                    r
                }
                FrameKind::Reject => Err(ControlError::Rejected),
                FrameKind::Hello | FrameKind::Response | FrameKind::Finish => {
                    Err(ControlError::UnexpectedFrame)
                }
            };
            self.inbuf.drain(..consumed);
            match result {
                Ok(Some(msg)) => return Ok(Some(msg)),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Opens one CONTROL frame body (kind byte already removed); used for the handshake's
    /// confirmation frame.
    pub(crate) fn open_frame(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, ControlError> {
        let mut copy = body.to_vec();
        self.open_in(&mut copy)
    }

    fn open_in(&mut self, body: &mut [u8]) -> Result<Option<Vec<u8>>, ControlError> {
        if body.len() < 1 + TAG_LEN {
            return Err(ControlError::Malformed);
        }
        let (ct, tag) = body.split_at_mut(body.len() - TAG_LEN);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.recv
            .open(self.recv_counter, &[FrameKind::Control.to_byte()], ct, &t)
            .map_err(|_| ControlError::BadTag)?;
        self.recv_counter = self
            .recv_counter
            .checked_add(1)
            .ok_or(ControlError::CounterExhausted)?;
        let flags = ct[0];
        if flags & !FLAG_LAST != 0 {
            return Err(ControlError::Malformed);
        }
        if self.partial.len() + ct.len() - 1 > MAX_MESSAGE_LEN {
            return Err(ControlError::MessageTooLong);
        }
        self.partial.extend_from_slice(&ct[1..]);
        if flags & FLAG_LAST != 0 {
            Ok(Some(std::mem::take(&mut self.partial)))
        } else {
            Ok(None)
        }
    }

    fn fail(&mut self, e: ControlError) -> ControlError {
        self.failed = true;
        self.inbuf = Vec::new();
        self.partial = Vec::new();
        e
    }
}

impl fmt::Debug for ControlChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlChannel")
            .field("send_counter", &self.send_counter)
            .field("recv_counter", &self.recv_counter)
            .field("buffered", &self.inbuf.len())
            .finish_non_exhaustive()
    }
}

/// Why the control channel failed. All but [`ControlError::MessageTooLong`] on send are fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// A frame did not authenticate (corrupted, forged, replayed or reordered).
    #[error("control frame failed authentication")]
    BadTag,
    /// More unread input than [`MAX_INPUT_BUFFER`].
    #[error("control input buffer full")]
    BufferFull,
    /// A frame counter would wrap.
    #[error("control frame counter exhausted")]
    CounterExhausted,
    /// The channel failed earlier and is unusable.
    #[error("control channel failed earlier")]
    Failed,
    /// A frame is malformed.
    #[error("malformed control frame")]
    Malformed,
    /// A message is longer than [`MAX_MESSAGE_LEN`].
    #[error("control message too long")]
    MessageTooLong,
    /// The peer sent a REJECT frame.
    #[error("peer rejected the connection")]
    Rejected,
    /// A handshake frame arrived after the handshake.
    #[error("unexpected frame kind")]
    UnexpectedFrame,
}

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An encrypted control-message chunk (0x10).
    Control,
    /// Noise message 3, initiator to responder (0x03).
    Finish,
    /// Noise message 1, initiator to responder (0x01).
    Hello,
    /// The handshake was refused; body = one reason byte (0x7f).
    Reject,
    /// Noise message 2, responder to initiator (0x02).
    Response,
}

impl FrameKind {
    /// Returns the kind's wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Hello => 0x01,
            Self::Response => 0x02,
            Self::Finish => 0x03,
            Self::Control => 0x10,
            Self::Reject => 0x7f,
        }
    }

    /// Parses a wire byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::Hello),
            0x02 => Some(Self::Response),
            0x03 => Some(Self::Finish),
            0x10 => Some(Self::Control),
            0x7f => Some(Self::Reject),
            _ => None,
        }
    }
}

/// One frame borrowed from the front of a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's kind.
    pub kind: FrameKind,
    /// The body after the kind byte.
    pub body: &'a [u8],
    /// Bytes of the buffer the frame occupies (length prefix included).
    pub consumed: usize,
}

/// Why a frame could not be split off a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is zero.
    #[error("zero-length frame")]
    Empty,
    /// The kind byte is not one of [`FrameKind`].
    #[error("unknown frame kind")]
    UnknownKind,
}

/// Splits the first complete frame off `buf`; `Ok(None)` means more bytes are needed (at most
/// [`MAX_FRAME_LEN`] + 2 in all). Never panics, never allocates.
///
/// # Errors
///
/// [`FrameError`] if the frame at the front is invalid; the stream cannot resynchronise.
pub fn split_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(len_bytes) = buf.get(..2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let Some(frame) = buf.get(2..2 + len) else {
        return Ok(None);
    };
    let kind = FrameKind::from_byte(frame[0]).ok_or(FrameError::UnknownKind)?;
    Ok(Some(Frame {
        kind,
        body: &frame[1..],
        consumed: 2 + len,
    }))
}

/// Appends a frame of `kind` with `body` to `out`.
pub(crate) fn write_frame(out: &mut Vec<u8>, kind: FrameKind, body: &[u8]) {
    // Handshake bodies are at most a few hundred bytes, so the length fits the u16.
    let len = (1 + body.len()) as u16;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind.to_byte());
    out.extend_from_slice(body);
}

/// Largest value of a frame's length field.
pub const MAX_FRAME_LEN: usize = 65_535;
/// Largest chunk of a control message in one frame.
pub const MAX_CHUNK_LEN: usize = MAX_FRAME_LEN - 1 - 1 - TAG_LEN;
/// Largest control message (Weave's limit was 10 MiB as well).
pub const MAX_MESSAGE_LEN: usize = 10 << 20;
/// Most unread bytes [`ControlChannel::handle_input`] buffers.
pub const MAX_INPUT_BUFFER: usize = 4 * (MAX_FRAME_LEN + 2);
const FLAG_LAST: u8 = 0x01;
