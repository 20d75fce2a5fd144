//! The CNI verbs: ADD, CHECK, DEL, GC, STATUS and VERSION, from environment and stdin to the
//! bytes for stdout and an exit code.
//!
//! Every attachment is keyed by (`CNI_CONTAINERID`, `CNI_IFNAME`): the host end of the veth
//! pair has a name derived from that pair, and the router's IPAM keys its allocation by it, so
//! DEL finds everything without entering the container's namespace.

use std::fs::File;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use rtnetlink::packet_route::link::LinkMessage;

use crate::api::{
    ALLOCATE_PATH, AllocateRequest, AllocateResponse, Attachment, GC_PATH, GcRequest, LOOKUP_PATH,
    LookupRequest, LookupResponse, READY_PATH, RELEASE_PATH, ReadyResponse, ReleaseRequest,
    ReleaseResponse,
};
use crate::client::{Client, ClientError, Response};
use crate::conf::{
    BRIDGE, Cidr, CniResult, CniVersion, Command, Env, Interface, IpConfig, NetConf, Route,
    SUPPORTED_VERSIONS, valid_ifname, valid_name,
};
use crate::error::{CniError, code};
use crate::log::log;
use crate::netlink::{self, Netlink, NlError};

/// What the plugin prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes for stdout: a result, a version object, an error object, or nothing.
    pub stdout: Vec<u8>,
    /// Process exit code: 0 on success, 1 on error.
    pub exit_code: i32,
}

/// Runs one invocation.
pub fn run(env: &Env, stdin: &mut dyn Read) -> Outcome {
    let mut version = None;
    match dispatch(env, stdin, &mut version) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => {
            log(format_args!(
                "{} {}/{}: error {e}",
                env.command.as_deref().unwrap_or("-"),
                env.container_id.as_deref().unwrap_or("-"),
                env.ifname.as_deref().unwrap_or("-"),
            ));
            let v = version.map_or(LATEST, CniVersion::as_str);
            Outcome {
                stdout: e.to_json(v),
                exit_code: 1,
            }
        }
    }
}

/// The name of the host end of an attachment's veth pair: `vw` and 11 hex digits of a hash of
/// container id and interface name (13 characters, within IFNAMSIZ).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "vw{:011x}",
        attachment_hash(container_id, ifname) & NAME_HASH_MASK
    )
}

/// The name the container end has in the host namespace before it is moved and renamed.
pub fn temp_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "vt{:011x}",
        attachment_hash(container_id, ifname) & NAME_HASH_MASK
    )
}

fn dispatch(
    env: &Env,
    stdin: &mut dyn Read,
    version: &mut Option<CniVersion>,
) -> Result<Vec<u8>, CniError> {
    if !env.not_utf8.is_empty() {
        return Err(env_error(format!(
            "{} not valid UTF-8",
            env.not_utf8.join(", ")
        )));
    }
    let Some(command_text) = env.command.as_deref() else {
        return Err(env_error(format!(
            "CNI_COMMAND is not set: weft-cni is a CNI plugin (CNI {}) run by a container runtime",
            SUPPORTED_VERSIONS.join(", ")
        )));
    };
    let Some(command) = Command::parse(command_text) else {
        return Err(env_error(format!(
            "CNI_COMMAND={command_text:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
        )));
    };
    check_env(command, env)?;
    let mut input = Vec::new();
    stdin.read_to_end(&mut input).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "cannot read the network configuration",
            format!("reading stdin: {e}"),
        )
    })?;
    if command == Command::Version {
        return version_result(&input);
    }
    let conf = NetConf::parse(&input)?;
    *version = conf.version().ok();
    let v = conf.validate()?;
    let attach = || Attach {
        container_id: env.container_id.clone().unwrap_or_default(),
        ifname: env.ifname.clone().unwrap_or_default(),
        netns: env.netns.clone(),
        args: env.args.clone(),
    };
    match command {
        Command::Add => add(&attach(), &conf, v),
        Command::Check => check(&attach(), &conf),
        Command::Del => del(&attach(), &conf),
        Command::Gc => {
            need_1_1(v, "GC")?;
            gc(&conf)
        }
        Command::Status => {
            need_1_1(v, "STATUS")?;
            status(&conf)
        }
        Command::Version => version_result(&input),
    }
}

