//! One control connection's task: the Noise handshake, the hello, then sealed control
//! messages both ways between the socket and the daemon loop. It decides nothing: what the
//! messages mean is the engine's.

use super::*;

/// One TCP connection: handshake, hello, then control messages both ways.
pub(super) struct ConnectionTask {
    pub(super) conn: ConnId,
    pub(super) handshake: Arc<HandshakeConfig>,
    pub(super) hello: Hello,
    pub(super) inputs: mpsc::Sender<Input>,
    pub(super) metrics: Metrics,
}

/// Starting connections: dialled, or accepted once admitted.
impl Daemon {
    fn next_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    pub(super) fn spawn_dial(&mut self, addr: SocketAddr) {
        let conn = self.next_conn_id();
        let task = self.connection_task(conn);
        // With --bind-addr, dial from it too: it is the address peers know this node by (and
        // admit, with Kubernetes discovery and no password).
        let source = self
            .config
            .bind_addr
            .filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4());
        tokio::spawn(async move {
            match tokio::time::timeout(DIAL_TIMEOUT, dial(source, addr)).await {
                Ok(Ok(stream)) => task.run(stream, addr, true).await,
                Ok(Err(e)) => task.dial_failed(addr, e.to_string()).await,
                Err(_) => task.dial_failed(addr, "connect timed out".into()).await,
            }
        });
    }

    /// Starts the handshake of an inbound connection, or closes it at once when its source
    /// may not join (`topology::admission`).
    pub(super) fn admit(&mut self, stream: TcpStream, addr: SocketAddr) {
        let nodes = self.handles.node_addrs.as_ref().map(|rx| rx.borrow());
        let verdict = admission::judge(
            self.identity.password_set,
            nodes.as_deref(),
            self.mesh.targets(),
            addr.ip(),
        );
        drop(nodes);
        match verdict {
            Verdict::Admit => self.spawn_connection(stream, addr, false),
            Verdict::NotANode => {
                self.handles.metrics.inc_refused_not_a_node();
                debug!(%addr, "control connection refused: no Node has this address and no \
                    --peers names it (without a mesh password, only they may join)");
            }
        }
    }

    pub(super) fn spawn_connection(&mut self, stream: TcpStream, addr: SocketAddr, outbound: bool) {
        let conn = self.next_conn_id();
        let task = self.connection_task(conn);
        tokio::spawn(task.run(stream, addr, outbound));
    }

    fn connection_task(&self, conn: ConnId) -> ConnectionTask {
        ConnectionTask {
            conn,
            handshake: Arc::clone(&self.identity.handshake),
            hello: Hello {
                uid: self.mesh.uid(),
                // The sleeve shares the control port's number (UDP).
                port: self.port,
                nickname: self.config.nickname.clone(),
            },
            inputs: self.inputs_tx.clone(),
            metrics: self.handles.metrics.clone(),
        }
    }
}

/// Why a connection ended before or after it was established.
enum ConnError {
    Handshake(HandshakeError),
    Io(String),
    Protocol(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handshake(e) => write!(f, "{e}"),
            Self::Io(e) | Self::Protocol(e) => f.write_str(e),
        }
    }
}

impl ConnectionTask {
    pub(super) async fn dial_failed(self, addr: SocketAddr, reason: String) {
        let _ = self.inputs.send(Input::DialFailed { addr, reason }).await;
    }

    pub(super) async fn run(self, mut stream: TcpStream, addr: SocketAddr, outbound: bool) {
        let _ = stream.set_nodelay(true);
        if let Err(e) = set_liveness(&stream) {
            warn!(%addr, "setting TCP keepalive on a control connection: {e}");
        }
        let opened =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open(&mut stream, outbound)).await;
        let opened = opened.unwrap_or(Err(ConnError::Handshake(HandshakeError::Timeout)));
        let (remote, hello, control, keys) = match opened {
            Ok(v) => v,
            Err(e) => {
                self.count_failure(&e);
                if outbound {
                    self.dial_failed(addr, e.to_string()).await;
                } else {
                    // Anyone can open the port: keep unauthenticated failures out of the log.
                    debug!(%addr, "inbound handshake failed: {e}");
                }
                return;
            }
        };
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let up = Input::Up {
            conn: self.conn,
            remote,
            hello,
            addr,
            local,
            outbound,
            tx,
            keys,
        };
        if self.inputs.send(up).await.is_err() {
            return;
        }
        let reason = match self.carry(stream, control, rx).await {
            Ok(()) => "closed".to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = self
            .inputs
            .send(Input::Down {
                conn: self.conn,
                reason,
            })
            .await;
    }

