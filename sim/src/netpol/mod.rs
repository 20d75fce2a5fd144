//! The upstream Kubernetes NetworkPolicy e2e model (`test/e2e/network/netpol`) as lab tooling:
//! namespaces x, y, z (labelled `ns=<name>`), each with pods a, b, c (labelled `pod=<name>`)
//! serving TCP and UDP 80 and 81 on the named ports `serve-<port>-<tcp|udp>`, and the
//! reachability between every pair of the nine pods as a 9×9 matrix (rows are sources,
//! columns destinations, in the order x/a x/b x/c y/a … z/c).
//!
//! - [`probe`]: `weft-sim netpol serve` (the pods' servers) and `weft-sim netpol probe` (one
//!   client per source pod, every target at once).
//! - [`cases`]: the upstream cases as data: steps of Kubernetes objects to apply or delete,
//!   each followed by hand-written expected matrices. A case is a function of the nine pods
//!   ([`Pods`]), so `ipBlock`s can name their real addresses.
//! - [`Model`]: the nine pods in a running `--kube` lab, probed as matrices, with the cases run
//!   on it.
//! - [`Reference`]: the same cluster as a [`ClusterView`] with fake addresses, the steps'
//!   objects converted as the router converts them and every pair judged by
//!   [`topology::policy::reference::allowed`]: a check of the case table itself, no lab needed.
//!
//! Semantics are upstream's: a pod always reaches itself (the diagonal); policies judge
//! connection initiations only, replies pass.

pub mod cases;
mod model;
pub mod probe;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use topology::cluster::{
    ClusterView, ContainerPort, Event, Labels, NAMESPACE_NAME_LABEL, Namespace, Pod, Protocol,
};
use topology::policy::{Endpoint, allowed};
use weft_router::kube::convert;

pub use cases::{Case, Expect, Step};
pub use model::Model;
pub use probe::{NetpolCommand, run};

/// The namespaces, in matrix order.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace, in matrix order.
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
/// The nine pods' labels, in matrix order.
pub const LABELS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];
/// The ports every pod serves, over TCP and UDP.
pub const PORTS: [u16; 2] = [80, 81];

/// One of the nine pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// `x`, `y` or `z`.
    pub namespace: &'static str,
    /// `a`, `b` or `c` (its `pod` label; not its object's name).
    pub pod: &'static str,
    /// The lab node it runs on: `h1` for pods a, `h2` for b, `h3` for c.
    pub node: String,
    /// The lab pod on that node: `p1` in x, `p2` in y, `p3` in z.
    pub lab_pod: String,
    /// Its Pod object's name, `hI-pJ`.
    pub object: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl PodRef {
    /// `x/a`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    /// `hI/pJ`, the lab target of its namespace.
    pub fn target(&self) -> String {
        format!("{}/{}", self.node, self.lab_pod)
    }
}

/// The nine pods, in matrix order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pods(pub Vec<PodRef>);

impl Pods {
    /// The nine pods laid out as [`Model`] places them, with addresses `ip(i, j)` for the pod
    /// of namespace `i` (0-based) and name `j`.
    pub fn layout(ip: impl Fn(usize, usize) -> Ipv4Addr) -> Self {
        let mut pods = Vec::new();
        for (i, namespace) in NAMESPACES.into_iter().enumerate() {
            for (j, pod) in POD_NAMES.into_iter().enumerate() {
                let (node, lab_pod) = (format!("h{}", j + 1), format!("p{}", i + 1));
                pods.push(PodRef {
                    namespace,
                    pod,
                    object: format!("{node}-{lab_pod}"),
                    node,
                    lab_pod,
                    ip: ip(i, j),
                });
            }
        }
        Self(pods)
    }

    /// The nine pods at fake addresses `10.32.N.M` (N the node, M the namespace, 1-based).
    pub fn fake() -> Self {
        Self::layout(|i, j| Ipv4Addr::new(10, 32, j as u8 + 1, i as u8 + 1))
    }

