//! The underlay's MTU, from which the pod MTU's default and the sleeve's datagram size follow.
//!
//! The smallest MTU among the routes to the peers given at start (`--peers`, IP addresses),
//! read with `IP_MTU` on a connected UDP socket (nothing is sent); without any, the MTU of the
//! interface holding `--bind-addr`, else of the default route's interface. The pod MTU is
//! that less the VXLAN overhead (50 bytes), so a frame of the pod MTU fits one VXLAN packet.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::warn;

/// VXLAN's overhead over IPv4: outer IP (20), UDP (8), VXLAN (8) and inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// IPv4 and UDP headers, between the underlay MTU and a sleeve datagram's payload.
pub const UDP_OVERHEAD: u32 = 28;
/// The underlay MTU assumed when none can be read.
pub const FALLBACK_MTU: u32 = 1500;

/// The underlay MTU and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayMtu {
    /// The MTU.
    pub mtu: u32,
    /// How it was found, for the log.
    pub source: String,
}

impl UnderlayMtu {
    /// The default pod MTU: the underlay's less the VXLAN overhead.
    pub fn pod_mtu(&self) -> u32 {
        self.mtu.saturating_sub(VXLAN_OVERHEAD)
    }

    /// The largest sleeve datagram payload.
    pub fn max_datagram(&self) -> usize {
        self.mtu.saturating_sub(UDP_OVERHEAD) as usize
    }
}

/// Reads the underlay MTU toward `peers` (the IP literals among them), else that of
/// `bind`'s interface or the default route's; [`FALLBACK_MTU`] with a warning when nothing
/// answers.
pub async fn detect(handle: &Handle, peers: &[String], bind: Option<IpAddr>) -> UnderlayMtu {
    let mut found: Option<UnderlayMtu> = None;
    for peer in peers {
        let Some(ip) = peer_ip(peer) else { continue };
        match route_mtu(ip, bind) {
            Ok(mtu) if found.as_ref().is_none_or(|f| mtu < f.mtu) => {
                found = Some(UnderlayMtu {
                    mtu,
                    source: format!("route to peer {ip}"),
                });
            }
            Ok(_) => {}
            Err(e) => warn!(peer = %ip, error = %e, "cannot read the route MTU toward a peer"),
        }
    }
    if let Some(found) = found {
        return found;
    }
    let by_interface = match bind {
        Some(addr) => interface_of_address(handle, addr).await,
        None => default_route_interface(handle).await,
    };
    if let Some(index) = by_interface
        && let Some((name, mtu)) = link_mtu(handle, index).await
    {
        let why = if bind.is_some() {
            "--bind-addr"
        } else {
            "default route"
        };
        return UnderlayMtu {
            mtu,
            source: format!("{name}, the {why}'s interface"),
        };
    }
    warn!(
        mtu = FALLBACK_MTU,
        "no peer, bind address or default route to read the underlay MTU from; assuming it"
    );
    UnderlayMtu {
        mtu: FALLBACK_MTU,
        source: "assumed: nothing to read it from".to_owned(),
    }
}

/// The address part of `host`, `host:port`, `[v6]:port` when it is an IP literal.
fn peer_ip(peer: &str) -> Option<IpAddr> {
    peer.parse::<IpAddr>()
        .ok()
        .or_else(|| peer.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The kernel's MTU for the route to `ip` (a connected UDP socket's `IP_MTU`; nothing is sent).
fn route_mtu(ip: IpAddr, bind: Option<IpAddr>) -> std::io::Result<u32> {
    let any = if ip.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0_u16; 8])
    };
    let local = bind.unwrap_or(any);
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(SocketAddr::new(ip, 9))?;
    let (level, name) = if ip.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: mtu and len are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(&mut mtu).cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(mtu as u32)
}

/// Every address of the node's network namespace but loopback and IPv6 link-local ones (the
/// node's own, for NetworkPolicy: traffic between them and local pods always passes).
pub async fn local_addresses(handle: &Handle) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut addrs = handle.address().get().execute();
    while let Ok(Some(msg)) = addrs.try_next().await {
        for a in &msg.attributes {
            if let AddressAttribute::Address(a) = a
                && !a.is_loopback()
                && !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local())
                && !out.contains(a)
            {
                out.push(*a);
            }
        }
    }
    out
}

async fn interface_of_address(handle: &Handle, addr: IpAddr) -> Option<u32> {
    let mut addrs = handle.address().get().execute();
    while let Ok(Some(msg)) = addrs.try_next().await {
        if msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(a) if *a == addr))
        {
            return Some(msg.header.index);
        }
    }
    None
}

async fn default_route_interface(handle: &Handle) -> Option<u32> {
    let request = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
    let mut routes = handle.route().get(request).execute();
    while let Ok(Some(msg)) = routes.try_next().await {
        if msg.header.destination_prefix_length != 0 {
            continue;
        }
        let main = msg
            .attributes
            .iter()
            .all(|a| !matches!(a, RouteAttribute::Table(t) if *t != 254));
        if !main {
            continue;
        }
        if let Some(oif) = msg.attributes.iter().find_map(|a| {
            if let RouteAttribute::Oif(i) = a {
                Some(*i)
            } else {
                None
            }
        }) {
            return Some(oif);
        }
    }
    None
}

async fn link_mtu(handle: &Handle, index: u32) -> Option<(String, u32)> {
    let mut links = handle.link().get().match_index(index).execute();
    let msg = links.try_next().await.ok()??;
    let name = msg.attributes.iter().find_map(|a| {
        if let LinkAttribute::IfName(n) = a {
            Some(n.clone())
        } else {
            None
        }
    });
    let mtu = msg.attributes.iter().find_map(|a| {
        if let LinkAttribute::Mtu(m) = a {
            Some(*m)
        } else {
            None
        }
    })?;
    Some((name.unwrap_or_else(|| format!("link {index}")), mtu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_read_as_ip_literals_only() {
        assert_eq!(peer_ip("192.0.2.1"), Some(IpAddr::from([192, 0, 2, 1])));
        assert_eq!(
            peer_ip("192.0.2.1:6783"),
            Some(IpAddr::from([192, 0, 2, 1]))
        );
        assert_eq!(
            peer_ip("[2001:db8::1]:6783").map(|i| i.is_ipv6()),
            Some(true)
        );
        assert_eq!(peer_ip("node-1"), None);
    }

    #[test]
    fn the_pod_mtu_leaves_room_for_vxlan() {
        let u = UnderlayMtu {
            mtu: 1400,
            source: String::new(),
        };
        assert_eq!(u.pod_mtu(), 1350);
        assert_eq!(u.max_datagram(), 1372);
    }

    #[test]
    fn loopback_has_a_route_mtu() {
        // Loopback's route exists in every namespace the tests run in.
        let mtu = route_mtu(IpAddr::from([127, 0, 0, 1]), None).expect("IP_MTU on loopback");
        assert!(mtu >= 1280, "{mtu}");
    }
}
