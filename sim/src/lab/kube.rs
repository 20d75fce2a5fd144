//! The lab as a Kubernetes cluster (`lab up --kube`): the stand-in API server
//! ([`crate::kubeapi`]) runs in the underlay namespace at the gateway's address, where every
//! node reaches it; a Node per lab node and a Pod per lab pod are registered; the routers are
//! started with `--kube-peers --kube-api` pointed at it. `lab kube apply|delete|get` and
//! `lab pod … --namespace/--labels/--ports` edit the objects through the API's own verbs.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::{GATEWAY_IP, PodInfo, lab_dir, netns, underlay_ip, underlay_ns, wait_until};

/// The stand-in API's port on the gateway address.
pub const API_PORT: u16 = 6443;

/// The URL routers reach the stand-in API at.
pub fn api_url() -> String {
    format!("http://{GATEWAY_IP}:{API_PORT}")
}

/// What a lab pod's Pod object gets beyond its defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// Its namespace (created if missing); `default` when empty.
    pub namespace: String,
    /// Its labels; `pod=<pod name>` when empty.
    pub labels: Vec<(String, String)>,
    /// Named container ports: (name, protocol, port).
    pub ports: Vec<(String, String, u16)>,
}

impl PodMeta {
    /// Parses `--labels k=v,...` and `--ports name=proto/port,...`.
    ///
    /// # Errors
    /// Names the flag and the entry that does not parse.
    pub fn parse(namespace: Option<&str>, labels: &[String], ports: &[String]) -> Result<Self> {
        let labels = labels
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("--labels {l:?}: expected KEY=VALUE"))?;
                ensure!(!k.is_empty(), "--labels {l:?}: empty key");
                Ok((k.to_owned(), v.to_owned()))
            })
            .collect::<Result<_>>()?;
        let ports = ports
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                let bad = || format!("--ports {p:?}: expected NAME=PROTO/PORT, e.g. http=tcp/80");
                let (name, rest) = p.split_once('=').with_context(bad)?;
                let (proto, port) = rest.split_once('/').with_context(bad)?;
                let proto = proto.to_ascii_uppercase();
                ensure!(
                    ["TCP", "UDP", "SCTP"].contains(&proto.as_str()) && !name.is_empty(),
                    bad()
                );
                let port: u16 = port.parse().ok().filter(|&p| p > 0).with_context(bad)?;
                Ok((name.to_owned(), proto, port))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            namespace: namespace.unwrap_or_default().to_owned(),
            labels,
            ports,
        })
    }
}

/// Starts the stand-in API in the underlay namespace and waits until it answers.
pub(super) fn start_api(name: &str) -> Result<()> {
    let dir = lab_dir(name);
    let log = std::fs::File::create(dir.join("kube-api.log")).context("creating kube-api.log")?;
    let bin = super::router::sibling_binary("weft-sim")?;
    let mut cmd = netns::command_in(&underlay_ns(name), &bin)?;
    cmd.args(["kube-api", "--default-namespaces", "--listen"])
        .arg(format!("{GATEWAY_IP}:{API_PORT}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = super::router::spawn_detached(&mut cmd)
        .with_context(|| format!("starting {} kube-api", bin.display()))?;
    std::fs::write(pid_file(name), child.id().to_string())?;
    let answering = wait_until(Duration::from_secs(10), || {
        request(name, "GET", "/api/v1/namespaces", None).is_ok()
    });
    ensure!(
        answering,
        "the stand-in API did not answer within 10 s (see {})",
        dir.join("kube-api.log").display()
    );
    Ok(())
}

/// Stops the stand-in API, if it runs.
pub(super) fn stop_api(name: &str) -> Result<()> {
    let Some(pid) = api_pid(name) else {
        return Ok(());
    };
    // SAFETY: kill(2) on a pid whose command line and namespace we checked are this lab's API.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let gone = wait_until(Duration::from_secs(5), || !super::router::alive(pid));
    ensure!(
        gone,
        "the stand-in API of lab {name} (pid {pid}) does not exit"
    );
    let _ = std::fs::remove_file(pid_file(name));
    Ok(())
}

/// The stand-in's pid when it runs: the pid file names it, its command line is `kube-api`
/// and it lives in the lab's underlay namespace (so a reused pid is never signalled).
fn api_pid(name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours = cmdline.split(|&b| b == 0).any(|a| a == b"kube-api");
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    let lab_ns = std::fs::metadata(Path::new(netns::NETNS_DIR).join(underlay_ns(name))).ok()?;
    use std::os::unix::fs::MetadataExt as _;
    (ours && ns.ino() == lab_ns.ino()).then_some(pid)
}

fn pid_file(name: &str) -> PathBuf {
    lab_dir(name).join("kube-api.pid")
}

/// Registers Node `hI` for every node, with its underlay address as InternalIP.
pub(super) fn register_nodes(name: &str, nodes: usize) -> Result<()> {
    for i in 1..=nodes {
        let node = format!("h{i}");
        let obj = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": underlay_ip(i)},
                {"type": "Hostname", "address": node},
            ]},
        });
        create(name, &obj)?;
    }
    Ok(())
}

