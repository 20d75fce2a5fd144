//! Ingress cases: default deny, allow-all, namespace and pod selectors (AND, OR,
//! matchExpressions), ports (numbers, names, ranges, protocols), policies adding up.

use super::{Case, FROM_Y, Step, np, only_x_a_open, x_a_closed, x_closed};
use crate::netpol::{Matrix, Pods};

/// x/a accepts only from the pods of y.
fn x_a_from_y() -> Matrix {
    Matrix::only_into("x/a", FROM_Y)
}

fn deny_ingress_x() -> String {
    np(
        "x",
        "deny-ingress",
        &["podSelector: {}", "policyTypes: [Ingress]"],
    )
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "default_deny_ingress",
            upstream: "should support a 'default-deny-ingress' policy [Feature:UDP]",
            steps: |_: &Pods| {
                vec![
                    Step::apply("deny ingress in x", vec![deny_ingress_x()])
                        .tcp(80, x_closed())
                        .tcp(81, x_closed())
                        .udp(80, x_closed()),
                ]
            },
        },
        Case {
            name: "default_deny_all",
            upstream: "should support a 'default-deny-all' policy",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "deny-all",
                    &["podSelector: {}", "policyTypes: [Ingress, Egress]"],
                );
                let m = Matrix::rows([
                    "x/a 1.. ... ...",
                    "x/b .1. ... ...",
                    "x/c ..1 ... ...",
                    "y/a ... 111 111",
                    "y/b ... 111 111",
                    "y/c ... 111 111",
                    "z/a ... 111 111",
                    "z/b ... 111 111",
                    "z/c ... 111 111",
                ]);
                vec![Step::apply("deny all in x", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "allow_all_ingress",
            upstream: "should support allow-all policy; multiple ingress policies with ingress \
                       allow-all policy taking precedence",
            steps: |_: &Pods| {
                let allow = np("x", "allow-all", &["podSelector: {}", "ingress: [{}]"]);
                vec![
                    Step::apply("deny ingress in x", vec![deny_ingress_x()]).tcp(80, x_closed()),
                    Step::apply("allow all ingress in x beside it", vec![allow])
                        .tcp(80, Matrix::OPEN)
                        .udp(81, Matrix::OPEN),
                ]
            },
        },
        Case {
            name: "allow_ingress_to_a_target",
            upstream: "should enforce policy to allow ingress traffic for a target",
            steps: |_: &Pods| {
                let to_a = np(
                    "x",
                    "allow-all-to-a",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]",
                    ],
                );
                vec![
                    Step::apply(
                        "deny ingress in x, allow all to x/a",
                        vec![deny_ingress_x(), to_a],
                    )
                    .tcp(80, only_x_a_open()),
                ]
            },
        },
        Case {
            name: "allow_from_pod_in_namespace",
            upstream: "should enforce policy to allow traffic from pods within server namespace \
                       based on PodSelector",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "x-a-allows-x-b",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
                    ],
                );
                let m = Matrix::only_into("x/a", &["x/b"]);
                vec![Step::apply("x/a from pod b of x", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "allow_from_namespace",
            upstream: "should enforce policy to allow traffic only from a different namespace, \
                       based on NamespaceSelector",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "allow-from-y",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]",
                    ],
                );
                vec![Step::apply("x/a from namespace y", vec![policy]).tcp(80, x_a_from_y())]
            },
        },
        Case {
            name: "allow_from_namespace_by_name_label",
            upstream: "should enforce policy based on NamespaceSelector with MatchExpressions \
                       using default ns label",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "allow-ns-y-expr",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: \
                         kubernetes.io/metadata.name, operator: In, values: [\"y\"]}]}}]}]",
                    ],
                );
                vec![
                    Step::apply("x/a from the namespace named y", vec![policy])
                        .tcp(80, x_a_from_y()),
                ]
            },
        },
        Case {
            name: "match_expressions",
            upstream: "should enforce policy based on PodSelector with MatchExpressions",
            steps: |_: &Pods| {
                // x/b and x/c (pod NotIn a) accept pods a and b (NotIn c) of every namespace
                // but y (NotIn y); z/c accepts pods without a `pod` label: none.
                let x = np(
                    "x",
                    "not-in",
                    &[
                        "podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: \
                         [a]}]}",
                        "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, \
                         operator: NotIn, values: [\"y\"]}]}, podSelector: {matchExpressions: \
                         [{key: pod, operator: NotIn, values: [c]}]}}]}]",
                    ],
                );
                let z = np(
                    "z",
                    "unlabelled",
                    &[
                        "podSelector: {matchExpressions: [{key: pod, operator: In, values: [c]}]}",
                        "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, \
                         operator: Exists}]}, podSelector: {matchExpressions: [{key: pod, \
                         operator: DoesNotExist}]}}]}]",
                    ],
                );
                let m = Matrix::rows([
                    "x/a 111 111 11.",
                    "x/b 111 111 11.",
                    "x/c 1.1 111 11.",
                    "y/a 1.. 111 11.",
                    "y/b 1.. 111 11.",
                    "y/c 1.. 111 11.",
                    "z/a 111 111 11.",
                    "z/b 111 111 11.",
                    "z/c 1.. 111 111",
                ]);
                vec![Step::apply("In, NotIn, Exists, DoesNotExist", vec![x, z]).tcp(80, m)]
            },
        },
        Case {
            name: "namespace_and_pod_in_one_peer",
            upstream: "should enforce policy based on PodSelector and NamespaceSelector",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "ns-and-pod",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, \
                         operator: NotIn, values: [x]}]}, podSelector: {matchLabels: {pod: b}}}]}]",
                    ],
                );
                let m = Matrix::only_into("x/a", &["y/b", "z/b"]);
                vec![Step::apply("x/a from pods b outside x", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "namespace_or_pod_in_two_peers",
            upstream: "should enforce policy based on PodSelector or NamespaceSelector",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "ns-or-pod",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, \
                         operator: NotIn, values: [x]}]}}, {podSelector: {matchLabels: {pod: \
                         b}}}]}]",
                    ],
                );
                let m = Matrix::rows([
                    "x/a 111 111 111",
                    "x/b 111 111 111",
                    "x/c .11 111 111",
                    "y/a 111 111 111",
                    "y/b 111 111 111",
                    "y/c 111 111 111",
                    "z/a 111 111 111",
                    "z/b 111 111 111",
                    "z/c 111 111 111",
                ]);
                vec![Step::apply("x/a from outside x, or from x/b", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "pod_in_another_namespace",
            upstream: "should enforce policy to allow traffic only from a pod in a different \
                       namespace based on PodSelector and NamespaceSelector [Feature:UDP]",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "from-y-c",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, \
                         podSelector: {matchLabels: {pod: c}}}]}]",
                    ],
                );
                let m = Matrix::only_into("x/a", &["y/c"]);
                vec![
                    Step::apply("x/a from y/c", vec![policy])
                        .tcp(80, m)
                        .udp(80, m),
                ]
            },
        },
        Case {
            name: "deny_from_other_namespaces",
            upstream: "should deny ingress from pods on other namespaces",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "same-namespace",
                    &["podSelector: {}", "ingress: [{from: [{podSelector: {}}]}]"],
                );
                let m = Matrix::rows([
                    "x/a 111 111 111",
                    "x/b 111 111 111",
                    "x/c 111 111 111",
                    "y/a ... 111 111",
                    "y/b ... 111 111",
                    "y/c ... 111 111",
                    "z/a ... 111 111",
                    "z/b ... 111 111",
                    "z/c ... 111 111",
                ]);
                vec![Step::apply("x from x only", vec![policy]).tcp(80, m)]
            },
        },
        Case {
            name: "port_81_not_80",
            upstream: "should enforce policy based on Ports",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "from-y-81",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], \
                         ports: [{port: 81}]}]",
                    ],
                );
                vec![
                    Step::apply("x/a from y on TCP 81", vec![policy])
                        .tcp(81, x_a_from_y())
                        .tcp(80, x_a_closed())
                        .udp(81, x_a_closed()),
                ]
            },
        },
        Case {
            name: "named_port_ingress",
            upstream: "should allow ingress access on one named port",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "named-81",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{ports: [{port: serve-81-tcp}]}]",
                    ],
                );
                vec![
                    Step::apply("x/a on serve-81-tcp", vec![policy])
                        .tcp(81, Matrix::OPEN)
                        .tcp(80, x_a_closed())
                        .udp(81, x_a_closed()),
                ]
            },
        },
        Case {
            name: "named_port_ingress_from_namespace",
            upstream: "should allow ingress access from namespace on one named port",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "named-80-from-y",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], \
                         ports: [{protocol: TCP, port: serve-80-tcp}]}]",
                    ],
                );
                vec![
                    Step::apply("x/a from y on serve-80-tcp", vec![policy])
                        .tcp(80, x_a_from_y())
                        .tcp(81, x_a_closed()),
                ]
            },
        },
        Case {
            name: "end_port_range",
            upstream: "should support a policy with endPort (port ranges), updated",
            steps: |_: &Pods| {
                let range = |first: u16, last: u16| {
                    let ports = format!(
                        "ingress: [{{from: [{{namespaceSelector: {{matchLabels: \
                         {{ns: \"y\"}}}}}}], ports: [{{protocol: TCP, port: {first}, endPort: \
                         {last}}}]}}]"
                    );
                    np(
                        "x",
                        "range",
                        &["podSelector: {matchLabels: {pod: a}}", &ports],
                    )
                };
                vec![
                    Step::apply("x/a from y on TCP 80-81", vec![range(80, 81)])
                        .tcp(80, x_a_from_y())
                        .tcp(81, x_a_from_y())
                        .udp(80, x_a_closed()),
                    Step::apply("the range becomes 81-90", vec![range(81, 90)])
                        .tcp(80, x_a_closed())
                        .tcp(81, x_a_from_y()),
                ]
            },
        },
        Case {
            name: "stacked_port_policies",
            upstream: "should enforce multiple, stacked policies with overlapping podSelectors",
            steps: |_: &Pods| {
                let port = |name: &str, port: u16| {
                    let rule = format!(
                        "ingress: [{{from: [{{namespaceSelector: {{matchLabels: \
                         {{ns: \"y\"}}}}}}], ports: [{{port: {port}}}]}}]"
                    );
                    np("x", name, &["podSelector: {matchLabels: {pod: a}}", &rule])
                };
                vec![
                    Step::apply("x/a from y on 80", vec![port("from-y-80", 80)])
                        .tcp(80, x_a_from_y())
                        .tcp(81, x_a_closed()),
                    Step::apply("and from y on 81", vec![port("from-y-81", 81)])
                        .tcp(80, x_a_from_y())
                        .tcp(81, x_a_from_y()),
                ]
            },
        },
        Case {
            name: "peers_add_up",
            upstream: "policies add up (stacked ingress policies; an egress policy beside them)",
            steps: |_: &Pods| {
                let from = |name: &str, peer: &str| {
                    let rule = format!("ingress: [{{from: [{peer}]}}]");
                    np("x", name, &["podSelector: {matchLabels: {pod: a}}", &rule])
                };
                let xb = from("from-xb", "{podSelector: {matchLabels: {pod: b}}}");
                let y = from("from-y", "{namespaceSelector: {matchLabels: {ns: \"y\"}}}");
                let no_egress = np(
                    "x",
                    "no-egress",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "policyTypes: [Egress]",
                    ],
                );
                let union = Matrix::only_into("x/a", &["x/b", "y/a", "y/b", "y/c"]);
                vec![
                    Step::apply("x/a from x/b", vec![xb])
                        .tcp(80, Matrix::only_into("x/a", &["x/b"])),
                    Step::apply("and from y", vec![y]).tcp(80, union),
                    Step::apply("and x/a's egress denied", vec![no_egress])
                        .tcp(80, union.with_row("x/a 1.. ... ...")),
                ]
            },
        },
        Case {
            name: "udp_deny_then_allow_port",
            upstream: "should support a 'default-deny-ingress' policy, then allow a specific \
                       port [Feature:UDP]",
            steps: |_: &Pods| {
                let udp_81 = np(
                    "x",
                    "udp-81-to-a",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{ports: [{protocol: UDP, port: 81}]}]",
                    ],
                );
                vec![
                    Step::apply("deny ingress in x", vec![deny_ingress_x()])
                        .udp(80, x_closed())
                        .udp(81, x_closed()),
                    Step::apply("allow UDP 81 to x/a", vec![udp_81])
                        .udp(81, only_x_a_open())
                        .udp(80, x_closed())
                        .tcp(81, x_closed()),
                ]
            },
        },
        Case {
            name: "udp_only_not_tcp",
            upstream: "should not allow access by TCP when a policy specifies only UDP",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "udp-80",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{ports: [{protocol: UDP, port: 80}]}]",
                    ],
                );
                vec![
                    Step::apply("x/a on UDP 80", vec![policy])
                        .udp(80, Matrix::OPEN)
                        .tcp(80, x_a_closed())
                        .udp(81, x_a_closed()),
                ]
            },
        },
        Case {
            name: "any_port_of_a_protocol",
            upstream: "should enforce ingress policy allowing any port traffic to a server on a \
                       specific protocol",
            steps: |_: &Pods| {
                let policy = np(
                    "x",
                    "tcp-any",
                    &[
                        "podSelector: {matchLabels: {pod: a}}",
                        "ingress: [{ports: [{protocol: TCP}]}]",
                    ],
                );
                vec![
                    Step::apply("x/a on any TCP port", vec![policy])
                        .tcp(80, Matrix::OPEN)
                        .tcp(81, Matrix::OPEN)
                        .udp(80, x_a_closed()),
                ]
            },
        },
    ]
}
