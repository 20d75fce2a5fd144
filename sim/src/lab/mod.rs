//! The lab: real weft nodes in network namespaces on one machine, for tests, demos and benches.
//!
//! A lab named `N` is made of:
//! - the underlay namespace `N-u`, holding bridge `ubr` that plays the network between hosts;
//!   `ubr` also holds the gateway address [`GATEWAY_IP`] (192.0.2.254/24), and `N-u` forwards
//!   between it and the external host's cable `x` (203.0.113.254/24);
//! - one namespace per node, `N-hI`, with `eth0` cabled to the underlay (192.0.2.I/24, default
//!   route via the gateway), bridge `weft` and, when a router binary is available, a
//!   `weft router` process;
//! - one namespace per pod, `N-hI-pJ`, whose `eth0` hangs off its node's `weft` bridge;
//! - the external host `N-x`, a stand-in for "the world outside": `eth0` at [`EXTERNAL_IP`]
//!   (203.0.113.1/24) with a route to the node underlay (192.0.2.0/24) through the gateway and
//!   no route to any pod range, so a pod reaches it only with its node's address (masquerade).
//!
//! ```text
//!   N-x eth0 203.0.113.1 ── x 203.0.113.254 ┐
//!                                           N-u (ip_forward): bridge ubr 192.0.2.254
//!                           ┌───────────────┼───────────────┐
//!                   N-h1 eth0 .1     N-h2 eth0 .2     N-h3 eth0 .3   (default via .254)
//! ```
//!
//! The underlay cables (each node's veth pair, and the external host's) have the spec's
//! `underlay_mtu`. Nothing is ever linked to the root namespace, so no lab packet can leave the
//! sandbox.
//! Per-lab files (state, sockets, logs) live under [`RUN_DIR`]`/N`. Everything is removed by
//! [`down`], which also sweeps every namespace whose name matches the lab's naming scheme, so a
//! half-built or crashed lab is cleaned up too. [`LabGuard`] calls it on drop (and so on panic).

mod cni;
mod kube;
mod neighbours;
pub mod netns;
mod pod;
mod router;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

pub use cni::{cni_add, cni_del};
pub use kube::{API_PORT, PodMeta, api_url, read_objects};
pub use pod::{pod_add, pod_add_with, pod_del};
pub use router::{RouterAction, weft_binary};

/// Finds the `weft-sim` binary (this executable, or the one beside it or its parent
/// directory), which lab tools run inside pods.
///
/// # Errors
/// When there is none.
pub fn sim_binary() -> Result<PathBuf> {
    router::sibling_binary("weft-sim")
}

/// `weft-sim lab kube NAME apply|delete|get`: the lab's Kubernetes objects.
pub mod objects {
    pub use super::kube::{apply, delete, fault, get};
}

/// Where labs keep their files.
pub const RUN_DIR: &str = "/run/weft-lab";
/// The largest lab: node addresses are 192.0.2.1 … 192.0.2.250.
pub const MAX_NODES: usize = 250;
/// The most pods per node the lab's numbering supports.
pub const MAX_PODS: usize = 250;
/// MTU of the underlay cables unless `--underlay-mtu` says otherwise.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
/// The underlay MTUs `--underlay-mtu` accepts: IPv6's minimum link MTU up to jumbo frames.
pub const UNDERLAY_MTU_RANGE: std::ops::RangeInclusive<u32> = 1280..=9000;
/// What the VXLAN encapsulation adds to a pod frame; the pod MTU is the underlay's less this
/// (DESIGN.md).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The gateway every node's default route points at: `ubr`'s address in the underlay
/// namespace `N-u`.
pub const GATEWAY_IP: &str = "192.0.2.254";
/// The external host's address (namespace `N-x`).
pub const EXTERNAL_IP: &str = "203.0.113.1";
/// The gateway's address on the external host's network (`x` in `N-u`).
const EXTERNAL_GATEWAY_IP: &str = "203.0.113.254";
/// The node underlay, the only range the external host has a route to.
const UNDERLAY_NET: &str = "192.0.2.0/24";

/// How the underlay connects the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Underlay {
    /// Every node reaches every node.
    Full,
    /// h1–h2–…–hK: only neighbours reach each other.
    Line,
}

/// Which data path the routers are told to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Datapath {
    /// Probe per peer; fastdp where VXLAN answers, sleeve otherwise.
    Auto,
    /// Kernel VXLAN only.
    Fastdp,
    /// weft's userspace UDP tunnel only.
    Sleeve,
}

