//! The API client the `weft` subcommands use: one HTTP/1.1 request per connection, over the
//! router's unix socket or TCP, as [`ApiAddr`] says.

use std::io;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use super::{AddrRequest, ApiAddr, CommandOutcome, EncryptionRequest, ErrorBody, RmPeerRequest};
use crate::status::{EncryptionStatus, RouterStatus};

/// A client of one router's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    addr: ApiAddr,
}

/// A raw answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The router answered with an error status; the message is its `error` text.
    #[error("{message}")]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The router's error message.
        message: String,
    },
    /// The answer was not what the route promises.
    #[error("unexpected answer from the router at {addr}: {detail}")]
    BadResponse {
        /// The address tried.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// The HTTP exchange failed after connecting.
    #[error("talking to the router at {addr}: {cause}")]
    Http {
        /// The address tried.
        addr: String,
        /// hyper's error; kept out of the error chain because the message already shows it.
        cause: hyper::Error,
    },
    /// The router did not answer in time.
    #[error("the router at {addr} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        /// The address tried.
        addr: String,
    },
    /// Nothing listens at the address, or it cannot be reached.
    #[error("cannot reach the router at {addr}: {cause}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// The connect error; kept out of the error chain because the message already shows it.
        cause: io::Error,
    },
}

impl ApiClient {
    /// Creates a client for the router at `addr`.
    pub fn new(addr: ApiAddr) -> Self {
        Self { addr }
    }

    /// Returns the address this client talks to.
    pub fn addr(&self) -> &ApiAddr {
        &self.addr
    }

    /// Sends `GET path` and returns the raw answer, whatever its status.
    ///
    /// # Errors
    ///
    /// Fails when the router cannot be reached or the exchange breaks.
    pub async fn get(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// Sends `POST path` with a JSON body and returns the raw answer, whatever its status.
    ///
    /// # Errors
    ///
    /// Fails when the router cannot be reached or the exchange breaks.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<ApiResponse, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.bad(format!("encoding: {e}")))?;
        self.request(Method::POST, path, Some(body)).await
    }

    /// Sends `POST path` with raw bytes (for tests of the server's error handling).
    ///
    /// # Errors
    ///
    /// Fails when the router cannot be reached or the exchange breaks.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<ApiResponse, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// Returns a text route's body (`/status`, `/status/peers`, ...).
    ///
    /// # Errors
    ///
    /// Fails as [`Self::get`] does, and with [`ClientError::Api`] on an error status.
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self.get(path).await?;
        self.ok(resp)
    }

    /// Returns the router's report.
    ///
    /// # Errors
    ///
    /// Fails as [`Self::text`] does, and when the JSON does not parse.
    pub async fn report(&self) -> Result<RouterStatus, ClientError> {
        let body = self.text("/report").await?;
        serde_json::from_str(&body).map_err(|e| self.bad(format!("report JSON: {e}")))
    }

    /// Returns the mesh encryption state.
    ///
    /// # Errors
    ///
    /// Fails as [`Self::text`] does, and when the JSON does not parse.
    pub async fn encryption(&self) -> Result<EncryptionStatus, ClientError> {
        let body = self.text("/encryption").await?;
        serde_json::from_str(&body).map_err(|e| self.bad(format!("encryption JSON: {e}")))
    }

    /// Adds a connection target.
    ///
    /// # Errors
    ///
    /// Fails as [`Self::command`] does.
    pub async fn connect(&self, addr: &str) -> Result<String, ClientError> {
        self.command(
            "/connect",
            &AddrRequest {
                addr: addr.to_owned(),
            },
        )
        .await
    }

    /// Removes a connection target.
    ///
    /// # Errors
    ///
    /// Fails as [`Self::command`] does.
    pub async fn forget(&self, addr: &str) -> Result<String, ClientError> {
        self.command(
            "/forget",
            &AddrRequest {
                addr: addr.to_owned(),
            },
        )
        .await
    }

    /// Removes a peer that is gone for good.
    ///
    /// # Errors
    ///
    /// Fails as [`Self::command`] does.
    pub async fn rmpeer(&self, name: &str) -> Result<String, ClientError> {
        self.command(
            "/rmpeer",
            &RmPeerRequest {
                name: name.to_owned(),
            },
        )
        .await
    }

    /// Switches mesh encryption on or off.
    ///
    /// # Errors
    ///
    /// Fails as [`Self::command`] does.
    pub async fn set_encryption(
        &self,
        enabled: bool,
        version: Option<u64>,
        proof: Option<String>,
    ) -> Result<String, ClientError> {
        self.command(
            "/encryption",
            &EncryptionRequest {
                enabled,
                version,
                proof,
            },
        )
        .await
    }

    /// Posts a command and returns its outcome's message.
    ///
    /// # Errors
    ///
    /// Fails when the router cannot be reached, answers with an error status
    /// ([`ClientError::Api`]) or answers something that is not a command outcome.
    pub async fn command<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<String, ClientError> {
        let resp = self.post_json(path, body).await?;
        let body = self.ok(resp)?;
        let outcome: CommandOutcome =
            serde_json::from_str(&body).map_err(|e| self.bad(format!("outcome JSON: {e}")))?;
        Ok(outcome.message)
    }

    fn ok(&self, resp: ApiResponse) -> Result<String, ClientError> {
        if (200..300).contains(&resp.status) {
            return Ok(resp.body);
        }
        let message = serde_json::from_str::<ErrorBody>(&resp.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("HTTP {}: {}", resp.status, resp.body.trim()));
        Err(ClientError::Api {
            status: resp.status,
            message,
        })
    }

    fn bad(&self, detail: String) -> ClientError {
        ClientError::BadResponse {
            addr: self.addr.to_string(),
            detail,
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<ApiResponse, ClientError> {
        let addr = self.addr.to_string();
        let exchange = async {
            match &self.addr {
                ApiAddr::Unix(path_) => {
                    let stream = UnixStream::connect(path_).await.map_err(|cause| {
                        ClientError::Unreachable {
                            addr: addr.clone(),
                            cause,
                        }
                    })?;
                    exchange(stream, "localhost", method, path, body, &addr).await
                }
                ApiAddr::Http { host, port } => {
                    let target = format!("{host}:{port}");
                    // Brackets mark an IPv6 literal in the URL; the resolver wants it bare.
                    let bare = host.trim_start_matches('[').trim_end_matches(']');
                    let stream = TcpStream::connect((bare, *port)).await.map_err(|cause| {
                        ClientError::Unreachable {
                            addr: addr.clone(),
                            cause,
                        }
                    })?;
                    exchange(stream, &target, method, path, body, &addr).await
                }
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(ClientError::Timeout { addr: addr.clone() }))
    }
}

async fn exchange<S>(
    stream: S,
    host: &str,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    addr: &str,
) -> Result<ApiResponse, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |cause| ClientError::Http {
        addr: addr.to_owned(),
        cause,
    };
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    let driver = tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(ACCEPT, "application/json, text/plain");
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::BadResponse {
            addr: addr.to_owned(),
            detail: format!("building request: {e}"),
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
    drop(sender);
    driver.abort();
    Ok(ApiResponse {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// How long one request may take, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