    /// The pod labelled `label` (`x/a`).
    ///
    /// # Panics
    /// When `label` is not one of [`LABELS`] (a typo in a case).
    pub fn get(&self, label: &str) -> &PodRef {
        let i = index(label);
        &self.0[i]
    }

    /// `IP/32` of the pod labelled `label`.
    pub fn cidr32(&self, label: &str) -> String {
        format!("{}/32", self.get(label).ip)
    }

    /// The smallest IPv4 block holding every pod's address, never narrower than /30, so that a
    /// pod's /32 is always a strict subset (an `except` the API accepts).
    pub fn supernet(&self) -> String {
        let ips: Vec<u32> = self.0.iter().map(|p| u32::from(p.ip)).collect();
        let (lo, hi) = ips
            .iter()
            .fold((u32::MAX, 0), |(lo, hi), &ip| (lo.min(ip), hi.max(ip)));
        let common = (lo ^ hi).leading_zeros().min(30);
        let mask = if common == 0 {
            0
        } else {
            u32::MAX << (32 - common)
        };
        format!("{}/{common}", Ipv4Addr::from(lo & mask))
    }

    /// The baseline Namespace and Pod objects (labels as the model starts), as YAML.
    pub fn baseline(&self) -> String {
        let mut docs = vec![baseline_namespaces()];
        docs.extend(
            self.0
                .iter()
                .map(|p| pod_yaml(self, &p.label(), &[("pod", p.pod)])),
        );
        docs.join("---\n")
    }
}

/// The namespaces x, y, z labelled `ns=<name>`, as YAML.
pub fn baseline_namespaces() -> String {
    let docs: Vec<String> = NAMESPACES
        .iter()
        .map(|ns| namespace_yaml(ns, &[("ns", ns)]))
        .collect();
    docs.join("---\n")
}

/// A Namespace object with `labels`, as YAML (applying it replaces the namespace's labels).
pub fn namespace_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name:?}\n  labels: {}\n",
        flow_map(labels)
    )
}

/// The Pod object of the pod labelled `label` with `labels`, as YAML: applied to the lab it
/// replaces the pod's labels and keeps the rest.
pub fn pod_yaml(pods: &Pods, label: &str, labels: &[(&str, &str)]) -> String {
    let p = pods.get(label);
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {:?}\n  namespace: {:?}\n  labels: {}\n",
        p.object,
        p.namespace,
        flow_map(labels)
    )
}

/// `{"k": "v", …}`: quoted, as every name and value in the cases' YAML, because the YAML
/// reader takes a plain `y` (namespace y) for the boolean true, as YAML 1.1 does.
fn flow_map(pairs: &[(&str, &str)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// The objects of a JSON or YAML text: one object, a `List`, or YAML documents.
///
/// # Errors
/// When the text is neither, or an object has no kind.
pub fn parse_objects(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(v) => vec![v],
        Err(_) => serde_saphyr::from_multiple::<Value>(text)
            .map_err(|e| anyhow::anyhow!("neither JSON nor YAML: {e}\n{text}"))?,
    };
    let mut objects = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        match doc["kind"].as_str() {
            Some(k) if k.ends_with("List") => {
                objects.extend(doc["items"].as_array().cloned().unwrap_or_default());
            }
            Some(_) => objects.push(doc),
            None => bail!("an object without a kind:\n{text}"),
        }
    }
    Ok(objects)
}

/// Reachability between the nine pods: `cells[src][dst]`, in [`LABELS`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matrix(pub [[bool; 9]; 9]);

impl Matrix {
    /// Every connection allowed.
    pub const OPEN: Self = Self([[true; 9]; 9]);

