//! The control-channel envelope: which component a control message belongs to, and the hello
//! that opens every connection.
//!
//! Every message carried in a connection's encrypted control channel starts with one channel
//! byte ([`Channel`]); the rest is the component's own message. The first message each side
//! sends is a [`Hello`] (`docs/PROTOCOL.md`, "Control-channel envelope"). Decoding checks every
//! length and returns a cheap [`Error`].

use crate::peer::PeerUid;
use crate::wire::{MAX_NICKNAME_LEN, truncate_utf8};

/// The component a control message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// The connection's opening [`Hello`].
    Hello,
    /// IPAM messages (`topology::ipam`).
    Ipam,
    /// Mesh-wide settings (`topology::settings`).
    Settings,
    /// Topology gossip and heartbeats (`topology::wire`).
    Topology,
    /// fastdp announcements (`topology::fastdp::Announcement`).
    Fastdp,
}

impl Channel {
    /// The channel's byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Hello => 0x01,
            Self::Topology => 0x02,
            Self::Ipam => 0x03,
            Self::Settings => 0x04,
            Self::Fastdp => 0x05,
        }
    }

    /// The channel a byte names, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::Hello),
            0x02 => Some(Self::Topology),
            0x03 => Some(Self::Ipam),
            0x04 => Some(Self::Settings),
            0x05 => Some(Self::Fastdp),
            _ => None,
        }
    }
}

/// Why an envelope or hello was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The message was empty.
    #[error("empty control message")]
    Empty,
    /// The hello's version is not one we speak.
    #[error("unknown hello version")]
    BadVersion,
    /// The nickname was not UTF-8 or too long.
    #[error("bad nickname")]
    BadNickname,
    /// The hello ended early.
    #[error("truncated hello")]
    Truncated,
    /// Bytes followed the hello.
    #[error("trailing bytes after hello")]
    TrailingBytes,
    /// The channel byte names no channel.
    #[error("unknown channel")]
    UnknownChannel,
    /// The uid was zero.
    #[error("zero uid")]
    ZeroUid,
}

/// Splits a control message into its channel and body.
///
/// # Errors
/// [`Error::Empty`] or [`Error::UnknownChannel`].
pub fn split(msg: &[u8]) -> Result<(Channel, &[u8]), Error> {
    let (&first, body) = msg.split_first().ok_or(Error::Empty)?;
    let channel = Channel::from_byte(first).ok_or(Error::UnknownChannel)?;
    Ok((channel, body))
}

/// Writes `body` behind `channel`'s byte into a new message.
pub fn envelope(channel: Channel, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(1 + body.len());
    msg.push(channel.to_byte());
    msg.extend_from_slice(body);
    msg
}

/// What each side tells the other first: the per-start uid, the port its sleeve listens on
/// (UDP, on the address the connection comes from) and the nickname. (The peer name needs no
/// saying: it derives from the key the handshake authenticated.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's per-start uid.
    pub uid: PeerUid,
    /// The sender's sleeve UDP port.
    pub port: u16,
    /// The sender's nickname (at most [`MAX_NICKNAME_LEN`] bytes of UTF-8).
    pub nickname: String,
}

impl Hello {
    /// Encodes the hello as a complete control message (channel byte included).
    pub fn encode(&self) -> Vec<u8> {
        let nick = truncate_utf8(&self.nickname, MAX_NICKNAME_LEN);
        let mut out = Vec::with_capacity(HELLO_FIXED_LEN + nick.len());
        out.push(Channel::Hello.to_byte());
        out.push(HELLO_VERSION);
        out.extend_from_slice(&self.uid.0.to_be_bytes());
        out.extend_from_slice(&self.port.to_be_bytes());
        // truncate_utf8 bounds the nickname to MAX_NICKNAME_LEN (255), so it fits a u8.
        out.push(nick.len() as u8);
        out.extend_from_slice(nick.as_bytes());
        out
    }

