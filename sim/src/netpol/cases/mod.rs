//! The upstream netpol e2e cases (`test/e2e/network/netpol/network_policy.go`) as data.
//!
//! A [`Case`] is a list of [`Step`]s built from the nine pods ([`Pods`]: their Pod objects'
//! names and addresses, for relabelling and `ipBlock`s). A step applies Kubernetes objects
//! (YAML: NetworkPolicies, a Namespace or a Pod applied again to change its labels), deletes
//! NetworkPolicies, and then expects hand-written matrices for the (protocol, port) pairs the
//! case is about. Every case starts from the baseline (no policy, labels as the model makes
//! them) and its expectations hold whatever the pods' addresses are.
//!
//! A step's expectations differ from what the previous state gives (so a lab cannot pass a
//! step by not having followed it yet), unless the step says [`Step::unchanged`];
//! `sim/tests/netpol.rs` checks this, and every matrix, against the reference evaluator.

mod egress;
mod ingress;

use topology::cluster::Protocol;

use super::{Matrix, Pods};

/// One case: its name, the upstream test it follows, and its steps.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// A short name (`default_deny_ingress`).
    pub name: &'static str,
    /// The upstream test's title (or what the case covers, where upstream has none).
    pub upstream: &'static str,
    /// The steps, given the nine pods.
    pub steps: fn(&Pods) -> Vec<Step>,
}

/// One step of a case: objects applied, then NetworkPolicies deleted, then matrices expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What the step does, for messages.
    pub what: &'static str,
    /// YAML texts applied, in order.
    pub apply: Vec<String>,
    /// YAML texts of NetworkPolicies deleted, in order, after the applies.
    pub delete: Vec<String>,
    /// The matrices expected once the step is followed.
    pub expect: Vec<Expect>,
    /// The expectations are those of the state before (the step changes nothing visible).
    pub unchanged: bool,
}

/// An expected matrix for one protocol and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// 80 or 81.
    pub port: u16,
    /// Rows sources, columns destinations.
    pub matrix: Matrix,
}

impl Expect {
    /// `matrix` for `protocol` and `port`.
    pub fn new(protocol: Protocol, port: u16, matrix: Matrix) -> Self {
        Self {
            protocol,
            port,
            matrix,
        }
    }
}

impl Step {
    /// A step applying `objects`.
    pub fn apply(what: &'static str, objects: Vec<String>) -> Self {
        Self {
            what,
            apply: objects,
            delete: Vec::new(),
            expect: Vec::new(),
            unchanged: false,
        }
    }

    /// A step deleting the NetworkPolicies `objects`.
    pub fn delete(what: &'static str, objects: Vec<String>) -> Self {
        Self {
            delete: objects,
            ..Self::apply(what, Vec::new())
        }
    }

    /// Expects `matrix` for TCP `port`.
    pub fn tcp(mut self, port: u16, matrix: Matrix) -> Self {
        self.expect.push(Expect::new(Protocol::Tcp, port, matrix));
        self
    }

    /// Expects `matrix` for UDP `port`.
    pub fn udp(mut self, port: u16, matrix: Matrix) -> Self {
        self.expect.push(Expect::new(Protocol::Udp, port, matrix));
        self
    }

    /// Marks the step as changing no expected matrix.
    pub fn unchanged(mut self) -> Self {
        self.unchanged = true;
        self
    }
}

/// Every case, ingress first.
pub fn all() -> Vec<Case> {
    let mut cases = ingress::cases();
    cases.extend(egress::cases());
    cases
}

/// The cases the default-datapath lab test runs: one of each kind (deny, namespace and pod
/// selectors, AND and OR, ipBlock with except, named ports, endPort, UDP, update, deletion,
/// pod and namespace label changes).
pub fn quick() -> Vec<Case> {
    const QUICK: [&str; 13] = [
        "default_deny_ingress",
        "default_deny_egress",
        "allow_from_namespace",
        "namespace_and_pod_in_one_peer",
        "namespace_or_pod_in_two_peers",
        "ip_block_egress_except",
        "named_port_ingress",
        "end_port_range",
        "udp_deny_then_allow_port",
        "policy_update",
        "policy_deletion",
        "pod_label_into_peer_selector",
        "namespace_label_change",
    ];
    all()
        .into_iter()
        .filter(|c| QUICK.contains(&c.name))
        .collect()
}

/// A NetworkPolicy `name` in `namespace` whose spec is `spec`: YAML lines (flow style
/// within a line), indented under `spec:` here. Quote `"y"` in them: a plain `y` is a
/// boolean to the YAML reader.
pub fn np(namespace: &str, name: &str, spec: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name:?}\n  \
         namespace: {namespace:?}\nspec:\n"
    );
    for line in spec {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// A NetworkPolicy to delete: its kind, namespace and name.
pub fn np_ref(namespace: &str, name: &str) -> String {
    np(namespace, name, &["podSelector: {}"])
}

/// Nothing reaches a pod of x but itself.
fn x_closed() -> Matrix {
    Matrix::rows([
        "x/a 1.. 111 111",
        "x/b .1. 111 111",
        "x/c ..1 111 111",
        "y/a ... 111 111",
        "y/b ... 111 111",
        "y/c ... 111 111",
        "z/a ... 111 111",
        "z/b ... 111 111",
        "z/c ... 111 111",
    ])
}

/// Every pod of x reaches only itself.
fn x_cannot_send() -> Matrix {
    Matrix::rows([
        "x/a 1.. ... ...",
        "x/b .1. ... ...",
        "x/c ..1 ... ...",
        "y/a 111 111 111",
        "y/b 111 111 111",
        "y/c 111 111 111",
        "z/a 111 111 111",
        "z/b 111 111 111",
        "z/c 111 111 111",
    ])
}

/// x/a is reached by everyone, x/b and x/c by themselves only.
fn only_x_a_open() -> Matrix {
    Matrix::rows([
        "x/a 1.. 111 111",
        "x/b 11. 111 111",
        "x/c 1.1 111 111",
        "y/a 1.. 111 111",
        "y/b 1.. 111 111",
        "y/c 1.. 111 111",
        "z/a 1.. 111 111",
        "z/b 1.. 111 111",
        "z/c 1.. 111 111",
    ])
}

/// The pods of namespace y.
const FROM_Y: &[&str] = &["y/a", "y/b", "y/c"];
/// x/a's ingress: only x/a itself reaches it.
fn x_a_closed() -> Matrix {
    Matrix::only_into("x/a", &[])
}