/// The per-invocation parameters of an attachment.
struct Attach {
    container_id: String,
    ifname: String,
    netns: Option<String>,
    /// `CNI_ARGS`.
    args: Option<String>,
}

/// Checks the variables the spec requires for `command`, and the formats of those given.
fn check_env(command: Command, env: &Env) -> Result<(), CniError> {
    let (id, netns, ifname, path) = match command {
        Command::Add | Command::Check => (true, true, true, false),
        Command::Del => (true, false, true, false),
        Command::Gc => (false, false, false, true),
        Command::Status | Command::Version => (false, false, false, false),
    };
    let mut missing = Vec::new();
    if id && env.container_id.is_none() {
        missing.push("CNI_CONTAINERID");
    }
    if netns && env.netns.is_none() {
        missing.push("CNI_NETNS");
    }
    if ifname && env.ifname.is_none() {
        missing.push("CNI_IFNAME");
    }
    if path && env.path.is_none() {
        missing.push("CNI_PATH");
    }
    if !missing.is_empty() {
        return Err(env_error(format!(
            "{} required for {command:?} but not set",
            missing.join(", ")
        )));
    }
    if id
        && let Some(cid) = env.container_id.as_deref()
        && !valid_name(cid)
    {
        return Err(env_error(format!(
            "CNI_CONTAINERID={cid:?} must start with an alphanumeric character followed by \
             alphanumerics, '_', '.' or '-'"
        )));
    }
    if ifname
        && let Some(name) = env.ifname.as_deref()
        && !valid_ifname(name)
    {
        return Err(env_error(format!(
            "CNI_IFNAME={name:?} is not a valid interface name (1-15 printable characters, no \
             '/', ':' or spaces)"
        )));
    }
    Ok(())
}

fn version_result(input: &[u8]) -> Result<Vec<u8>, CniError> {
    #[derive(serde::Deserialize)]
    struct In {
        #[serde(default, rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let asked = if input.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<In>(input)
            .map_err(|e| {
                CniError::new(
                    code::DECODE_FAILURE,
                    "cannot decode the VERSION request on stdin",
                    e.to_string(),
                )
            })?
            .cni_version
    };
    let out = serde_json::json!({
        "cniVersion": asked.as_deref().unwrap_or(LATEST),
        "supportedVersions": SUPPORTED_VERSIONS,
    });
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

fn need_1_1(v: CniVersion, verb: &str) -> Result<(), CniError> {
    if v < CniVersion::V1_1_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "config version {} does not allow {verb} (it needs cniVersion 1.1.0)",
                v.as_str()
            ),
        ));
    }
    Ok(())
}