    /// Decodes a hello body (the message after its channel byte).
    ///
    /// # Errors
    /// Any [`Error`] but the channel ones.
    pub fn decode(body: &[u8]) -> Result<Self, Error> {
        let [version, rest @ ..] = body else {
            return Err(Error::Truncated);
        };
        if *version != HELLO_VERSION {
            return Err(Error::BadVersion);
        }
        let (uid, rest) = rest.split_first_chunk::<8>().ok_or(Error::Truncated)?;
        let uid = u64::from_be_bytes(*uid);
        if uid == 0 {
            return Err(Error::ZeroUid);
        }
        let (port, rest) = rest.split_first_chunk::<2>().ok_or(Error::Truncated)?;
        let port = u16::from_be_bytes(*port);
        let (&len, rest) = rest.split_first().ok_or(Error::Truncated)?;
        let nick = rest.get(..usize::from(len)).ok_or(Error::Truncated)?;
        if rest.len() > nick.len() {
            return Err(Error::TrailingBytes);
        }
        let nickname = std::str::from_utf8(nick).map_err(|_| Error::BadNickname)?;
        Ok(Self {
            uid: PeerUid(uid),
            port,
            nickname: nickname.to_owned(),
        })
    }
}

/// The hello layout's version.
pub const HELLO_VERSION: u8 = 1;
/// Channel byte, version, uid, port, nickname length.
const HELLO_FIXED_LEN: usize = 1 + 1 + 8 + 2 + 1;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hello_bytes_are_as_documented() {
        let hello = Hello {
            uid: PeerUid(0x0102_0304_0506_0708),
            port: 6783,
            nickname: "h1".into(),
        };
        let bytes = hello.encode();
        assert_eq!(
            bytes,
            [
                0x01, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x1a, 0x7f, 2, b'h', b'1'
            ]
        );
        let (channel, body) = split(&bytes).unwrap();
        assert_eq!(channel, Channel::Hello);
        assert_eq!(Hello::decode(body).unwrap(), hello);
    }

    #[test]
    fn bad_hellos_are_rejected() {
        assert_eq!(split(&[]), Err(Error::Empty));
        assert_eq!(split(&[0x7f]), Err(Error::UnknownChannel));
        assert_eq!(Hello::decode(&[]), Err(Error::Truncated));
        let uid1 = [0, 0, 0, 0, 0, 0, 0, 1];
        let hello = |version: u8, uid: [u8; 8], tail: &[u8]| {
            let mut v = vec![version];
            v.extend_from_slice(&uid);
            v.extend_from_slice(&[0x1a, 0x7f]);
            v.extend_from_slice(tail);
            v
        };
        assert_eq!(Hello::decode(&hello(2, uid1, &[0])), Err(Error::BadVersion));
        assert_eq!(Hello::decode(&hello(1, [0; 8], &[0])), Err(Error::ZeroUid));
        assert_eq!(
            Hello::decode(&hello(1, uid1, &[2, b'a'])),
            Err(Error::Truncated)
        );
        assert_eq!(Hello::decode(&hello(1, uid1, &[])), Err(Error::Truncated));
        assert_eq!(
            Hello::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0x1a]),
            Err(Error::Truncated)
        );
        assert_eq!(
            Hello::decode(&hello(1, uid1, &[0, 9])),
            Err(Error::TrailingBytes)
        );
        assert_eq!(
            Hello::decode(&hello(1, uid1, &[1, 0xff])),
            Err(Error::BadNickname)
        );
    }

    proptest! {
        #[test]
        fn hello_round_trips(uid in 1u64.., port: u16, nick in "\\PC{0,80}") {
            let hello = Hello { uid: PeerUid(uid), port, nickname: nick };
            let bytes = hello.encode();
            let (channel, body) = split(&bytes).unwrap();
            prop_assert_eq!(channel, Channel::Hello);
            let back = Hello::decode(body).unwrap();
            prop_assert_eq!(back.uid, hello.uid);
            prop_assert_eq!(back.port, hello.port);
            prop_assert!(hello.nickname.starts_with(&back.nickname));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((Channel::Hello, body)) = split(&bytes)
                && let Ok(h) = Hello::decode(body)
            {
                prop_assert_eq!(h.encode(), bytes);
            }
        }
    }
}
