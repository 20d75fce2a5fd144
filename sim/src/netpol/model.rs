//! The nine pods in a running `--kube` lab: added with their namespaces, labels and named
//! ports, served by `weft-sim netpol serve`, probed by `weft-sim netpol probe` (one process per
//! source pod, all nine at once), and the [`cases`](super::cases) run on them.

use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use topology::cluster::Protocol;

use super::probe::ProbeResult;
use super::{Case, Expect, LABELS, Matrix, PORTS, PodRef, Pods, explain, port_name};
use crate::lab::{self, PodMeta};

/// How long a probe waits for each target.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a step's matrices may take to show (the routers follow the API, then program).
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// The model on a lab: its pods and their servers, killed when it drops.
///
/// The servers are children of this process, started in the pods' namespaces; deleting the
/// lab's namespaces would not stop them, so [`Drop`] kills them (and each dies with the thread
/// that made the model, should this process die without unwinding).
#[derive(Debug)]
pub struct Model {
    lab: String,
    pods: Pods,
    servers: Vec<Child>,
    sim: PathBuf,
}

impl Model {
    /// Adds the nine pods to lab `lab` (a running `--kube` lab whose nodes h1…h3 have no
    /// pods): namespaces x, y, z labelled `ns=<name>`; pod a on h1, b on h2, c on h3, as
    /// `pJ` with J the namespace's number (Pod objects `hI-pJ`), labelled `pod=<a|b|c>`, with
    /// the named ports `serve-<port>-<proto>`; starts their servers and waits until every
    /// pod reaches every other on TCP and UDP 80. A lab that holds the nine pods already (a
    /// model made before, by another process) is taken as it is: its labels and policies are
    /// reset and the servers started again.
    ///
    /// # Errors
    /// When the lab is not such a lab, or a pod, a server or the first probes fail.
    pub fn up(lab: &str) -> Result<Self> {
        let info = lab::info(lab)?;
        ensure!(
            info.nodes.len() >= 3,
            "lab {lab}: the model needs three nodes"
        );
        let layout = Pods::layout(|_, _| Ipv4Addr::UNSPECIFIED);
        let existing = |p: &PodRef| {
            let node = info.nodes.iter().find(|n| n.name == p.node)?;
            let pod = node.pods.iter().find(|q| q.name == p.lab_pod)?;
            (pod.namespace.as_deref() == Some(p.namespace)).then(|| pod.ip.clone())
        };
        let adopted: Option<Vec<String>> = layout.0.iter().map(existing).collect();
        let fresh = info.nodes.iter().all(|n| n.pods.is_empty());
        ensure!(
            fresh || adopted.is_some(),
            "lab {lab}: the model needs three nodes without pods (or with its own nine)"
        );
        let mut model = Self {
            lab: lab.to_owned(),
            pods: Pods(Vec::new()),
            servers: Vec::new(),
            sim: lab::sim_binary()?,
        };
        model.apply(&super::baseline_namespaces())?;
        let ports: Vec<String> = [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .flat_map(|p| PORTS.map(|port| format!("{}={}/{port}", port_name(port, p), p.as_str())))
            .collect();
        let mut placed = Vec::new();
        for (k, p) in layout.0.into_iter().enumerate() {
            let ip = match &adopted {
                Some(ips) => ips[k].clone(),
                None => {
                    let labels = [format!("pod={}", p.pod)];
                    let meta = PodMeta::parse(Some(p.namespace), &labels, &ports)?;
                    lab::pod_add_with(lab, &p.node, &p.lab_pod, None, &meta)?.ip
                }
            };
            let bare = ip.split('/').next().unwrap_or_default();
            let ip = bare
                .parse()
                .with_context(|| format!("{}: address {ip:?}", p.label()))?;
            placed.push(PodRef { ip, ..p });
        }
        model.pods = Pods(placed);
        for p in model.pods.0.clone() {
            let server = model.serve(&p)?;
            model.servers.push(server);
        }
        if adopted.is_some() {
            model.reset().context("the nine pods taken over")?;
        }
        let open = [Protocol::Tcp, Protocol::Udp].map(|p| Expect::new(p, 80, Matrix::OPEN));
        model
            .wait_all(&open, STEP_DEADLINE)
            .context("the nine pods before any policy")?;
        Ok(model)
    }

    /// The nine pods, with their lab addresses.
    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    /// Probes every pair once: one `netpol probe` per source pod, the nine at once.
    ///
    /// # Errors
    /// When a probe process fails or prints something else than nine results.
    pub fn matrix(&self, protocol: Protocol, port: u16) -> Result<Matrix> {
        let scheme = match protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => bail!("the model probes TCP and UDP only"),
        };
        let targets: Vec<String> = self
            .pods
            .0
            .iter()
            .map(|p| format!("{scheme}:{}:{port}", p.ip))
            .collect();
        let timeout = PROBE_TIMEOUT.as_millis().to_string();
        let mut children = Vec::new();
        for src in &self.pods.0 {
            let mut argv = vec![
                self.sim.display().to_string(),
                "netpol".into(),
                "probe".into(),
                "--json".into(),
                "--timeout-ms".into(),
                timeout.clone(),
            ];
            argv.extend(targets.iter().cloned());
            let child = lab::exec_command(&self.lab, &src.target(), &argv)?
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting a probe in {}", src.label()))?;
            children.push((src.label(), child));
        }
        let mut m = [[false; 9]; 9];
        for (i, (src, child)) in children.into_iter().enumerate() {
            let out = child.wait_with_output()?;
            ensure!(
                out.status.success(),
                "the probe in {src} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let results: Vec<ProbeResult> = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("the probe in {src} printed no results"))?;
            ensure!(results.len() == 9, "the probe in {src}: {results:?}");
            for (j, r) in results.iter().enumerate() {
                m[i][j] = r.ok;
            }
        }
        Ok(Matrix(m))
    }

    /// Probes until the matrix for `protocol` and `port` is `expected`, at most until
    /// `deadline` from now.
    ///
    /// # Errors
    /// On timeout, both matrices rendered and the differing pairs listed.
    pub fn wait_for(
        &self,
        protocol: Protocol,
        port: u16,
        expected: &Matrix,
        deadline: Duration,
    ) -> Result<()> {
        self.wait_all(&[Expect::new(protocol, port, *expected)], deadline)
    }

    /// Probes until every expectation holds in the same round, at most `deadline` from now.
    ///
    /// # Errors
    /// On timeout, the last round's differences.
    pub fn wait_all(&self, expects: &[Expect], deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let mut wrong = Vec::new();
            for e in expects {
                let got = self.matrix(e.protocol, e.port)?;
                if got != e.matrix {
                    wrong.push(explain(e.protocol, e.port, &e.matrix, &got));
                }
            }
            if wrong.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!("after {} s:\n{}", deadline.as_secs(), wrong.join("\n\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `case` from the baseline: each step's objects applied and deleted, the routers'
    /// views given time to hold them, then its matrices awaited.
    ///
    /// # Errors
    /// Names the case and step that failed, with the matrices.
    pub fn run_case(&self, case: &Case) -> Result<()> {
        for (k, step) in (case.steps)(&self.pods).iter().enumerate() {
            let at = || format!("case {}, step {} ({})", case.name, k + 1, step.what);
            let before = self.revisions().with_context(at)?;
            for text in &step.apply {
                self.apply(text).with_context(at)?;
            }
            for text in &step.delete {
                self.with_file(text, |file| lab::objects::delete(&self.lab, file).map(drop))
                    .with_context(at)?;
            }
            self.wait_views(Some(&before)).with_context(at)?;
            if let Err(e) = self.wait_all(&step.expect, STEP_DEADLINE) {
                let status = self.policy_status();
                return Err(e.context(format!("{}; the routers' policy status: {status}", at())));
            }
        }
        Ok(())
    }

    /// Back to the baseline: every NetworkPolicy deleted, the namespaces' and pods' labels
    /// restored, and every pair open again on both ports and protocols.
    ///
    /// # Errors
    /// When the API refuses, or the matrices do not open within the deadline.
    pub fn reset(&self) -> Result<()> {
        let list = lab::objects::get(&self.lab, "networkpolicy", None)?;
        // A list's items may lack their kind, which deleting needs.
        let items: Vec<Value> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                serde_json::json!({
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {
                        "namespace": p["metadata"]["namespace"],
                        "name": p["metadata"]["name"],
                    },
                })
            })
            .collect();
        if !items.is_empty() {
            let text = serde_json::json!({"kind": "List", "items": items}).to_string();
            self.with_file(&text, |file| {
                lab::objects::delete(&self.lab, file).map(drop)
            })?;
        }
        self.apply(&self.pods.baseline())?;
        self.wait_views(None)?;
        let open: Vec<Expect> = [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .flat_map(|p| PORTS.map(|port| Expect::new(p, port, Matrix::OPEN)))
            .collect();
        self.wait_all(&open, STEP_DEADLINE)
            .context("back to the baseline (no policy)")
    }

    /// Runs `cases` one after another, each from the baseline.
    ///
    /// # Errors
    /// The first failure.
    pub fn run_cases(&self, cases: &[Case]) -> Result<()> {
        for case in cases {
            self.reset()
                .with_context(|| format!("before case {}", case.name))?;
            self.run_case(case)?;
        }
        self.reset()
    }

    fn apply(&self, text: &str) -> Result<()> {
        self.with_file(text, |file| lab::objects::apply(&self.lab, file).map(drop))
    }

    /// Calls `f` with a file holding `text` (the lab's verbs take files).
    fn with_file<T>(&self, text: &str, f: impl FnOnce(&std::path::Path) -> Result<T>) -> Result<T> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!(
            "weft-netpol-{}-{}-{n}.yaml",
            self.lab,
            std::process::id()
        ));
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        let result = f(&file);
        let _ = std::fs::remove_file(&file);
        result
    }

    /// Every node's `netfilter.policy` report, for messages.
    fn policy_status(&self) -> String {
        let nodes = self.nodes().unwrap_or_default();
        let status: Vec<String> = nodes
            .iter()
            .map(|node| {
                let policy = lab::report(&self.lab, node)
                    .map(|r| r["netfilter"]["policy"].to_string())
                    .unwrap_or_else(|e| format!("{e:#}"));
                format!("{node}: {policy}")
            })
            .collect();
        status.join("; ")
    }

    /// The nodes' names.
    fn nodes(&self) -> Result<Vec<String>> {
        Ok(lab::info(&self.lab)?
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect())
    }

    /// Each node's cluster view revision, in [`nodes`](Self::nodes) order.
    fn revisions(&self) -> Result<Vec<u64>> {
        self.nodes()?
            .iter()
            .map(|node| {
                let report = lab::report(&self.lab, node)?;
                Ok(report["kubernetes"]["cluster"]["revision"]
                    .as_u64()
                    .unwrap_or(0))
            })
            .collect()
    }

    /// Waits (20 s at most) until every router's view holds as many policies as the API and
    /// the nine pods, has moved past `after` (its revisions before a change, when given), and
    /// its policy rules are those of the view it holds (when it reports them; rules still
    /// behind after 20 s are left to the matrices). Two changes in one step may still be seen
    /// one at a time: the matrices are polled after this.
    fn wait_views(&self, after: Option<&[u64]>) -> Result<()> {
        let list = lab::objects::get(&self.lab, "networkpolicy", None)?;
        let policies = list["items"].as_array().map_or(0, Vec::len) as u64;
        let start = Instant::now();
        for (k, node) in self.nodes()?.iter().enumerate() {
            loop {
                let report = lab::report(&self.lab, node)?;
                let cluster: &Value = &report["kubernetes"]["cluster"];
                let revision = cluster["revision"].as_u64();
                let policy = &report["netfilter"]["policy"];
                let programmed = policy.is_null() || policy["revision"].as_u64() == revision;
                let moved = after.is_none_or(|a| revision > a.get(k).copied());
                let held = cluster["policies"].as_u64() == Some(policies)
                    && cluster["pods"].as_u64() >= Some(LABELS.len() as u64)
                    && moved;
                if held && programmed {
                    break;
                }
                if start.elapsed() >= Duration::from_secs(20) {
                    // Rules that lag their view are the matrices' to judge.
                    ensure!(
                        held,
                        "{node}'s view does not hold {policies} policies and the nine pods, or \
                         has not moved past revision {:?}: {cluster}",
                        after.and_then(|a| a.get(k))
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Starts `p`'s server in its namespace and waits for its `ready`.
    fn serve(&self, p: &PodRef) -> Result<Child> {
        let ports = PORTS.map(|p| p.to_string()).join(",");
        let argv = [
            self.sim.display().to_string(),
            "netpol".into(),
            "serve".into(),
            "--ports".into(),
            ports,
        ];
        let mut cmd = lab::exec_command(&self.lab, &p.target(), &argv)?;
        // SAFETY: prctl(2) with PR_SET_PDEATHSIG is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the server of {}", p.label()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server of {} did not start: {line:?}", p.label());
        }
        Ok(child)
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
