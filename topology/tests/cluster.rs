//! The cluster view against a model: after any sequence of namespace, pod and policy events
//! it holds what three plain maps hold; its revision moves by exactly one when, and only when,
//! an event changed the content; a relist of what it already holds changes nothing.

#![allow(clippy::unwrap_used)] // test helpers

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use topology::cluster::{
    ClusterView, ContainerPort, Event, LabelSelector, Labels, Namespace, NetworkPolicy, Pod,
    Protocol, Rule,
};

/// Small alphabets, so that events hit the same objects often.
const NAMESPACES: [&str; 3] = ["a", "b", "kube-system"];
const NAMES: [&str; 3] = ["x", "y", "z"];
const NODES: [&str; 2] = ["n1", "n2"];

fn arb_labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        prop::sample::select(vec!["app", "tier"]).prop_map(str::to_owned),
        prop::sample::select(vec!["web", "db"]).prop_map(str::to_owned),
        0..2,
    )
}

fn arb_namespace() -> impl Strategy<Value = Namespace> {
    (prop::sample::select(NAMESPACES.to_vec()), arb_labels()).prop_map(|(name, labels)| Namespace {
        name: name.to_owned(),
        labels,
    })
}

fn arb_pod() -> impl Strategy<Value = Pod> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(NAMES.to_vec()),
        arb_labels(),
        prop::option::of(prop::sample::select(NODES.to_vec())),
        proptest::collection::vec(0u8..4, 0..2),
        any::<bool>(),
        proptest::collection::vec(8080u16..8082, 0..2),
    )
        .prop_map(
            |(namespace, name, labels, node, ips, host_network, ports)| Pod {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                labels,
                node: node.map(str::to_owned),
                ips: ips
                    .into_iter()
                    .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)))
                    .collect(),
                host_network,
                ports: ports
                    .into_iter()
                    .map(|port| ContainerPort {
                        name: format!("p{port}"),
                        protocol: Protocol::Tcp,
                        port,
                    })
                    .collect(),
            },
        )
}

fn arb_policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(NAMES.to_vec()),
        arb_labels(),
        prop::option::of(0usize..2),
        prop::option::of(0usize..2),
    )
        .prop_map(|(namespace, name, match_labels, ingress, egress)| {
            let rules = |n: usize| vec![Rule::default(); n];
            NetworkPolicy {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                pod_selector: LabelSelector {
                    match_labels,
                    match_expressions: Vec::new(),
                },
                ingress: ingress.map(rules),
                egress: egress.map(rules),
            }
        })
}