impl Datapath {
    fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fastdp => "fastdp",
            Self::Sleeve => "sleeve",
        }
    }
}

/// What `lab up` builds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabSpec {
    /// The lab's name, the prefix of all its namespaces.
    pub name: String,
    /// Number of nodes (h1…hK).
    pub nodes: usize,
    /// Pods per node at start (p1…pP).
    pub pods: usize,
    /// The routers' `--datapath`.
    pub datapath: Datapath,
    /// Whether routers seal traffic (`--encryption on`).
    pub encrypt: bool,
    /// How the underlay is wired.
    pub underlay: Underlay,
    /// Whether to start a `weft router` on every node.
    pub routers: bool,
    /// The mesh password every router is given (`--password-file`), if any.
    pub password: Option<String>,
    /// The routers' `--trusted-subnets` (CIDRs); empty for none.
    #[serde(default)]
    pub trusted_subnets: Vec<String>,
    /// MTU of the underlay cables (`--underlay-mtu`), within [`UNDERLAY_MTU_RANGE`]. The
    /// routers are not given `--mtu`: they derive the pod MTU from their underlay interface.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    /// Play a Kubernetes cluster (`--kube`): a stand-in API with a Node per node and a Pod
    /// per pod, routers started with `--kube-peers` pointed at it.
    #[serde(default)]
    pub kube: bool,
    /// How long `up` waits for the routers (`--ready-timeout`); None scales it with the node
    /// count ([`default_ready_timeout`]).
    #[serde(default)]
    pub ready_timeout: Option<Duration>,
}

/// How long `lab up` waits for its routers unless told: 20 s, and half a second more per node
/// (a 100-node lab: 70 s), since every router dials every other and the mesh's work grows
/// with the square of the node count on a machine whose cores stay the same.
pub fn default_ready_timeout(nodes: usize) -> Duration {
    Duration::from_secs(20) + Duration::from_millis(500) * u32::try_from(nodes).unwrap_or(u32::MAX)
}

fn default_underlay_mtu() -> u32 {
    DEFAULT_UNDERLAY_MTU
}

impl LabSpec {
    /// A spec with the defaults of `lab up`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            nodes: 3,
            pods: 1,
            datapath: Datapath::Auto,
            encrypt: false,
            underlay: Underlay::Full,
            routers: true,
            password: None,
            trusted_subnets: Vec::new(),
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            kube: false,
            ready_timeout: None,
        }
    }

    /// The MTU of pods the lab attaches itself (without routers): the underlay's less the
    /// VXLAN overhead, as weft's own default.
    pub fn pod_mtu(&self) -> u32 {
        self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    }
}

/// The state of a lab as `lab up --json` prints it (and as kept in the lab's state file).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabInfo {
    /// The lab's name.
    pub name: String,
    /// Its nodes, in order.
    pub nodes: Vec<NodeInfo>,
    /// Seconds from starting the first router until every router was ready (absent without
    /// routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_s: Option<f64>,
    /// Seconds from starting the last router until every router had all its connections
    /// established and knew every peer (absent without routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meshed_s: Option<f64>,
    /// The external host every node reaches through the gateway (empty in the state of a lab
    /// built before labs had one).
    #[serde(default)]
    pub external: ExternalInfo,
}

/// The lab's external host, a stand-in for the world outside the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalInfo {
    /// `N-x`.
    pub netns: String,
    /// Its bare address, [`EXTERNAL_IP`].
    pub ip: String,
}

/// One node of a lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `hI`.
    pub name: String,
    /// `N-hI`.
    pub netns: String,
    /// The node's bare underlay address.
    pub underlay_ip: String,
    /// Its pods.
    pub pods: Vec<PodInfo>,
}

/// One pod of a lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodInfo {
    /// `pJ`.
    pub name: String,
    /// `N-hI-pJ`.
    pub netns: String,
    /// Address with prefix, e.g. `10.32.1.1/12`.
    pub ip: String,
    /// MAC of the pod's eth0.
    pub mac: String,
    /// The Pod object's namespace (with `--kube`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Pod object's labels (with `--kube`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    spec: LabSpec,
    info: LabInfo,
}

/// Removes the lab when dropped, also while a panic unwinds.
#[derive(Debug)]
pub struct LabGuard {
    name: String,
}

