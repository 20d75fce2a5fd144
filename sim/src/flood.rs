//! Hostile input at a fixed rate: forged sleeve and VXLAN datagrams sent from an underlay
//! namespace, for the flood bench row and the hostile-input lab test.
//!
//! A flood is a list of forged datagrams, each with its [`Forgery`] kind, sent round-robin to
//! its targets at a fixed rate per target by a thread inside a namespace. The source is either
//! an address of that namespace (a non-peer) or a spoofed one (a raw socket writing its own
//! IPv4 header: what someone on the underlay pretending to be a peer does).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rand::{Rng as _, SeedableRng as _};

use crate::lab::netns;

/// What a forged datagram is, and so what the receiver must make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Forgery {
    /// A well-formed sleeve header (a real peer pair) over a sealed body under a wrong key.
    WrongKey,
    /// A genuine sealed datagram captured on the underlay, sent again.
    Replay,
    /// A genuine datagram cut inside its 16-byte outer header.
    Truncated,
    /// Random bytes whose first byte is no sleeve version.
    Random,
    /// A well-formed plain (unauthenticated) chunk, which weft never sends.
    Plain,
    /// A VXLAN datagram with weft's VNI carrying an ICMP echo to a pod.
    VxlanEcho,
}

/// A sleeve peer name (the 6 bytes on the wire).
pub type PeerBytes = [u8; 6];

/// What to forge sleeve datagrams from.
#[derive(Clone, Debug)]
pub struct SleeveForge {
    /// The peer the forged datagrams claim to come from.
    pub src: PeerBytes,
    /// The peer they are addressed to.
    pub dst: PeerBytes,
    /// A genuine sealed datagram (for replays and truncations), if one was captured.
    pub genuine: Option<Vec<u8>>,
}

/// `count` forged sleeve datagrams of every kind `forge` allows, in a fixed mixed order.
pub fn sleeve_forgeries(forge: &SleeveForge, count: usize, seed: u64) -> Vec<(Forgery, Vec<u8>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut kinds = vec![Forgery::WrongKey, Forgery::Random, Forgery::Plain];
    if forge.genuine.is_some() {
        kinds.extend([Forgery::Replay, Forgery::Truncated]);
    }
    (0..count)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let header = |msg_type: u8| {
                let mut d = vec![1, msg_type];
                d.extend_from_slice(&forge.src);
                d.extend_from_slice(&forge.dst);
                d.extend_from_slice(&[1, 0]);
                d
            };
            let bytes = match kind {
                Forgery::WrongKey => {
                    let mut d = header(0x02);
                    let body = rng.gen_range(9 + 12 + 1 + 16..1200);
                    d.extend((0..body).map(|_| rng.r#gen::<u8>()));
                    d
                }
                Forgery::Plain => {
                    let mut d = header(0x01);
                    d.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 60]);
                    d.extend((0..60).map(|_| rng.r#gen::<u8>()));
                    d
                }
                Forgery::Random => {
                    let len = rng.gen_range(1..1400);
                    let mut d: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                    d[0] = rng.gen_range(2..=255);
                    d
                }
                Forgery::Replay => forge.genuine.clone().unwrap_or_default(),
                Forgery::Truncated => {
                    let g = forge.genuine.as_deref().unwrap_or_default();
                    g[..rng.gen_range(1..16).min(g.len())].to_vec()
                }
                Forgery::VxlanEcho => unreachable!("not a sleeve forgery"),
            };
            (kind, bytes)
        })
        .collect()
}

/// A VXLAN datagram (weft's VNI) holding an ICMP echo request from 10.32.99.99 to a pod.
pub fn vxlan_echo(pod_mac: [u8; 6], pod_ip: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"injected");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 32, 99, 99];
    ip.extend_from_slice(&pod_ip.octets());
    let total = u16::try_from(ip.len() + icmp.len()).unwrap_or(u16::MAX);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c);
    let vni = topology::fastdp::VNI.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    d.extend_from_slice(&pod_mac);
    d.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 0x08, 0x00]);
    d.extend_from_slice(&ip);
    d.extend_from_slice(&icmp);
    d
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> [u8; 2] {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!u16::try_from(sum).unwrap_or(0)).to_be_bytes()
}

/// Where a flood comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// An address the namespace holds: a host on the underlay that is no peer.
    Bound(Ipv4Addr),
    /// Any address, written into the IPv4 header by hand (UDP source port included).
    Spoofed(SocketAddrV4),
}

