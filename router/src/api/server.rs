//! The API and metrics HTTP servers (hyper 1, HTTP/1.1).
//!
//! [`ApiServer`] serves every route on the unix socket and the read-only routes on the HTTP
//! address; a state-changing route asked over HTTP answers 403 and points at the socket.
//! [`MetricsServer`] serves `GET /metrics`. Both read the published status snapshot and never
//! touch the engine; commands go to the daemon loop as [`ApiCommand`]s.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use topology::api::ipam as ipam_api;
use tracing::{debug, info, warn};

use super::limits::{self, Slots};
use super::{
    AddrRequest, ApiCommand, CommandError, EncryptionRequest, ErrorBody, JsonReply, Reply,
    RmPeerRequest,
};
use crate::metrics::{self, HttpClosed, HttpServer, Metrics};
use crate::status::{IPAM_NOT_AVAILABLE, RouterStatus, StatusReader};
use crate::status_text;

/// What the API server reads and where it sends commands.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The latest published status.
    pub status: StatusReader,
    /// The daemon loop's command queue.
    pub commands: mpsc::Sender<ApiCommand>,
    /// Where closed slow or surplus connections are counted.
    pub metrics: Metrics,
}

/// The bound API listeners: the unix socket and the read-only HTTP address.
#[derive(Debug)]
pub struct ApiServer {
    unix: UnixListener,
    socket_path: PathBuf,
    http: TcpListener,
}

impl ApiServer {
    /// Binds the unix socket (mode 0660, parent directory created 0755, a stale socket
    /// replaced) and the HTTP address.
    ///
    /// # Errors
    ///
    /// Fails when another router listens on the socket, when the path exists and is not a
    /// socket, or when either bind fails; the message names the path or address.
    pub async fn bind(socket_path: &Path, http_addr: SocketAddr) -> io::Result<Self> {
        let unix = bind_unix(socket_path).await?;
        let http = TcpListener::bind(http_addr).await.map_err(|e| {
            // Do not leave the socket behind when the second bind fails.
            let _ = std::fs::remove_file(socket_path);
            io::Error::new(e.kind(), format!("binding HTTP API on {http_addr}: {e}"))
        })?;
        Ok(Self {
            unix,
            socket_path: socket_path.to_owned(),
            http,
        })
    }

    /// Returns the address the HTTP listener is bound to (useful with port 0).
    ///
    /// # Errors
    ///
    /// Returns the socket's error.
    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Serves until `shutdown` completes, then removes the socket file.
    pub async fn serve(self, state: ApiState, shutdown: impl Future<Output = ()>) {
        let state = Arc::new(state);
        let unix_slots = Slots::new(limits::UNIX_CONNECTIONS);
        let http_slots = Slots::new(limits::TCP_CONNECTIONS);
        info!(socket = %self.socket_path.display(), http = ?self.http.local_addr().ok(), "API listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.unix.accept() => match accepted {
                    Ok((stream, _)) => spawn_api_conn(&unix_slots, stream, &state, Origin::Unix),
                    Err(e) => accept_failed(&e).await,
                },
                accepted = self.http.accept() => match accepted {
                    Ok((stream, peer)) => {
                        debug!(%peer, "HTTP API connection");
                        spawn_api_conn(&http_slots, stream, &state, Origin::Http);
                    }
                    Err(e) => accept_failed(&e).await,
                },
            }
        }
        if let Err(e) = std::fs::remove_file(&self.socket_path) {
            warn!(socket = %self.socket_path.display(), error = %e, "removing API socket");
        }
    }
}

/// The bound metrics listener.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds the metrics address.
    ///
    /// # Errors
    ///
    /// Returns the bind error, naming the address.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("binding metrics on {addr}: {e}")))?;
        Ok(Self { listener })
    }

    /// Returns the bound address (useful with port 0).
    ///
    /// # Errors
    ///
    /// Returns the socket's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` until `shutdown` completes.
    pub async fn serve(
        self,
        metrics: Metrics,
        status: StatusReader,
        shutdown: impl Future<Output = ()>,
    ) {
        info!(addr = ?self.listener.local_addr().ok(), "metrics listening");
        let slots = Slots::new(limits::TCP_CONNECTIONS);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let (m, status) = (metrics.clone(), status.clone());
                        let conn = Conn { slots: &slots, metrics: &metrics, server: HttpServer::Metrics };
                        conn.spawn(stream, move |req| {
                            let resp = metrics_response(&req, &m, &status.current());
                            async move { resp }
                        });
                    }
                    Err(e) => accept_failed(&e).await,
                },
            }
        }
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Http,
    Unix,
}