fn add(a: &Attach, conf: &NetConf, version: CniVersion) -> Result<Vec<u8>, CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()?;
    let netns_path = a.netns.as_deref().unwrap_or_default();
    let ns = open_netns(netns_path)?;
    let nl = Netlink::new().map_err(|e| io_error("cannot open a netlink socket", &e))?;
    let host_name = host_veth_name(&a.container_id, &a.ifname);
    let (bridge, existing) = bridge_and_host_veth(&nl, &host_name)?;
    if existing.is_some() {
        return Err(env_error(format!(
            "attachment CNI_CONTAINERID={}, CNI_IFNAME={} exists already (host veth {host_name}); \
             DEL it before adding it again",
            a.container_id, a.ifname
        )));
    }
    let mtu = conf
        .mtu
        .or_else(|| netlink::mtu(&bridge))
        .unwrap_or(DEFAULT_MTU);
    let wanted_mac = requested_mac(a.args.as_deref())?;
    let container = nl.connect_in(&ns).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            env_error(format!("CNI_NETNS={netns_path} is not a network namespace"))
        } else {
            io_error("cannot open netlink in the container namespace", &e)
        }
    })?;
    if nl
        .block_on(netlink::link_by_name(&container, &a.ifname))
        .map_err(nl_error)?
        .is_some()
    {
        return Err(env_error(format!(
            "CNI_IFNAME={}: an interface of that name exists already in CNI_NETNS={netns_path}",
            a.ifname
        )));
    }

    let client = Client::new(conf.socket_path(), timeout());
    let alloc = allocate(&client, a, conf)?;
    log(format_args!(
        "ADD {}/{}: allocated {} gateway {}",
        a.container_id, a.ifname, alloc.0, alloc.1
    ));
    let (cidr, gateway) = alloc;

    // From here on every failure undoes what was done: deleting the host end destroys the
    // pair wherever the container end is, and the allocation is released.
    let configured = nl.block_on(async {
        let bridge_index = bridge.header.index;
        netlink::create_veth(nl.host(), &host_name, &a.ifname, &ns, bridge_index, mtu).await?;
        let (host_link, peer) = futures::future::try_join(
            netlink::link_by_name(nl.host(), &host_name),
            netlink::link_by_name(&container, &a.ifname),
        )
        .await?;
        let (Some(host_link), Some(peer)) = (host_link, peer) else {
            return Err(NlError {
                text: format!(
                    "veth pair {host_name}/{} not found after creation",
                    a.ifname
                ),
            });
        };
        // A new bridge port starts with hairpin off.
        if conf.hairpin_mode.unwrap_or(true) {
            netlink::set_hairpin(nl.host(), host_link.header.index, &host_name, true).await?;
        }
        let index = peer.header.index;
        if let Some(mac) = wanted_mac {
            netlink::set_mac(&container, index, &a.ifname, mac).await?;
        }
        netlink::set_up(&container, index, &a.ifname).await?;
        netlink::add_address(&container, index, cidr.addr, cidr.prefix).await?;
        let routed =
            netlink::add_default_route(&container, index, gateway, cidr.contains(gateway)).await?;
        // The link message was read before the MAC was set: report the MAC the pod has.
        let container_mac = match wanted_mac {
            Some(m) => Some(format_mac(m)),
            None => netlink::mac(&peer),
        };
        Ok::<_, NlError>((netlink::mac(&host_link), container_mac, routed))
    });
    let (host_mac, container_mac, routed) = match configured {
        Ok(macs) => macs,
        Err(e) => {
            log(format_args!(
                "ADD {}/{}: rolling back: {}",
                a.container_id, a.ifname, e.text
            ));
            if let Err(d) = nl.block_on(netlink::delete_link(nl.host(), &host_name)) {
                log(format_args!("rollback: {}", d.text));
            }
            if let Err(r) = release(&client, a, conf) {
                log(format_args!("rollback: {r}"));
            }
            return Err(nl_error(e));
        }
    };

    let mut result = prev.unwrap_or_default();
    let first = u32::try_from(result.interfaces.len()).unwrap_or(u32::MAX);
    result.interfaces.push(Interface {
        name: host_name,
        mac: host_mac,
        mtu: Some(mtu),
        ..Interface::default()
    });
    result.interfaces.push(Interface {
        name: a.ifname.clone(),
        mac: container_mac,
        mtu: Some(mtu),
        sandbox: Some(netns_path.to_owned()),
        ..Interface::default()
    });
    result.ips.push(IpConfig {
        address: cidr.to_string(),
        gateway: Some(gateway.to_string()),
        interface: Some(first.saturating_add(1)),
        ..IpConfig::default()
    });
    if routed {
        result.routes.push(Route {
            dst: "0.0.0.0/0".to_owned(),
            gw: Some(gateway.to_string()),
            ..Route::default()
        });
    }
    if let Some(dns) = &conf.dns
        && result.dns == crate::conf::Dns::default()
    {
        result.dns = dns.clone();
    }
    result.convert_to(version);
    serde_json::to_vec(&result)
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot encode the result", e.to_string()))
}

