//! NetworkPolicy objects: the reference example, each defaulting rule, each refusal.

use super::*;

/// A policy named `default/p` with `spec`.
fn policy(spec: &str) -> Result<NetworkPolicy, ConvertError> {
    let json = format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{{"name":"p","namespace":"default","uid":"6c4f5c1e-0b0e-4e4a-9d39-2c1c8d1f8a10","resourceVersion":"4711","generation":1,"creationTimestamp":"2026-12-01T10:00:00Z"}},"spec":{spec}}}"#
    );
    from_json::<api_net::NetworkPolicy>(json.as_bytes())
}

/// The problem and field of a policy `spec` that must be refused.
fn refused(spec: &str) -> (String, Problem) {
    let e = policy(spec).unwrap_err();
    assert_eq!(e.kind, Kind::NetworkPolicy);
    assert_eq!(e.namespace.as_deref(), Some("default"));
    assert_eq!(e.name.as_deref(), Some("p"));
    (e.field, e.problem)
}

fn rules(p: &NetworkPolicy) -> (Option<&[Rule]>, Option<&[Rule]>) {
    (p.ingress.as_deref(), p.egress.as_deref())
}

// ---- NetworkPolicy ----

#[test]
fn the_reference_example_converts() {
    // The example of the Kubernetes documentation ("The NetworkPolicy resource").
    let p = policy(
        r#"{
      "podSelector": {"matchLabels": {"role": "db"}},
      "policyTypes": ["Ingress", "Egress"],
      "ingress": [{
        "from": [
          {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
          {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
          {"podSelector": {"matchLabels": {"role": "frontend"}}}
        ],
        "ports": [{"protocol": "TCP", "port": 6379}]
      }],
      "egress": [{
        "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
        "ports": [{"protocol": "TCP", "port": 5978}]
      }]
    }"#,
    )
    .unwrap();
    let tcp = |n| PolicyPort {
        protocol: Protocol::Tcp,
        port: Some(PortSpec::Number { first: n, last: n }),
    };
    assert_eq!(
        p,
        NetworkPolicy {
            namespace: "default".into(),
            name: "p".into(),
            pod_selector: select(&[("role", "db")]),
            ingress: Some(vec![Rule {
                peers: vec![
                    Peer::IpBlock {
                        cidr: net("172.17.0.0/16"),
                        except: vec![net("172.17.1.0/24")],
                    },
                    Peer::Pods {
                        namespaces: Some(select(&[("project", "myproject")])),
                        pods: LabelSelector::everything(),
                    },
                    Peer::Pods {
                        namespaces: None,
                        pods: select(&[("role", "frontend")]),
                    },
                ],
                ports: vec![tcp(6379)],
            }]),
            egress: Some(vec![Rule {
                peers: vec![Peer::IpBlock {
                    cidr: net("10.0.0.0/24"),
                    except: Vec::new(),
                }],
                ports: vec![tcp(5978)],
            }]),
        }
    );
}

#[test]
fn policy_types_default_from_the_rules() {
    // No policyTypes, no egress: Ingress only (a default-deny-ingress policy).
    let p = policy(r#"{"podSelector":{}}"#).unwrap();
    assert_eq!(rules(&p), (Some(&[][..]), None));
    assert_eq!(p.pod_selector, LabelSelector::everything());
    // An empty egress list does not make it an egress policy.
    let p = policy(r#"{"podSelector":{},"egress":[]}"#).unwrap();
    assert_eq!(rules(&p), (Some(&[][..]), None));
    // One egress rule does.
    let p = policy(r#"{"podSelector":{},"egress":[{}]}"#).unwrap();
    assert_eq!(rules(&p), (Some(&[][..]), Some(&[Rule::default()][..])));
    // An empty policyTypes list is absent.
    let p = policy(r#"{"podSelector":{},"policyTypes":[],"egress":[{}]}"#).unwrap();
    assert_eq!(
        p.policy_types(),
        cluster::PolicyTypes {
            ingress: true,
            egress: true
        }
    );
    // Allow all ingress: one empty rule.
    let p = policy(r#"{"podSelector":{},"ingress":[{}]}"#).unwrap();
    assert_eq!(rules(&p), (Some(&[Rule::default()][..]), None));
}

#[test]
fn explicit_policy_types_win_and_drop_the_other_direction() {
    // Default deny egress.
    let p = policy(r#"{"podSelector":{},"policyTypes":["Egress"]}"#).unwrap();
    assert_eq!(rules(&p), (None, Some(&[][..])));
    // Ingress rules of an egress-only policy have no effect and are dropped.
    let p = policy(r#"{"podSelector":{},"policyTypes":["Egress"],"ingress":[{}],"egress":[{}]}"#)
        .unwrap();
    assert_eq!(rules(&p), (None, Some(&[Rule::default()][..])));
    let p = policy(r#"{"podSelector":{},"policyTypes":["Ingress"],"egress":[{}]}"#).unwrap();
    assert_eq!(rules(&p), (Some(&[][..]), None));
    // Both, without rules: deny all.
    let p = policy(r#"{"podSelector":{},"policyTypes":["Ingress","Egress"]}"#).unwrap();
    assert_eq!(rules(&p), (Some(&[][..]), Some(&[][..])));
    // But the dropped rules are still checked.
    let (field, problem) =
        refused(r#"{"podSelector":{},"policyTypes":["Egress"],"ingress":[{"from":[{}]}]}"#);
    assert_eq!(
        (field.as_str(), problem),
        ("spec.ingress[0].from[0]", Problem::EmptyPeer)
    );
}

#[test]
fn absent_spec_and_selector_select_every_pod() {
    let json = r#"{"metadata":{"name":"p","namespace":"default"}}"#;
    let p = from_json::<api_net::NetworkPolicy>(json.as_bytes()).unwrap();
    assert_eq!(p.pod_selector, LabelSelector::everything());
    assert_eq!(rules(&p), (Some(&[][..]), None));
    let p = policy(r#"{"ingress":[{}]}"#).unwrap();
    assert_eq!(p.pod_selector, LabelSelector::everything());
}

#[test]
fn peer_selectors() {
    let p = policy(
        r#"{"podSelector":{"matchLabels":{"app":"db"}},"ingress":[{"from":[
          {"namespaceSelector":{}},
          {"podSelector":{}},
          {"namespaceSelector":{"matchLabels":{"team":"a"}},"podSelector":{"matchExpressions":[
            {"key":"tier","operator":"In","values":["web","api","web"]},
            {"key":"canary","operator":"DoesNotExist"},
            {"key":"env","operator":"NotIn","values":["dev"]},
            {"key":"owner","operator":"Exists","values":[]}]}}
        ]}]}"#,
    )
    .unwrap();
    let req = |key: &str, operator, values: &[&str]| Requirement {
        key: key.to_owned(),
        operator,
        values: values
            .iter()
            .map(|v| (*v).to_owned())
            .collect::<BTreeSet<_>>(),
    };
    assert_eq!(
        p.ingress.unwrap()[0].peers,
        [
            // Every pod of every namespace.
            Peer::Pods {
                namespaces: Some(LabelSelector::everything()),
                pods: LabelSelector::everything(),
            },
            // Every pod of the policy's namespace.
            Peer::Pods {
                namespaces: None,
                pods: LabelSelector::everything(),
            },
            Peer::Pods {
                namespaces: Some(select(&[("team", "a")])),
                pods: LabelSelector {
                    match_labels: BTreeMap::new(),
                    match_expressions: vec![
                        req("tier", Operator::In, &["api", "web"]),
                        req("canary", Operator::DoesNotExist, &[]),
                        req("env", Operator::NotIn, &["dev"]),
                        req("owner", Operator::Exists, &[]),
                    ],
                },
            },
        ]
    );
}

#[test]
fn ports_default_and_ranges() {
    let p = policy(
        r#"{"podSelector":{},"policyTypes":["Egress"],"egress":[{"ports":[
          {"port":53},
          {"protocol":"UDP","port":53},
          {"protocol":"TCP","port":32000,"endPort":32768},
          {"protocol":"SCTP"},
          {"port":"metrics"},
          {"port":1,"endPort":65535},
          {"port":80,"endPort":80}
        ]}]}"#,
    )
    .unwrap();
    let num = |protocol, first, last| PolicyPort {
        protocol,
        port: Some(PortSpec::Number { first, last }),
    };
    assert_eq!(
        p.egress.unwrap()[0].ports,
        [
            num(Protocol::Tcp, 53, 53),
            num(Protocol::Udp, 53, 53),
            num(Protocol::Tcp, 32000, 32768),
            PolicyPort {
                protocol: Protocol::Sctp,
                port: None
            },
            PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortSpec::Named("metrics".into()))
            },
            num(Protocol::Tcp, 1, 65535),
            num(Protocol::Tcp, 80, 80),
        ]
    );
}

#[test]
fn ip_blocks_are_networks() {
    let p = policy(
        r#"{"podSelector":{},"ingress":[{"from":[
          {"ipBlock":{"cidr":"192.0.2.77/24","except":["192.0.2.129/25","192.0.2.7/32"]}},
          {"ipBlock":{"cidr":"2001:db8::1/32","except":[]}},
          {"ipBlock":{"cidr":"0.0.0.0/0","except":["10.0.0.0/8"]}}
        ]}]}"#,
    )
    .unwrap();
    assert_eq!(
        p.ingress.unwrap()[0].peers,
        [
            Peer::IpBlock {
                cidr: net("192.0.2.0/24"),
                except: vec![net("192.0.2.128/25"), net("192.0.2.7/32")],
            },
            Peer::IpBlock {
                cidr: net("2001:db8::/32"),
                except: Vec::new(),
            },
            Peer::IpBlock {
                cidr: net("0.0.0.0/0"),
                except: vec![net("10.0.0.0/8")],
            },
        ]
    );
}

