//! Frames across the converged mesh as the sleeve carries them: each router's forwarder over
//! its own table, a session per link from a Noise handshake, chunking, sealing, relaying and
//! reassembly; links lossless and in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use crypto::{
    Handshake, HandshakeConfig, Mode, NodeKey, PacketBuf, Session, SessionConfig, TAG_LEN,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use topology::PeerName;
use topology::dataplane::{Arrived, BROADCAST, Captured, Forwarder, ForwardingTable, NextHops};
use topology::mac::{MacAddr, MacTable};
use topology::routes::Graph;
use topology::sleeve::packet::MAX_HOP_LIMIT;
use topology::sleeve::{
    ChunkLayout, Chunker, HEADER_LEN, Packet, ReassemblyConfig, Received, Receiver, VNET_HDR_LEN,
};

use super::control::{Control, node_name};
use super::{DataplaneArgs, DataplaneReport};

/// The sleeve's datagram size in the simulation.
const DATAGRAM: usize = 1400;
/// One frame in this many is larger than a datagram (reassembled at the far end).
const LARGE_EVERY: u64 = 97;
const SMALL_LEN: usize = 100;
const LARGE_LEN: usize = 3000;
/// Up to this many routers, every router's table is checked against its own routes.
const TABLES_CHECKED_ALL: usize = 200;
/// Above it, this many sampled routers' are.
const TABLES_SAMPLE: usize = 5;
/// Failures listed in the report, at most.
const MAX_FAILURES: usize = 10;

/// One router's data plane.
struct Node {
    table: ForwardingTable,
    forwarder: Forwarder,
    macs: MacTable,
    receiver: Receiver,
    chunker: Chunker,
    sessions: HashMap<PeerName, Session>,
}

/// A datagram on its way to router `to` from neighbour `from`.
struct Datagram {
    to: usize,
    from: usize,
    bytes: Vec<u8>,
    hops: u32,
}

/// What a frame says it is (its payload), as delivered at router `at`.
struct Delivery {
    at: usize,
    origin: usize,
    target: usize,
    hops: u32,
    intact: bool,
}

/// The routers' data planes and the links between them.
pub(super) struct Mesh {
    nodes: Vec<Node>,
    index: HashMap<PeerName, usize>,
    graph: Graph,
    layout: ChunkLayout,
    queue: VecDeque<Datagram>,
    delivered: Vec<Delivery>,
    now: Instant,
    connections: usize,
    relayed: u64,
    dropped: u64,
    open_failures: u64,
    multi_chunk: u64,
    seq: u64,
    /// Routers whose table (from the shared trees) differs from their own routes' snapshot.
    table_mismatches: Vec<usize>,
}

