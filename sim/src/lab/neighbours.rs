//! Permanent underlay neighbours for big labs (see [`install_static`]).

use anyhow::{Context, Result};

use super::{GATEWAY_IP, LabSpec, lab_dir, netns, node_ns, underlay_ip, underlay_ns};

/// Labs with more nodes than this get static underlay neighbours ([`install_static`]).
pub(super) const STATIC_ABOVE: usize = 20;

/// Gives every node permanent ARP entries for every other node and the gateway.
///
/// Every namespace of this one machine shares the kernel's neighbour table, whose limit
/// (`net.ipv4.neigh.default.gc_thresh3`, 1,024 entries, settable only outside the lab) counts
/// learnt entries of all namespaces together: a full mesh of 33 nodes learns more, and then
/// ARP fails ("neighbor table overflow") and connections time out, which on real machines,
/// each with its own table, never happens. Permanent entries are not counted. Small labs
/// keep learning their neighbours, as real nodes do.
pub(super) fn install_static(spec: &LabSpec) -> Result<()> {
    let mac_of = |ns: &str, dev: &str| -> Result<String> {
        let out = netns::command_in(ns, "ip")?
            .args(["-j", "link", "show", dev])
            .output()?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).with_context(|| format!("ip link in {ns}"))?;
        v[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no MAC for {dev} in {ns}"))
    };
    let mut macs = vec![(
        GATEWAY_IP.to_owned(),
        mac_of(&underlay_ns(&spec.name), "ubr")?,
    )];
    for i in 1..=spec.nodes {
        macs.push((underlay_ip(i), mac_of(&node_ns(&spec.name, i), "eth0")?));
    }
    for i in 1..=spec.nodes {
        let own = underlay_ip(i);
        let batch: String = macs
            .iter()
            .filter(|(ip, _)| *ip != own)
            .map(|(ip, mac)| format!("neigh replace {ip} lladdr {mac} dev eth0 nud permanent\n"))
            .collect();
        let file = lab_dir(&spec.name).join(format!("neigh-h{i}.batch"));
        std::fs::write(&file, batch)?;
        netns::ip(&[
            "-n",
            &node_ns(&spec.name, i),
            "-batch",
            &file.display().to_string(),
        ])?;
    }
    Ok(())
}