fn arb_event<T: std::fmt::Debug + Clone + 'static>(
    object: BoxedStrategy<T>,
    namespaced: bool,
) -> impl Strategy<Value = Event<T>> {
    let namespace = if namespaced {
        prop::sample::select(NAMESPACES.to_vec()).boxed()
    } else {
        Just("").boxed()
    };
    let name = if namespaced {
        prop::sample::select(NAMES.to_vec())
    } else {
        prop::sample::select(NAMESPACES.to_vec())
    };
    prop_oneof![
        4 => object.clone().prop_map(Event::Applied),
        2 => (namespace, name).prop_map(|(namespace, name)| Event::Deleted {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        1 => proptest::collection::vec(object, 0..6).prop_map(Event::Restarted),
    ]
}

/// One event for one of the three kinds.
#[derive(Clone, Debug)]
enum AnyEvent {
    Namespace(Event<Namespace>),
    Pod(Event<Pod>),
    Policy(Event<NetworkPolicy>),
}

fn arb_any_event() -> impl Strategy<Value = AnyEvent> {
    prop_oneof![
        arb_event(arb_namespace().boxed(), false).prop_map(AnyEvent::Namespace),
        arb_event(arb_pod().boxed(), true).prop_map(AnyEvent::Pod),
        arb_event(arb_policy().boxed(), true).prop_map(AnyEvent::Policy),
    ]
}

/// The reference: plain maps, keyed as the API keys the objects.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<(String, String), Pod>,
    policies: BTreeMap<(String, String), NetworkPolicy>,
}

fn model_apply<K: Ord, T>(
    map: &mut BTreeMap<K, T>,
    event: Event<T>,
    key: impl Fn(&T) -> K,
    deleted: impl Fn(String, String) -> K,
) {
    match event {
        Event::Applied(o) => {
            map.insert(key(&o), o);
        }
        Event::Deleted { namespace, name } => {
            map.remove(&deleted(namespace, name));
        }
        Event::Restarted(list) => *map = list.into_iter().map(|o| (key(&o), o)).collect(),
    }
}

impl Model {
    fn apply(&mut self, event: AnyEvent) {
        match event {
            AnyEvent::Namespace(e) => {
                model_apply(&mut self.namespaces, e, |n| n.name.clone(), |_, name| name)
            }
            AnyEvent::Pod(e) => model_apply(
                &mut self.pods,
                e,
                |p| (p.namespace.clone(), p.name.clone()),
                |ns, name| (ns, name),
            ),
            AnyEvent::Policy(e) => model_apply(
                &mut self.policies,
                e,
                |p| (p.namespace.clone(), p.name.clone()),
                |ns, name| (ns, name),
            ),
        }
    }
}

fn handle(view: &mut ClusterView, event: AnyEvent) -> bool {
    match event {
        AnyEvent::Namespace(e) => view.handle_namespaces(e),
        AnyEvent::Pod(e) => view.handle_pods(e),
        AnyEvent::Policy(e) => view.handle_policies(e),
    }
}

fn assert_matches(view: &ClusterView, model: &Model) {
    assert_eq!(
        view.namespaces().collect::<Vec<_>>(),
        model.namespaces.values().collect::<Vec<_>>()
    );
    assert_eq!(
        view.pods().collect::<Vec<_>>(),
        model.pods.values().collect::<Vec<_>>()
    );
    assert_eq!(
        view.policies().collect::<Vec<_>>(),
        model.policies.values().collect::<Vec<_>>()
    );
    assert_eq!(view.namespace_count(), model.namespaces.len());
    assert_eq!(view.pod_count(), model.pods.len());
    assert_eq!(view.policy_count(), model.policies.len());
    for node in NODES {
        assert_eq!(
            view.pods_on(node).collect::<Vec<_>>(),
            model
                .pods
                .values()
                .filter(|p| p.node.as_deref() == Some(node))
                .collect::<Vec<_>>()
        );
    }
    for ns in NAMESPACES {
        assert_eq!(view.namespace(ns), model.namespaces.get(ns));
        assert_eq!(
            view.pods_in(ns).collect::<Vec<_>>(),
            model
                .pods
                .values()
                .filter(|p| p.namespace == ns)
                .collect::<Vec<_>>()
        );
        for name in NAMES {
            let key = (ns.to_owned(), name.to_owned());
            assert_eq!(view.pod(ns, name), model.pods.get(&key));
            assert_eq!(view.policy(ns, name), model.policies.get(&key));
        }
    }
}

fn in_order<T>(mut v: Vec<T>, reverse: bool) -> Vec<T> {
    if reverse {
        v.reverse();
    }
    v
}

proptest! {
    /// After every event the view holds what the model holds; the event reports a change,
    /// and the revision moves by one, exactly when the model's content changed.
    #[test]
    fn view_follows_the_model(events in proptest::collection::vec(arb_any_event(), 0..40)) {
        let mut view = ClusterView::new();
        let mut model = Model::default();
        for event in events {
            let before = model.clone();
            let revision = view.revision();
            model.apply(event.clone());
            let changed = handle(&mut view, event);
            prop_assert_eq!(changed, model != before);
            prop_assert_eq!(view.revision(), revision + u64::from(changed));
            assert_matches(&view, &model);
        }
    }

    /// A relist of what the view holds (in any order) changes nothing, and a view rebuilt from
    /// relists holds the same content.
    #[test]
    fn relist_of_current_content_is_a_no_op(
        events in proptest::collection::vec(arb_any_event(), 0..40),
        reverse in any::<bool>(),
    ) {
        let mut view = ClusterView::new();
        for event in events {
            handle(&mut view, event);
        }
        let namespaces = in_order(view.namespaces().cloned().collect(), reverse);
        let pods = in_order(view.pods().cloned().collect(), reverse);
        let policies = in_order(view.policies().cloned().collect(), reverse);
        let before = view.clone();
        prop_assert!(!view.handle_namespaces(Event::Restarted(namespaces.clone())));
        prop_assert!(!view.handle_pods(Event::Restarted(pods.clone())));
        prop_assert!(!view.handle_policies(Event::Restarted(policies.clone())));
        prop_assert_eq!(&view, &before);

        let mut rebuilt = ClusterView::new();
        rebuilt.handle_namespaces(Event::Restarted(namespaces));
        rebuilt.handle_pods(Event::Restarted(pods));
        rebuilt.handle_policies(Event::Restarted(policies));
        assert_matches(&rebuilt, &Model {
            namespaces: view.namespaces().map(|n| (n.name.clone(), n.clone())).collect(),
            pods: view.pods().map(|p| ((p.namespace.clone(), p.name.clone()), p.clone())).collect(),
            policies: view
                .policies()
                .map(|p| ((p.namespace.clone(), p.name.clone()), p.clone()))
                .collect(),
        });
    }

    /// Applying every object of a relist one by one reaches the same content as the relist
    /// (from an empty view).
    #[test]
    fn applied_one_by_one_equals_relisted(pods in proptest::collection::vec(arb_pod(), 0..12)) {
        let mut applied = ClusterView::new();
        for p in pods.clone() {
            applied.handle_pods(Event::Applied(p));
        }
        let mut relisted = ClusterView::new();
        relisted.handle_pods(Event::Restarted(pods));
        prop_assert_eq!(
            applied.pods().collect::<Vec<_>>(),
            relisted.pods().collect::<Vec<_>>()
        );
        for node in NODES {
            prop_assert_eq!(
                applied.pods_on(node).collect::<Vec<_>>(),
                relisted.pods_on(node).collect::<Vec<_>>()
            );
        }
    }
}
