//! The router's netlink shell: creates and configures the node's devices (bridge `weft`, later
//! the TAP and VXLAN ports and their forwarding entries) through rtnetlink, never by running
//! `ip` or `bridge`.

use anyhow::{Context, Result};
use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

/// ENODEV and EEXIST, as netlink reports them (negated errno).
const ENODEV: i32 = -19;
const EEXIST: i32 = -17;

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
    pub async fn ensure_address(
        &self,
        index: u32,
        addr: std::net::IpAddr,
        prefix_len: u8,
    ) -> Result<()> {
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

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    if let rtnetlink::Error::NetlinkError(msg) = e {
        msg.code.map(i32::from)
    } else {
        None
    }
}
