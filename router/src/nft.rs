//! The nftables shell: a `NETLINK_NETFILTER` socket that dumps what the kernel holds, sends
//! the batch `topology::netfilter::reconcile::plan` asks for, and reads every acknowledgement,
//! so a rule the kernel refuses is reported with the kernel's reason, never taken as in place.
//!
//! No `nft` or `iptables` binary is run (the image has neither); docs/ARCHITECTURE.md says why
//! weft writes these few messages itself.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use topology::netfilter::policy;
use topology::netfilter::reconcile::{Present, plan_keeping};
use topology::netfilter::wire::{
    self, NETLINK_NETFILTER, Op, PresentChain, PresentRule, Reply, decode_replies,
};
use topology::netfilter::{Chain, Hook};
use topology::netfilter::{Set, tunnels};

/// What `weft status` and the report show of weft's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetfilterStatus {
    /// True once the kernel holds exactly the wanted rules (checked at the last reconcile).
    pub in_place: bool,
    /// The number of rules weft wants in its table.
    pub rules: usize,
    /// Masquerade of pod egress (`--masquerade`).
    pub masquerade: bool,
    /// The last error from the kernel, while rules are not in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Other tables whose forward hook drops by policy (e.g. Docker's iptables FORWARD), as
    /// `family table/chain`: they may drop routed pod traffic that weft's rules let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_drop: Vec<String>,
    /// Sysctls weft needs that could not be set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctl_warnings: Vec<String>,
    /// Peer addresses the tunnel ports accept datagrams from.
    #[serde(default)]
    pub tunnel_peers: usize,
    /// Datagrams to the tunnel ports dropped because their source is no peer.
    #[serde(default)]
    pub tunnel_drops: u64,
    /// NetworkPolicy enforcement (`--network-policy on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyStatus>,
}

/// A netlink socket to nf_tables.
#[derive(Debug)]
pub struct Nft {
    fd: OwnedFd,
    seq: u32,
    /// The socket buffers' sizes as last set (send, receive), 0 for the kernel's defaults.
    buffers: (usize, usize),
}

/// What the kernel accounts per acknowledgement queued on the socket (an skb's true size,
/// rounded up), for sizing the receive buffer of a batch.
const ACK_TRUESIZE: usize = 1024;

/// What a reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The operations sent (empty when everything was in place).
    pub ops: Vec<Op>,
    /// Base forward chains of other tables with a drop policy.
    pub forward_drop: Vec<String>,
    /// Datagrams the tunnel filter dropped (non-peers), read before this reconcile.
    pub tunnel_drops: u64,
    /// The policy part wanted.
    pub policy: policy::Programmed,
    /// The counters of the policy chains' rules, read before this reconcile.
    pub policy_counts: Vec<policy::RuleCount>,
    /// The rule state compiled for it, and the view it came from (filled by the caller).
    pub compiled: Option<(
        topology::policy::RuleSet,
        Option<std::sync::Arc<topology::cluster::ClusterView>>,
    )>,
}