/// One target of a flood and what it gets.
#[derive(Clone, Debug)]
pub struct Stream {
    /// The address the datagrams go to.
    pub to: SocketAddrV4,
    /// The datagrams, sent in turn, over and over.
    pub datagrams: Vec<(Forgery, Vec<u8>)>,
}

/// A flood's shape.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// The namespace it is sent from.
    pub netns: String,
    /// Its source.
    pub source: Source,
    /// Its targets.
    pub streams: Vec<Stream>,
    /// Datagrams per second to each target.
    pub rate: u32,
    /// At most this many datagrams to each target (then the flood ends by itself).
    pub limit: u64,
    /// At most this long.
    pub max_time: Duration,
}

/// What a flood sent.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FloodStats {
    /// Datagrams sent, per target, in the order of the spec's streams.
    pub sent: Vec<u64>,
    /// Datagrams sent per kind, over all targets.
    pub by_kind: std::collections::BTreeMap<String, u64>,
    /// How long it ran.
    pub seconds: f64,
}

impl FloodStats {
    /// Datagrams sent per second to each target, on average.
    pub fn rate_per_target(&self) -> f64 {
        let n = self.sent.len().max(1) as f64;
        self.sent.iter().sum::<u64>() as f64 / n / self.seconds.max(1e-9)
    }

    /// Datagrams of `kind` sent.
    pub fn of(&self, kind: Forgery) -> u64 {
        self.by_kind.get(&format!("{kind:?}")).copied().unwrap_or(0)
    }
}

/// A flood running in its own thread.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<FloodStats>>>,
}

