//! The Kubernetes API, through the `kube` crate: the client, peer discovery from Node objects
//! (`--kube-peers`), the cluster view (Namespaces, Pods, NetworkPolicies) and the Node's
//! `NetworkUnavailable` condition.
//!
//! - [`client`] builds a [`kube::Client`] from [`KubeSettings`]: the endpoint, the cluster CA
//!   and the service account token (both re-read by `kube` as kubelet rotates them). `kube`
//!   retries 429, 503 and 504 answers as `Retry-After` says.
//! - [`nodes`]: before the engine starts, [`nodes::initial_list`] lists the Nodes (paginated),
//!   so the router starts with every other node as a `--peers` target and IPAM's quorum counts
//!   the cluster; then [`nodes::Discoverer`] follows them with `kube-runtime`'s watcher (list,
//!   watch from the list's version with bookmarks, a fresh list after 410 Gone, jittered
//!   exponential back-off after errors) and plans connect, forget and rmpeer actions with the
//!   pure [`topology::kube::reconcile`].
//! - [`watch::follow`] is one kind followed through the watcher as changes of weft's own types,
//!   decoding objects one by one ([`convert`]: API objects into `topology::cluster`'s types; an
//!   unusable object is counted, logged once and skipped).
//! - [`cluster`] keeps the pure `topology::cluster::ClusterView` current from three watchers
//!   and publishes it.
//! - [`condition`] sets this node's `NetworkUnavailable` condition to False once the router is
//!   ready, as Weave and Calico do.
//! - [`health`] is what `weft status` shows of all this: each watch in sync or retrying (with
//!   its last error, the last view kept), objects held and skipped, the cluster view's size.

use std::path::PathBuf;
use std::time::Duration;

pub mod cluster;
pub mod condition;
pub mod convert;
pub mod health;
pub mod nodes;
pub mod watch;

/// Where and how to reach the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// `https://HOST:PORT` or `http://HOST:PORT` (e.g. `kubectl proxy`); `None`: in-cluster,
    /// from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub api: Option<String>,
    /// The service account token (re-read about once a minute: kubelet rotates it). Required
    /// over HTTPS; over plain HTTP it is sent when the file exists at start.
    pub token_file: PathBuf,
    /// The cluster CA bundle (PEM) that signs the API server's certificate (HTTPS only).
    pub ca_file: PathBuf,
    /// Discover peers from Node objects (`--kube-peers`).
    pub discover_peers: bool,
}

impl KubeSettings {
    /// The in-cluster defaults: the service account's files, the endpoint from the environment,
    /// discovery on.
    pub fn in_cluster() -> Self {
        Self {
            api: None,
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
            discover_peers: true,
        }
    }

    /// The API endpoint: `--kube-api`, else the in-cluster service from the environment.
    ///
    /// # Errors
    ///
    /// [`KubeError::Config`] naming the variable that is not set.
    pub fn url(&self) -> Result<String, KubeError> {
        if let Some(url) = &self.api {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    KubeError::Config(format!(
                        "Kubernetes: {name} is not set (not running in a pod?); give --kube-api"
                    ))
                })
        };
        let host = var("KUBERNETES_SERVICE_HOST")?;
        let port = var("KUBERNETES_SERVICE_PORT")?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(format!("https://{host}:{port}"))
    }
}

/// The service account token kubelet mounts into every pod.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA kubelet mounts into every pod.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Why the Kubernetes API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The settings or the environment do not say where the API is, or a file is unusable.
    #[error("{0}")]
    Config(String),
    /// A request failed (transport, TLS, an error status).
    #[error("{url}: {detail}")]
    Request {
        /// The API endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
}

/// A client for the API `settings` name, and its URL (for messages).
///
/// # Errors
///
/// [`KubeError::Config`] naming the URL or file at fault.
pub fn client(settings: &KubeSettings) -> Result<(kube::Client, String), KubeError> {
    let url = settings.url()?;
    let bad = |why: &str| KubeError::Config(format!("--kube-api {url:?}: {why}"));
    let https = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(bad("expected https://HOST:PORT or http://HOST:PORT"));
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad("expected HOST:PORT"))?;
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(bad("expected HOST:PORT"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(bad("expected no path"));
    }
    let mut config = kube::Config::new(uri);
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    // Watches are long reads: the watcher's own idle timeout (the watch timeout plus a margin)
    // notices a silent server instead.
    config.read_timeout = None;
    if https {
        let certs = read_ca(&settings.ca_file)?;
        config.root_cert = Some(certs);
        config.root_cert_file = Some(settings.ca_file.clone());
    }
    match std::fs::read_to_string(&settings.token_file) {
        // kube sends the file's bytes verbatim and reloads them: a stray newline (as `echo`
        // writes) would make every request fail with an unparsable header.
        Ok(token) if token.trim() != token || token.is_empty() => {
            return Err(KubeError::Config(format!(
                "service account token {}: empty, or surrounded by whitespace or a newline",
                settings.token_file.display()
            )));
        }
        Ok(_) => {
            config.auth_info.token_file = Some(settings.token_file.display().to_string());
        }
        // Plain HTTP (kubectl proxy, the lab's stand-in) may need no token.
        Err(_) if !https => {}
        Err(e) => {
            return Err(KubeError::Config(format!(
                "service account token {}: {e}",
                settings.token_file.display()
            )));
        }
    }
    let client = kube::Client::try_from(config)
        .map_err(|e| KubeError::Config(format!("Kubernetes client for {url}: {e}")))?;
    Ok((client, url))
}

/// An error with its causes, `outer: cause: root cause` (kube's own messages often name only
/// the outermost layer, e.g. "client error (Connect)").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Every certificate of a PEM bundle, DER-encoded.
fn read_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>, KubeError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let named = |e: &dyn std::fmt::Display| {
        KubeError::Config(format!("cluster CA {}: {e}", path.display()))
    };
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| named(&e))? {
        certs.push(cert.map_err(|e| named(&e))?.to_vec());
    }
    if certs.is_empty() {
        return Err(named(&"no certificate in the file"));
    }
    Ok(certs)
}

/// How long connecting to the API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sending a request may take, and answering a command of the daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(api: &str) -> KubeSettings {
        KubeSettings {
            api: Some(api.to_owned()),
            token_file: PathBuf::from("/nonexistent/token"),
            ..KubeSettings::in_cluster()
        }
    }

    #[tokio::test]
    async fn urls_and_settings() {
        let (_, url) = client(&s("http://127.0.0.1:8001/")).unwrap();
        assert_eq!(url, "http://127.0.0.1:8001");
        for bad in [
            "ftp://x:1",
            "http://x",
            "http://:1",
            "http://x:y",
            "http://x:1/api",
        ] {
            let e = client(&s(bad)).err().unwrap().to_string();
            assert!(e.contains("--kube-api"), "{bad}: {e}");
        }
        // HTTPS needs the CA file, and says which.
        let e = client(&KubeSettings {
            ca_file: PathBuf::from("/nonexistent/ca.crt"),
            ..s("https://10.96.0.1:443")
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
    }
}