fn del(a: &Attach, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    // The cached prevResult and CNI_NETNS are not needed (and often empty): the host end's
    // name and the IPAM key both derive from (CNI_CONTAINERID, CNI_IFNAME).
    let host_name = host_veth_name(&a.container_id, &a.ifname);
    let nl = Netlink::new().map_err(|e| io_error("cannot open a netlink socket", &e))?;
    let deleted = nl
        .block_on(netlink::delete_link(nl.host(), &host_name))
        .map_err(nl_error)?;
    let client = Client::new(conf.socket_path(), timeout());
    let veth = if deleted { "deleted" } else { "absent" };
    match release(&client, a, conf) {
        Ok(released) => log(format_args!(
            "DEL {}/{}: veth {host_name} {veth}, released {:?}",
            a.container_id, a.ifname, released.released
        )),
        // The router is down, restarting or not ready: the pod is gone from this node, so
        // the DEL succeeds, and the router applies the queued release when it runs again.
        Err(e) if e.code == code::TRY_AGAIN_LATER => {
            let dir = std::path::Path::new(conf.release_queue_dir());
            let path = crate::queue::push(dir, &release_request(a, conf))
                .map_err(|q| io_error("cannot queue the release for the router", &q))?;
            log(format_args!(
                "DEL {}/{}: veth {host_name} {veth}; router unavailable ({}), release queued \
                 in {}",
                a.container_id,
                a.ifname,
                e.details,
                path.display()
            ));
        }
        Err(e) => return Err(e),
    }
    Ok(Vec::new())
}

fn check(a: &Attach, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let Some(prev) = conf.prev_result.as_ref() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "CHECK needs \"prevResult\" (the result of the ADD)",
        ));
    };
    let prev = CniResult::from_value(prev)?;
    let netns_path = a.netns.as_deref().unwrap_or_default();
    let Some(iface) = prev
        .interfaces
        .iter()
        .position(|i| i.name == a.ifname && i.sandbox.as_deref() == Some(netns_path))
    else {
        return Err(check_error(format!(
            "prevResult lists no interface {} with sandbox {netns_path}",
            a.ifname
        )));
    };
    let mut expected = Vec::new();
    for ip in &prev.ips {
        if ip.interface.and_then(|i| usize::try_from(i).ok()) == Some(iface) {
            let cidr = Cidr::parse(&ip.address).ok_or_else(|| {
                CniError::new(
                    code::DECODE_FAILURE,
                    "cannot decode prevResult",
                    format!("address {:?} is not an IPv4 CIDR", ip.address),
                )
            })?;
            expected.push(cidr);
        }
    }
    let ns = open_netns(netns_path)?;
    let nl = Netlink::new().map_err(|e| io_error("cannot open a netlink socket", &e))?;
    let host_name = host_veth_name(&a.container_id, &a.ifname);
    let (bridge, host) = bridge_and_host_veth(&nl, &host_name)?;
    let Some(host) = host else {
        return Err(check_error(format!("host veth {host_name} does not exist")));
    };
    if netlink::controller(&host) != Some(bridge.header.index) {
        return Err(check_error(format!(
            "host veth {host_name} is not attached to bridge {BRIDGE}"
        )));
    }
    let container = nl.connect_in(&ns).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            env_error(format!("CNI_NETNS={netns_path} is not a network namespace"))
        } else {
            io_error("cannot open netlink in the container namespace", &e)
        }
    })?;
    let Some(link) = nl
        .block_on(netlink::link_by_name(&container, &a.ifname))
        .map_err(nl_error)?
    else {
        return Err(check_error(format!(
            "interface {} does not exist in {netns_path}",
            a.ifname
        )));
    };
    let have = nl
        .block_on(netlink::addresses(&container, link.header.index))
        .map_err(nl_error)?;
    for want in &expected {
        if !have.contains(&(want.addr, want.prefix)) {
            return Err(check_error(format!(
                "interface {} in {netns_path} lacks address {want}",
                a.ifname
            )));
        }
    }
    // The allocation, read-only: CHECK never allocates. None held, or a different address,
    // means the original claim was lost.
    let client = Client::new(conf.socket_path(), timeout());
    let Some(held) = lookup(&client, a, conf)? else {
        return Err(check_error(format!(
            "the router holds no address for {}/{}",
            a.container_id, a.ifname
        )));
    };
    if !expected.is_empty() && !expected.contains(&held) {
        return Err(check_error(format!(
            "the router holds {held} for this attachment, not {}",
            expected
                .iter()
                .map(Cidr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Vec::new())
}

fn gc(conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "GC needs \"cni.dev/valid-attachments\"",
        ));
    };
    let mut valid: Vec<Attachment> = valid
        .iter()
        .map(|v| Attachment {
            container_id: v.container_id.clone(),
            ifname: v.ifname.clone(),
        })
        .collect();
    valid.sort();
    valid.dedup();
    let client = Client::new(conf.socket_path(), timeout());
    let req = GcRequest {
        network: conf.network().to_owned(),
        valid,
    };
    let resp = client
        .post(GC_PATH, &req)
        .map_err(|e| router_error(&client, &e))?;
    let released: ReleaseResponse = expect_ok(&resp, "gc")?;
    log(format_args!(
        "GC {}: released {:?}",
        conf.network(),
        released.released
    ));
    Ok(Vec::new())
}