/// Whether a route may be served on the HTTP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ChangesState,
    /// Read-only, but it names containers: served on the unix socket only.
    SocketOnly,
}

/// Every route: path, method, access. docs/API.md lists the same.
const ROUTES: &[(&str, Method, Access)] = &[
    ("/connect", Method::POST, Access::ChangesState),
    ("/encryption", Method::GET, Access::ReadOnly),
    ("/encryption", Method::POST, Access::ChangesState),
    ("/forget", Method::POST, Access::ChangesState),
    ("/healthz", Method::GET, Access::ReadOnly),
    ("/ipam/allocate", Method::POST, Access::ChangesState),
    ("/ipam/gc", Method::POST, Access::ChangesState),
    ("/ipam/lookup", Method::POST, Access::SocketOnly),
    ("/ipam/release", Method::POST, Access::ChangesState),
    ("/ready", Method::GET, Access::ReadOnly),
    ("/report", Method::GET, Access::ReadOnly),
    ("/rmpeer", Method::POST, Access::ChangesState),
    ("/status", Method::GET, Access::ReadOnly),
    ("/status/connections", Method::GET, Access::ReadOnly),
    ("/status/ipam", Method::GET, Access::ReadOnly),
    ("/status/peers", Method::GET, Access::ReadOnly),
    ("/status/policy", Method::GET, Access::ReadOnly),
    ("/status/targets", Method::GET, Access::ReadOnly),
];

type Resp = Response<Full<Bytes>>;

fn spawn_api_conn<S>(slots: &Slots, stream: S, state: &Arc<ApiState>, origin: Origin)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn {
        slots,
        metrics: &state.metrics,
        server: HttpServer::Api,
    };
    let state = Arc::clone(state);
    conn.spawn(stream, move |req| handle(req, Arc::clone(&state), origin));
}

/// Where a new connection is served and counted.
struct Conn<'a> {
    slots: &'a Slots,
    metrics: &'a Metrics,
    server: HttpServer,
}

