//! The sleeve's UDP socket: batched sends with UDP GSO (`UDP_SEGMENT`) through `sendmmsg`,
//! batched receives with UDP GRO (`UDP_GRO`) through `recvmmsg`.
//!
//! Shell only: it moves byte ranges the caller owns and reports lengths and segment sizes; the
//! sleeve codec (`topology::sleeve`) decides what the bytes mean. Nothing here allocates per
//! call: message headers and control buffers live on the stack, bounded by [`MAX_BATCH`].
//!
//! Behaviour measured on kernel 6.18 (shared/probes/RESULTS.md): every GSO segment but the last
//! must be exactly `segment_size` bytes, one call carries at most 65,507 bytes over IPv4, and a
//! GRO receive reports its segment size in a `(SOL_UDP, UDP_GRO)` control message. A connected
//! socket reports an ICMP port-unreachable as `ECONNREFUSED` on its next call; callers count it
//! and carry on (see [`is_refused`]).

use std::io::{self, IoSlice};
use std::mem::{self, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Most messages one [`UdpSocket::send_batch`] or [`UdpSocket::recv_batch`] call handles.
pub const MAX_BATCH: usize = 32;
/// The most bytes one UDP send may carry over IPv4 (65,535 − 20 − 8), GSO included.
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// The most segments the kernel accepts in one GSO send (`UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Options for [`UdpSocket::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOptions {
    /// `SO_RCVBUF` to ask for (forced past `rmem_max` when the process may).
    pub recv_buffer: usize,
    /// `SO_SNDBUF` to ask for (forced past `wmem_max` when the process may).
    pub send_buffer: usize,
    /// Turn on UDP GRO for receives.
    pub gro: bool,
}

impl Default for UdpOptions {
    fn default() -> Self {
        Self {
            recv_buffer: 8 << 20,
            send_buffer: 8 << 20,
            gro: true,
        }
    }
}

/// One message to send: gathered from `bufs`, split by the kernel into `segment_size` datagrams
/// when set (UDP GSO), else sent as one datagram.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    /// The message bytes, gathered in order.
    pub bufs: &'a [IoSlice<'a>],
    /// The GSO segment size; `None` sends one datagram.
    pub segment_size: Option<u16>,
}

/// What one received message holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received into the buffer.
    pub len: usize,
    /// The GRO segment size: datagrams sit every `segment_size` bytes (the last may be
    /// shorter). Equal to `len` when the kernel coalesced nothing.
    pub segment_size: usize,
    /// The message did not fit the buffer and was cut.
    pub truncated: bool,
    /// The sender's address (`None` for an address family other than IPv4/IPv6).
    pub src: Option<SocketAddr>,
}

/// A UDP socket set up for the sleeve.
#[derive(Debug)]
pub struct UdpSocket {
    socket: Socket,
    gro: bool,
}

