//! Running the stand-in: the accept loop, connections that a drop fault can close, TLS, a
//! thread of its own for tests, and the `weft-sim kube-api` command.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{StandIn, http};

/// Serves the stand-in over plain HTTP on `listener` until the future is dropped.
///
/// # Errors
///
/// None in practice: accept errors (such as running out of file descriptors) are retried.
pub async fn serve(listener: TcpListener, standin: StandIn) -> Result<()> {
    serve_with(listener, standin, None).await
}

/// Serves the stand-in over TLS on `listener` until the future is dropped.
///
/// # Errors
///
/// None in practice: accept errors are retried, failed handshakes close their connection.
pub async fn serve_tls(listener: TcpListener, standin: StandIn, tls: Tls) -> Result<()> {
    serve_with(listener, standin, Some(tls.0)).await
}

/// A TLS server configuration: a certificate chain and its key.
#[derive(Clone)]
pub struct Tls(TlsAcceptor);

impl Tls {
    /// Builds the configuration from a PEM certificate chain and a PEM private key.
    ///
    /// # Errors
    ///
    /// Unparsable PEM, no certificate, or a key that does not fit.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("reading the certificate PEM")?;
        anyhow::ensure!(!certs.is_empty(), "no certificate in the certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the key PEM")?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("TLS certificate and key")?;
        Ok(Self(TlsAcceptor::from(Arc::new(config))))
    }
}

/// A stand-in serving on a thread of its own, with its own tokio runtime. Dropping it stops
/// the server and closes its connections.
pub struct Server {
    addr: SocketAddr,
    tls: bool,
    standin: StandIn,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Returns the address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns its URL: `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Returns the handle on its state.
    pub fn standin(&self) -> &StandIn {
        &self.standin
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the stand-in over plain HTTP on 127.0.0.1 (a free port) on its own thread.
///
/// # Errors
///
/// Binding the port, building the runtime or spawning the thread.
pub fn start(standin: StandIn) -> Result<Server> {
    start_on(([127, 0, 0, 1], 0).into(), standin, None)
}

/// Starts the stand-in over TLS on 127.0.0.1 (a free port) on its own thread.
///
/// # Errors
///
/// Binding the port, building the runtime or spawning the thread.
pub fn start_tls(standin: StandIn, tls: Tls) -> Result<Server> {
    start_on(([127, 0, 0, 1], 0).into(), standin, Some(tls))
}

/// Arguments of the hidden `weft-sim kube-api` command.
#[derive(clap::Args, Debug)]
pub struct KubeApiArgs {
    /// The address to listen on, e.g. 10.0.0.1:6443 or 127.0.0.1:0.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept only these bearer tokens (repeatable); any request is accepted without one.
    #[arg(long = "token", value_name = "TOKEN")]
    pub tokens: Vec<String>,
    /// Idle milliseconds before a watch that allows bookmarks gets one.
    #[arg(long, default_value_t = 1_000)]
    pub bookmark_interval_ms: u64,
    /// Start with the namespaces every cluster has (default, kube-system, ...).
    #[arg(long)]
    pub default_namespaces: bool,
}

/// Runs `weft-sim kube-api`: binds, writes `listening on ADDR` to `out`, serves until killed.
///
/// # Errors
///
/// Reading the TLS files, building the runtime, binding, writing to `out`.
pub fn run(args: &KubeApiArgs, out: &mut dyn Write) -> Result<()> {
    let standin = StandIn::new();
    if !args.tokens.is_empty() {
        standin.set_tokens(Some(args.tokens.clone()));
    }
    standin.set_bookmark_interval(Duration::from_millis(args.bookmark_interval_ms));
    if args.default_namespaces {
        standin.add_default_namespaces()?;
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let cert =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            Some(Tls::from_pem(&cert, &key)?)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
        serve_with(listener, standin, tls.map(|t| t.0)).await
    })
}

fn start_on(addr: SocketAddr, standin: StandIn, tls: Option<Tls>) -> Result<Server> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = standin.clone();
    let is_tls = tls.is_some();
    let thread = std::thread::Builder::new()
        .name("kube-standin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    _ = serve_with(listener, serving, tls.map(|t| t.0)) => {}
                    _ = stopped => {}
                }
            });
        })
        .context("spawning the stand-in's thread")?;
    Ok(Server {
        addr,
        tls: is_tls,
        standin,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn serve_with(
    listener: TcpListener,
    standin: StandIn,
    tls: Option<TlsAcceptor>,
) -> Result<()> {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends pass; a busy loop on them would starve the connections.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = standin
            .inner
            .next_connection
            .fetch_add(1, Ordering::Relaxed);
        standin.count(|c| c.connections += 1);
        let standin = standin.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        connection(standin, id, stream).await;
                    }
                }
                None => connection(standin, id, stream).await,
            }
        });
    }
}

/// Serves one connection until it ends or a drop fault that does not spare it.
async fn connection<S>(standin: StandIn, id: u64, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut drops = standin.inner.drops.subscribe();
    drops.borrow_and_update();
    let service_standin = standin.clone();
    let service = service_fn(move |req| {
        let standin = service_standin.clone();
        async move { Ok::<_, std::convert::Infallible>(http::handle(standin, id, req).await) }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = &mut conn => return,
            r = drops.changed() => {
                if r.is_err() {
                    return;
                }
                let (_, spared) = *drops.borrow_and_update();
                if spared != Some(id) {
                    // Dropping the connection closes the socket and every body it streams.
                    return;
                }
            }
        }
    }
}