impl LabGuard {
    /// Guards the lab named `name` (whether or not it exists yet).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The guarded lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = down(&self.name) {
            tracing_free_warn(&format!("lab {}: cleanup failed: {e:#}", self.name));
        }
    }
}

/// Builds the lab and waits until it is ready (every router answering and connected, every pod
/// attached). On any failure, everything already built is removed.
///
/// # Errors
/// Fails with the reason when the spec is invalid, the lab exists already, a step fails, or
/// the routers are not ready before the timeout.
pub fn up(spec: &LabSpec) -> Result<LabInfo> {
    validate_name(&spec.name)?;
    ensure!(
        (1..=MAX_NODES).contains(&spec.nodes),
        "--nodes must be between 1 and {MAX_NODES}, got {}",
        spec.nodes
    );
    ensure!(
        spec.pods <= MAX_PODS,
        "--pods must be at most {MAX_PODS}, got {}",
        spec.pods
    );
    validate_underlay_mtu(spec.underlay_mtu)?;
    let existing = lab_namespaces(&spec.name);
    if !existing.is_empty() || lab_dir(&spec.name).exists() {
        bail!(
            "lab {} exists already ({} namespaces); run `weft-sim lab down --name {}` first",
            spec.name,
            existing.len(),
            spec.name
        );
    }
    let guard = LabGuard::new(&spec.name);
    let info = build(spec)?;
    std::mem::forget(guard);
    Ok(info)
}

fn build(spec: &LabSpec) -> Result<LabInfo> {
    let name = &spec.name;
    std::fs::create_dir_all(lab_dir(name))
        .with_context(|| format!("creating {}", lab_dir(name).display()))?;
    std::fs::create_dir_all(netns::NETNS_DIR).context("creating /var/run/netns")?;

    add_underlay(spec)?;
    let external = add_external(spec)?;
    let mut info = LabInfo {
        name: name.clone(),
        nodes: Vec::new(),
        ready_s: None,
        meshed_s: None,
        external,
    };
    for i in 1..=spec.nodes {
        info.nodes.push(add_node(spec, i)?);
    }
    if spec.underlay == Underlay::Line {
        wire_line(spec)?;
    }
    if spec.nodes > neighbours::STATIC_ABOVE {
        neighbours::install_static(spec)?;
    }
    save(&StateFile {
        spec: spec.clone(),
        info: info.clone(),
    })?;
    if spec.kube {
        ensure!(spec.routers, "--kube needs routers (drop --no-router)");
        kube::start_api(name)?;
        kube::register_nodes(name, spec.nodes)?;
    }
    let started = Instant::now();
    if spec.routers {
        cni::install(name)?;
        for i in 1..=spec.nodes {
            if let Some(password) = &spec.password {
                set_password(name, &format!("h{i}"), Some(password))?;
            }
            router::start(spec, i)?;
        }
        let last_started = Instant::now();
        // A ready router has made its bridge, which the pods attach to.
        let timeout = spec
            .ready_timeout
            .unwrap_or_else(|| default_ready_timeout(spec.nodes));
        let meshed = router::wait_ready(spec, timeout)?;
        info.ready_s = Some(started.elapsed().as_secs_f64());
        info.meshed_s = Some(meshed.saturating_duration_since(last_started).as_secs_f64());
    }
    for i in 1..=spec.nodes {
        for j in 1..=spec.pods {
            let mut pod = pod::attach_pod(spec, i, j, None)?;
            if spec.kube {
                pod::register(name, i, &mut pod, &PodMeta::default())?;
            }
            info.nodes[i - 1].pods.push(pod);
        }
    }
    save(&StateFile {
        spec: spec.clone(),
        info: info.clone(),
    })?;
    Ok(info)
}

/// The underlay namespace: bridge `ubr` holding the gateway address, forwarding on (the
/// gateway routes between the nodes and the external host). `ubr` takes the smallest MTU of
/// its ports, which are all `underlay_mtu`.
fn add_underlay(spec: &LabSpec) -> Result<()> {
    let u = underlay_ns(&spec.name);
    add_ns(&u)?;
    // The gateway stands for the network outside the nodes: whatever a node sends it is routed
    // on (or dropped for want of a route), never filtered by the host's reverse-path setting.
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ] {
        netns::sysctl(&u, key, "0")?;
    }
    netns::sysctl(&u, "net.ipv4.ip_forward", "1")?;
    netns::ip(&["-n", &u, "link", "add", "ubr", "type", "bridge"])?;
    netns::ip(&[
        "-n",
        &u,
        "addr",
        "add",
        &format!("{GATEWAY_IP}/24"),
        "dev",
        "ubr",
    ])?;
    netns::ip(&["-n", &u, "link", "set", "ubr", "up"])
}