    /// A matrix written row by row, each row labelled: `"x/a 1.. 111 111"` (`1` allowed,
    /// `.` denied).
    ///
    /// # Panics
    /// When a row is mislabelled or has other than nine cells (a typo in a case).
    pub fn rows(rows: [&str; 9]) -> Self {
        let mut m = [[false; 9]; 9];
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(&row[..3], LABELS[i], "row {i} of an expected matrix");
            m[i] = cells(&row[3..]);
        }
        Self(m)
    }

    /// This matrix with the row `row` is labelled with replaced (`"x/a 1.. ... ..."`).
    pub fn with_row(mut self, row: &str) -> Self {
        self.0[index(&row[..3])] = cells(&row[3..]);
        self
    }

    /// Every connection allowed but those to `dst`, which only `dst` itself and `from` reach.
    pub fn only_into(dst: &str, from: &[&str]) -> Self {
        let mut m = Self::OPEN;
        for (i, src) in LABELS.iter().enumerate() {
            m.0[i][index(dst)] = *src == dst || from.contains(src);
        }
        m
    }

    /// The matrix as text: a header, then one labelled row per source.
    pub fn render(&self) -> String {
        let mut s = String::from("    xxx yyy zzz\n    abc abc abc\n");
        for (label, row) in LABELS.iter().zip(&self.0) {
            s.push_str(label);
            for (j, &cell) in row.iter().enumerate() {
                s.push_str(if j % 3 == 0 { " " } else { "" });
                s.push(if cell { '1' } else { '.' });
            }
            s.push('\n');
        }
        s
    }

    /// The pairs where `self` and `other` differ, `src -> dst`.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        (0..81)
            .filter(|k| self.0[k / 9][k % 9] != other.0[k / 9][k % 9])
            .map(|k| format!("{} -> {}", LABELS[k / 9], LABELS[k % 9]))
            .collect()
    }
}

/// Expected against observed, both rendered, and the pairs that differ.
pub fn explain(protocol: Protocol, port: u16, expected: &Matrix, got: &Matrix) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{} {port}: reachability (rows: source, columns: destination)\nexpected:\n{}got:\n{}\
         differing: {}",
        protocol.as_str(),
        expected.render(),
        got.render(),
        expected.differences(got).join(", ")
    );
    s
}

/// The index of `label` in [`LABELS`].
///
/// # Panics
/// When it is none of them.
pub fn index(label: &str) -> usize {
    LABELS
        .iter()
        .position(|l| *l == label)
        .unwrap_or_else(|| panic!("{label:?} is none of the nine pods"))
}

fn cells(row: &str) -> [bool; 9] {
    let cell = |c| match c {
        '1' => true,
        '.' => false,
        other => panic!("bad cell {other:?} in {row:?}"),
    };
    let cells: Vec<bool> = row
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(cell)
        .collect();
    cells
        .try_into()
        .unwrap_or_else(|c: Vec<bool>| panic!("{} cells in {row:?}, not 9", c.len()))
}

/// The nine-pod cluster as a [`ClusterView`], driven by the cases' objects converted as the
/// router converts them ([`weft_router::kube::convert`]), and judged by the reference
/// evaluator.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The pods (their addresses are the view's).
    pub pods: Pods,
    /// The view.
    pub view: ClusterView,
}

impl Reference {
    /// The baseline cluster of `pods`: no policies, every label as the model starts.
    ///
    /// # Errors
    /// When the baseline objects do not convert (a bug here).
    pub fn new(pods: Pods) -> Result<Self> {
        let mut view = ClusterView::new();
        let namespaces = NAMESPACES.map(|name| Namespace {
            name: name.to_owned(),
            labels: labels(&[("ns", name), (NAMESPACE_NAME_LABEL, name)]),
        });
        view.handle_namespaces(Event::Restarted(namespaces.to_vec()));
        let core = pods.0.iter().map(core_pod).collect();
        view.handle_pods(Event::Restarted(core));
        let mut me = Self { pods, view };
        let baseline = me.pods.baseline();
        me.apply(&baseline)?;
        Ok(me)
    }

