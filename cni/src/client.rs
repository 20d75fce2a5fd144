//! A minimal blocking HTTP/1.1 client for the router's unix socket: one request per connection
//! (`Connection: close`), a bounded answer, and a deadline on every read and write. A plugin is a
//! short-lived process, so there is no runtime and no pooling here.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Talks to the router over its API socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// Why a request to the router failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be connected (router not running, wrong path).
    Connect(io::Error),
    /// Reading or writing failed or timed out after connecting.
    Io(io::Error),
    /// The answer was not HTTP/1.x as expected, or larger than the limit.
    Protocol(String),
}

/// An HTTP answer: status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Client {
    /// Makes a client for the socket at `socket` with a per-operation `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// POSTs `body` as JSON to `path`.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn post<T: Serialize>(&self, path: &str, body: &T) -> Result<Response, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
        self.request("POST", path, Some(&body))
    }

    /// GETs `path`.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    /// Sends one request and reads the whole answer.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut stream = UnixStream::connect(&self.socket).map_err(ClientError::Connect)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(ClientError::Io)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\nUser-Agent: weft-cni\r\n"
        );
        if let Some(body) = body {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body.unwrap_or_default());
        stream.write_all(&out).map_err(ClientError::Io)?;
        read_response(&mut stream)
    }
}

impl Response {
    /// Decodes the body as JSON.
    ///
    /// # Errors
    ///
    /// The decoder's message when the body is not the expected JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "HTTP {} answer {:?} is not the expected JSON: {e}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    /// The `error` message of a failure answer, or the body as text.
    pub fn error_message(&self) -> String {
        match serde_json::from_slice::<crate::api::ErrorResponse>(&self.body) {
            Ok(e) => e.error,
            Err(_) => String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned(),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "no answer within the timeout: {e}")
            }
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Protocol(e) => write!(f, "bad HTTP answer: {e}"),
        }
    }
}

/// Parses a whole HTTP/1.x answer held in memory, as [`Client::request`] reads it from the
/// socket (the fuzz target's and the property tests' entry).
///
/// # Errors
///
/// As [`Client::request`], but never [`ClientError::Connect`] or [`ClientError::Io`].
pub fn parse_response(mut answer: &[u8]) -> Result<Response, ClientError> {
    read_response(&mut answer)
}

/// Reads one HTTP/1.x response: headers, then a Content-Length, chunked or until-EOF body.
fn read_response(stream: &mut impl Read) -> Result<Response, ClientError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEADER {
            return Err(ClientError::Protocol("headers larger than 16 KiB".into()));
        }
        let n = stream.read(&mut chunk).map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Protocol(format!(
                "connection closed after {} bytes, before the end of the headers",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end])
        .map_err(|_| ClientError::Protocol("headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(proto), Some(status)) = (parts.next(), parts.next()) else {
        return Err(ClientError::Protocol(format!(
            "bad status line {status_line:?}"
        )));
    };
    if !proto.starts_with("HTTP/1.") {
        return Err(ClientError::Protocol(format!(
            "bad status line {status_line:?}"
        )));
    }
    let status: u16 = status
        .parse()
        .map_err(|_| ClientError::Protocol(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| ClientError::Protocol(format!("bad Content-Length {v:?}")))?;
            if n > MAX_BODY {
                return Err(ClientError::Protocol(format!(
                    "body of {n} bytes exceeds 1 MiB"
                )));
            }
            length = Some(n);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let mut body = buf.split_off(header_end);
    if !chunked && let Some(n) = length {
        while body.len() < n {
            let got = stream.read(&mut chunk).map_err(ClientError::Io)?;
            if got == 0 {
                return Err(ClientError::Protocol(format!(
                    "connection closed after {} of {n} body bytes",
                    body.len()
                )));
            }
            body.extend_from_slice(&chunk[..got]);
        }
        body.truncate(n);
        return Ok(Response { status, body });
    }
    // Chunked or delimited by the close: read to EOF, bounded.
    loop {
        let got = stream.read(&mut chunk).map_err(ClientError::Io)?;
        if got == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..got]);
        if body.len() > MAX_BODY + MAX_HEADER {
            return Err(ClientError::Protocol("body exceeds 1 MiB".into()));
        }
    }
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response { status, body })
}