fn status(conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let client = Client::new(conf.socket_path(), timeout());
    let not_available = |details: String| {
        CniError::new(
            code::NOT_AVAILABLE,
            "the weft router is not available",
            details,
        )
    };
    let resp = client.get(READY_PATH).map_err(|e| {
        not_available(format!(
            "router API socket {}: {e}",
            client.socket().display()
        ))
    })?;
    let ready: Option<ReadyResponse> = resp.json().ok();
    match (resp.status, ready) {
        (200, Some(ReadyResponse { ready: true, .. })) => Ok(Vec::new()),
        (_, Some(ReadyResponse { reason, .. })) => Err(not_available(format!(
            "router not ready (HTTP {}): {}",
            resp.status,
            reason.unwrap_or_else(|| "no reason given".to_owned())
        ))),
        (_, None) => Err(not_available(format!(
            "router answered HTTP {}: {}",
            resp.status,
            resp.error_message()
        ))),
    }
}

/// Asks the router for the attachment's address.
fn allocate(client: &Client, a: &Attach, conf: &NetConf) -> Result<(Cidr, Ipv4Addr), CniError> {
    let req = AllocateRequest {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        network: conf.network().to_owned(),
    };
    let resp = client
        .post(ALLOCATE_PATH, &req)
        .map_err(|e| router_error(client, &e))?;
    let alloc: AllocateResponse = expect_ok(&resp, "allocate")?;
    let bad = |what: &str, v: &str| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the router's IPAM answer",
            format!(
                "{what} {v:?} is not an IPv4 {}",
                if what == "ip" { "CIDR" } else { "address" }
            ),
        )
    };
    let cidr = Cidr::parse(&alloc.ip).ok_or_else(|| bad("ip", &alloc.ip))?;
    let gateway: Ipv4Addr = alloc
        .gateway
        .parse()
        .map_err(|_| bad("gateway", &alloc.gateway))?;
    Ok((cidr, gateway))
}

