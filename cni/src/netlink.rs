//! Netlink plumbing for the plugin: one current-thread tokio runtime (rtnetlink needs one), a
//! connection in the runtime's own namespace, and connections opened inside a container's
//! namespace from a short-lived thread that joins it with `setns`.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::runtime::Runtime;

/// A netlink failure: what failed and the kernel's answer.
#[derive(Debug)]
pub(crate) struct NlError {
    /// What failed.
    pub(crate) text: String,
}

/// The runtime and the connection in the plugin's own (host) namespace.
pub(crate) struct Netlink {
    rt: Runtime,
    host: Handle,
}

impl Netlink {
    /// Starts the runtime and connects in the current namespace.
    pub(crate) fn new() -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let host = {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            rt.spawn(conn);
            handle
        };
        Ok(Self { rt, host })
    }

    /// The host-namespace handle.
    pub(crate) fn host(&self) -> &Handle {
        &self.host
    }

    /// Runs a future to completion.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Opens a connection inside the namespace `ns`. A netlink socket belongs to the namespace
    /// it was created in, so a helper thread joins `ns` (leaving this thread where it is) and
    /// creates the socket there, registered with this runtime.
    pub(crate) fn connect_in(&self, ns: &File) -> io::Result<Handle> {
        let fd = ns.as_raw_fd();
        let rt = self.rt.handle().clone();
        let joined = std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid fd affects only this helper thread.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })
            .join()
        });
        let (conn, handle, _) =
            joined.map_err(|_| io::Error::other("the namespace helper thread panicked"))??;
        self.rt.spawn(conn);
        Ok(handle)
    }
}

/// Looks a link up by name; `None` when there is none.
pub(crate) async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NlError> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(e, format!("look up link {name}"))),
    }
}

/// Creates a veth pair in one request: `host` in `h`'s namespace, attached to `bridge` and up;
/// its peer directly inside the namespace open as `peer_ns`, named `peer`, still down (the
/// kernel cannot open a veth before its pair is complete: ENOTCONN). Creating the peer in place
/// spares moving a device between namespaces, which costs RCU grace periods (tens of ms).
pub(crate) async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    peer_ns: &File,
    bridge: u32,
    mtu: u32,
) -> Result<(), NlError> {
    let peer_msg = LinkUnspec::new_with_name(peer)
        .mtu(mtu)
        .setns_by_fd(peer_ns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .mtu(mtu)
        .controller(bridge)
        .up()
        .build();
    h.link().add(msg).execute().await.map_err(|e| {
        nl(
            e,
            format!("create veth pair {host} (host) / {peer} (container)"),
        )
    })
}

/// Sets the hairpin flag of bridge port `index`.
pub(crate) async fn set_hairpin(
    h: &Handle,
    index: u32,
    name: &str,
    on: bool,
) -> Result<(), NlError> {
    let msg = LinkBridgePort::new(index).hairpin(on).build();
    h.link()
        .change(msg)
        .execute()
        .await
        .map_err(|e| nl(e, format!("set hairpin {on} on bridge port {name}")))
}

/// Sets link `index`'s MAC address.
pub(crate) async fn set_mac(
    h: &Handle,
    index: u32,
    name: &str,
    mac: [u8; 6],
) -> Result<(), NlError> {
    let msg = LinkUnspec::new_with_index(index)
        .address(mac.to_vec())
        .build();
    h.link()
        .change(msg)
        .execute()
        .await
        .map_err(|e| nl(e, format!("set the MAC of {name}")))
}

/// Brings link `index` up.
pub(crate) async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), NlError> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    h.link()
        .change(msg)
        .execute()
        .await
        .map_err(|e| nl(e, format!("bring {name} up")))
}

/// Deletes link `name`; `Ok(false)` when there was none.
pub(crate) async fn delete_link(h: &Handle, name: &str) -> Result<bool, NlError> {
    let msg = LinkUnspec::new_with_name(name).build();
    match h.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl(e, format!("delete link {name}"))),
    }
}

/// Adds `addr/prefix` to link `index`.
pub(crate) async fn add_address(
    h: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), NlError> {
    h.address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
        .map_err(|e| nl(e, format!("add address {addr}/{prefix}")))
}

/// The IPv4 addresses (with prefix lengths) on link `index`.
pub(crate) async fn addresses(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NlError> {
    let mut out = Vec::new();
    let mut stream = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| nl(e, "list addresses".to_owned()))?
    {
        if msg.header.index != index {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(a)) = attr {
                out.push((*a, msg.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Adds the routes of a pod: a link-scope route to `gateway` when it lies outside the pod's
/// subnet, then the default route via `gateway`, both out of link `index`. `Ok(false)` when the
/// pod has a default route already (a second attachment), which is left as it is.
pub(crate) async fn add_default_route(
    h: &Handle,
    index: u32,
    gateway: Ipv4Addr,
    on_link: bool,
) -> Result<bool, NlError> {
    if !on_link {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gateway, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        h.route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl(e, format!("add route {gateway}/32 scope link")))?;
    }
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(nl(e, format!("add default route via {gateway}"))),
    }
}

/// The MTU attribute of a link.
pub(crate) fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| {
        if let LinkAttribute::Mtu(m) = a {
            Some(*m)
        } else {
            None
        }
    })
}

/// The bridge a link is attached to.
pub(crate) fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| {
        if let LinkAttribute::Controller(c) = a {
            Some(*c)
        } else {
            None
        }
    })
}

/// The hardware address of a link as `aa:bb:cc:dd:ee:ff`.
pub(crate) fn mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| {
        let LinkAttribute::Address(bytes) = a else {
            return None;
        };
        Some(
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        )
    })
}

/// The positive errno of a netlink error answer.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    if let rtnetlink::Error::NetlinkError(msg) = e {
        msg.code.map(|c| -c.get())
    } else {
        None
    }
}

fn nl(e: rtnetlink::Error, what: String) -> NlError {
    let text = match errno(&e) {
        Some(n) => format!("netlink: {what}: {}", io::Error::from_raw_os_error(n)),
        None => format!("netlink: {what}: {e}"),
    };
    NlError { text }
}
