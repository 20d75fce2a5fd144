//! The router's netlink shell: creates and configures the node's devices (bridge `weft`, the
//! TAP and VXLAN ports, bridge port isolation) and the VXLAN device's forwarding database
//! through rtnetlink, never by running `ip` or `bridge`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVxlan};
use topology::mac::MacAddr;

/// ENODEV and EEXIST, as netlink reports them (negated errno).
const ENODEV: i32 = -19;
const EEXIST: i32 = -17;
const ENOENT: i32 = -2;

/// A netlink connection to the kernel's routing subsystem, in the namespace the router runs in.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the netlink socket and spawns its connection driver on the current tokio runtime.
    ///
    /// # Errors
    /// Fails when the netlink socket cannot be opened.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The rtnetlink handle, for queries this module does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Returns the index of the link named `name`, or `None` when there is none.
    ///
    /// # Errors
    /// Fails on netlink errors other than "no such device".
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
        }
    }

    /// Makes sure bridge `name` exists and is up, creating it with `mtu` when absent; an
    /// existing bridge (left by a previous run of the router) is kept, with its ports.
    ///
    /// # Errors
    /// Fails when the bridge cannot be created or brought up.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        if self.link_index(name).await?.is_none() {
            let msg = LinkBridge::new(name).mtu(mtu).build();
            match self.handle.link().add(msg).execute().await {
                Ok(()) => {}
                // Lost a race with another creator: the bridge is there, which is all we need.
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("creating bridge {name}")),
            }
        }
        let index = self
            .link_index(name)
            .await?
            .with_context(|| format!("bridge {name} vanished after creation"))?;
        self.set_up(index)
            .await
            .with_context(|| format!("bringing bridge {name} up"))?;
        Ok(index)
    }

    /// Sets link `index` administratively up.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .context("setting link up")
    }
}

impl Netlink {
    /// Sets the MTU of link `index`.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("setting the MTU of link {index} to {mtu}"))
    }

    /// Sets the MAC address of link `index` (for a bridge, this also pins it: the bridge no
    /// longer takes its lowest port's address).
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.bytes().to_vec())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("setting the MAC of link {index}"))
    }

    /// Makes link `index` a port of bridge `bridge` (`ip link set … master`).
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn set_master(&self, index: u32, bridge: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(bridge).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("attaching link {index} to bridge {bridge}"))
    }

    /// Puts `addr/prefix_len` on link `index` unless it is there already.
    ///
    /// # Errors
    /// Fails on netlink errors other than "exists".
    pub async fn ensure_address(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding {addr}/{prefix_len} to link {index}")),
        }
    }
}

/// One entry of a bridge-family forwarding database (`bridge fdb show`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// The port (or VXLAN device) the entry is on.
    pub ifindex: u32,
    /// The MAC; all zeros for a VXLAN flood entry.
    pub mac: MacAddr,
    /// The VXLAN remote, for entries of a VXLAN device's own table.
    pub dst: Option<IpAddr>,
    /// Whether the entry belongs to the bridge (`master`) rather than the device (`self`).
    pub master: bool,
    /// Whether the entry is permanent (a local address or a static entry).
    pub permanent: bool,
    /// Whether the entry is sticky (the bridge does not move it when the MAC shows up on
    /// another port): weft's pins of announced MACs.
    pub sticky: bool,
    /// How long ago the kernel last used the entry to send a frame (`NDA_CACHEINFO`'s
    /// `ndm_used`; a VXLAN device updates it on every frame it sends through the entry).
    pub used_ago: Option<std::time::Duration>,
}

/// What an existing link is, for deciding whether to reuse it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanInfo {
    /// The VNI, if it is a VXLAN device.
    pub vni: Option<u32>,
    /// Its UDP destination port.
    pub port: Option<u16>,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// Its bridge.
    pub controller: Option<u32>,
}