/// Returns the address the router holds for the attachment, None when it holds none (404).
fn lookup(client: &Client, a: &Attach, conf: &NetConf) -> Result<Option<Cidr>, CniError> {
    let req = LookupRequest {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        network: conf.network().to_owned(),
    };
    let resp = client
        .post(LOOKUP_PATH, &req)
        .map_err(|e| router_error(client, &e))?;
    if resp.status == 404 {
        return Ok(None);
    }
    let held: LookupResponse = expect_ok(&resp, "lookup")?;
    let cidr = Cidr::parse(&held.ip).ok_or_else(|| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the router's IPAM answer",
            format!("ip {:?} is not an IPv4 CIDR", held.ip),
        )
    })?;
    Ok(Some(cidr))
}

/// Gives the attachment's address back.
fn release_request(a: &Attach, conf: &NetConf) -> ReleaseRequest {
    ReleaseRequest {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        network: conf.network().to_owned(),
    }
}

fn release(client: &Client, a: &Attach, conf: &NetConf) -> Result<ReleaseResponse, CniError> {
    let req = release_request(a, conf);
    let resp = client
        .post(RELEASE_PATH, &req)
        .map_err(|e| router_error(client, &e))?;
    expect_ok(&resp, "release")
}

/// Decodes a 200 answer, or maps the router's error status to a CNI error.
fn expect_ok<T: serde::de::DeserializeOwned>(resp: &Response, what: &str) -> Result<T, CniError> {
    match resp.status {
        200 => resp.json().map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the router's IPAM answer",
                e,
            )
        }),
        503 => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "the router's IPAM is not ready",
            format!("IPAM {what}: {}", resp.error_message()),
        )),
        507 => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "the address range is exhausted",
            format!("IPAM {what}: {}", resp.error_message()),
        )),
        400 => Err(CniError::new(
            code::INVALID_CONFIG,
            "the router rejected the IPAM request",
            format!("IPAM {what}: {}", resp.error_message()),
        )),
        s => Err(CniError::new(
            code::IO_FAILURE,
            "the router's IPAM failed",
            format!("IPAM {what}: HTTP {s}: {}", resp.error_message()),
        )),
    }
}

fn router_error(client: &Client, e: &ClientError) -> CniError {
    let socket = client.socket().display();
    match e {
        ClientError::Connect(_) | ClientError::Io(_) => CniError::new(
            code::TRY_AGAIN_LATER,
            "the weft router is not reachable",
            format!("router API socket {socket}: {e}; is the weft router running?"),
        ),
        ClientError::Protocol(_) => CniError::new(
            code::IO_FAILURE,
            "bad answer from the weft router",
            format!("router API socket {socket}: {e}"),
        ),
    }
}

/// Opens the container's namespace, refusing the runtime's own.
fn open_netns(path: &str) -> Result<File, CniError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "the container does not exist",
                format!("CNI_NETNS={path}: no such network namespace"),
            )
        } else {
            io_error(&format!("cannot open CNI_NETNS={path}"), &e)
        }
    })?;
    let md = file
        .metadata()
        .map_err(|e| io_error(&format!("cannot stat CNI_NETNS={path}"), &e))?;
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net")
        && own.dev() == md.dev()
        && own.ino() == md.ino()
    {
        return Err(env_error(format!(
            "CNI_NETNS={path} is the runtime's own network namespace"
        )));
    }
    Ok(file)
}

fn check_error(details: String) -> CniError {
    CniError::new(
        code::CHECK_FAILED,
        "the attachment is not as expected",
        details,
    )
}

fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Looks up the `weft` bridge (which must exist: the router makes it) and the attachment's
/// host veth (which may not).
fn bridge_and_host_veth(
    nl: &Netlink,
    host_name: &str,
) -> Result<(LinkMessage, Option<LinkMessage>), CniError> {
    let (bridge, host) = nl
        .block_on(async {
            futures::future::try_join(
                netlink::link_by_name(nl.host(), BRIDGE),
                netlink::link_by_name(nl.host(), host_name),
            )
            .await
        })
        .map_err(nl_error)?;
    let Some(bridge) = bridge else {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "the weft bridge does not exist",
            format!(
                "no bridge \"{BRIDGE}\" in this namespace: the weft router creates it; is it running?"
            ),
        ));
    };
    Ok((bridge, host))
}