    /// Applies the objects of `text` as the lab's `apply` does: Namespaces and
    /// NetworkPolicies are created or replaced, a Pod gets the object's labels.
    ///
    /// # Errors
    /// When an object does not convert, or names a pod or kind the model lacks.
    pub fn apply(&mut self, text: &str) -> Result<()> {
        for obj in parse_objects(text)? {
            match obj["kind"].as_str().unwrap_or_default() {
                "Namespace" => {
                    let ns = serde_json::from_value(obj).context("a Namespace")?;
                    self.view
                        .handle_namespaces(Event::Applied(convert::namespace(&ns)?));
                }
                "NetworkPolicy" => {
                    let np = serde_json::from_value(obj.clone()).context("a NetworkPolicy")?;
                    let np = convert::network_policy(&np).with_context(|| obj.to_string())?;
                    self.view.handle_policies(Event::Applied(np));
                }
                "Pod" => {
                    let meta = &obj["metadata"];
                    let (ns, name) = (meta["namespace"].as_str(), meta["name"].as_str());
                    let mut pod = self
                        .view
                        .pods()
                        .find(|p| Some(p.namespace.as_str()) == ns && Some(&*p.name) == name)
                        .cloned()
                        .with_context(|| format!("no pod {meta}"))?;
                    pod.labels = serde_json::from_value(meta["labels"].clone())?;
                    self.view.handle_pods(Event::Applied(pod));
                }
                other => bail!("the model applies no {other}"),
            }
        }
        Ok(())
    }

    /// Deletes the NetworkPolicies of `text`.
    ///
    /// # Errors
    /// When it names anything else.
    pub fn delete(&mut self, text: &str) -> Result<()> {
        for obj in parse_objects(text)? {
            let meta = &obj["metadata"];
            let (Some(namespace), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str())
            else {
                bail!("no namespace or name: {obj}");
            };
            if obj["kind"] != "NetworkPolicy" {
                bail!("the model deletes NetworkPolicies only: {obj}");
            }
            let (namespace, name) = (namespace.to_owned(), name.to_owned());
            self.view
                .handle_policies(Event::Deleted { namespace, name });
        }
        Ok(())
    }

    /// Applies a step's objects, then deletes its deletions.
    ///
    /// # Errors
    /// As [`apply`](Self::apply) and [`delete`](Self::delete).
    pub fn step(&mut self, step: &Step) -> Result<()> {
        for text in &step.apply {
            self.apply(text)?;
        }
        for text in &step.delete {
            self.delete(text)?;
        }
        Ok(())
    }

    /// The reference evaluator's matrix for `protocol` and `port`.
    pub fn matrix(&self, protocol: Protocol, port: u16) -> Matrix {
        let pods: Vec<&Pod> = self
            .pods
            .0
            .iter()
            .map(|p| {
                let key = (p.namespace, p.object.as_str());
                self.view.pods().find(|v| (&*v.namespace, &*v.name) == key)
            })
            .collect::<Option<_>>()
            .unwrap_or_default();
        let mut m = [[false; 9]; 9];
        for (i, src) in pods.iter().enumerate() {
            for (j, dst) in pods.iter().enumerate() {
                let ends = Endpoint::of_pod(src).zip(Endpoint::of_pod(dst)).next();
                m[i][j] = ends.is_some_and(|(s, d)| allowed(&self.view, s, d, protocol, port));
            }
        }
        Matrix(m)
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A pod of the model as the view holds it: its node, its address, its four named ports.
fn core_pod(p: &PodRef) -> Pod {
    let ports = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .flat_map(|protocol| {
            PORTS.map(|port| ContainerPort {
                name: port_name(port, protocol),
                protocol,
                port,
            })
        })
        .collect();
    Pod {
        namespace: p.namespace.to_owned(),
        name: p.object.clone(),
        labels: labels(&[("pod", p.pod)]),
        node: Some(p.node.clone()),
        ips: vec![IpAddr::V4(p.ip)],
        host_network: false,
        ports,
    }
}

/// The container port name of `port` over `protocol`: `serve-80-tcp`.
pub fn port_name(port: u16, protocol: Protocol) -> String {
    format!("serve-{port}-{}", protocol.as_str().to_ascii_lowercase())
}