impl Netlink {
    /// Makes sure VXLAN device `name` (VNI `vni`, UDP `port`, learning on, `mtu`) exists, is a
    /// port of `bridge` and is up. An existing device with the same VNI and port is kept as it
    /// is, with its forwarding database (a restarted router must not break traffic); one that
    /// differs is replaced.
    ///
    /// # Errors
    /// Fails when the device cannot be created, attached or brought up.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        mtu: u32,
        bridge: u32,
    ) -> Result<u32> {
        if let Some(index) = self.link_index(name).await? {
            let info = self.vxlan_info(index).await?;
            if info.vni == Some(vni) && info.port == Some(port) {
                if info.mtu != Some(mtu) {
                    self.set_mtu(index, mtu).await?;
                }
                if info.controller != Some(bridge) {
                    self.set_master(index, bridge).await?;
                }
                self.set_up(index).await?;
                return Ok(index);
            }
            tracing::warn!(
                name,
                ?info,
                vni,
                port,
                "replacing a VXLAN device with other settings"
            );
            self.handle
                .link()
                .del(index)
                .execute()
                .await
                .with_context(|| format!("deleting link {name}"))?;
        }
        // VXLAN's own learning stays on: the kernel learns remote MACs from VXLAN traffic
        // (and answers probes to the address they came from).
        let msg = LinkVxlan::new(name, vni)
            .port(port)
            .learning(true)
            .mtu(mtu)
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("creating VXLAN device {name}")),
        }
        let index = self
            .link_index(name)
            .await?
            .with_context(|| format!("VXLAN device {name} vanished after creation"))?;
        self.set_master(index, bridge).await?;
        self.set_up(index).await?;
        Ok(index)
    }

    /// Reads the VXLAN settings of link `index`.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn vxlan_info(&self, index: u32) -> Result<VxlanInfo> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = links
            .try_next()
            .await
            .with_context(|| format!("reading link {index}"))?
            .with_context(|| format!("link {index} vanished"))?;
        let mut info = VxlanInfo {
            vni: None,
            port: None,
            mtu: None,
            controller: None,
        };
        for attr in &msg.attributes {
            if let LinkAttribute::Mtu(m) = attr {
                info.mtu = Some(*m);
            } else if let LinkAttribute::Controller(c) = attr {
                info.controller = Some(*c);
            } else if let LinkAttribute::LinkInfo(infos) = attr {
                for i in infos {
                    let LinkInfo::Data(InfoData::Vxlan(v)) = i else {
                        continue;
                    };
                    for x in v {
                        if let InfoVxlan::Id(id) = x {
                            info.vni = Some(*id);
                        } else if let InfoVxlan::Port(p) = x {
                            info.port = Some(*p);
                        }
                    }
                }
            }
        }
        Ok(info)
    }

    /// Sets bridge port `index` isolated (`bridge link set … isolated on`): the bridge never
    /// forwards between two isolated ports.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn set_isolated(&self, index: u32) -> Result<()> {
        let msg = LinkBridgePort::new(index).isolated(true).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .with_context(|| format!("isolating bridge port {index}"))
    }

    /// Appends a VXLAN forwarding entry `mac → dst` on device `vxlan` (`bridge fdb append …
    /// self permanent`); an all-zero MAC makes it a flood entry. An entry already there is
    /// left as it is.
    ///
    /// # Errors
    /// Fails on netlink errors other than "exists".
    pub async fn fdb_append(&self, vxlan: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        let mut msg = fdb_message(vxlan, mac, NeighbourFlags::Own);
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(dst)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        match self.ack(req).await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding forwarding entry {} → {dst}", mac)),
        }
    }

    /// Removes entry `mac → dst` from VXLAN device `vxlan`'s own table (absent is fine).
    ///
    /// # Errors
    /// Fails on netlink errors other than "not found".
    pub async fn fdb_del_vxlan(&self, vxlan: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        let mut msg = fdb_message(vxlan, mac, NeighbourFlags::Own);
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(dst)));
        self.del_neighbour(msg)
            .await
            .with_context(|| format!("removing forwarding entry {} → {dst}", mac))
    }

    /// Removes the bridge's learned entry for `mac` on port `port` (absent is fine).
    ///
    /// # Errors
    /// Fails on netlink errors other than "not found".
    pub async fn fdb_del_bridge(&self, port: u32, mac: MacAddr) -> Result<()> {
        let msg = fdb_message(port, mac, NeighbourFlags::Controller);
        self.del_neighbour(msg)
            .await
            .with_context(|| format!("flushing bridge entry {} on port {port}", mac))
    }

    /// Pins the bridge's entry for `mac` to port `port` (`bridge fdb replace … master static
    /// sticky`): created, or moved from another port, and from then on neither aged out nor
    /// moved by learning when frames from `mac` arrive on another port.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn fdb_pin_bridge(&self, port: u32, mac: MacAddr) -> Result<()> {
        let mut msg = fdb_message(
            port,
            mac,
            NeighbourFlags::Controller | NeighbourFlags::Sticky,
        );
        msg.header.state = NeighbourState::Noarp;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.ack(req)
            .await
            .with_context(|| format!("pinning bridge entry {} to port {port}", mac))
    }

    /// Lists every bridge-family forwarding entry (bridges' and VXLAN devices').
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn fdb_dump(&self) -> Result<Vec<FdbEntry>> {
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .context("listing forwarding entries")?
        {
            let mut mac = None;
            let mut dst = None;
            let mut used_ago = None;
            for a in &msg.attributes {
                if let NeighbourAttribute::LinkLayerAddress(l) = a
                    && l.len() == 6
                {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(l);
                    mac = Some(MacAddr::from_bytes(m));
                } else if let NeighbourAttribute::Destination(d) = a {
                    dst = parse_neigh_addr(d);
                } else if let NeighbourAttribute::CacheInfo(c) = a {
                    // In clock ticks of USER_HZ, which the kernel fixes at 100 for userspace.
                    used_ago = Some(std::time::Duration::from_millis(u64::from(c.used) * 10));
                }
            }
            let Some(mac) = mac else { continue };
            out.push(FdbEntry {
                ifindex: msg.header.ifindex,
                mac,
                dst,
                // The bridge's own entries carry NDA_MASTER; a device's carry NTF_SELF.
                master: msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::Controller(_)))
                    || msg.header.flags.contains(NeighbourFlags::Controller),
                permanent: msg.header.state == NeighbourState::Permanent,
                sticky: msg.header.flags.contains(NeighbourFlags::Sticky),
                used_ago,
            });
        }
        Ok(out)
    }

    /// Returns the MAC address of link `index`.
    ///
    /// # Errors
    /// Fails on netlink errors or when the link has no 6-byte address.
    pub async fn link_mac(&self, index: u32) -> Result<MacAddr> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = links
            .try_next()
            .await
            .with_context(|| format!("reading link {index}"))?
            .with_context(|| format!("link {index} vanished"))?;
        msg.attributes
            .iter()
            .find_map(|a| {
                let LinkAttribute::Address(m) = a else {
                    return None;
                };
                let mut out = [0u8; 6];
                (m.len() == 6).then(|| {
                    out.copy_from_slice(m);
                    MacAddr::from_bytes(out)
                })
            })
            .with_context(|| format!("link {index} has no MAC address"))
    }

    /// The indexes of the ports of bridge `bridge`.
    ///
    /// # Errors
    /// Fails on netlink errors.
    pub async fn bridge_ports(&self, bridge: u32) -> Result<BTreeSet<u32>> {
        let mut links = self.handle.link().get().execute();
        let mut out = BTreeSet::new();
        while let Some(msg) = links.try_next().await.context("listing links")? {
            if msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == bridge))
            {
                out.insert(msg.header.index);
            }
        }
        Ok(out)
    }

    async fn del_neighbour(&self, msg: NeighbourMessage) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        match self.ack(req).await {
            Err(e) if errno(&e) == Some(ENOENT) => Ok(()),
            r => r,
        }
    }

    async fn ack(&self, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<(), rtnetlink::Error> {
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(msg) = response.next().await {
            if let NetlinkPayload::Error(e) = msg.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }
}

fn fdb_message(ifindex: u32, mac: MacAddr, flags: NeighbourFlags) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = flags;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.bytes().to_vec()));
    msg
}

/// A neighbour address; bridge-family entries carry theirs as bare bytes.
fn parse_neigh_addr(d: &NeighbourAddress) -> Option<IpAddr> {
    if let NeighbourAddress::Inet(v4) = d {
        Some(IpAddr::V4(*v4))
    } else if let NeighbourAddress::Inet6(v6) = d {
        Some(IpAddr::V6(*v6))
    } else if let NeighbourAddress::Other(b) = d {
        match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        }
    } else {
        None
    }
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    if let rtnetlink::Error::NetlinkError(msg) = e {
        msg.code.map(i32::from)
    } else {
        None
    }
}
