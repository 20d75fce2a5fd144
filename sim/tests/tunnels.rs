//! Only mesh peers reach the tunnel ports: a host on the underlay that is no peer (the lab's
//! gateway, 192.0.2.254, in `NAME-u`) crafts a VXLAN datagram with weft's VNI carrying an ICMP
//! echo to a pod, and a datagram to the sleeve port. Neither reaches the pod; both are counted.
//! As a control, the same datagram does reach the pod while weft's filter is flushed by hand,
//! and the router puts the filter back by itself.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use weft_sim::lab::{self, LabGuard, LabSpec};

mod common;
use common::{exec, serial, unique_with};

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> [u8; 2] {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// A VXLAN datagram (weft's VNI) holding an ICMP echo request from 10.32.99.99 to the pod.
fn vxlan_echo(pod_mac: [u8; 6], pod_ip: [u8; 4]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"injected");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 32, 99, 99];
    ip.extend_from_slice(&pod_ip);
    let total = (ip.len() + icmp.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c);
    let vni = topology::fastdp::VNI.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    d.extend_from_slice(&pod_mac);
    d.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 0x08, 0x00]);
    d.extend_from_slice(&ip);
    d.extend_from_slice(&icmp);
    d
}

/// Sends `datagram` from the underlay namespace (192.0.2.254) to `to`.
fn send_from_underlay(name: &str, to: SocketAddr, datagram: Vec<u8>) {
    lab::netns::in_netns(&format!("{name}-u"), move || {
        let s = UdpSocket::bind("192.0.2.254:0")?;
        for _ in 0..3 {
            s.send_to(&datagram, to)?;
        }
        Ok(())
    })
    .unwrap();
}

/// Echo requests the pod's kernel received (`Icmp: InEchos` of its namespace).
fn in_echos(name: &str, pod: &str) -> u64 {
    let snmp = exec(name, pod, &["cat", "/proc/net/snmp"]).1;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn tunnel_counter(name: &str) -> u64 {
    let chain = exec(
        name,
        "h1",
        &["nft", "list", "chain", "inet", "weft", "tunnels"],
    )
    .1;
    chain
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_non_peer_reaches_no_pod_through_the_tunnel_ports_and_is_counted() {
    let _serial = serial();
    let name = unique_with("tn", "a");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods = 1;
    let info = lab::up(&spec).unwrap();
    let pod = &info.nodes[0].pods[0];
    let pod_ip: std::net::Ipv4Addr = pod.ip.split('/').next().unwrap().parse().unwrap();
    let datagram = vxlan_echo(mac(&pod.mac), pod_ip.octets());
    let (vxlan, sleeve) = (
        SocketAddr::from(([192, 0, 2, 1], 6784)),
        SocketAddr::from(([192, 0, 2, 1], 6783)),
    );
    let in_place = || {
        exec(
            &name,
            "h1",
            &["nft", "list", "chain", "inet", "weft", "tunnels"],
        )
        .1
        .contains("@peers4")
    };
    let start = Instant::now();
    while !in_place() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no tunnel filter"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Blocked and counted: VXLAN and sleeve alike.
    let (echos, counted) = (in_echos(&name, "h1/p1"), tunnel_counter(&name));
    send_from_underlay(&name, vxlan, datagram.clone());
    send_from_underlay(&name, sleeve, b"not a sleeve datagram".to_vec());
    let start = Instant::now();
    while tunnel_counter(&name) < counted + 6 {
        assert!(start.elapsed() < Duration::from_secs(5), "not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        in_echos(&name, "h1/p1"),
        echos,
        "the injected echo reached the pod"
    );
    // The router's report carries the count after its next reconcile.
    let start = Instant::now();
    loop {
        let drops = lab::report(&name, "h1").unwrap()["netfilter"]["tunnel_drops"]
            .as_u64()
            .unwrap_or(0);
        if drops >= counted + 6 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "report: {drops}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Control: with the filter flushed by hand the same datagram reaches the pod ...
    assert!(
        exec(
            &name,
            "h1",
            &["nft", "flush", "chain", "inet", "weft", "tunnels"]
        )
        .0
    );
    let echos = in_echos(&name, "h1/p1");
    send_from_underlay(&name, vxlan, datagram.clone());
    let start = Instant::now();
    while in_echos(&name, "h1/p1") == echos {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the control echo never arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... and the router puts the filter back by itself.
    let start = Instant::now();
    while !in_place() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "filter not restored"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (echos, counted) = (in_echos(&name, "h1/p1"), tunnel_counter(&name));
    send_from_underlay(&name, vxlan, datagram);
    let start = Instant::now();
    while tunnel_counter(&name) < counted + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not counted after the repair"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        in_echos(&name, "h1/p1"),
        echos,
        "reached the pod after the repair"
    );
    // Peers still reach each other's pods.
    let peer_pod = info.nodes[1].pods[0]
        .ip
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(exec(&name, "h1/p1", &["ping", "-c", "1", "-W", "2", &peer_pod]).0);
}