/// The external host `N-x`, cabled to the gateway in `N-u` (`x` there, `eth0` here). It has
/// a route to the node underlay only: a packet from a pod address reaches it, but its answer
/// has nowhere to go, which is what masquerade is tested against.
fn add_external(spec: &LabSpec) -> Result<ExternalInfo> {
    let (u, x) = (underlay_ns(&spec.name), external_ns(&spec.name));
    add_ns(&x)?;
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ] {
        netns::sysctl(&x, key, "0")?;
    }
    let mtu = spec.underlay_mtu.to_string();
    netns::ip(&[
        "-n", &u, "link", "add", "x", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
        &mtu, "netns", &x,
    ])?;
    netns::ip(&[
        "-n",
        &u,
        "addr",
        "add",
        &format!("{EXTERNAL_GATEWAY_IP}/24"),
        "dev",
        "x",
    ])?;
    netns::ip(&["-n", &u, "link", "set", "x", "up"])?;
    netns::ip(&[
        "-n",
        &x,
        "addr",
        "add",
        &format!("{EXTERNAL_IP}/24"),
        "dev",
        "eth0",
    ])?;
    netns::ip(&["-n", &x, "link", "set", "eth0", "up"])?;
    netns::ip(&[
        "-n",
        &x,
        "route",
        "add",
        UNDERLAY_NET,
        "via",
        EXTERNAL_GATEWAY_IP,
        "dev",
        "eth0",
    ])?;
    Ok(ExternalInfo {
        netns: x,
        ip: EXTERNAL_IP.to_owned(),
    })
}

fn add_node(spec: &LabSpec, i: usize) -> Result<NodeInfo> {
    let (name, u) = (&spec.name, underlay_ns(&spec.name));
    let ns = node_ns(name, i);
    add_ns(&ns)?;
    let port = format!("h{i}");
    let mtu = spec.underlay_mtu.to_string();
    netns::ip(&[
        "-n", &u, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
        &mtu, "netns", &ns,
    ])?;
    netns::ip(&["-n", &u, "link", "set", &port, "master", "ubr", "up"])?;
    let ip = underlay_ip(i);
    netns::ip(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    netns::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    netns::ip(&[
        "-n", &ns, "route", "add", "default", "via", GATEWAY_IP, "dev", "eth0",
    ])?;
    // The router creates and owns the bridge; without one the lab makes a plain bridge so pods
    // on one node still reach each other.
    if !spec.routers {
        netns::ip(&["-n", &ns, "link", "add", "weft", "type", "bridge"])?;
        netns::ip(&["-n", &ns, "link", "set", "weft", "up"])?;
    }
    std::fs::create_dir_all(node_dir(name, i).join("state"))?;
    Ok(NodeInfo {
        name: format!("h{i}"),
        netns: ns,
        underlay_ip: ip,
        pods: Vec::new(),
    })
}

/// Cuts every underlay path between non-neighbours with a bridge filter in the underlay
/// namespace, so only h(i)–h(i+1) reach each other. The bridge's forward hook sees only frames
/// bridged from port to port, so every node still reaches the gateway (the bridge's own
/// address). The gateway refuses to route from the underlay back onto it (a policy rule, which
/// bridged frames never meet, unlike an `ip` forward filter once `br_netfilter` hands them to
/// the IP hooks), so it is no way around the cut either.
fn wire_line(spec: &LabSpec) -> Result<()> {
    let mut rules = String::from("table bridge weftlab {\n chain forward {\n");
    rules.push_str("  type filter hook forward priority 0; policy accept;\n");
    for a in 1..=spec.nodes {
        for b in 1..=spec.nodes {
            if a.abs_diff(b) > 1 {
                let _ = writeln!(rules, "  iifname \"h{a}\" oifname \"h{b}\" drop");
            }
        }
    }
    rules.push_str(" }\n}\n");
    let file = lab_dir(&spec.name).join("underlay.nft");
    std::fs::write(&file, rules)?;
    netns::run(
        netns::command_in(&underlay_ns(&spec.name), "nft")?
            .arg("-f")
            .arg(&file),
    )
    .context("installing the line underlay's filter (is nftables installed?)")?;
    // After the local table (preference 0), so the gateway's own addresses still answer.
    netns::ip(&[
        "-n",
        &underlay_ns(&spec.name),
        "rule",
        "add",
        "pref",
        "100",
        "iif",
        "ubr",
        "to",
        UNDERLAY_NET,
        "prohibit",
    ])
}

/// Starts, stops, kills or restarts the router of node `node`.
///
/// # Errors
/// Fails when the lab or node is unknown, or the action fails.
pub fn router_action(name: &str, node: &str, action: RouterAction) -> Result<()> {
    let state = load(name)?;
    let i = parse_index(node, 'h', state.spec.nodes)?;
    router::act(&state.spec, i, action)
}

/// Sets (or, with `None`, removes) the mesh password node `node`'s router is started with; it
/// takes effect at the router's next start. The file is 0600, as weft requires of key material.
///
/// # Errors
/// Fails when the lab or node is unknown or the file cannot be written.
pub fn set_password(name: &str, node: &str, password: Option<&str>) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let i = parse_index(node, 'h', MAX_NODES)?;
    let path = node_dir(name, i).join("password");
    let _ = std::fs::remove_file(&path);
    if let Some(password) = password {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(password.as_bytes())?;
    }
    Ok(())
}