impl Mesh {
    /// Builds each router's data plane from its converged engine.
    pub(super) fn from_control(control: &Control, seed: u64) -> Result<Self> {
        let n = control.meshes.len();
        let names = &control.names;
        let index: HashMap<PeerName, usize> =
            names.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let layout = ChunkLayout::sealed(DATAGRAM, crypto::HEADER_LEN, TAG_LEN)
            .map_err(|e| anyhow::anyhow!("layout: {e}"))?;
        let now = control.base + Duration::from_nanos(control.now);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xda7a);
        let keys: Vec<HandshakeConfig> = (0..n)
            .map(|_| HandshakeConfig::new(NodeKey::from_bytes(rng.r#gen()), None))
            .collect();
        // Every router's view is the same once converged: one graph gives every broadcast
        // tree, N searches in all rather than N per router.
        let graph = control.meshes[0].routes().graph().clone();
        let trees = broadcast_trees(&graph);
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                let name = names[i];
                let mut table = ForwardingTable::new(name);
                let routes = control.meshes[i].routes();
                let hops = NextHops {
                    unicast: routes.unicast().into_iter().collect(),
                    broadcast: trees
                        .iter()
                        .map(|(origin, below)| (*origin, below[i].clone()))
                        .collect(),
                };
                table.set_hops(Arc::new(hops));
                Node {
                    table,
                    forwarder: Forwarder::new(name),
                    macs: MacTable::new(MacTable::DEFAULT_CAPACITY, MacTable::DEFAULT_MAX_AGE),
                    receiver: Receiver::new(
                        name.bytes(),
                        ReassemblyConfig {
                            max_frame_len: 4096,
                            ..ReassemblyConfig::default()
                        },
                    ),
                    chunker: Chunker::new(layout, name.bytes(), BROADCAST.bytes(), 1),
                    sessions: HashMap::new(),
                }
            })
            .collect();
        // The shared trees stand in for each router's own (N² searches in all): checked against
        // `NextHops::from_routes` on every router of a small mesh, a seeded sample of a large.
        let mut sample: Vec<usize> = (0..n).collect();
        if n > TABLES_CHECKED_ALL {
            sample.shuffle(&mut rng);
            sample.truncate(TABLES_SAMPLE);
        }
        let table_mismatches = sample
            .into_iter()
            .filter(|&i| {
                NextHops::from_routes(control.meshes[i].routes()) != *nodes[i].table.hops()
            })
            .collect();
        let mut connections = 0;
        for i in 0..n {
            for c in control.meshes[i].connections() {
                let j = *index
                    .get(&c.remote)
                    .context("a connection to an unknown peer")?;
                if j < i || control.meshes[j].connection_to(names[i]).is_none() {
                    continue;
                }
                let (a, b) = handshake(&keys[i], &keys[j], &mut rng, now)?;
                nodes[i].sessions.insert(names[j], a);
                nodes[j].sessions.insert(names[i], b);
                nodes[i].table.set_link(names[j], true);
                nodes[j].table.set_link(names[i], true);
                connections += 1;
            }
        }
        Ok(Self {
            nodes,
            index,
            graph,
            layout,
            queue: VecDeque::new(),
            delivered: Vec::new(),
            now,
            connections,
            relayed: 0,
            dropped: 0,
            open_failures: 0,
            multi_chunk: 0,
            seq: 0,
            table_mismatches,
        })
    }

    pub(super) fn connections(&self) -> usize {
        self.connections
    }

    /// Runs the checks, filling in `report`.
    pub(super) fn check(&mut self, args: &DataplaneArgs, report: &mut DataplaneReport) {
        let n = self.nodes.len();
        let fail = |report: &mut DataplaneReport, what: String| {
            if report.failures.len() < MAX_FAILURES {
                report.failures.push(what);
            }
        };
        for i in std::mem::take(&mut self.table_mismatches) {
            fail(
                report,
                format!("router {i}'s table differs from its own routes"),
            );
        }
        // Every pod announces itself (a broadcast, as ARP does): every router within the hop
        // limit gets it once, and learns where the pod is.
        for o in 0..n {
            let dist = self.graph.distances(self.graph_index(o));
            self.send(o, pod(o), MacAddr::BROADCAST, o, usize::MAX);
            report.broadcasts += 1;
            let mut got = vec![0u32; n];
            for d in self.run() {
                got[d.at] += 1;
                if !d.intact || d.origin != o {
                    fail(
                        report,
                        format!("broadcast from {o} arrived altered at {}", d.at),
                    );
                }
            }
            for v in (0..n).filter(|v| *v != o) {
                let within = dist[self.graph_index(v) as usize] <= u32::from(MAX_HOP_LIMIT);
                match (got[v], within) {
                    (1, true) => report.broadcast_delivered += 1,
                    (0, false) => {}
                    (0, true) => {
                        report.broadcast_missing += 1;
                        fail(report, format!("broadcast from {o} never reached {v}"));
                    }
                    (k, _) => {
                        report.broadcast_duplicates += 1;
                        fail(report, format!("broadcast from {o} reached {v} {k} times"));
                    }
                }
            }
            if got[o] != 0 {
                fail(report, format!("broadcast from {o} came back to it"));
            }
        }
        // Every pod pair: unicast to the MAC every router learned above.
        for a in 0..n {
            let dist = self.graph.distances(self.graph_index(a));
            for b in (0..n).filter(|b| *b != a) {
                self.send(a, pod(a), pod(b), a, b);
            }
            let deliveries = self.run();
            let mut got = vec![0u32; n];
            for d in &deliveries {
                let within =
                    |v: usize| dist[self.graph_index(v) as usize] <= u32::from(MAX_HOP_LIMIT);
                if d.target == d.at && d.origin == a && d.intact {
                    got[d.at] += 1;
                    report.max_hops = report.max_hops.max(d.hops);
                } else if d.intact && d.target < n && !within(d.target) {
                    // A pod beyond the hop limit: its MAC was never learned here, so the
                    // frame is flooded, as a bridge floods an unknown address.
                    report.unicast_flooded += 1;
                } else {
                    report.unicast_failed += 1;
                    fail(
                        report,
                        format!("a frame from {a} for {} arrived at {}", d.target, d.at),
                    );
                }
            }
            for b in (0..n).filter(|b| *b != a) {
                report.unicast_sent += 1;
                let within = dist[self.graph_index(b) as usize] <= u32::from(MAX_HOP_LIMIT);
                match (got[b], within) {
                    (1, true) => report.unicast_delivered += 1,
                    (0, false) => report.beyond_hop_limit += 1,
                    (k, _) => {
                        report.unicast_failed += 1;
                        fail(report, format!("{a} → {b}: delivered {k} times"));
                    }
                }
            }
        }
        self.check_moves(args, report);
        report.relayed = self.relayed;
        report.dropped = self.dropped;
        report.open_failures = self.open_failures;
        report.multi_chunk_frames = self.multi_chunk;
        if self.open_failures > 0 {
            fail(
                report,
                format!("{} datagrams failed to open", self.open_failures),
            );
        }
    }