#[test]
fn policy_refusals() {
    let base = |ingress: &str| format!(r#"{{"podSelector":{{}},"ingress":[{ingress}]}}"#);
    let cases: Vec<(String, &str, Problem)> = vec![
        (
            base(r#"{"from":[{"ipBlock":{"cidr":"10.0.0.0/33"}}]}"#),
            "spec.ingress[0].from[0].ipBlock.cidr",
            Problem::BadCidr("10.0.0.0/33".into()),
        ),
        (
            base(r#"{"from":[{"ipBlock":{"cidr":"10.0.0.1"}}]}"#),
            "spec.ingress[0].from[0].ipBlock.cidr",
            Problem::BadCidr("10.0.0.1".into()),
        ),
        (
            base(r#"{},{"from":[{"podSelector":{}},{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16","10.2.0.0/x"]}}]}"#),
            "spec.ingress[1].from[1].ipBlock.except[1]",
            Problem::BadCidr("10.2.0.0/x".into()),
        ),
        (
            base(r#"{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["192.168.0.0/16"]}}]}"#),
            "spec.ingress[0].from[0].ipBlock.except[0]",
            Problem::ExceptOutsideCidr {
                cidr: net("10.0.0.0/8"),
                except: net("192.168.0.0/16"),
            },
        ),
        (
            // Not a strict subset: the whole block.
            base(r#"{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.0.0.0/8"]}}]}"#),
            "spec.ingress[0].from[0].ipBlock.except[0]",
            Problem::ExceptOutsideCidr {
                cidr: net("10.0.0.0/8"),
                except: net("10.0.0.0/8"),
            },
        ),
        (
            base(r#"{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["::/0"]}}]}"#),
            "spec.ingress[0].from[0].ipBlock.except[0]",
            Problem::ExceptOutsideCidr {
                cidr: net("10.0.0.0/8"),
                except: net("::/0"),
            },
        ),
        (
            base(r#"{"from":[{}]}"#),
            "spec.ingress[0].from[0]",
            Problem::EmptyPeer,
        ),
        (
            base(r#"{"from":[{"ipBlock":{"cidr":"10.0.0.0/8"},"podSelector":{}}]}"#),
            "spec.ingress[0].from[0]",
            Problem::IpBlockWithSelector,
        ),
        (
            base(r#"{"ports":[{"protocol":"ICMP"}]}"#),
            "spec.ingress[0].ports[0].protocol",
            Problem::UnknownProtocol("ICMP".into()),
        ),
        (
            base(r#"{"ports":[{"port":0}]}"#),
            "spec.ingress[0].ports[0].port",
            Problem::PortOutOfRange(0),
        ),
        (
            base(r#"{"ports":[{"port":-1}]}"#),
            "spec.ingress[0].ports[0].port",
            Problem::PortOutOfRange(-1),
        ),
        (
            base(r#"{"ports":[{"port":65536}]}"#),
            "spec.ingress[0].ports[0].port",
            Problem::PortOutOfRange(65536),
        ),
        (
            base(r#"{"ports":[{"port":80,"endPort":70000}]}"#),
            "spec.ingress[0].ports[0].endPort",
            Problem::PortOutOfRange(70000),
        ),
        (
            base(r#"{"ports":[{"protocol":"TCP","endPort":90}]}"#),
            "spec.ingress[0].ports[0].endPort",
            Problem::EndPortWithoutPort(90),
        ),
        (
            base(r#"{"ports":[{"port":80,"endPort":79}]}"#),
            "spec.ingress[0].ports[0].endPort",
            Problem::EndPortBelowPort { port: 80, end: 79 },
        ),
        (
            base(r#"{"ports":[{"port":"http","endPort":8080}]}"#),
            "spec.ingress[0].ports[0].endPort",
            Problem::EndPortWithNamedPort {
                port: "http".into(),
                end: 8080,
            },
        ),
        (
            // A number in a string is a (bad) port name, as the API server reads it.
            base(r#"{"ports":[{"port":"80"}]}"#),
            "spec.ingress[0].ports[0].port",
            Problem::BadPortName("80".into()),
        ),
        (
            base(r#"{"ports":[{"port":"a-very-long-port-name"}]}"#),
            "spec.ingress[0].ports[0].port",
            Problem::BadPortName("a-very-long-port-name".into()),
        ),
        (
            base(r#"{"from":[{"podSelector":{"matchExpressions":[{"key":"a","operator":"Exists"},{"key":"b","operator":"Gt","values":["1"]}]}}]}"#),
            "spec.ingress[0].from[0].podSelector.matchExpressions[1].operator",
            Problem::UnknownOperator("Gt".into()),
        ),
        (
            base(r#"{"from":[{"namespaceSelector":{"matchExpressions":[{"key":"a","operator":"Exists","values":["x"]}]}}]}"#),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            Problem::ValuesNotAllowed(Operator::Exists),
        ),
        (
            base(r#"{"from":[{"podSelector":{"matchExpressions":[{"key":"a","operator":"DoesNotExist","values":["x"]}]}}]}"#),
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
            Problem::ValuesNotAllowed(Operator::DoesNotExist),
        ),
        (
            base(r#"{"from":[{"podSelector":{"matchExpressions":[{"key":"a","operator":"In","values":[]}]}}]}"#),
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
            Problem::ValuesRequired(Operator::In),
        ),
        (
            base(r#"{"from":[{"podSelector":{"matchExpressions":[{"key":"a","operator":"NotIn"}]}}]}"#),
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
            Problem::ValuesRequired(Operator::NotIn),
        ),
        (
            r#"{"podSelector":{"matchExpressions":[{"key":"a","operator":"in","values":["x"]}]}}"#
                .into(),
            "spec.podSelector.matchExpressions[0].operator",
            Problem::UnknownOperator("in".into()),
        ),
        (
            r#"{"podSelector":{},"policyTypes":["Ingress","egress"]}"#.into(),
            "spec.policyTypes[1]",
            Problem::UnknownPolicyType("egress".into()),
        ),
        (
            r#"{"podSelector":{},"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8"},"namespaceSelector":{}}]}]}"#.into(),
            "spec.egress[0].to[0]",
            Problem::IpBlockWithSelector,
        ),
    ];
    for (spec, field, problem) in cases {
        assert_eq!(refused(&spec), (field.to_owned(), problem), "{spec}");
    }
}

#[test]
fn policy_needs_namespace_and_name() {
    let e =
        from_json::<api_net::NetworkPolicy>(br#"{"metadata":{"name":"p"},"spec":{}}"#).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.problem, e.name.as_deref()),
        ("metadata.namespace", Problem::Missing, Some("p"))
    );
    let e = from_json::<api_net::NetworkPolicy>(br#"{"metadata":{"namespace":"n"},"spec":{}}"#)
        .unwrap_err();
    assert_eq!(e.to_string(), "NetworkPolicy in n: metadata.name: missing");
    assert_eq!(
        (e.field.as_str(), e.problem, e.namespace.as_deref()),
        ("metadata.name", Problem::Missing, Some("n"))
    );
}

#[test]
fn error_messages_name_object_field_and_problem() {
    let e = policy(r#"{"podSelector":{},"ingress":[{"ports":[{"port":80,"endPort":79}]}]}"#)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "NetworkPolicy default/p: spec.ingress[0].ports[0].endPort: endPort 79 is below port 80"
    );
}

#[test]
fn quoted_values_are_clipped_at_char_boundaries() {
    let long = "é".repeat(200);
    let spec =
        format!(r#"{{"podSelector":{{}},"ingress":[{{"ports":[{{"protocol":"{long}"}}]}}]}}"#);
    let (_, problem) = refused(&spec);
    let Problem::UnknownProtocol(quoted) = problem else {
        panic!("{problem:?}");
    };
    assert_eq!(quoted.chars().count(), MAX_QUOTED + 1);
    assert!(quoted.ends_with('…'));
    assert_eq!(clip("abc", 3), "abc");
    assert_eq!(clip("abcd", 3), "abc…");
}