/// Returns a node's router report (`weft report`, JSON) as its admin would read it.
///
/// # Errors
/// Fails when the router does not answer.
pub fn report(name: &str, node: &str) -> Result<serde_json::Value> {
    router::report(name, parse_index(node, 'h', MAX_NODES)?)
}

/// Removes everything the lab named `name` made: router processes, namespaces (with all their
/// interfaces) and files. Removing a lab that does not exist succeeds.
///
/// # Errors
/// Fails when something could not be removed; it still tries everything first.
pub fn down(name: &str) -> Result<()> {
    validate_name(name)?;
    let mut errors = Vec::new();
    if let Err(e) = router::stop_all(name) {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = kube::stop_api(name) {
        errors.push(format!("{e:#}"));
    }
    // Pods first, then nodes, then the underlay: the order keeps no dangling veth.
    let mut spaces = lab_namespaces(name);
    spaces.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for ns in spaces {
        if let Err(e) = netns::delete(&ns) {
            errors.push(format!("{e:#}"));
        }
    }
    let dir = lab_dir(name);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

/// Returns the state of a running lab.
///
/// # Errors
/// Fails when there is no such lab.
pub fn info(name: &str) -> Result<LabInfo> {
    Ok(load(name)?.info)
}

/// Resolves `NODE`, `NODE/POD` or `x` (the external host) of lab `name` to its namespace and
/// the `WEFT_API` value of its node's router (`None` for the external host, which runs none).
///
/// # Errors
/// Fails when the lab, node or pod is unknown.
pub fn target(name: &str, target: &str) -> Result<(String, Option<String>)> {
    let state = load(name)?;
    if target == "x" {
        return Ok((external_ns(name), None));
    }
    let (node, pod) = match target.split_once('/') {
        Some((n, p)) => (n, Some(p)),
        None => (target, None),
    };
    let i = parse_index(node, 'h', state.spec.nodes)?;
    let ns = match pod {
        Some(pod) => {
            ensure!(
                state.info.nodes[i - 1].pods.iter().any(|p| p.name == pod),
                "no pod {node}/{pod} in lab {name}"
            );
            pod_ns(name, i, parse_index(pod, 'p', MAX_PODS)?)
        }
        None => node_ns(name, i),
    };
    Ok((ns, Some(api_value(name, i))))
}

/// Builds the command `argv` in a lab node, pod or the external host (see [`target`]), with
/// `WEFT_API` set to the node's router (and unset on the external host).
///
/// # Errors
/// Fails when the target is unknown or `argv` is empty.
pub fn exec_command(
    name: &str,
    tgt: &str,
    argv: &[impl AsRef<std::ffi::OsStr>],
) -> Result<std::process::Command> {
    let (ns, api) = target(name, tgt)?;
    let (prog, args) = argv.split_first().context("no command given")?;
    let mut cmd = netns::command_in(&ns, prog)?;
    cmd.args(args);
    match api {
        Some(api) => cmd.env("WEFT_API", api),
        None => cmd.env_remove("WEFT_API"),
    };
    Ok(cmd)
}

/// Runs a command in a lab node, pod or the external host and returns its output (for tests
/// and the demo).
///
/// # Errors
/// Fails when the target is unknown or the command cannot start.
pub fn exec_output(name: &str, tgt: &str, argv: &[&str]) -> Result<std::process::Output> {
    let mut cmd = exec_command(name, tgt, argv)?;
    cmd.stdin(std::process::Stdio::null());
    cmd.output().with_context(|| {
        format!(
            "running {} in {tgt} of lab {name}",
            argv.first().copied().unwrap_or_default()
        )
    })
}

/// The namespaces that belong to lab `name`, by the lab's naming scheme exactly (so lab `t`
/// never sweeps lab `t-x`'s namespaces).
pub fn lab_namespaces(name: &str) -> Vec<String> {
    netns::list()
        .into_iter()
        .filter(|ns| belongs_to(name, ns))
        .collect()
}

fn belongs_to(name: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if rest == "u" || rest == "x" {
        return true;
    }
    let numbered = |s: &str, c: char| {
        s.strip_prefix(c)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    match rest.split_once('-') {
        None => numbered(rest, 'h'),
        Some((h, p)) => numbered(h, 'h') && numbered(p, 'p'),
    }
}

fn validate_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && name.as_bytes()[0].is_ascii_alphanumeric(),
        "--name must be 1–32 characters of letters, digits, '-' and '_', starting with a letter \
         or digit, got {name:?}"
    );
    Ok(())
}

fn validate_underlay_mtu(mtu: u32) -> Result<()> {
    ensure!(
        UNDERLAY_MTU_RANGE.contains(&mtu),
        "--underlay-mtu must be between {} and {}, got {mtu}",
        UNDERLAY_MTU_RANGE.start(),
        UNDERLAY_MTU_RANGE.end()
    );
    Ok(())
}

fn validate_mac(mac: &str) -> Result<()> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0);
    ensure!(
        ok,
        "--mac must be a unicast MAC like 02:00:00:00:01:01, got {mac:?}"
    );
    Ok(())
}