    /// Pods move to another router and announce themselves there; every router's frames to
    /// them follow.
    fn check_moves(&mut self, args: &DataplaneArgs, report: &mut DataplaneReport) {
        let n = self.nodes.len();
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x3073);
        let mut pods: Vec<usize> = (0..n).collect();
        pods.shuffle(&mut rng);
        for &p in pods.iter().take(args.moves.min(n)) {
            let c = (p + rng.gen_range(1..n)) % n;
            report.moves += 1;
            // The pod's first frame at its new router: a broadcast, as a gratuitous ARP.
            self.send(c, pod(p), MacAddr::BROADCAST, c, usize::MAX);
            self.run();
            let dist = self.graph.distances(self.graph_index(c));
            let mut expected = 0;
            for x in (0..n).filter(|x| *x != c) {
                if dist[self.graph_index(x) as usize] <= u32::from(MAX_HOP_LIMIT) {
                    self.send(x, pod(x), pod(p), x, c);
                    expected += 1;
                }
            }
            let deliveries = self.run();
            report.unicast_sent += expected;
            let right = deliveries
                .iter()
                .filter(|d| d.at == c && d.target == c && d.intact)
                .count() as u64;
            report.unicast_delivered += right;
            report.unicast_failed += deliveries.len() as u64 - right;
            if right == expected && deliveries.len() as u64 == expected {
                report.moves_followed += 1;
            } else if report.failures.len() < MAX_FAILURES {
                report.failures.push(format!(
                    "pod {p} moved to {c}: {right} of {expected} frames found it"
                ));
            }
        }
    }

    fn graph_index(&self, i: usize) -> u32 {
        self.graph.index(node_name(i)).unwrap_or(u32::MAX)
    }

    /// Router `at`'s pod sends a frame from `src` to `dst`; its payload names `origin` and
    /// `target` (the router it is for, `usize::MAX` for all).
    fn send(&mut self, at: usize, src: MacAddr, dst: MacAddr, origin: usize, target: usize) {
        self.seq += 1;
        let len = if self.seq.is_multiple_of(LARGE_EVERY) {
            LARGE_LEN
        } else {
            SMALL_LEN
        };
        let f = frame(dst, src, origin, target, len);
        self.now += Duration::from_micros(1);
        let now = self.now;
        let layout = self.layout;
        let node = &mut self.nodes[at];
        let (peer, hops): (PeerName, Vec<PeerName>) =
            match node.forwarder.handle_captured(&node.table, &node.macs, &f) {
                Captured::Unicast { dst, hop, .. } => (dst, vec![hop]),
                Captured::Broadcast { hops, .. } => (BROADCAST, hops.to_vec()),
                Captured::Local => return,
                Captured::Drop(_) => {
                    self.dropped += 1;
                    return;
                }
            };
        if layout.chunk_count(f.len()) > 1 {
            self.multi_chunk += 1;
        }
        node.chunker.set_dst(peer.bytes());
        let mut buf = vec![0u8; layout.buffer_len(f.len())];
        let Ok(chunks) = node.chunker.chunk(&f, &mut buf) else {
            self.dropped += 1;
            return;
        };
        for hop in hops {
            let Some(session) = node.sessions.get_mut(&hop) else {
                continue;
            };
            let mut sealed = buf.clone();
            for i in 0..chunks.count {
                let slot = &mut sealed[layout.slot(i)];
                let mut packet = PacketBuf::new(slot, layout.body_offset(), chunks.body(i).len());
                let _ = session.seal(now, &mut packet);
            }
            let to = self.index[&hop];
            for i in 0..chunks.count {
                self.queue.push_back(Datagram {
                    to,
                    from: at,
                    bytes: sealed[chunks.datagram(i)].to_vec(),
                    hops: 1,
                });
            }
        }
    }

    /// Carries every datagram in flight to the end; returns the frames delivered.
    fn run(&mut self) -> Vec<Delivery> {
        let mut out = std::mem::take(&mut self.delivered);
        out.clear();
        while let Some(d) = self.queue.pop_front() {
            self.receive(d, &mut out);
        }
        out
    }

    fn receive(&mut self, mut d: Datagram, out: &mut Vec<Delivery>) {
        let now = self.now;
        let from = node_name(d.from);
        let node = &mut self.nodes[d.to];
        let Ok(repr) = Forwarder::check(&d.bytes) else {
            self.dropped += 1;
            return;
        };
        let len = d.bytes.len();
        let mut packet = PacketBuf::new(&mut d.bytes[..], HEADER_LEN, len - HEADER_LEN);
        let opened = node
            .sessions
            .get_mut(&from)
            .map(|s| s.open(now, &mut packet));
        if !matches!(opened, Some(Ok(_))) {
            self.open_failures += 1;
            return;
        }
        let (at, body_len) = (packet.offset, packet.len);
        let Node {
            table,
            forwarder,
            macs,
            receiver,
            sessions,
            ..
        } = node;
        let mut relays = Vec::new();
        let deliver = match forwarder.handle_opened(table, from, &repr) {
            Arrived::Deliver => true,
            Arrived::Relay { hop, hop_limit } => {
                relays.push((hop, hop_limit));
                false
            }
            Arrived::Broadcast {
                relay,
                hop_limit,
                deliver,
                ..
            } => {
                relays.extend(relay.map(|hop| (hop, hop_limit)));
                deliver
            }
            Arrived::Drop(_) | Arrived::PmtuProbe | Arrived::PmtuAck => {
                self.dropped += 1;
                false
            }
        };
        for (hop, hop_limit) in relays {
            let Some(session) = sessions.get_mut(&hop) else {
                self.dropped += 1;
                continue;
            };
            let mut bytes = d.bytes.clone();
            Packet::new_unchecked(&mut bytes[..]).set_hop_limit(hop_limit);
            let mut packet = PacketBuf::new(&mut bytes[..], at, body_len);
            let _ = session.seal(now, &mut packet);
            self.relayed += 1;
            self.queue.push_back(Datagram {
                to: self.index[&hop],
                from: d.to,
                bytes,
                hops: d.hops + 1,
            });
        }
        if !deliver {
            return;
        }
        let body = &d.bytes[at..at + body_len];
        if let Received::Inject { frame, .. } = receiver.handle_chunk(now, repr.src, body) {
            let origin = PeerName::from_bytes(repr.src);
            if let Some(learn) = forwarder.handle_delivered(now, origin, frame) {
                macs.learn(now, learn.mac, learn.peer);
            }
            out.push(describe(d.to, frame, d.hops));
        }
    }
}

