//! Egress cases, ipBlocks (built from the pods' real addresses), and changes: a policy
//! updated or deleted, a pod or a namespace relabelled.

use super::{Case, FROM_Y, Step, np, np_ref, x_a_closed, x_cannot_send, x_closed};
use crate::netpol::{Matrix, Pods, namespace_yaml, pod_yaml};

/// x/a's row: it reaches itself only.
const X_A_SENDS_NOTHING: &str = "x/a 1.. ... ...";

/// An egress policy selecting x/a with the rule `egress` (a YAML flow list).
fn x_a_egress(name: &str, egress: &str) -> String {
    let rules = format!("egress: {egress}");
    np(
        "x",
        name,
        &[
            "podSelector: {matchLabels: {pod: a}}",
            "policyTypes: [Egress]",
            &rules,
        ],
    )
}

/// x/a's egress to the pods' block but `except` (labels).
fn to_block_except(pods: &Pods, name: &str, except: &[&str], extra: &str) -> String {
    let except: Vec<String> = except
        .iter()
        .map(|l| format!("{:?}", pods.cidr32(l)))
        .collect();
    let peer = format!(
        "{{ipBlock: {{cidr: {:?}, except: [{}]}}}}",
        pods.supernet(),
        except.join(", ")
    );
    x_a_egress(name, &format!("[{{to: [{peer}{extra}]}}]"))
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "default_deny_egress",
            upstream: "should deny egress from all pods in a namespace",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "deny-egress",
                    &["podSelector: {}", "policyTypes: [Egress]"],
                );
                vec![
                    Step::apply("deny egress in x", vec![policy])
                        .tcp(80, x_cannot_send())
                        .udp(81, x_cannot_send()),
                ]
            },
        },
        Case {
            name: "deny_egress_of_one_pod",
            upstream: "should deny egress from pods based on PodSelector",
            steps: |_: &Pods| {
                let m = Matrix::OPEN.with_row(X_A_SENDS_NOTHING);
                vec![Step::apply("deny x/a's egress", vec![x_a_egress("deny-a", "[]")]).tcp(80, m)]
            },
        },
        Case {
            name: "egress_to_namespace",
            upstream: "should enforce egress policy to a namespace",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "to-y",
                    &[
                        "podSelector: {}",
                        "policyTypes: [Egress]",
                        "egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]",
                    ],
                );
                let m = Matrix::rows([
                    "x/a 1.. 111 ...",
                    "x/b .1. 111 ...",
                    "x/c ..1 111 ...",
                    "y/a 111 111 111",
                    "y/b 111 111 111",
                    "y/c 111 111 111",
                    "z/a 111 111 111",
                    "z/b 111 111 111",
                    "z/c 111 111 111",
                ]);
                vec![
                    Step::apply("x to y only", vec![policy])
                        .tcp(80, m)
                        .udp(81, m),
                ]
            },
        },
        Case {
            name: "egress_to_pod_in_namespace",
            upstream: "should enforce egress policy allowing traffic to a server in a different \
                       namespace based on PodSelector and NamespaceSelector",
            steps: |_: &Pods| {
                let policy = x_a_egress(
                    "to-y-a",
                    "[{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: \
                     {matchLabels: {pod: a}}}]}]",
                );
                let m = Matrix::OPEN.with_row("x/a 1.. 1.. ...");
                vec![Step::apply("x/a to y/a only", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "named_port_egress",
            upstream: "should allow egress access on one named port",
            steps: |_: &Pods| {
                let policy = x_a_egress("to-serve-80", "[{ports: [{port: serve-80-tcp}]}]");
                let closed = Matrix::OPEN.with_row(X_A_SENDS_NOTHING);
                vec![
                    Step::apply("x/a to serve-80-tcp only", vec![policy])
                        .tcp(80, Matrix::OPEN)
                        .tcp(81, closed)
                        .udp(80, closed),
                ]
            },
        },
        Case {
            name: "egress_allow_all_precedence",
            upstream: "should enforce multiple egress policies with egress allow-all policy \
                       taking precedence",
            steps: |_: &Pods| {
                let port_80 = x_a_egress("to-80", "[{ports: [{port: 80}]}]");
                let all = x_a_egress("to-all", "[{}]");
                vec![
                    Step::apply("x/a to port 80 only", vec![port_80])
                        .tcp(80, Matrix::OPEN)
                        .tcp(81, Matrix::OPEN.with_row(X_A_SENDS_NOTHING)),
                    Step::apply("and x/a to anything", vec![all])
                        .tcp(80, Matrix::OPEN)
                        .tcp(81, Matrix::OPEN),
                ]
            },
        },
        Case {
            name: "ingress_and_egress_together",
            upstream: "should work with Ingress, Egress specified together",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "both",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "policyTypes: [Ingress, Egress]",
                        "ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
                        "egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]",
                    ],
                );
                let m = Matrix::rows([
                    "x/a 1.. 111 ...",
                    "x/b 111 111 111",
                    "x/c .11 111 111",
                    "y/a .11 111 111",
                    "y/b .11 111 111",
                    "y/c .11 111 111",
                    "z/a .11 111 111",
                    "z/b .11 111 111",
                    "z/c .11 111 111",
                ]);
                vec![Step::apply("x/a from x/b, to y", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "client_side_egress_deny",
            upstream: "should support denying of egress traffic on the client side (even if the \
                       server explicitly allows this traffic)",
            steps: |_: &Pods| {
                let server = np(
                    "y",
                    "from-x-a",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, \
                         podSelector: {matchLabels: {pod: a}}}]}]",
                    ],
                );
                let client = x_a_egress("deny-a", "[]");
                let into = Matrix::only_into("y/a", &["x/a"]);
                let denied = Matrix::only_into("y/a", &[]).with_row(X_A_SENDS_NOTHING);
                vec![
                    Step::apply("y/a from x/a only", vec![server]).tcp(80, into),
                    Step::apply("x/a's egress denied", vec![client]).tcp(80, denied),
                ]
            },
        },
        Case {
            name: "ip_block_egress_cidr",
            upstream: "should allow egress access to server in CIDR block",
            steps: |pods: &Pods| {
                let rule = format!(
                    "[{{to: [{{ipBlock: {{cidr: {:?}}}}}]}}]",
                    pods.cidr32("y/b")
                );
                let m = Matrix::OPEN.with_row("x/a 1.. .1. ...");
                vec![
                    Step::apply("x/a to y/b's /32 only", vec![x_a_egress("to-y-b", &rule)])
                        .tcp(80, m),
                ]
            },
        },
        Case {
            name: "ip_block_egress_except",
            upstream: "should enforce except clause while egress access to server in CIDR block",
            steps: |pods: &Pods| {
                let policy = to_block_except(pods, "to-block", &["y/b"], "");
                let m = Matrix::OPEN.with_row("x/a 111 1.1 111");
                vec![Step::apply("x/a to the pods' block but y/b", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "ip_block_overlapping_except",
            upstream: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is \
                       allowed",
            steps: |pods: &Pods| {
                let y_b = format!(", {{ipBlock: {{cidr: {:?}}}}}", pods.cidr32("y/b"));
                let before = to_block_except(pods, "to-block", &["y/b"], "");
                let after = to_block_except(pods, "to-block", &["y/b"], &y_b);
                vec![
                    Step::apply("x/a to the pods' block but y/b", vec![before])
                        .tcp(80, Matrix::OPEN.with_row("x/a 111 1.1 111")),
                    Step::apply("updated: and to y/b's /32", vec![after]).tcp(80, Matrix::OPEN),
                ]
            },
        },
        Case {
            name: "ip_block_ingress_except",
            upstream: "should enforce ingress from a CIDR block with except",
            steps: |pods: &Pods| {
                let except: Vec<String> = ["z/a", "z/b", "z/c"]
                    .iter()
                    .map(|l| format!("{:?}", pods.cidr32(l)))
                    .collect();
                let rule = format!(
                    "ingress: [{{from: [{{ipBlock: {{cidr: {:?}, except: [{}]}}}}]}}]",
                    pods.supernet(),
                    except.join(", ")
                );
                let policy = np(
                    "x",
                    "from-block",
                    &["podSelector: {matchLabels: {pod: a}}", &rule],
                );
                let m = Matrix::only_into("x/a", &["x/b", "x/c", "y/a", "y/b", "y/c"]);
                vec![Step::apply("x/a from the pods' block but z", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "policy_update",
            upstream: "should enforce updated policy",
            steps: |_: &Pods| {
                let policy = |peer: &str| {
                    let rule = format!("ingress: [{{from: [{peer}]}}]");
                    np(
                        "x",
                        "allow-client",
                        &["podSelector: {matchLabels: {pod: a}}", &rule],
                    )
                };
                vec![
                    Step::apply(
                        "x/a from x/b",
                        vec![policy("{podSelector: {matchLabels: {pod: b}}}")],
                    )
                    .tcp(80, Matrix::only_into("x/a", &["x/b"])),
                    Step::apply(
                        "updated: x/a from y",
                        vec![policy("{namespaceSelector: {matchLabels: {ns: \"y\"}}}")],
                    )
                    .tcp(80, Matrix::only_into("x/a", FROM_Y)),
                ]
            },
        },
        Case {
            name: "policy_deletion",
            upstream: "should stop enforcing policies after they are deleted",
            steps: |_: &Pods| {
                let deny = np(
                    "x",
                    "deny-ingress",
                    &["podSelector: {}", "policyTypes: [Ingress]"],
                );
                let from_y = np(
                    "x",
                    "from-y",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]",
                    ],
                );
                let both = Matrix::rows([
                    "x/a 1.. 111 111",
                    "x/b .1. 111 111",
                    "x/c ..1 111 111",
                    "y/a 1.. 111 111",
                    "y/b 1.. 111 111",
                    "y/c 1.. 111 111",
                    "z/a ... 111 111",
                    "z/b ... 111 111",
                    "z/c ... 111 111",
                ]);
                vec![
                    Step::apply("deny ingress in x, x/a from y", vec![deny, from_y]).tcp(80, both),
                    Step::delete("delete x/a from y", vec![np_ref("x", "from-y")])
                        .tcp(80, x_closed()),
                    Step::delete("delete the deny", vec![np_ref("x", "deny-ingress")])
                        .tcp(80, Matrix::OPEN)
                        .udp(80, Matrix::OPEN),
                ]
            },
        },
        Case {
            name: "pod_label_into_peer_selector",
            upstream: "should allow ingress access from updated pod",
            steps: |pods: &Pods| {
                let policy = np(
                    "x",
                    "from-clients",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]",
                    ],
                );
                let client = pod_yaml(pods, "x/b", &[("pod", "b"), ("role", "client")]);
                let plain = pod_yaml(pods, "x/b", &[("pod", "b")]);
                vec![
                    Step::apply("x/a from pods labelled role=client", vec![policy])
                        .tcp(80, x_a_closed()),
                    Step::apply("x/b labelled role=client", vec![client])
                        .tcp(80, Matrix::only_into("x/a", &["x/b"])),
                    Step::apply("x/b's label removed", vec![plain]).tcp(80, x_a_closed()),
                ]
            },
        },
        Case {
            name: "pod_label_into_policy",
            upstream: "should deny ingress access to updated pod",
            steps: |pods: &Pods| {
                let policy = np(
                    "x",
                    "isolate-target",
                    &[
                        "podSelector: {matchLabels: {target: isolated}}",
                        "policyTypes: [Ingress]",
                    ],
                );
                let target = pod_yaml(pods, "x/a", &[("pod", "a"), ("target", "isolated")]);
                let plain = pod_yaml(pods, "x/a", &[("pod", "a")]);
                vec![
                    Step::apply(
                        "deny ingress to pods labelled target=isolated",
                        vec![policy],
                    )
                    .tcp(80, Matrix::OPEN)
                    .unchanged(),
                    Step::apply("x/a labelled target=isolated", vec![target]).tcp(80, x_a_closed()),
                    Step::apply("x/a's label removed", vec![plain]).tcp(80, Matrix::OPEN),
                ]
            },
        },
        Case {
            name: "namespace_label_change",
            upstream: "should allow ingress access from updated namespace",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "from-blue",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
                    ],
                );
                vec![
                    Step::apply("x/a from namespaces labelled team=blue", vec![policy])
                        .tcp(80, x_a_closed()),
                    Step::apply(
                        "y labelled team=blue",
                        vec![namespace_yaml("y", &[("ns", "y"), ("team", "blue")])],
                    )
                    .tcp(80, Matrix::only_into("x/a", FROM_Y)),
                    Step::apply(
                        "the label moves from y to z",
                        vec![
                            namespace_yaml("y", &[("ns", "y")]),
                            namespace_yaml("z", &[("ns", "z"), ("team", "blue")]),
                        ],
                    )
                    .tcp(80, Matrix::only_into("x/a", &["z/a", "z/b", "z/c"])),
                ]
            },
        },
    ]
}