impl Conn<'_> {
    /// Serves one connection in a slot, within the head and size limits ([`limits`]).
    fn spawn<S, F, Fut>(self, stream: S, handler: F)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let (metrics, server) = (self.metrics.clone(), self.server);
        let evicted = self.slots.spawn(move |busy| async move {
            let service = service_fn(move |req| {
                let handler = Arc::clone(&handler);
                let request = busy.begin();
                async move {
                    let resp = handler(req).await;
                    drop(request);
                    Ok::<_, Infallible>(resp)
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits::HEAD_TIMEOUT)
                .max_buf_size(limits::MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            match served {
                Err(e) if e.is_timeout() => {
                    metrics.inc_http_closed(server, HttpClosed::Timeout);
                    debug!(
                        server = server.as_str(),
                        "closed a connection that sent no request in time"
                    );
                }
                Err(e) => debug!(error = %e, "API connection ended with an error"),
                Ok(()) => {}
            }
        });
        if evicted {
            self.metrics.inc_http_closed(self.server, HttpClosed::Limit);
            debug!(
                server = self.server.as_str(),
                "connection limit reached: closed the oldest connection"
            );
        }
    }
}

/// Sleeps briefly after a failed accept (e.g. out of file descriptors) so the loop does not spin.
async fn accept_failed(e: &io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn handle(req: Request<Incoming>, state: Arc<ApiState>, origin: Origin) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let candidates: Vec<&(&str, Method, Access)> =
        ROUTES.iter().filter(|(p, _, _)| *p == path).collect();
    if candidates.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("no route {method} {path}"));
    }
    let Some(&&(_, _, access)) = candidates.iter().find(|(_, m, _)| *m == method) else {
        let allow: Vec<&str> = candidates.iter().map(|(_, m, _)| m.as_str()).collect();
        let allow = allow.join(", ");
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}; use {allow}"),
        );
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(ALLOW, v);
        }
        return resp;
    };
    if access == Access::ChangesState && origin == Origin::Http {
        return error(
            StatusCode::FORBIDDEN,
            format!("{method} {path} changes state: use the unix socket (--api-socket)"),
        );
    }
    if access == Access::SocketOnly && origin == Origin::Http {
        return error(
            StatusCode::FORBIDDEN,
            format!("{method} {path} names containers: use the unix socket (--api-socket)"),
        );
    }
    let status = state.status.current();
    match (method, path.as_str()) {
        (Method::GET, "/status") => text(StatusCode::OK, status_text::render_status(&status)),
        (Method::GET, "/status/connections") => {
            text(StatusCode::OK, status_text::render_connections(&status))
        }
        (Method::GET, "/status/peers") => text(StatusCode::OK, status_text::render_peers(&status)),
        (Method::GET, "/status/targets") => {
            text(StatusCode::OK, status_text::render_targets(&status))
        }
        (Method::GET, "/status/ipam") => match &status.ipam {
            Some(ipam) => text(StatusCode::OK, status_text::render_ipam(ipam)),
            None => error(StatusCode::NOT_IMPLEMENTED, IPAM_NOT_AVAILABLE.to_owned()),
        },
        (Method::GET, "/status/policy") => {
            text(StatusCode::OK, status_text::render_policy(&status))
        }
        (Method::GET, "/report") => json(StatusCode::OK, &*status),
        (Method::GET, "/encryption") => json(StatusCode::OK, &status.encryption),
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".to_owned()),
        (Method::GET, "/ready") => ready(&status),
        (Method::POST, "/connect") => {
            match parse_body::<AddrRequest>(req, "/connect")
                .await
                .and_then(checked_addr)
            {
                Ok(b) => {
                    command(&state, |reply| ApiCommand::Connect {
                        addr: b.addr,
                        reply,
                    })
                    .await
                }
                Err((code, message)) => error(code, message),
            }
        }
        (Method::POST, "/forget") => {
            match parse_body::<AddrRequest>(req, "/forget")
                .await
                .and_then(checked_addr)
            {
                Ok(b) => {
                    command(&state, |reply| ApiCommand::Forget {
                        addr: b.addr,
                        reply,
                    })
                    .await
                }
                Err((code, message)) => error(code, message),
            }
        }
        (Method::POST, "/ipam/allocate") => {
            match parse_body::<ipam_api::AllocateRequest>(req, "/ipam/allocate").await {
                Ok(request) => {
                    json_command(&state, |reply| ApiCommand::IpamAllocate { request, reply }).await
                }
                Err((code, msg)) => error(code, msg),
            }
        }
        (Method::POST, "/ipam/lookup") => {
            match parse_body::<ipam_api::LookupRequest>(req, "/ipam/lookup").await {
                Ok(request) => {
                    json_command(&state, |reply| ApiCommand::IpamLookup { request, reply }).await
                }
                Err((code, msg)) => error(code, msg),
            }
        }
        (Method::POST, "/ipam/release") => {
            match parse_body::<ipam_api::ReleaseRequest>(req, "/ipam/release").await {
                Ok(request) => {
                    json_command(&state, |reply| ApiCommand::IpamRelease { request, reply }).await
                }
                Err((code, msg)) => error(code, msg),
            }
        }
        (Method::POST, "/ipam/gc") => {
            match parse_body::<ipam_api::GcRequest>(req, "/ipam/gc").await {
                Ok(request) => {
                    json_command(&state, |reply| ApiCommand::IpamGc { request, reply }).await
                }
                Err((code, msg)) => error(code, msg),
            }
        }
        (Method::POST, "/rmpeer") => match parse_body::<RmPeerRequest>(req, "/rmpeer").await {
            Ok(b) if b.name.trim().is_empty() => {
                error(StatusCode::BAD_REQUEST, "\"name\" is empty".to_owned())
            }
            Ok(b) => {
                command(&state, |reply| ApiCommand::RmPeer {
                    name: b.name,
                    reply,
                })
                .await
            }
            Err((code, message)) => error(code, message),
        },
        (Method::POST, "/encryption") => {
            match parse_body::<EncryptionRequest>(req, "/encryption").await {
                Ok(b) => {
                    command(&state, |reply| ApiCommand::SetEncryption {
                        enabled: b.enabled,
                        version: b.version,
                        proof: b.proof,
                        reply,
                    })
                    .await
                }
                Err((code, message)) => error(code, message),
            }
        }
        (method, path) => error(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
    }
}

fn metrics_response(req: &Request<Incoming>, metrics: &Metrics, status: &RouterStatus) -> Resp {
    let path = req.uri().path();
    if path != "/metrics" {
        return error(
            StatusCode::NOT_FOUND,
            format!("no route {} {path}", req.method()),
        );
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} not allowed", req.method()),
        );
    }
    respond(
        StatusCode::OK,
        metrics::CONTENT_TYPE,
        metrics.render(status),
    )
}