/// For every origin, each router's children in the origin's broadcast tree, sorted by name
/// (as `Routes::broadcast_next_hops` gives them).
fn broadcast_trees(graph: &Graph) -> Vec<(PeerName, Vec<Vec<PeerName>>)> {
    let names = graph.names();
    (0..names.len() as u32)
        .map(|o| {
            let dist = graph.distances(o);
            let mut below = vec![Vec::new(); names.len()];
            for v in 0..names.len() as u32 {
                if let Some(p) = graph.parent(&dist, v) {
                    below[p as usize].push(names[v as usize]);
                }
            }
            // Graph indices are in name order, and so are the children pushed in index order.
            (names[o as usize], below)
        })
        .collect()
}

/// Two sessions facing each other, from a Noise handshake in memory.
fn handshake(
    a: &HandshakeConfig,
    b: &HandshakeConfig,
    rng: &mut ChaCha8Rng,
    now: Instant,
) -> Result<(Session, Session)> {
    let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
    let mut i = Handshake::initiate(a, rng, &mut to_b);
    let mut r = Handshake::respond(b, rng, &mut to_a);
    let (mut ie, mut re) = (None, None);
    for _ in 0..8 {
        if re.is_none() {
            re = r.handle_input(&std::mem::take(&mut to_b), &mut to_a)?;
        }
        if ie.is_none() {
            ie = i.handle_input(&std::mem::take(&mut to_a), &mut to_b)?;
        }
    }
    let (Some(ie), Some(re)) = (ie, re) else {
        anyhow::bail!("the handshake did not finish");
    };
    let session = |e: crypto::Established| {
        let (_, keys) = e.into_parts();
        Session::new(keys, SessionConfig::default(), Mode::Sealed, now)
    };
    Ok((session(ie), session(re)))
}