/// The pod MAC asked for with `MAC=aa:bb:cc:dd:ee:ff` in `CNI_ARGS` (the CNI conventions'
/// `mac` argument), if any.
fn requested_mac(args: Option<&str>) -> Result<Option<[u8; 6]>, CniError> {
    let Some(value) = args
        .unwrap_or_default()
        .split(';')
        .find_map(|kv| kv.strip_prefix("MAC="))
    else {
        return Ok(None);
    };
    let bytes: Vec<u8> = value
        .split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_default();
    match <[u8; 6]>::try_from(bytes) {
        Ok(mac) if mac[0] & 1 == 0 => Ok(Some(mac)),
        _ => Err(env_error(format!(
            "CNI_ARGS MAC={value}: expected a unicast MAC like 02:00:00:00:00:01"
        ))),
    }
}

fn env_error(details: String) -> CniError {
    CniError::new(code::INVALID_ENV, "invalid environment variables", details)
}

fn io_error(what: &str, e: &io::Error) -> CniError {
    CniError::new(code::IO_FAILURE, "I/O failure", format!("{what}: {e}"))
}

fn nl_error(e: NlError) -> CniError {
    CniError::new(code::IO_FAILURE, "netlink operation failed", e.text)
}

fn timeout() -> Duration {
    std::env::var("WEFT_CNI_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
}

/// FNV-1a over `container_id`, a NUL and `ifname`, finished with the splitmix64 mixer so that
/// every output bit depends on every input byte.
fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The newest version weft speaks, used when the request names none it speaks.
const LATEST: &str = "1.1.0";
/// 44 bits: 11 hex digits.
const NAME_HASH_MASK: u64 = 0x0fff_ffff_ffff;
/// MTU when neither the netconf nor the bridge gives one.
const DEFAULT_MTU: u32 = 1500;
/// How long the router gets per read or write.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("cnih-cnih-c1", "eth0");
        assert_eq!(a, host_veth_name("cnih-cnih-c1", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("vw"));
        assert_ne!(a, host_veth_name("cnih-cnih-c1", "eth1"));
        assert_ne!(a, host_veth_name("cnih-cnih-c2", "eth0"));
    }

    #[test]
    fn mac_comes_from_cni_args() {
        assert_eq!(requested_mac(None).ok(), Some(None));
        assert_eq!(requested_mac(Some("IgnoreUnknown=1")).ok(), Some(None));
        assert_eq!(
            requested_mac(Some("IgnoreUnknown=1;MAC=02:00:00:00:00:2a")).ok(),
            Some(Some([2, 0, 0, 0, 0, 0x2a]))
        );
        assert!(requested_mac(Some("MAC=03:00:00:00:00:2a")).is_err());
        assert!(requested_mac(Some("MAC=02:00:00:00:2a")).is_err());
        assert!(requested_mac(Some("MAC=zz:00:00:00:00:2a")).is_err());
    }

    #[test]
    fn env_errors_name_the_variables() {
        let env = Env {
            command: Some("ADD".into()),
            ifname: Some("eth0".into()),
            ..Env::default()
        };
        let out = run(&env, &mut &b"{}"[..]);
        assert_eq!(out.exit_code, 1);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], 4);
        let details = v["details"].as_str().unwrap();
        assert!(
            details.contains("CNI_CONTAINERID") && details.contains("CNI_NETNS"),
            "{details}"
        );
    }

    #[test]
    fn version_echoes_input() {
        let env = Env {
            command: Some("VERSION".into()),
            ..Env::default()
        };
        let out = run(&env, &mut &br#"{"cniVersion":"1.0.0"}"#[..]);
        assert_eq!(out.exit_code, 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
