//! The `weft-sim` command.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use weft_sim::lab::{self, Datapath, LabSpec, RouterAction, Underlay};

/// mimalloc, not glibc's allocator: `weft-sim mesh` allocates and frees millions of messages
/// of many sizes, half of them on another thread than the one that allocated them, and glibc
/// spent 8 % of a 5,000-node run in `_int_malloc` alone (see docs/SIMULATOR.md, session 6).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v3, the version the crate builds).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to give freed memory back to the kernel. By default it does so 10 ms
/// after a page empties, and a run's next allocations then fault in fresh pages that the
/// kernel zeroes (slow on this machine: its first touch of a page is). A simulation's memory
/// is bounded and reused, so it keeps it. 3,000-node runs, two sets of five pairs alternated:
/// wall time 0.895 / 0.892 and CPU time 0.942 / 0.954 of the default's.
fn mimalloc_keeps_freed_memory() {
    // SAFETY: mi_option_set only stores the value of a known option; -1 means "never".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "weft-sim",
    version,
    about = "weft's simulator, netns lab and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Real weft routers in network namespaces on this machine (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Deterministic simulation of N routers running the real topology core.
    Mesh(weft_sim::mesh::MeshArgs),
    /// Deterministic simulation of N routers' IPAM engines: convergence and gossip bytes at
    /// steady state and under a churn of allocations.
    Ipam(weft_sim::ipam::IpamArgs),
    /// The data plane's forwarding over a simulated mesh: every pod pair, every broadcast, pods
    /// that move; the routers' own forwarding code, sessions and reassembly, no kernel.
    Dataplane(weft_sim::dataplane::DataplaneArgs),
    /// Pod-to-pod throughput and RTT per data path, as ratios to a kernel VXLAN baseline
    /// measured in the same run (needs root, iperf3).
    Bench(weft_sim::bench::BenchArgs),
    /// N real routers in one lab at default settings, no pods: seconds to a full mesh, then
    /// their idle CPU, RSS, underlay packets and connection flaps (needs root, nft).
    Scale(weft_sim::scale::ScaleArgs),
    /// The upstream NetworkPolicy e2e model: the servers and probes run inside lab pods, and
    /// its cases, listed or run on a `--kube` lab.
    #[command(subcommand)]
    Netpol(weft_sim::netpol::NetpolCommand),
    /// A stand-in Kubernetes API server for tests and the lab; serves until killed.
    #[command(hide = true)]
    KubeApi(weft_sim::kubeapi::KubeApiArgs),
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build a lab and wait until it is ready.
    Up {
        /// The lab's name: prefix of its namespaces (N-u, N-x, N-hI, N-hI-pJ).
        #[arg(long)]
        name: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 1)]
        pods: usize,
        /// The routers' data path.
        #[arg(long, value_enum, default_value_t = Datapath::Auto)]
        datapath: Datapath,
        /// Start the routers with encryption on.
        #[arg(long)]
        encrypt: bool,
        /// How the underlay connects the nodes.
        #[arg(long, value_enum, default_value_t = Underlay::Full)]
        underlay: Underlay,
        /// Print the lab as one JSON object.
        #[arg(long)]
        json: bool,
        /// Start no routers: pods on a node reach each other over a plain bridge only.
        #[arg(long)]
        no_router: bool,
        /// Give every router this mesh password (through a 0600 password file).
        #[arg(long)]
        password: Option<String>,
        /// The routers' `--trusted-subnets` (comma-separated CIDRs).
        #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
        trusted_subnets: Vec<String>,
        /// MTU of the underlay cables (1280–9000); pods the lab attaches without routers get
        /// this less 50, routers derive theirs from their underlay interface.
        #[arg(long, value_name = "N", default_value_t = lab::DEFAULT_UNDERLAY_MTU)]
        underlay_mtu: u32,
        /// Play a Kubernetes cluster: a stand-in API at the gateway (192.0.2.254:6443) with a
        /// Node per node and a Pod `hI-pJ` per pod; routers discover peers from it.
        #[arg(long)]
        kube: bool,
        /// How long to wait for the routers to be ready [default: 20 s + 0.5 s per node].
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        ready_timeout: Option<Duration>,
    },
    /// Run a command in a node's, pod's or the external host's namespace (exit code = the
    /// command's).
    Exec {
        /// The lab's name.
        name: String,
        /// `hI`, `hI/pJ`, or `x` for the external host (203.0.113.1).
        target: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start, stop (SIGTERM), kill (SIGKILL) or restart a node's router.
    Router {
        /// The lab's name.
        name: String,
        /// `hI`.
        node: String,
        /// What to do.
        #[arg(value_enum)]
        action: RouterAction,
    },
    /// Add or delete a pod on a node.
    Pod {
        /// The lab's name.
        name: String,
        /// `hI`.
        node: String,
        /// add or del.
        #[arg(value_enum)]
        action: PodAction,
        /// `pJ`.
        pod: String,
        /// The pod's MAC (add only).
        #[arg(long)]
        mac: Option<String>,
        /// The Pod object's namespace, created if missing (add only; --kube labs) [default:
        /// default].
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        /// The Pod object's labels (add only; --kube labs) [default: pod=pJ].
        #[arg(long, value_delimiter = ',', value_name = "K=V,...")]
        labels: Vec<String>,
        /// The Pod's named container ports, e.g. http=tcp/80 (add only; --kube labs).
        #[arg(long, value_delimiter = ',', value_name = "NAME=PROTO/PORT,...")]
        ports: Vec<String>,
        /// Print the pod as JSON, as `lab up --json` lists it (the default output too).
        #[arg(long)]
        json: bool,
    },
    /// Apply, delete or read Kubernetes objects of a `--kube` lab.
    Kube {
        /// The lab's name.
        name: String,
        #[command(subcommand)]
        action: KubeAction,
    },
    /// Remove a lab: routers, namespaces, interfaces, files.
    Down {
        /// The lab's name.
        #[arg(long)]
        name: String,
    },
    /// Build a 3-node lab, show pods talking and the mesh status, then remove it.
    Demo,
}