    /// Runs the handshake and exchanges hellos.
    /// The side that opened the TCP connection is the Noise initiator.
    async fn open(
        &self,
        stream: &mut TcpStream,
        outbound: bool,
    ) -> Result<(PeerName, Hello, ControlChannel, DataKeys), ConnError> {
        let mut out = Vec::new();
        let mut rng = rand::rngs::OsRng;
        let mut hs = if outbound {
            Handshake::initiate(&self.handshake, &mut rng, &mut out)
        } else {
            Handshake::respond(&self.handshake, &mut rng, &mut out)
        };
        write_all(stream, &mut out).await?;
        let mut buf = vec![0u8; READ_BUF];
        let established = loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| ConnError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ConnError::Io(
                    "the peer closed the connection during the handshake".into(),
                ));
            }
            let result = hs.handle_input(&buf[..n], &mut out);
            // A failed handshake may still have a REJECT frame to tell the peer why.
            let _ = write_all(stream, &mut out).await;
            match result {
                Ok(Some(est)) => break est,
                Ok(None) => {}
                Err(e) => return Err(ConnError::Handshake(e)),
            }
        };
        let remote = PeerName::from_bytes(established.peer_name());
        let (mut control, data_keys) = established.into_parts();
        control
            .seal_message(&self.hello.encode(), &mut out)
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
        write_all(stream, &mut out).await?;
        loop {
            if let Some(msg) = control
                .poll_message()
                .map_err(|e| ConnError::Protocol(e.to_string()))?
            {
                let hello = match channel::split(&msg) {
                    Ok((Channel::Hello, body)) => Hello::decode(body),
                    Ok(_) => Err(channel::Error::UnknownChannel),
                    Err(e) => Err(e),
                };
                let hello = hello.map_err(|e| ConnError::Protocol(format!("bad hello: {e}")))?;
                return Ok((remote, hello, control, data_keys));
            }
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| ConnError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ConnError::Io(
                    "the peer closed the connection before its hello".into(),
                ));
            }
            control
                .handle_input(&buf[..n])
                .map_err(|e| ConnError::Protocol(e.to_string()))?;
        }
    }

    /// Moves control messages between the socket and the engine until either side closes.
    async fn carry(
        &self,
        stream: TcpStream,
        control: ControlChannel,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) -> Result<(), ConnError> {
        let (mut rd, mut wr) = stream.into_split();
        // Reading and writing go on independently: a reader waiting for room in the engine's
        // input queue must not stop this side's writes (nor a write blocked on a peer that is
        // slow to read stop the reads), or two busy routers stall each other's control
        // traffic until messages are dropped. The channel's two directions share one lock,
        // never held across an await.
        let control = std::sync::Mutex::new(control);
        let lock = || {
            control
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let reader = async {
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = rd
                    .read(&mut buf)
                    .await
                    .map_err(|e| ConnError::Io(e.to_string()))?;
                if n == 0 {
                    return Err(ConnError::Io("the peer closed the connection".into()));
                }
                let mut msgs = Vec::new();
                {
                    let mut c = lock();
                    c.handle_input(&buf[..n])
                        .map_err(|e| ConnError::Protocol(e.to_string()))?;
                    while let Some(msg) = c
                        .poll_message()
                        .map_err(|e| ConnError::Protocol(e.to_string()))?
                    {
                        msgs.push(msg);
                    }
                }
                for msg in msgs {
                    let conn = self.conn;
                    if self
                        .inputs
                        .send(Input::Control { conn, msg })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            }
        };
        let writer = async {
            let mut out = Vec::new();
            // `None`: the engine dropped our sender, it closed this connection.
            while let Some(msg) = rx.recv().await {
                lock()
                    .seal_message(&msg, &mut out)
                    .map_err(|e| ConnError::Protocol(e.to_string()))?;
                wr.write_all(&out)
                    .await
                    .map_err(|e| ConnError::Io(e.to_string()))?;
                out.clear();
            }
            Ok(())
        };
        tokio::select! {
            r = reader => r,
            w = writer => w,
        }
    }

    fn count_failure(&self, e: &ConnError) {
        let reason = match e {
            ConnError::Io(_) => HandshakeFailure::Io,
            ConnError::Protocol(_) => HandshakeFailure::Malformed,
            ConnError::Handshake(h) => match h {
                HandshakeError::Timeout => HandshakeFailure::Timeout,
                HandshakeError::UnknownVersion { .. } => HandshakeFailure::ProtocolVersion,
                HandshakeError::PasswordMismatch { .. }
                | HandshakeError::WrongPassword
                | HandshakeError::Rejected => HandshakeFailure::Auth,
                HandshakeError::BadMagic
                | HandshakeError::Internal
                | HandshakeError::Malformed
                | HandshakeError::UnexpectedFrame => HandshakeFailure::Malformed,
            },
        };
        self.metrics.inc_handshake_failure(reason);
    }
}

/// The kernel watches an idle control connection: a keepalive probe after
/// [`KEEPALIVE_IDLE`] of silence, and the connection fails (the task sees ETIMEDOUT and
/// closes it) when nothing answers for [`USER_TIMEOUT`], idle or with data unacknowledged. A
/// peer whose node or underlay link dies is thus noticed within 3 s at no cost to either
/// router's threads; the application heartbeats, much rarer, carry the view digest and
/// notice a router that hangs (docs/ARCHITECTURE.md, "What a peer costs").
fn set_liveness(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with a c_int value and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let secs = |d: Duration| libc::c_int::try_from(d.as_secs()).unwrap_or(libc::c_int::MAX);
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(KEEPALIVE_IDLE))?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2)?;
    let ms = libc::c_int::try_from(USER_TIMEOUT.as_millis()).unwrap_or(libc::c_int::MAX);
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)
}

/// Connects to `addr`, from `source` when given.
pub(super) async fn dial(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

async fn write_all(stream: &mut TcpStream, out: &mut Vec<u8>) -> Result<(), ConnError> {
    if out.is_empty() {
        return Ok(());
    }
    let r = stream
        .write_all(out)
        .await
        .map_err(|e| ConnError::Io(e.to_string()));
    out.clear();
    r
}