/// The Pod object of lab pod `pod` on node `node`: `NODE-POD` in its namespace.
pub(super) fn pod_object(node: &str, pod: &PodInfo, meta: &PodMeta) -> Value {
    let namespace = if meta.namespace.is_empty() {
        "default"
    } else {
        &meta.namespace
    };
    let labels: serde_json::Map<String, Value> = if meta.labels.is_empty() {
        [("pod".to_owned(), json!(pod.name))].into_iter().collect()
    } else {
        meta.labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect()
    };
    let ports: Vec<Value> = meta
        .ports
        .iter()
        .map(|(name, proto, port)| json!({"name": name, "protocol": proto, "containerPort": port}))
        .collect();
    let ip = pod.ip.split('/').next().unwrap_or_default();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{node}-{}", pod.name), "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "lab", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

/// Creates (or replaces) a lab pod's Pod object, creating its namespace if missing.
pub(super) fn register_pod(name: &str, node: &str, pod: &PodInfo, meta: &PodMeta) -> Result<()> {
    let obj = pod_object(node, pod, meta);
    ensure_namespace(
        name,
        obj["metadata"]["namespace"].as_str().unwrap_or("default"),
    )?;
    apply_one(name, obj)
}

/// Deletes a lab pod's Pod object (absent is fine).
pub(super) fn unregister_pod(name: &str, node: &str, pod: &PodInfo) -> Result<()> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{node}-{}",
        pod.namespace.as_deref().unwrap_or("default"),
        pod.name
    );
    let (code, body) = request(name, "DELETE", &path, None)?;
    ensure!(
        code < 300 || code == 404,
        "DELETE {path}: HTTP {code}: {body}"
    );
    Ok(())
}

fn ensure_namespace(name: &str, ns: &str) -> Result<()> {
    let (code, body) = request(name, "GET", &format!("/api/v1/namespaces/{ns}"), None)?;
    match code {
        200 => Ok(()),
        404 => create(
            name,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        ),
        _ => bail!("GET namespace {ns}: HTTP {code}: {body}"),
    }
}

/// The objects of a JSON or YAML file: one object, a `List`, or YAML documents.
///
/// # Errors
/// Names the file when it is neither JSON nor YAML, or an object has no kind.
pub fn read_objects(file: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let docs: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(v) => vec![v],
        Err(_) => serde_saphyr::from_multiple::<Value>(&text)
            .map_err(|e| anyhow::anyhow!("{}: neither JSON nor YAML: {e}", file.display()))?,
    };
    let mut objects = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        match doc["kind"].as_str() {
            Some("List") => objects.extend(doc["items"].as_array().cloned().unwrap_or_default()),
            Some(k) if k.ends_with("List") => {
                objects.extend(doc["items"].as_array().cloned().unwrap_or_default());
            }
            Some(_) => objects.push(doc),
            None => bail!("{}: an object without a kind", file.display()),
        }
    }
    Ok(objects)
}

/// `lab kube NAME apply FILE`: creates each object, or replaces it (for an existing Pod, its
/// labels). Returns one line per object.
///
/// # Errors
/// Fails on the first object the API refuses, naming it.
pub fn apply(name: &str, file: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for obj in read_objects(file)? {
        let id = describe(&obj);
        if let Some(ns) = obj["metadata"]["namespace"].as_str()
            && obj["kind"] != "Namespace"
        {
            ensure_namespace(name, ns)?;
        }
        apply_one(name, obj).with_context(|| format!("applying {id}"))?;
        done.push(format!("{id} applied"));
    }
    Ok(done)
}

/// `lab kube NAME delete FILE`: deletes each object (absent ones are reported, not errors).
///
/// # Errors
/// Fails on an object of a kind the stand-in does not serve.
pub fn delete(name: &str, file: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for obj in read_objects(file)? {
        let id = describe(&obj);
        let path = object_path(&obj)?;
        let (code, body) = request(name, "DELETE", &path, None)?;
        match code {
            200..=299 => done.push(format!("{id} deleted")),
            404 => done.push(format!("{id} not found")),
            _ => bail!("deleting {id}: HTTP {code}: {body}"),
        }
    }
    Ok(done)
}