impl UdpSocket {
    /// Binds a UDP socket to `addr` with large buffers and, if asked and supported, GRO.
    ///
    /// # Errors
    /// Fails when the socket cannot be created or bound.
    pub fn bind(addr: SocketAddr, options: &UdpOptions) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        set_buffer(&socket, libc::SO_RCVBUFFORCE, options.recv_buffer)
            .or_else(|_| socket.set_recv_buffer_size(options.recv_buffer))?;
        set_buffer(&socket, libc::SO_SNDBUFFORCE, options.send_buffer)
            .or_else(|_| socket.set_send_buffer_size(options.send_buffer))?;
        socket.bind(&addr.into())?;
        let gro = options.gro && set_int(&socket, libc::SOL_UDP, UDP_GRO, 1).is_ok();
        Ok(Self { socket, gro })
    }

    /// Connects the socket to `peer`, so sends need no address and only `peer` is received.
    ///
    /// # Errors
    /// Fails as `connect(2)`.
    pub fn connect(&self, peer: SocketAddr) -> io::Result<()> {
        self.socket.connect(&peer.into())
    }

    /// Returns whether receives are GRO-coalesced.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Returns the bound address.
    ///
    /// # Errors
    /// Fails as `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }

    /// Returns the receive buffer size the kernel granted.
    ///
    /// # Errors
    /// Fails as `getsockopt(2)`.
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        self.socket.recv_buffer_size()
    }

    /// Sends up to [`MAX_BATCH`] messages with one `sendmmsg` to `dest` (or the connected peer
    /// when `None`), and returns how many the kernel took; a short count leaves the rest to
    /// send again.
    ///
    /// # Errors
    /// Fails as `sendmmsg(2)` when not even the first message was sent (`ECONNREFUSED`
    /// included: see [`is_refused`]).
    pub fn send_batch(&self, dest: Option<&SockAddr>, msgs: &[Transmit<'_>]) -> io::Result<usize> {
        let n = msgs.len().min(MAX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        let mut cmsgs = [CmsgBuf::ZERO; MAX_BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty value.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        for ((msg, hdr), cmsg) in msgs.iter().zip(&mut hdrs).zip(&mut cmsgs).take(n) {
            let h = &mut hdr.msg_hdr;
            if let Some(addr) = dest {
                h.msg_name = addr.as_ptr().cast_mut().cast();
                h.msg_namelen = addr.len();
            }
            // IoSlice is guaranteed ABI-compatible with `struct iovec` on Unix; the kernel only
            // reads through this pointer.
            h.msg_iov = msg.bufs.as_ptr().cast_mut().cast();
            h.msg_iovlen = msg.bufs.len();
            if let Some(seg) = msg.segment_size {
                h.msg_control = cmsg.0.as_mut_ptr().cast();
                h.msg_controllen = cmsg_space(size_of::<u16>());
                // SAFETY: msg_control points to `cmsg`, aligned for cmsghdr and large enough for
                // one u16 control message (CMSG_SPACE(2) <= 64), so CMSG_FIRSTHDR is non-null
                // and CMSG_DATA has room for the u16.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
                }
            }
        }
        // SAFETY: `hdrs[..n]` are initialised headers whose pointers (names, iovecs, control
        // buffers) stay valid for the call: they borrow `dest`, `msgs` and `cmsgs`.
        let rc = unsafe { libc::sendmmsg(self.fd(), hdrs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Receives up to `bufs.len()` (at most [`MAX_BATCH`]) messages with one non-blocking
    /// `recvmmsg`, filling `meta` for each, and returns how many arrived.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is queued; otherwise as `recvmmsg(2)` (`ECONNREFUSED`
    /// included).
    pub fn recv_batch(&self, bufs: &mut [&mut [u8]], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let n = bufs.len().min(meta.len()).min(MAX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        let mut cmsgs = [CmsgBuf::ZERO; MAX_BATCH];
        let mut iovs = [MaybeUninit::<libc::iovec>::uninit(); MAX_BATCH];
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { mem::zeroed() };
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty value.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        for i in 0..n {
            let iov = iovs[i].write(libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: bufs[i].len(),
            });
            let h = &mut hdrs[i].msg_hdr;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_name = (&raw mut names[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_control = cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_BUF_LEN;
        }
        // SAFETY: `hdrs[..n]` point at `iovs` (which point at the caller's distinct mutable
        // buffers) and at `cmsgs`, all alive and exclusively borrowed for the call.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd(),
                hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = rc as usize;
        let received = hdrs.iter().zip(&cmsgs).zip(meta.iter_mut()).zip(&names);
        for (((hdr, cmsg), m), name) in received.take(got) {
            let len = hdr.msg_len as usize;
            // The kernel wrote `msg_controllen` bytes of control messages into `cmsg`.
            let control = &cmsg.0[..hdr.msg_hdr.msg_controllen.min(CMSG_BUF_LEN)];
            *m = RecvMeta {
                len,
                segment_size: gro_segment(control).unwrap_or(len).max(1),
                truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                src: sockaddr_to_std(name),
            };
        }
        Ok(got)
    }

    /// Waits until the socket is readable or `timeout` passes; returns whether it is readable.
    ///
    /// # Errors
    /// Fails as `poll(2)` (except `EINTR`, reported as not readable).
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_readable(self.socket.as_fd(), timeout)
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Returns whether `e` is the `ECONNREFUSED` a connected UDP socket reports after an ICMP
/// port-unreachable (the peer was not listening yet); callers count it and continue.
pub fn is_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECONNREFUSED)
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
///
/// # Errors
/// Fails as `poll(2)`; `EINTR` counts as not readable.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Reads the GRO segment size from a received message's control data (the
/// `msg_controllen` bytes the kernel wrote). Walks the control messages as `CMSG_FIRSTHDR`
/// and `CMSG_NXTHDR` do, but checked: a header that does not fit, a length shorter than a
/// header (or that overflows) and a `UDP_GRO` message too short for its `int` end the walk.
pub fn gro_segment(control: &[u8]) -> Option<usize> {
    const HDR: usize = size_of::<libc::cmsghdr>();
    let align = |n: usize| Some(n.checked_add(size_of::<usize>() - 1)? & !(size_of::<usize>() - 1));
    let mut at = 0usize;
    while let Some(h) = control.get(at..at.checked_add(HDR)?) {
        // SAFETY: `h` holds HDR bytes; cmsghdr is plain integers, valid for any bytes.
        let c = unsafe { ptr::read_unaligned(h.as_ptr().cast::<libc::cmsghdr>()) };
        let len = c.cmsg_len as usize;
        if len < HDR {
            return None;
        }
        if c.cmsg_level == libc::SOL_UDP && c.cmsg_type == UDP_GRO {
            const INT: usize = size_of::<libc::c_int>();
            // CMSG_DATA: right after the (aligned) header.
            let data = control.get(at + align(HDR)?..)?.get(..INT)?;
            if len < HDR + INT {
                return None;
            }
            let v = libc::c_int::from_ne_bytes(data.try_into().ok()?);
            return usize::try_from(v).ok();
        }
        at = at.checked_add(align(len)?)?;
    }
    None
}

/// Converts a kernel-filled socket address to a std one (IPv4 and IPv6 only).
fn sockaddr_to_std(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let a = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

fn set_int(socket: &Socket, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_buffer(socket: &Socket, name: i32, size: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    set_int(socket, libc::SOL_SOCKET, name, value)
}

/// `UDP_SEGMENT` (linux/udp.h): the GSO segment size, as a send control message.
const UDP_SEGMENT: i32 = 103;
/// `UDP_GRO` (linux/udp.h): the socket option, and the receive control message.
const UDP_GRO: i32 = 104;
/// Control buffer per message: room for a few control messages.
const CMSG_BUF_LEN: usize = 64;

/// A control-message buffer aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

impl CmsgBuf {
    const ZERO: Self = Self([0; CMSG_BUF_LEN]);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn gso_send_and_gro_receive_over_loopback() {
        let opts = UdpOptions::default();
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        // 10 segments of 1000 bytes, the last one 500, in one GSO message; then one plain one.
        let mut big = vec![0u8; 9_500];
        for (i, b) in big.iter_mut().enumerate() {
            *b = (i / 1000) as u8;
        }
        let iov = [IoSlice::new(&big)];
        let small = [IoSlice::new(b"hello")];
        let msgs = [
            Transmit {
                bufs: &iov,
                segment_size: Some(1000),
            },
            Transmit {
                bufs: &small,
                segment_size: None,
            },
        ];
        assert_eq!(a.send_batch(None, &msgs).unwrap(), 2);
        let mut bufs = vec![vec![0u8; 65_536]; 4];
        let mut meta = [RecvMeta::default(); 4];
        let mut datagrams = Vec::new();
        while datagrams.len() < 11 {
            assert!(b.wait_readable(Duration::from_secs(2)).unwrap());
            let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
            let n = b.recv_batch(&mut slices, &mut meta).unwrap();
            for (buf, m) in bufs.iter().zip(&meta).take(n) {
                assert!(!m.truncated);
                assert_eq!(m.src, Some(a.local_addr().unwrap()));
                for d in buf[..m.len].chunks(m.segment_size) {
                    datagrams.push(d.to_vec());
                }
            }
        }
        assert_eq!(datagrams.len(), 11);
        for (i, d) in datagrams.iter().take(9).enumerate() {
            assert_eq!(d.len(), 1000);
            assert!(d.iter().all(|b| *b == i as u8));
        }
        assert_eq!(datagrams[9].len(), 500);
        assert_eq!(datagrams[10], b"hello");
    }

    /// Control data as the kernel lays it out, built with libc's `CMSG_*` macros: one
    /// control message per `(level, type, data)`, as many as fit `CMSG_BUF_LEN`.
    fn control(msgs: &[(i32, i32, Vec<u8>)]) -> (CmsgBuf, usize) {
        let mut buf = CmsgBuf::ZERO;
        let mut used = 0;
        for (level, ty, data) in msgs {
            let space = cmsg_space(data.len());
            if used + space > CMSG_BUF_LEN {
                break;
            }
            // SAFETY: the header and data fit within `buf` (checked above), which is aligned
            // for cmsghdr at `used` (a multiple of the alignment CMSG_SPACE rounds to).
            unsafe {
                let c = buf.0.as_mut_ptr().add(used).cast::<libc::cmsghdr>();
                (*c).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
                (*c).cmsg_level = *level;
                (*c).cmsg_type = *ty;
                ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
            }
            used += space;
        }
        (buf, used)
    }

    /// What the CMSG_* walk over a kernel-built buffer finds (the reference).
    fn gro_segment_libc(buf: &mut CmsgBuf, len: usize) -> Option<usize> {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
        let mut h: libc::msghdr = unsafe { mem::zeroed() };
        h.msg_control = buf.0.as_mut_ptr().cast();
        h.msg_controllen = len;
        // SAFETY: `h` describes `len` bytes of well-formed control messages in `buf`, each
        // UDP_GRO one holding an int.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return usize::try_from(v).ok();
                }
                c = libc::CMSG_NXTHDR(&h, c);
            }
        }
        None
    }

    fn gro(size: i32) -> (i32, i32, Vec<u8>) {
        (libc::SOL_UDP, UDP_GRO, size.to_ne_bytes().to_vec())
    }

    #[test]
    fn gro_segment_from_control_data() {
        let (buf, len) = control(&[gro(1448)]);
        assert_eq!(gro_segment(&buf.0[..len]), Some(1448));
        let (buf, len) = control(&[(libc::SOL_IP, libc::IP_TOS, vec![0]), gro(1000)]);
        assert_eq!(gro_segment(&buf.0[..len]), Some(1000));
        // The last message's padding may be missing, not its int.
        assert_eq!(gro_segment(&buf.0[..len - 4]), Some(1000));
        assert_eq!(gro_segment(&buf.0[..len - 5]), None, "cut short");
        assert_eq!(gro_segment(&[]), None);
        let (buf, len) = control(&[gro(-1)]);
        assert_eq!(gro_segment(&buf.0[..len]), None);
        // A length shorter than a header, or so long it overflows, ends the walk.
        let (mut buf, len) = control(&[(libc::SOL_IP, libc::IP_TOS, vec![0]), gro(9)]);
        buf.0[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(gro_segment(&buf.0[..len]), None);
        buf.0[..8].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(gro_segment(&buf.0[..len]), None);
        // A UDP_GRO message whose length leaves no room for its int.
        let (mut buf, len) = control(&[gro(9)]);
        buf.0[..8].copy_from_slice(&16usize.to_ne_bytes());
        assert_eq!(gro_segment(&buf.0[..len]), None);
    }

    proptest! {
        /// On control data laid out as the kernel does, the checked walk finds what the
        /// CMSG_* macros find; on any bytes it never panics.
        #[test]
        fn gro_segment_matches_cmsg_macros(
            msgs in proptest::collection::vec(
                prop_oneof![
                    any::<i32>().prop_map(gro),
                    (0i32..300, 0i32..300, proptest::collection::vec(any::<u8>(), 0..20)),
                ],
                0..5,
            ),
            junk in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            // A non-GRO message must not pass for one (the macro walk would read past it).
            let msgs: Vec<_> = msgs
                .into_iter()
                .filter(|(l, t, d)| (*l, *t) != (libc::SOL_UDP, UDP_GRO) || d.len() == 4)
                .collect();
            let (mut buf, len) = control(&msgs);
            let ours = gro_segment(&buf.0[..len]);
            prop_assert_eq!(ours, gro_segment_libc(&mut buf, len));
            let _ = gro_segment(&junk);
        }
    }
}
