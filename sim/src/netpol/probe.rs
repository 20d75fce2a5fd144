//! `weft-sim netpol serve` and `weft-sim netpol probe`: the model's servers and clients, run
//! inside pods' network namespaces (std only: a thread per socket or target); and the
//! `netpol cases` and `netpol run --lab NAME [CASE...]` commands around [`super::Model`].
//!
//! `serve --ports 80,81` listens on 0.0.0.0 on every port over TCP (accepts and closes) and
//! UDP (echoes each datagram), prints `ready` once every socket is bound, and runs until
//! killed. `probe --timeout-ms N TARGET...` tries every target at once (`tcp:IP:PORT`: the
//! connection is accepted within the timeout; `udp:IP:PORT`: a datagram's echo comes back
//! within it, the datagram sent again a few times meanwhile) and prints one result per
//! target, in order: `TARGET ok|fail` lines, or with `--json` an array of
//! `{"target": T, "ok": B}`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// `weft-sim netpol …`.
#[derive(Debug, clap::Subcommand)]
pub enum NetpolCommand {
    /// List the cases: name and the upstream test each follows.
    Cases,
    /// Try TCP connections and UDP echoes to every target at once; one result per target.
    Probe {
        /// How long each target gets, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Print a JSON array of {"target", "ok"} objects.
        #[arg(long)]
        json: bool,
        /// `tcp:IP:PORT` or `udp:IP:PORT`.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Run cases on a running `--kube` lab (needs root): the nine pods are added (or taken
    /// over from an earlier run), each case starts from the baseline, and the servers stop
    /// when this command ends. Exits non-zero with the differing matrices on the first failure.
    Run {
        /// The lab's name.
        #[arg(long)]
        lab: String,
        /// The cases to run (default: all).
        cases: Vec<String>,
    },
    /// Serve TCP (accept and close) and UDP (echo) on 0.0.0.0 on every port until killed;
    /// prints `ready` once every socket is bound.
    Serve {
        /// The ports.
        #[arg(long, value_delimiter = ',', required = true)]
        ports: Vec<u16>,
    },
}

/// One probe's result, as `probe --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The target as given.
    pub target: String,
    /// Whether the connection (TCP) or the echo (UDP) succeeded in time.
    pub ok: bool,
}

/// A probe target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Connect.
    Tcp(SocketAddr),
    /// Send and await the echo.
    Udp(SocketAddr),
}

impl Target {
    /// Parses `tcp:IP:PORT` or `udp:IP:PORT`.
    ///
    /// # Errors
    /// Names the target that does not parse.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || format!("target {s:?}: expected tcp:IP:PORT or udp:IP:PORT");
        let (proto, addr) = s.split_once(':').with_context(bad)?;
        let addr: SocketAddr = addr.parse().ok().with_context(bad)?;
        match proto {
            "tcp" => Ok(Self::Tcp(addr)),
            "udp" => Ok(Self::Udp(addr)),
            _ => bail!(bad()),
        }
    }
}

/// Runs a `netpol` subcommand, writing its output to `out`.
///
/// # Errors
/// When a target does not parse, or a server socket cannot be bound.
pub fn run(cmd: NetpolCommand, out: &mut impl Write) -> Result<()> {
    match cmd {
        NetpolCommand::Probe {
            timeout_ms,
            json,
            targets,
        } => {
            let parsed = targets
                .iter()
                .map(|t| Target::parse(t))
                .collect::<Result<Vec<_>>>()?;
            let oks = probe_all(&parsed, Duration::from_millis(timeout_ms));
            let results: Vec<ProbeResult> = targets
                .into_iter()
                .zip(oks)
                .map(|(target, ok)| ProbeResult { target, ok })
                .collect();
            if json {
                serde_json::to_writer(&mut *out, &results)?;
                writeln!(out)?;
            } else {
                for r in results {
                    writeln!(out, "{} {}", r.target, if r.ok { "ok" } else { "fail" })?;
                }
            }
            Ok(())
        }
        NetpolCommand::Serve { ports } => serve(&ports, out),
        NetpolCommand::Cases => {
            for case in super::cases::all() {
                writeln!(out, "{:<36} {}", case.name, case.upstream)?;
            }
            Ok(())
        }
        NetpolCommand::Run { lab, cases } => {
            let all = super::cases::all();
            let chosen: Vec<super::Case> = if cases.is_empty() {
                all
            } else {
                cases
                    .iter()
                    .map(|name| {
                        all.iter()
                            .find(|c| c.name == name.as_str())
                            .copied()
                            .with_context(|| format!("no case {name:?} (see `netpol cases`)"))
                    })
                    .collect::<Result<_>>()?
            };
            let model = super::Model::up(&lab)?;
            for case in &chosen {
                model
                    .reset()
                    .with_context(|| format!("before case {}", case.name))?;
                model.run_case(case)?;
                writeln!(out, "ok {}", case.name)?;
                out.flush()?;
            }
            model.reset()
        }
    }
}