fn parse_index(s: &str, prefix: char, max: usize) -> Result<usize> {
    let n = s
        .strip_prefix(prefix)
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|n| (1..=max).contains(n));
    n.with_context(|| format!("{s:?} is not a valid name: expected {prefix}1…{prefix}{max}"))
}

/// A stable, locally administered unicast MAC for pod `j` of node `i` in lab `name`.
fn default_mac(name: &str, i: usize, j: usize) -> String {
    // FNV-1a of the lab name keeps two labs' MACs apart without any randomness.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "0a:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (h >> 8) as u8,
        h as u8,
        i / 256,
        i % 256,
        j
    )
}

/// Adds a namespace with its loopback up. It sets no sysctl: a lab node is a fresh host, and
/// weft sets what it needs itself (DESIGN.md).
fn add_ns(ns: &str) -> Result<()> {
    netns::ip(&["netns", "add", ns])?;
    netns::ip(&["-n", ns, "link", "set", "lo", "up"])
}

fn save(state: &StateFile) -> Result<()> {
    let path = lab_dir(&state.spec.name).join("lab.json");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

fn load(name: &str) -> Result<StateFile> {
    validate_name(name)?;
    let path = lab_dir(name).join("lab.json");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("no lab named {name} ({} not found)", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
}

fn lab_dir(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

fn node_dir(name: &str, i: usize) -> PathBuf {
    lab_dir(name).join(format!("h{i}"))
}

fn underlay_ns(name: &str) -> String {
    format!("{name}-u")
}

fn external_ns(name: &str) -> String {
    format!("{name}-x")
}

fn node_ns(name: &str, i: usize) -> String {
    format!("{name}-h{i}")
}

fn pod_ns(name: &str, i: usize, j: usize) -> String {
    format!("{name}-h{i}-p{j}")
}

fn underlay_ip(i: usize) -> String {
    format!("192.0.2.{i}")
}

fn api_value(name: &str, i: usize) -> String {
    format!("unix:{}", node_dir(name, i).join("weft.sock").display())
}

/// The pid of node `i`'s router (1-based) while it runs.
pub fn router_pid(name: &str, i: usize) -> Option<i32> {
    router::running_pid(name, i)
}

/// The path of node `i`'s router API socket.
pub fn node_socket(name: &str, i: usize) -> PathBuf {
    node_dir(name, i).join("weft.sock")
}

/// Waits until `f` returns true or `timeout` passes.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lab is a library used by tests and a CLI; it has no logger, so cleanup problems go to
/// stderr, where a test's output shows them.
#[allow(clippy::print_stderr)]
fn tracing_free_warn(msg: &str) {
    eprintln!("weft-sim: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_match_the_naming_scheme_exactly() {
        assert!(belongs_to("t", "t-u"));
        assert!(belongs_to("t", "t-h1"));
        assert!(belongs_to("t", "t-h12-p3"));
        assert!(!belongs_to("t", "t-x-h1"));
        assert!(!belongs_to("t", "t2-h1"));
        assert!(!belongs_to("t", "t-h"));
        assert!(!belongs_to("t", "t-h1-q1"));
        assert!(!belongs_to("t", "t-h1-p"));
        assert!(belongs_to("t-x", "t-x-h1"));
        // The external host: exactly `N-x`, and lab `t`'s is not lab `t-x`'s.
        assert!(belongs_to("t", "t-x"));
        assert!(belongs_to("t-x", "t-x-x"));
        assert!(!belongs_to("t-x", "t-x"));
        assert!(!belongs_to("t", "t-x1"));
        assert!(!belongs_to("t", "t-xx"));
        assert!(!belongs_to("t", "t-x-u"));
        assert!(!belongs_to("t", "t-h1-x"));
        assert!(!belongs_to("t", "tx"));
        assert!(!belongs_to("t", "t-X"));
    }

    #[test]
    fn underlay_mtu_is_checked_and_sets_the_pod_mtu() {
        assert!(validate_underlay_mtu(1280).is_ok());
        assert!(validate_underlay_mtu(1500).is_ok());
        assert!(validate_underlay_mtu(9000).is_ok());
        for bad in [0, 576, 1279, 9001, 65535] {
            let err = validate_underlay_mtu(bad).unwrap_err().to_string();
            assert!(err.contains("--underlay-mtu"), "{err}");
            assert!(err.contains(&bad.to_string()), "{err}");
        }
        let mut spec = LabSpec::new("t");
        assert_eq!(spec.underlay_mtu, DEFAULT_UNDERLAY_MTU);
        assert_eq!(spec.pod_mtu(), 1450);
        spec.underlay_mtu = 1400;
        assert_eq!(spec.pod_mtu(), 1350);
        spec.underlay_mtu = 100;
        let err = up(&spec).unwrap_err().to_string();
        assert!(err.contains("--underlay-mtu"), "{err}");
    }

    #[test]
    fn old_state_files_still_load() {
        // A state file written before `underlay_mtu` and `external` existed.
        let old = r#"{"spec": {"name": "t", "nodes": 2, "pods": 1, "datapath": "auto",
            "encrypt": false, "underlay": "full", "routers": false, "password": null},
            "info": {"name": "t", "nodes": []}}"#;
        let state: StateFile = serde_json::from_str(old).unwrap();
        assert_eq!(state.spec.underlay_mtu, DEFAULT_UNDERLAY_MTU);
        assert_eq!(state.info.external, ExternalInfo::default());
    }

    #[test]
    fn lab_info_json_names_the_external_host() {
        let info = LabInfo {
            name: "t".into(),
            nodes: Vec::new(),
            ready_s: None,
            meshed_s: None,
            external: ExternalInfo {
                netns: external_ns("t"),
                ip: EXTERNAL_IP.into(),
            },
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "t", "nodes": [],
                "external": {"netns": "t-x", "ip": "203.0.113.1"}})
        );
    }

    #[test]
    fn names_and_macs_are_checked() {
        assert!(validate_name("demo").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_mac("02:00:00:00:01:01").is_ok());
        assert!(validate_mac("03:00:00:00:01:01").is_err());
        assert!(validate_mac("02:00:00:00:01").is_err());
        assert_eq!(parse_index("h3", 'h', 3).ok(), Some(3));
        assert!(parse_index("h4", 'h', 3).is_err());
        assert!(parse_index("h0", 'h', 3).is_err());
    }

    #[test]
    fn default_macs_are_unicast_and_distinct() {
        let a = default_mac("a", 1, 1);
        assert_ne!(a, default_mac("a", 1, 2));
        assert_ne!(a, default_mac("b", 1, 1));
        assert!(validate_mac(&a).is_ok());
    }
}