impl Flood {
    /// Starts sending.
    ///
    /// # Errors
    /// Fails when the namespace does not exist or the spec is empty.
    pub fn start(spec: FloodSpec) -> Result<Self> {
        ensure!(
            spec.streams.iter().all(|s| !s.datagrams.is_empty()),
            "a flood stream without datagrams"
        );
        ensure!(spec.rate > 0, "a flood rate of 0");
        let ns = netns::open(&spec.netns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            netns::setns(&ns).with_context(|| format!("entering {}", spec.netns))?;
            send_loop(&spec, &stopping)
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sending and says what was sent.
    ///
    /// # Errors
    /// The sender's error (a socket that could not be opened or a send that failed).
    pub fn stop(mut self) -> Result<FloodStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits until the flood reaches its limit or time.
    ///
    /// # Errors
    /// As [`Flood::stop`].
    pub fn wait(mut self) -> Result<FloodStats> {
        self.join()
    }

    fn join(&mut self) -> Result<FloodStats> {
        let thread = self.thread.take().context("flood already joined")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))?
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the sender wakes to send what is due.
const TICK: Duration = Duration::from_millis(2);

fn send_loop(spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodStats> {
    let sender = Sender::open(spec.source)?;
    let start = Instant::now();
    let mut stats = FloodStats {
        sent: vec![0; spec.streams.len()],
        ..FloodStats::default()
    };
    let mut by_kind = std::collections::BTreeMap::<Forgery, u64>::new();
    loop {
        let elapsed = start.elapsed();
        if stop.load(Ordering::Relaxed) || elapsed >= spec.max_time {
            break;
        }
        let due = (elapsed.as_secs_f64() * f64::from(spec.rate)) as u64 + 1;
        let due = due.min(spec.limit);
        let mut done = true;
        for (stream, sent) in spec.streams.iter().zip(&mut stats.sent) {
            while *sent < due {
                let (kind, bytes) = &stream.datagrams[(*sent as usize) % stream.datagrams.len()];
                sender.send(bytes, stream.to)?;
                *by_kind.entry(*kind).or_default() += 1;
                *sent += 1;
            }
            done &= *sent >= spec.limit;
        }
        if done {
            break;
        }
        std::thread::sleep(TICK);
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.by_kind = by_kind
        .into_iter()
        .map(|(k, n)| (format!("{k:?}"), n))
        .collect();
    Ok(stats)
}

/// A UDP socket bound to the source, or a raw socket that writes IPv4 headers itself.
enum Sender {
    Udp(UdpSocket),
    Raw {
        fd: std::os::fd::OwnedFd,
        src: SocketAddrV4,
    },
}

impl Sender {
    fn open(source: Source) -> Result<Self> {
        match source {
            Source::Bound(ip) => Ok(Self::Udp(
                UdpSocket::bind((ip, 0)).with_context(|| format!("binding {ip}"))?,
            )),
            Source::Spoofed(src) => {
                // SAFETY: socket(2) with constant arguments; the fd is owned right away.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
                if fd < 0 {
                    bail!("raw socket: {}", std::io::Error::last_os_error());
                }
                // SAFETY: fd is a fresh, valid descriptor nobody else owns.
                let fd =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                Ok(Self::Raw { fd, src })
            }
        }
    }

    fn send(&self, payload: &[u8], to: SocketAddrV4) -> Result<()> {
        match self {
            Self::Udp(s) => {
                s.send_to(payload, to)?;
            }
            Self::Raw { fd, src } => {
                let packet = ipv4_udp(*src, to, payload);
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*to.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: the buffer and the address are valid for the call's duration and
                // their lengths are passed with them.
                let rc = unsafe {
                    libc::sendto(
                        std::os::fd::AsRawFd::as_raw_fd(fd),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        std::ptr::from_ref(&addr).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if rc < 0 {
                    bail!("raw send: {}", std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// An IPv4 packet carrying one UDP datagram (UDP checksum 0: none, as IPv4 allows; the kernel
/// fills in the IPv4 checksum and ID).
fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + 8 + payload.len()).unwrap_or(u16::MAX);
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(total - 20).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Captures the payload of one UDP datagram from `from` to port `port` arriving in namespace
/// `ns` (a packet socket: it sees what arrives before any filter).
///
/// # Errors
/// Fails when nothing matching arrives within `within`.
pub fn capture_udp(ns: &str, from: Ipv4Addr, port: u16, within: Duration) -> Result<Vec<u8>> {
    let ns = ns.to_owned();
    netns::in_netns(&ns.clone(), move || {
        // SAFETY: socket(2) with constant arguments; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                i32::from((libc::ETH_P_IP as u16).to_be()),
            )
        };
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: a valid fd and a timeval that lives for the call.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            // SAFETY: the buffer is valid and writable for its length.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            let Ok(n) = usize::try_from(n) else { continue };
            if let Some(payload) = udp_payload(&buf[..n], from, port) {
                return Ok(payload.to_vec());
            }
        }
        bail!("no UDP datagram from {from} to port {port} in {ns} within {within:?}")
    })
}

/// The payload of an IPv4 UDP packet from `from` to `port`, if `packet` is one.
fn udp_payload(packet: &[u8], from: Ipv4Addr, port: u16) -> Option<&[u8]> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != 17 || packet.get(12..16)? != from.octets() {
        return None;
    }
    let udp = packet.get(ihl..)?;
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    (dport == port && len >= 8).then(|| udp.get(8..len))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forge(genuine: Option<Vec<u8>>) -> SleeveForge {
        SleeveForge {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
            genuine,
        }
    }

    #[test]
    fn sleeve_forgeries_are_what_they_say() {
        let genuine: Vec<u8> = (0..200u8).collect();
        let all = sleeve_forgeries(&forge(Some(genuine.clone())), 500, 7);
        for (kind, d) in &all {
            match kind {
                Forgery::WrongKey => {
                    assert_eq!(&d[..2], &[1, 2]);
                    assert_eq!(&d[14..16], &[1, 0]);
                    assert!(d.len() > 16 + 9 + 12 + 16);
                }
                Forgery::Plain => assert_eq!(d[1], 1),
                Forgery::Random => assert_ne!(d[0], 1),
                Forgery::Replay => assert_eq!(d, &genuine),
                Forgery::Truncated => assert!(!d.is_empty() && d.len() < 16),
                Forgery::VxlanEcho => panic!("no VXLAN among sleeve forgeries"),
            }
        }
        let kinds: std::collections::BTreeSet<_> = all.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds.len(), 5);
        // Without a genuine datagram: no replays, no truncations.
        let none = sleeve_forgeries(&forge(None), 30, 7);
        assert!(
            none.iter()
                .all(|(k, _)| !matches!(k, Forgery::Replay | Forgery::Truncated))
        );
    }

    #[test]
    fn packets_read_back() {
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 6783);
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 6783);
        let p = ipv4_udp(src, dst, b"hello");
        assert_eq!(udp_payload(&p, *src.ip(), 6783), Some(&b"hello"[..]));
        assert_eq!(udp_payload(&p, *dst.ip(), 6783), None);
        assert_eq!(udp_payload(&p, *src.ip(), 6784), None);
        for cut in 0..p.len() {
            let _ = udp_payload(&p[..cut], *src.ip(), 6783);
        }
    }
}