/// The MAC of router `i`'s pod.
fn pod(i: usize) -> MacAddr {
    let b = (i as u32).to_be_bytes();
    MacAddr::from_bytes([0x02, 0xaa, b[0], b[1], b[2], b[3]])
}

const MAGIC: &[u8; 4] = b"WEFT";
const PAYLOAD: usize = VNET_HDR_LEN + 14;

/// A TAP frame (virtio_net_hdr, Ethernet) whose payload names its origin and target and is
/// patterned after them, so an altered or misplaced byte shows.
fn frame(dst: MacAddr, src: MacAddr, origin: usize, target: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst.bytes());
    f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&src.bytes());
    f[VNET_HDR_LEN + 12..PAYLOAD].copy_from_slice(&[0x88, 0xb5]);
    let (o, t) = (origin as u32, target as u32);
    f[PAYLOAD..PAYLOAD + 4].copy_from_slice(MAGIC);
    f[PAYLOAD + 4..PAYLOAD + 8].copy_from_slice(&o.to_be_bytes());
    f[PAYLOAD + 8..PAYLOAD + 12].copy_from_slice(&t.to_be_bytes());
    for (k, byte) in f[PAYLOAD + 12..].iter_mut().enumerate() {
        *byte = (k as u32).wrapping_mul(31).wrapping_add(o ^ t) as u8;
    }
    f
}

/// What a delivered frame says, and whether it is exactly the frame that was sent.
fn describe(at: usize, f: &[u8], hops: u32) -> Delivery {
    let word = |k: usize| {
        f.get(PAYLOAD + k..PAYLOAD + k + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(u32::MAX, u32::from_be_bytes)
    };
    let (origin, target) = (word(4) as usize, word(8) as usize);
    let target = if target == u32::MAX as usize {
        usize::MAX
    } else {
        target
    };
    let intact = f.get(PAYLOAD..PAYLOAD + 4) == Some(&MAGIC[..]) && {
        let (dst, src) = (
            &f[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12],
        );
        let to = MacAddr::from_bytes(dst.try_into().unwrap_or_default());
        let from = MacAddr::from_bytes(src.try_into().unwrap_or_default());
        frame(to, from, origin, target, f.len()) == f
    };
    Delivery {
        at,
        origin,
        target: if target == usize::MAX { at } else { target },
        hops,
        intact,
    }
}
