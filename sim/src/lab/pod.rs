//! Lab pods: attached through the CNI plugin (or, without routers, as a plain veth), added
//! and removed while the lab runs, and registered as Pod objects in a `--kube` lab.

use anyhow::{Result, bail, ensure};

use super::{
    LabSpec, MAX_PODS, PodInfo, PodMeta, add_ns, cni, default_mac, kube, load, netns, node_ns,
    parse_index, pod_ns, save, validate_mac,
};

/// Attaches pod `j` to node `i`: namespace, veth into the node's `weft` bridge, address, MAC.
pub(super) fn attach_pod(spec: &LabSpec, i: usize, j: usize, mac: Option<&str>) -> Result<PodInfo> {
    let node = node_ns(&spec.name, i);
    let ns = pod_ns(&spec.name, i, j);
    if spec.routers {
        add_ns(&ns)?;
        let attached = cni::add(&spec.name, i, &ns, mac).inspect_err(|_| {
            // Nothing half-made stays behind: the plugin rolled its part back.
            let _ = netns::delete(&ns);
        })?;
        return Ok(PodInfo {
            name: format!("p{j}"),
            netns: ns,
            ip: attached.ip,
            mac: attached.mac,
            namespace: None,
            labels: None,
        });
    }
    // Without routers there is no IPAM: a plain veth and a fixed address.
    let mac = mac.map_or_else(|| default_mac(&spec.name, i, j), str::to_owned);
    let ip = format!("10.32.{i}.{j}/12");
    add_ns(&ns)?;
    let host_if = format!("vp{j}");
    netns::ip(&[
        "-n", &node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    netns::ip(&[
        "-n",
        &node,
        "link",
        "set",
        &host_if,
        "mtu",
        &spec.pod_mtu().to_string(),
        "master",
        "weft",
        "up",
    ])?;
    netns::ip(&[
        "-n",
        &ns,
        "link",
        "set",
        "eth0",
        "address",
        &mac,
        "mtu",
        &spec.pod_mtu().to_string(),
        "up",
    ])?;
    netns::ip(&["-n", &ns, "addr", "add", &ip, "dev", "eth0"])?;
    Ok(PodInfo {
        name: format!("p{j}"),
        netns: ns,
        ip,
        mac,
        namespace: None,
        labels: None,
    })
}

/// Registers a lab pod's Pod object and notes its namespace and labels.
pub(super) fn register(name: &str, i: usize, pod: &mut PodInfo, meta: &PodMeta) -> Result<()> {
    let node = format!("h{i}");
    let obj = kube::pod_object(&node, pod, meta);
    kube::register_pod(name, &node, pod, meta)?;
    pod.namespace = obj["metadata"]["namespace"].as_str().map(str::to_owned);
    pod.labels = obj["metadata"]["labels"].as_object().map(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    });
    Ok(())
}

/// Adds pod `pod` (`pJ`) to node `node` (`hI`) of a running lab.
///
/// # Errors
/// Fails when the lab, node or pod name is unknown, the pod exists, or a step fails.
pub fn pod_add(name: &str, node: &str, pod: &str, mac: Option<&str>) -> Result<PodInfo> {
    pod_add_with(name, node, pod, mac, &PodMeta::default())
}

/// [`pod_add`] with the Pod object's namespace, labels and named ports (with `--kube`).
///
/// # Errors
/// As [`pod_add`]; and when `meta` is given to a lab without `--kube`.
pub fn pod_add_with(
    name: &str,
    node: &str,
    pod: &str,
    mac: Option<&str>,
    meta: &PodMeta,
) -> Result<PodInfo> {
    let mut state = load(name)?;
    let i = parse_index(node, 'h', state.spec.nodes)?;
    let j = parse_index(pod, 'p', MAX_PODS)?;
    if let Some(mac) = mac {
        validate_mac(mac)?;
    }
    let pods = &mut state.info.nodes[i - 1].pods;
    ensure!(
        !pods.iter().any(|p| p.name == pod),
        "pod {node}/{pod} exists already in lab {name}"
    );
    ensure!(
        state.spec.kube || *meta == PodMeta::default(),
        "--namespace, --labels and --ports need a lab built with --kube"
    );
    let mut info = attach_pod(&state.spec, i, j, mac)?;
    if state.spec.kube {
        register(name, i, &mut info, meta)?;
    }
    pods.push(info.clone());
    pods.sort_by_key(|p| p.name[1..].parse::<usize>().unwrap_or(usize::MAX));
    save(&state)?;
    Ok(info)
}

/// Removes pod `pod` from node `node` of a running lab.
///
/// # Errors
/// Fails when the lab, node or pod is unknown.
pub fn pod_del(name: &str, node: &str, pod: &str) -> Result<()> {
    let mut state = load(name)?;
    let i = parse_index(node, 'h', state.spec.nodes)?;
    let j = parse_index(pod, 'p', MAX_PODS)?;
    let pods = &mut state.info.nodes[i - 1].pods;
    let Some(pos) = pods.iter().position(|p| p.name == pod) else {
        bail!("no pod {node}/{pod} in lab {name}");
    };
    let ns = pod_ns(name, i, j);
    if state.spec.kube {
        kube::unregister_pod(name, node, &pods[pos])?;
    }
    if state.spec.routers {
        cni::del(name, i, &ns)?;
    }
    // Deleting the pod's namespace destroys its veth pair, and with it the bridge port.
    netns::delete(&ns)?;
    pods.remove(pos);
    save(&state)
}