/// Probes every target at once (a thread each); true where it answered within `timeout`.
pub fn probe_all(targets: &[Target], timeout: Duration) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(i, &t)| s.spawn(move || probe(t, i, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    })
}

/// One probe: a TCP connection accepted, or a UDP echo of a datagram naming this process
/// and target `i`, within `timeout`.
pub fn probe(target: Target, i: usize, timeout: Duration) -> bool {
    match target {
        Target::Tcp(addr) => TcpStream::connect_timeout(&addr, timeout).is_ok(),
        Target::Udp(addr) => udp_echo(addr, i, timeout).unwrap_or(false),
    }
}

fn udp_echo(addr: SocketAddr, i: usize, timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(addr)?;
    let token = format!("weft-netpol {} {i}", std::process::id());
    // Four tries within the timeout: a datagram lost while a flow is set up is sent again.
    let interval = (timeout / 4).max(Duration::from_millis(50));
    let mut buf = [0u8; 128];
    while Instant::now() < deadline {
        socket.send(token.as_bytes())?;
        let until = (Instant::now() + interval).min(deadline);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut buf) {
                Ok(n) if &buf[..n] == token.as_bytes() => return Ok(true),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                // An ICMP error (port unreachable, prohibited) is an answer: refused.
                Err(_) => return Ok(false),
            }
        }
    }
    Ok(false)
}

/// Binds TCP and UDP on every port, says `ready`, then serves until killed.
fn serve(ports: &[u16], out: &mut impl Write) -> Result<()> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for &port in ports {
        let any = (Ipv4Addr::UNSPECIFIED, port);
        tcp.push(TcpListener::bind(any).with_context(|| format!("binding TCP {port}"))?);
        udp.push(UdpSocket::bind(any).with_context(|| format!("binding UDP {port}"))?);
    }
    writeln!(out, "ready")?;
    out.flush()?;
    std::thread::scope(|s| {
        for listener in &tcp {
            s.spawn(move || {
                loop {
                    // Accepted and dropped at once: the client saw its connection complete.
                    if listener.accept().is_err() {
                        // Out of descriptors, say: no busy loop while it lasts.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
        }
        for socket in &udp {
            s.spawn(move || {
                let mut buf = [0u8; 2048];
                loop {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("tcp:10.32.0.1:80").unwrap();
        assert_eq!(t, Target::Tcp("10.32.0.1:80".parse().unwrap()));
        assert!(matches!(
            Target::parse("udp:1.2.3.4:81"),
            Ok(Target::Udp(_))
        ));
        for bad in ["sctp:1.2.3.4:80", "tcp:1.2.3.4", "tcp", "udp:x:80"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probes_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = listener.local_addr().unwrap();
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        // A port nothing listens on (bound, then closed).
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let targets = [
            Target::Tcp(tcp),
            Target::Udp(udp),
            Target::Tcp(closed),
            Target::Udp(silent.local_addr().unwrap()),
        ];
        let got = probe_all(&targets, Duration::from_millis(300));
        assert_eq!(got, [true, true, false, false]);
        drop(listener);
    }
}