/// Puts a fault into the lab's API server (the body of `POST /weft-standin/faults`, e.g.
/// `{"fault":"fail","code":500,"seconds":30}` or `{"fault":"clear"}`).
///
/// # Errors
/// Fails when the stand-in refuses the fault or cannot be reached.
pub fn fault(name: &str, fault: &Value) -> Result<()> {
    let (code, body) = request(name, "POST", "/weft-standin/faults", Some(fault))?;
    if !(200..300).contains(&code) {
        bail!("fault {fault}: HTTP {code}: {body}");
    }
    Ok(())
}

/// `lab kube NAME get KIND [NS/NAME]`: one object, or a list of every object of the kind.
///
/// # Errors
/// Fails on an unknown kind or an object that does not exist.
pub fn get(name: &str, kind: &str, which: Option<&str>) -> Result<Value> {
    let (plural, prefix, namespaced) = collection(kind)?;
    let path = match which {
        None => format!("{prefix}/{plural}"),
        Some(which) => {
            let (ns, obj) = match which.split_once('/') {
                Some((ns, obj)) => (Some(ns), obj),
                None if namespaced => (Some("default"), which),
                None => (None, which),
            };
            match ns.filter(|_| namespaced) {
                Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{obj}"),
                None => format!("{prefix}/{plural}/{obj}"),
            }
        }
    };
    let (code, body) = request(name, "GET", &path, None)?;
    ensure!(code == 200, "GET {path}: HTTP {code}: {body}");
    Ok(body)
}

fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// (plural, API prefix, namespaced) of a kind weft's lab serves.
fn collection(kind: &str) -> Result<(&'static str, &'static str, bool)> {
    Ok(match kind.to_ascii_lowercase().as_str() {
        "node" | "nodes" => ("nodes", "/api/v1", false),
        "namespace" | "namespaces" | "ns" => ("namespaces", "/api/v1", false),
        "pod" | "pods" => ("pods", "/api/v1", true),
        "networkpolicy" | "networkpolicies" | "netpol" => {
            ("networkpolicies", "/apis/networking.k8s.io/v1", true)
        }
        other => bail!("kind {other:?}: the lab serves Node, Namespace, Pod and NetworkPolicy"),
    })
}

/// The path of an object: its collection, or itself with `with_name`.
fn object_path(obj: &Value) -> Result<String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (plural, prefix, namespaced) = collection(kind)?;
    let name = obj["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .with_context(|| format!("{}: no metadata.name", describe(obj)))?;
    Ok(if namespaced {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        format!("{prefix}/namespaces/{ns}/{plural}/{name}")
    } else {
        format!("{prefix}/{plural}/{name}")
    })
}

fn create(name: &str, obj: &Value) -> Result<()> {
    apply_one(name, obj.clone())
}

/// Creates `obj`, or replaces the existing one (an existing Pod keeps all but its labels).
fn apply_one(name: &str, mut obj: Value) -> Result<()> {
    if obj["metadata"]["namespace"].is_null() && collection(obj["kind"].as_str().unwrap_or(""))?.2 {
        obj["metadata"]["namespace"] = json!("default");
    }
    let path = object_path(&obj)?;
    let (code, existing) = request(name, "GET", &path, None)?;
    let (method, target, body) = match code {
        404 => {
            let collection = path
                .rsplit_once('/')
                .map(|(c, _)| c.to_owned())
                .unwrap_or_default();
            ("POST", collection, obj)
        }
        200 => {
            let mut new = if obj["kind"] == "Pod" {
                let mut pod = existing.clone();
                pod["metadata"]["labels"] = obj["metadata"]["labels"].clone();
                pod
            } else {
                obj
            };
            new["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
            ("PUT", path, new)
        }
        _ => bail!("GET {path}: HTTP {code}: {existing}"),
    };
    let (code, answer) = request(name, method, &target, Some(&body))?;
    ensure!(code < 300, "{method} {target}: HTTP {code}: {answer}");
    Ok(())
}

/// One HTTP/1.0 request to the stand-in, from inside the underlay namespace; the status code
/// and the JSON body (`null` when empty or not JSON).
pub(super) fn request(
    name: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {GATEWAY_IP}\r\nAccept: application/json\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = netns::in_netns(&underlay_ns(name), move || {
        let mut s = TcpStream::connect((GATEWAY_IP, API_PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(head.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(raw)
    })
    .with_context(|| format!("{method} {path} on the lab's API"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {path}: not an HTTP answer: {head}"))?;
    Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
}