#[derive(Subcommand)]
enum KubeAction {
    /// Create or replace the objects of FILE (JSON or YAML; one object, a List, or YAML
    /// documents): Namespaces, NetworkPolicies, Pods (an existing Pod gets the new labels).
    Apply {
        /// The file.
        file: std::path::PathBuf,
    },
    /// Delete the objects of FILE.
    Delete {
        /// The file.
        file: std::path::PathBuf,
    },
    /// Print objects as JSON: every object of KIND, or one (`NS/NAME`, or `NAME`).
    Get {
        /// Node, Namespace, Pod or NetworkPolicy.
        kind: String,
        /// `NS/NAME` (namespaced kinds; `NAME` means `default/NAME`) or `NAME`.
        object: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PodAction {
    Add,
    Del,
}

fn main() -> ExitCode {
    mimalloc_keeps_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "weft-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Bench(args) => {
            let report = weft_sim::bench::run(&args)?;
            if args.json {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", report.table())?;
            }
        }
        Command::KubeApi(args) => weft_sim::kubeapi::run(&args, &mut out)?,
        Command::Netpol(cmd) => weft_sim::netpol::run(cmd, &mut out)?,
        Command::Scale(args) => {
            let report = weft_sim::scale::run(&args)?;
            weft_sim::scale::print_report(&mut out, &report, args.json)?;
        }
        Command::Mesh(args) => {
            let report = weft_sim::mesh::run(&args)?;
            weft_sim::mesh::print_report(&mut out, &report, args.json)?;
        }
        Command::Ipam(args) => {
            let report = weft_sim::ipam::run(&args)?;
            weft_sim::ipam::print_report(&mut out, &report, args.json)?;
        }
        Command::Dataplane(args) => {
            let report = weft_sim::dataplane::run(&args)?;
            weft_sim::dataplane::print_report(&mut out, &report, args.json)?;
            if !report.passed {
                anyhow::bail!("the data plane's checks failed");
            }
        }
        Command::Lab(cmd) => match cmd {
            LabCommand::Up {
                name,
                nodes,
                pods,
                datapath,
                encrypt,
                underlay,
                json,
                no_router,
                password,
                trusted_subnets,
                underlay_mtu,
                kube,
                ready_timeout,
            } => {
                let spec = LabSpec {
                    kube,
                    ready_timeout,
                    name,
                    nodes,
                    pods,
                    datapath,
                    encrypt,
                    underlay,
                    routers: !no_router,
                    password,
                    trusted_subnets,
                    underlay_mtu,
                };
                let info = lab::up(&spec)?;
                if json {
                    writeln!(out, "{}", serde_json::to_string(&info)?)?;
                } else {
                    weft_sim::demo::print_lab(&mut out, &info)?;
                }
            }
            LabCommand::Exec {
                name,
                target,
                command,
            } => {
                let mut cmd = lab::exec_command(&name, &target, &command)?;
                // exec replaces this process, so the exit code is the command's own.
                let err = std::os::unix::process::CommandExt::exec(&mut cmd);
                return Err(err)
                    .with_context(|| format!("running {} in {target} of lab {name}", command[0]));
            }
            LabCommand::Router { name, node, action } => lab::router_action(&name, &node, action)?,
            LabCommand::Pod {
                name,
                node,
                action,
                pod,
                mac,
                namespace,
                labels,
                ports,
                json: _,
            } => match action {
                PodAction::Add => {
                    let meta = lab::PodMeta::parse(namespace.as_deref(), &labels, &ports)?;
                    let info = lab::pod_add_with(&name, &node, &pod, mac.as_deref(), &meta)?;
                    writeln!(out, "{}", serde_json::to_string(&info)?)?;
                }
                PodAction::Del => lab::pod_del(&name, &node, &pod)?,
            },
            LabCommand::Kube { name, action } => match action {
                KubeAction::Apply { file } => {
                    for line in lab::objects::apply(&name, &file)? {
                        writeln!(out, "{line}")?;
                    }
                }
                KubeAction::Delete { file } => {
                    for line in lab::objects::delete(&name, &file)? {
                        writeln!(out, "{line}")?;
                    }
                }
                KubeAction::Get { kind, object } => {
                    let got = lab::objects::get(&name, &kind, object.as_deref())?;
                    writeln!(out, "{}", serde_json::to_string_pretty(&got)?)?;
                }
            },
            LabCommand::Down { name } => lab::down(&name)?,
            LabCommand::Demo => weft_sim::demo::run(&mut out)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// A positive number of seconds, for `--ready-timeout`.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}