/// Sends a command to the daemon loop and turns its outcome into a response.
async fn command(state: &ApiState, make: impl FnOnce(Reply) -> ApiCommand) -> Resp {
    let (reply, rx) = Reply::new();
    respond_with(ask(state, make(reply), rx).await)
}

/// Sends a command whose answer is a JSON document and returns that document.
async fn json_command(state: &ApiState, make: impl FnOnce(JsonReply) -> ApiCommand) -> Resp {
    let (reply, rx) = JsonReply::new();
    respond_with(ask(state, make(reply), rx).await)
}

/// Queues `cmd` for the daemon loop and waits for its answer on `rx`, at most
/// [`COMMAND_TIMEOUT`].
async fn ask<T>(
    state: &ApiState,
    cmd: ApiCommand,
    rx: oneshot::Receiver<Result<T, CommandError>>,
) -> Result<T, CommandError> {
    tokio::time::timeout(COMMAND_TIMEOUT, async {
        state.commands.send(cmd).await.map_err(|_| not_running())?;
        rx.await.map_err(|_| not_running())?
    })
    .await
    .unwrap_or_else(|_| {
        Err(CommandError::engine_unavailable(format!(
            "router engine did not answer within {}s",
            COMMAND_TIMEOUT.as_secs()
        )))
    })
}

/// A command's answer as a response: the JSON document, or the error with its status code.
fn respond_with<T: Serialize>(outcome: Result<T, CommandError>) -> Resp {
    match outcome {
        Ok(value) => json(StatusCode::OK, &value),
        Err(e) => {
            let code =
                StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(code, e.message)
        }
    }
}

fn not_running() -> CommandError {
    CommandError::engine_unavailable("router engine not running")
}

/// A request refused before it reaches the engine: status and message.
type Rejection = (StatusCode, String);

/// Reads and parses a JSON body, or says what was wrong with it.
async fn parse_body<T: DeserializeOwned>(
    req: Request<Incoming>,
    route: &str,
) -> Result<T, Rejection> {
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(read) = tokio::time::timeout(limits::BODY_TIMEOUT, read).await else {
        return Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "reading body of POST {route}: not complete after {} s",
                limits::BODY_TIMEOUT.as_secs()
            ),
        ));
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading body of POST {route}: {e} (limit {MAX_BODY} bytes)"),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body for POST {route}: {e}"),
        )
    })
}

fn checked_addr(body: AddrRequest) -> Result<AddrRequest, Rejection> {
    if body.addr.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "\"addr\" is empty".to_owned()));
    }
    if body
        .addr
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        let msg = format!("\"addr\" {:?} is not a host or host:port", body.addr);
        return Err((StatusCode::BAD_REQUEST, msg));
    }
    Ok(body)
}

/// `GET /ready`: JSON, as the CNI plugin's STATUS reads it.
fn ready(status: &RouterStatus) -> Resp {
    if status.ready {
        json(
            StatusCode::OK,
            &ipam_api::ReadyResponse {
                ready: true,
                reason: None,
            },
        )
    } else {
        let reason = status
            .not_ready_reason
            .clone()
            .unwrap_or_else(|| "starting".to_owned());
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ipam_api::ReadyResponse {
                ready: false,
                reason: Some(reason),
            },
        )
    }
}

fn text(code: StatusCode, body: String) -> Resp {
    respond(code, "text/plain; charset=utf-8", body)
}

fn json<T: Serialize + ?Sized>(code: StatusCode, value: &T) -> Resp {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            respond(code, "application/json", body)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}"),
        ),
    }
}

fn error(code: StatusCode, message: String) -> Resp {
    let body = serde_json::to_string(&ErrorBody { error: message })
        .unwrap_or_else(|_| "{\"error\":\"unprintable error\"}".to_owned());
    respond(code, "application/json", body + "\n")
}

fn respond(code: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Binds the API socket through a temporary name, so the final path only ever names a socket
/// that already has mode 0660.
async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    let named = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| named(e, "creating the directory of API socket"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another router is listening on API socket {}",
                        path.display()
                    ),
                ));
            }
            info!(socket = %path.display(), "replacing stale API socket");
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "API socket path {} exists and is not a socket",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(named(e, "inspecting API socket")),
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| named(e, "binding API socket"))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(named(e, "placing API socket"));
    }
    Ok(listener)
}

/// Longest accepted request body.
const MAX_BODY: usize = 64 * 1024;
/// How long a command may wait for the daemon loop's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