/// Decodes a chunked body.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let bad = || ClientError::Protocol("bad chunked encoding".into());
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        // Size first: a huge one must not overflow `size + 2` (`out` never exceeds MAX_BODY).
        if size > MAX_BODY - out.len() || data.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Largest header block accepted.
const MAX_HEADER: usize = 16 * 1024;
/// Largest body accepted.
const MAX_BODY: usize = 1024 * 1024;

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_length_chunked_and_eof() {
        let r =
            read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk"[..]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = read_response(
            &mut &b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n"[..],
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"abcd"[..]));
        let r = read_response(&mut &b"HTTP/1.0 200 OK\r\n\r\nxyz"[..]).unwrap();
        assert_eq!(r.body, b"xyz");
        assert!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..]).is_err()
        );
        assert!(read_response(&mut &b"SSH-2.0\r\n\r\n"[..]).is_err());
        assert!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"[..])
                .is_err()
        );
    }

    /// Regression (found by the `cni_http_response` fuzz target): a chunk size near
    /// `usize::MAX` overflowed the bounds check; after a first chunk the sum wrapped past it
    /// and slicing panicked, in release builds too.
    #[test]
    fn huge_chunk_size_is_refused() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nfffffffffffffffe\r\nxy\r\n0\r\n\r\n",
        ] {
            assert!(matches!(parse_response(wire), Err(ClientError::Protocol(_))));
        }
    }

    /// How a body is framed on the wire.
    #[derive(Debug, Clone)]
    enum Framing {
        Length,
        /// Chunked, cut into pieces of these sizes (cycled; a zero is skipped).
        Chunked(Vec<usize>),
        Eof,
    }

    fn encode(status: u16, body: &[u8], framing: &Framing) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n");
        match framing {
            Framing::Length => out.push_str(&format!("content-length: {}\r\n\r\n", body.len())),
            Framing::Chunked(_) => out.push_str("Transfer-Encoding: chunked\r\n\r\n"),
            Framing::Eof => out.push_str("\r\n"),
        }
        let mut out = out.into_bytes();
        match framing {
            Framing::Chunked(sizes) => {
                let mut rest = body;
                for size in sizes.iter().filter(|s| **s > 0).cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (piece, tail) = rest.split_at((*size).min(rest.len()));
                    out.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                    rest = tail;
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Framing::Length | Framing::Eof => out.extend_from_slice(body),
        }
        out
    }

    proptest! {
        /// Any status and body read back, whatever the framing; a cut inside the headers or
        /// a Content-Length body is refused; arbitrary bytes never panic.
        #[test]
        fn answers_read_back(
            status in 100u16..1000,
            body in proptest::collection::vec(any::<u8>(), 0..300),
            framing in prop_oneof![
                Just(Framing::Length),
                proptest::collection::vec(1usize..50, 1..4).prop_map(Framing::Chunked),
                Just(Framing::Eof),
            ],
            cut in any::<proptest::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let wire = encode(status, &body, &framing);
            let r = parse_response(&wire).unwrap();
            prop_assert_eq!((r.status, r.body), (status, body));
            let head = find(&wire, b"\r\n\r\n").unwrap() + 4;
            let cut = cut.index(wire.len());
            if cut < head || (matches!(framing, Framing::Length) && cut < wire.len()) {
                prop_assert!(parse_response(&wire[..cut]).is_err());
            }
            let _ = parse_response(&junk);
            let _ = parse_response(&[&wire[..head], &junk[..]].concat());
        }
    }
}