impl Nft {
    /// Opens the socket in the current network namespace.
    ///
    /// # Errors
    /// Fails when the kernel has no nf_tables netlink or the process lacks `CAP_NET_ADMIN`.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain syscalls on a descriptor this function owns from the start.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            if libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // A kernel that never answers must not hang the router.
            let tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
            let seq = std::process::id().wrapping_mul(65_536);
            Ok(Self {
                fd,
                seq,
                buffers: (0, 0),
            })
        }
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n + 2);
        s
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer outlives the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one datagram, growing `buf` to fit it (the kernel sizes dump datagrams by the
    /// socket's receive buffer: a large set's elements come in datagrams over 64 KiB).
    fn recv(&self, buf: &mut Vec<u8>) -> io::Result<Vec<Reply>> {
        let read = |buf: &mut Vec<u8>, flags| {
            // SAFETY: the kernel writes at most buf.len() bytes into buf; with MSG_TRUNC it
            // returns the datagram's real length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        };
        let size = read(buf, libc::MSG_PEEK)?;
        if size > buf.len() {
            buf.resize(size, 0);
        }
        let n = read(buf, 0)?;
        decode_replies(&buf[..n.min(buf.len())])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Runs a dump and collects its replies until the kernel says it is done.
    fn dump(&mut self, request: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Reply>> {
        let seq = self.next_seq(1);
        self.send(&request(seq))?;
        let mut buf = vec![0_u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            for reply in self.recv(&mut buf)? {
                match reply {
                    Reply::Done { error, .. } | Reply::Ack { error, .. } if error != 0 => {
                        // A dump of a table that does not exist yet is an empty dump.
                        if -error == libc::ENOENT {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-error));
                    }
                    Reply::Done { .. } | Reply::Ack { .. } => return Ok(out),
                    other @ (Reply::Rule(_)
                    | Reply::Chain(_)
                    | Reply::Set { .. }
                    | Reply::Elements { .. }
                    | Reply::Generation(_)
                    | Reply::Other) => out.push(other),
                }
            }
        }
    }

    /// The ruleset's generation: it grows with every commit to this namespace's nftables,
    /// weft's or anyone's.
    ///
    /// # Errors
    /// Fails when the request fails or the answer has no generation.
    pub fn generation(&mut self) -> io::Result<u32> {
        self.dump(wire::encode_get_generation)?
            .into_iter()
            .find_map(|r| {
                if let Reply::Generation(id) = r {
                    Some(id)
                } else {
                    None
                }
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no generation id"))
    }

    /// Every chain of every table and family.
    ///
    /// # Errors
    /// Fails when the dump fails.
    pub fn chains(&mut self) -> io::Result<Vec<PresentChain>> {
        let replies = self.dump(wire::encode_get_chains)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| {
                if let Reply::Chain(c) = r {
                    Some(c)
                } else {
                    None
                }
            })
            .collect())
    }

    /// The rules of weft's table.
    ///
    /// # Errors
    /// Fails when the dump fails.
    pub fn rules(&mut self) -> io::Result<Vec<PresentRule>> {
        let replies = self.dump(wire::encode_get_rules)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| {
                if let Reply::Rule(r) = r {
                    Some(r)
                } else {
                    None
                }
            })
            .collect())
    }

    /// Sends `ops` as one atomic batch and waits for every acknowledgement.
    ///
    /// # Errors
    /// The first operation the kernel refused, with its reason; the kernel then applied none.
    pub fn apply(&mut self, ops: &[Op]) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq(ops.len() as u32);
        let (bytes, seqs) = wire::encode_batch(ops, seq);
        self.size_buffers(bytes.len(), ops.len())?;
        self.send(&bytes)?;
        let mut waiting: BTreeSet<u32> = seqs.iter().copied().collect();
        let mut refused: Option<io::Error> = None;
        let mut buf = vec![0_u8; 64 * 1024];
        while !waiting.is_empty() {
            let replies = match self.recv(&mut buf) {
                Ok(r) => r,
                // After an error the kernel may not acknowledge the rest of an aborted batch.
                Err(e) if refused.is_some() && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            for reply in replies {
                let Reply::Ack { seq, error } = reply else {
                    continue;
                };
                waiting.remove(&seq);
                if error != 0 && refused.is_none() {
                    let what = seqs
                        .iter()
                        .position(|s| *s == seq)
                        .map_or_else(|| format!("message {seq}"), |i| ops[i].describe());
                    let err = io::Error::from_raw_os_error(-error);
                    refused = Some(io::Error::new(err.kind(), format!("{what}: {err}")));
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Grows the socket's buffers for a batch of `bytes` and `ops` acknowledgements: the
    /// kernel refuses a batch larger than the send buffer (EMSGSIZE) and drops acknowledgements
    /// that do not fit the receive buffer (ENOBUFS). nft does the same.
    fn size_buffers(&mut self, bytes: usize, ops: usize) -> io::Result<()> {
        let send = bytes + 64 * 1024;
        let recv = ops * ACK_TRUESIZE + 256 * 1024;
        if send > self.buffers.0 {
            self.set_buffer(libc::SO_SNDBUFFORCE, send)?;
            self.buffers.0 = send;
        }
        if recv > self.buffers.1 {
            self.set_buffer(libc::SO_RCVBUFFORCE, recv)?;
            self.buffers.1 = recv;
        }
        Ok(())
    }

    fn set_buffer(&self, option: libc::c_int, size: usize) -> io::Result<()> {
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt on this socket with a valid int.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&size).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The sets of weft's table with their elements' keys.
    ///
    /// # Errors
    /// Fails when a dump fails.
    pub fn sets(&mut self) -> io::Result<BTreeMap<String, BTreeSet<Vec<u8>>>> {
        let names: Vec<String> = self
            .dump(wire::encode_get_sets)?
            .into_iter()
            .filter_map(|r| {
                let Reply::Set { table, name } = r else {
                    return None;
                };
                (table == topology::netfilter::TABLE).then_some(name)
            })
            .collect();
        let mut sets = BTreeMap::new();
        for name in names {
            let mut keys = BTreeSet::new();
            for r in self.dump(|seq| wire::encode_get_elements(seq, &name))? {
                if let Reply::Elements { keys: k, .. } = r {
                    keys.extend(k);
                }
            }
            sets.insert(name, keys);
        }
        Ok(sets)
    }

    /// Brings weft's table to `wanted` (no policy part): reads what the kernel holds and
    /// sends what differs.
    ///
    /// # Errors
    /// A failed dump, or the operation the kernel refused.
    pub fn reconcile(&mut self, wanted: &[Chain]) -> io::Result<Reconciled> {
        self.reconcile_table(wanted, &[], false, policy::Want::Off)
    }

    /// Brings weft's table to the `wanted` chains and sets plus the policy part `policy`
    /// wants; with `keep_peers`, the tunnels' peer sets keep the elements they hold already
    /// (a router just started does not know its peers yet, and must not cut them off from the
    /// tunnels in the meantime).
    ///
    /// # Errors
    /// A failed dump, or the operation the kernel refused.
    pub fn reconcile_table(
        &mut self,
        wanted: &[Chain],
        sets: &[Set],
        keep_peers: bool,
        policy: policy::Want<'_>,
    ) -> io::Result<Reconciled> {
        let chains = self.chains()?;
        let rules = self.rules()?;
        let present = Present::from_dumps(&chains, &rules).with_sets(self.sets()?);
        let programmed = policy::resolve(policy, &present);
        let mut sets = sets.to_vec();
        if keep_peers {
            for set in sets
                .iter_mut()
                .filter(|s| s.name == tunnels::PEERS4 || s.name == tunnels::PEERS6)
            {
                let held = present.sets.get(&set.name).into_iter().flatten();
                set.elements.extend(held.filter_map(|k| ip_of(k)));
            }
        }
        sets.extend(programmed.sets.iter().cloned());
        let mut all = programmed.chains.clone();
        all.extend(wanted.iter().cloned());
        let keep = programmed.keep_present;
        let ops = plan_keeping(&all, &sets, &present, |name| keep && policy::owns(name));
        self.apply(&ops)?;
        let in_table = |r: &&PresentRule| r.table == topology::netfilter::TABLE;
        // What the tunnel filter dropped so far (its rules' counters, as the dump read them).
        let tunnel_drops = rules
            .iter()
            .filter(in_table)
            .filter(|r| r.chain == tunnels::CHAIN)
            .filter_map(|r| r.packets)
            .sum();
        let policy_counts = rules
            .iter()
            .filter(in_table)
            .filter(|r| policy::owns(&r.chain))
            .filter_map(|r| Some((r.chain.clone(), r.handle, r.key.clone(), r.packets?)))
            .collect();
        Ok(Reconciled {
            ops,
            forward_drop: forward_drop(&chains),
            tunnel_drops,
            policy: programmed,
            policy_counts,
            compiled: None,
        })
    }

    /// Deletes weft's table and every rule in it (uninstall); no table is no error.
    ///
    /// # Errors
    /// Fails when the kernel refuses.
    pub fn remove_table(&mut self) -> io::Result<()> {
        match self.apply(&[Op::DelTable]) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The address a set element's key holds.
fn ip_of(key: &[u8]) -> Option<std::net::IpAddr> {
    match key.len() {
        4 => <[u8; 4]>::try_from(key).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(key).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Base chains of other tables on the forward hook (IPv4, IPv6 or inet) whose policy drops.
fn forward_drop(chains: &[PresentChain]) -> Vec<String> {
    chains
        .iter()
        .filter(|c| {
            c.table != topology::netfilter::TABLE
                && c.hook == Some(Hook::Forward as u32)
                && c.policy == Some(0)
                && matches!(c.family, 1 | 2 | 10)
        })
        .map(|c| {
            let family = match c.family {
                1 => "inet",
                2 => "ip",
                _ => "ip6",
            };
            format!("{family} {}/{}", c.table, c.name)
        })
        .collect()
}
