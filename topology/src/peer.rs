//! Peer identity and the immutable peer record that topology gossip carries.
//!
//! A [`PeerInfo`] is one incarnation of one peer at one version: its name, its per-start
//! [`PeerUid`], its nickname and the list of connections it has established. Records are
//! immutable and shared through `Arc`, so a table of thousands of peers (or thousands of
//! simulated nodes holding the same records, see [`RecordCache`]) costs one copy per version.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

/// A peer's stable 48-bit name, shown as `aa:bb:cc:dd:ee:ff`.
///
/// The crypto crate derives the six bytes from the node's public key; topology only treats them
/// as an opaque identifier. The all-zero name is reserved and never valid on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerName([u8; 6]);

impl PeerName {
    /// The name as a number with the same order as its bytes (big-endian), for comparisons
    /// without a call to memcmp: names are compared in every table and sorted list.
    fn as_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl Ord for PeerName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_u64().cmp(&other.as_u64())
    }
}

impl PartialOrd for PeerName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for PeerName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.as_u64());
    }
}

impl PeerName {
    /// Makes a name from its six bytes.
    pub const fn from_bytes(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }

    /// Returns the six bytes of the name.
    pub const fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// Returns true for the reserved all-zero name.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error returned when a string is not a peer name of the form `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name (expected six hex octets like aa:bb:cc:dd:ee:ff)")]
pub struct ParsePeerNameError;

impl FromStr for PeerName {
    type Err = ParsePeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(ParsePeerNameError)?;
            if part.is_empty() || part.len() > 2 {
                return Err(ParsePeerNameError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParsePeerNameError)?;
        }
        if parts.next().is_some() {
            return Err(ParsePeerNameError);
        }
        Ok(Self(out))
    }
}

impl serde::Serialize for PeerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A random non-zero number chosen at every start of a peer; it tells incarnations apart.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PeerUid(pub u64);

impl fmt::Display for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shell's handle for one control connection; unique among the live connections of a node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One connection as its owner announces it in gossip.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnectionSummary {
    /// The peer at the other end.
    pub remote: PeerName,
    /// The remote address as the owner sees it: the dialled address for outbound connections,
    /// the source address (ephemeral port) for inbound ones.
    pub addr: SocketAddr,
    /// True when the owner dialled the connection.
    pub outbound: bool,
    /// True when the connection carries traffic; only established connections count for routes.
    pub established: bool,
}

/// One incarnation of one peer at one version, as gossip carries it. Immutable once built:
/// build it with [`PeerInfo::new`] and do not change its fields once a table holds it (the
/// record memoises its names' [`PeerNames`] indices on first use; a clone forgets them).
pub struct PeerInfo {
    /// The peer's name.
    pub name: PeerName,
    /// The incarnation.
    pub uid: PeerUid,
    /// Bumped by the owner on every change of its connection list.
    pub version: u64,
    /// A human name (host or Kubernetes node name), at most [`crate::wire::MAX_NICKNAME_LEN`] bytes.
    pub nickname: String,
    /// The owner's connections, sorted by remote name, at most one per remote.
    pub connections: Vec<ConnectionSummary>,
    /// The indices of `name` and of every remote in one [`PeerNames`], computed on first use.
    ids: OnceLock<RecordIds>,
    /// The record's encoding inside an Update, computed when first sent.
    encoded: OnceLock<Box<[u8]>>,
}

/// A record's names as indices of one interner.
struct RecordIds {
    /// [`PeerNames::id`] of the interner.
    names: u64,
    own: u32,
    /// One per connection, in the same order.
    remotes: Box<[u32]>,
}

impl Clone for PeerInfo {
    fn clone(&self) -> Self {
        Self::new(
            self.name,
            self.uid,
            self.version,
            self.nickname.clone(),
            self.connections.clone(),
        )
    }
}

impl PartialEq for PeerInfo {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.uid == other.uid
            && self.version == other.version
            && self.nickname == other.nickname
            && self.connections == other.connections
    }
}

impl Eq for PeerInfo {}

impl std::hash::Hash for PeerInfo {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.uid.hash(state);
        self.version.hash(state);
        self.nickname.hash(state);
        self.connections.hash(state);
    }
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerInfo")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("version", &self.version)
            .field("nickname", &self.nickname)
            .field("connections", &self.connections)
            .finish()
    }
}

impl PeerInfo {
    /// Makes a record.
    pub fn new(
        name: PeerName,
        uid: PeerUid,
        version: u64,
        nickname: String,
        connections: Vec<ConnectionSummary>,
    ) -> Self {
        Self {
            name,
            uid,
            version,
            nickname,
            connections,
            ids: OnceLock::new(),
            encoded: OnceLock::new(),
        }
    }

    /// Returns the record's encoding as an Update carries it (computed once per record).
    pub fn encoding(&self) -> &[u8] {
        self.encoded.get_or_init(|| {
            let mut out = Vec::with_capacity(crate::wire::record_len(self));
            crate::wire::encode_record_to(self, &mut out);
            out.into_boxed_slice()
        })
    }

    /// Returns the index of this record's name and of each remote (in connection order) in
    /// `names`, interning names not seen before. Computed once per record and interner: the
    /// first table that installs a record shared through a [`RecordCache`] pays for everyone.
    /// `tmp` holds the answer only when the memo belongs to another interner.
    pub(crate) fn ids<'a>(&'a self, names: &PeerNames, tmp: &'a mut Vec<u32>) -> (u32, &'a [u32]) {
        let memo = self.ids.get_or_init(|| {
            let (own, remotes) = names.intern_record(self);
            RecordIds {
                names: names.id(),
                own,
                remotes: remotes.into_boxed_slice(),
            }
        });
        if memo.names == names.id() {
            return (memo.own, &memo.remotes);
        }
        let (own, remotes) = names.intern_record(self);
        *tmp = remotes;
        (own, tmp)
    }

    /// Returns the merge key: records with a greater key replace records with a smaller one.
    pub fn key(&self) -> RecordKey {
        RecordKey {
            version: self.version,
            uid: self.uid,
        }
    }

    /// Returns the connection to `remote`, if this record lists one.
    pub fn connection_to(&self, remote: PeerName) -> Option<&ConnectionSummary> {
        self.connections
            .binary_search_by(|c| c.remote.cmp(&remote))
            .ok()
            .and_then(|i| self.connections.get(i))
    }

    /// Orders two records of the same peer: by key, then by content, so that merging is
    /// commutative even for (invalid) records that share a key but differ in content.
    pub fn precedence(&self, other: &Self) -> Ordering {
        self.key()
            .cmp(&other.key())
            .then_with(|| self.nickname.cmp(&other.nickname))
            .then_with(|| self.connections.cmp(&other.connections))
    }
}

/// The version-then-uid key by which records of one peer are ordered.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct RecordKey {
    /// The owner's version counter.
    pub version: u64,
    /// Ties between incarnations go to the higher uid.
    pub uid: PeerUid,
}

/// Interns peer names to small dense indices, so that a peer table is a `Vec` indexed by them
/// instead of a hash map (one memory access per probe, a few bytes per peer).
///
/// One interner serves every engine in a process that is given a clone of it (the simulator
/// shares one between all its nodes, as it shares a [`RecordCache`]); an engine without one
/// makes its own. Indices are assigned in order of first sight, so they may differ between
/// runs when several threads intern: nothing may depend on their order, only on the names.
///
/// The table only grows: it holds every name the process has ever seen (in gossip, as a
/// record's owner or as a remote), a 12-byte hash-map entry and 6 bytes in the reverse list
/// per name, and each engine's per-index arrays grow to cover every name interned so far (64
/// bytes per name and engine). A router meets a few thousand names over its life, so it is
/// not compacted.
///
/// Thread-safe: reads take a shared lock once per call (callers batch their look-ups), and
/// a write lock only for names not seen before.
#[derive(Clone)]
pub struct PeerNames {
    inner: Arc<NamesInner>,
}

struct NamesInner {
    id: u64,
    /// A copy of the table taken by [`PeerNames::freeze`], read without the lock: the
    /// simulator's threads took the shared lock (two atomic writes to one cache line) several
    /// times per message.
    frozen: OnceLock<NameTable>,
    /// Names interned, kept apart from the table so that reading it takes no lock.
    len: AtomicUsize,
    table: RwLock<NameTable>,
}

#[derive(Default, Clone)]
struct NameTable {
    map: HashMap<PeerName, u32, crate::peers::NameHashBuilder>,
    names: Vec<PeerName>,
    /// The anti-entropy bucket of each name ([`crate::peers::bucket_of`]), by index.
    buckets: Vec<u8>,
}

impl NameTable {
    fn insert(&mut self, name: PeerName) -> u32 {
        let next = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let idx = *self.map.entry(name).or_insert(next);
        if idx == next {
            self.names.push(name);
            self.buckets
                .push(u8::try_from(crate::peers::bucket_of(name)).unwrap_or(u8::MAX));
        }
        idx
    }
}

static NEXT_NAMES_ID: AtomicU64 = AtomicU64::new(1);

impl Default for PeerNames {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PeerNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerNames")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl PeerNames {
    /// Makes an empty interner.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(NamesInner {
                id: NEXT_NAMES_ID.fetch_add(1, AtomicOrdering::Relaxed),
                frozen: OnceLock::new(),
                len: AtomicUsize::new(0),
                table: RwLock::default(),
            }),
        }
    }

    /// A number that tells interners apart within the process.
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, NameTable> {
        self.inner
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, NameTable> {
        self.inner
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the names interned so far into a table read without a lock. Only the first call
    /// copies. Names interned later are still found, under the lock; call it once the names
    /// are (mostly) known, as the simulator does after its set-up.
    pub fn freeze(&self) {
        let copy = self.read().clone();
        let _ = self.inner.frozen.set(copy);
    }

    /// How many names the frozen table holds (None before [`PeerNames::freeze`]).
    pub(crate) fn frozen_len(&self) -> Option<usize> {
        self.inner.frozen.get().map(|f| f.names.len())
    }

    /// The frozen table, when it holds every name interned (nothing was added since).
    fn frozen_whole(&self) -> Option<&NameTable> {
        self.inner
            .frozen
            .get()
            .filter(|f| f.names.len() == self.inner.len.load(AtomicOrdering::Acquire))
    }

    /// Returns the index of `name`, if it was ever interned.
    pub fn get(&self, name: PeerName) -> Option<u32> {
        if let Some(f) = self.inner.frozen.get()
            && let Some(&i) = f.map.get(&name)
        {
            return Some(i);
        }
        if self.frozen_whole().is_some() {
            return None;
        }
        self.read().map.get(&name).copied()
    }

    /// Appends the index of each name (None for names never interned) to `out`, under one
    /// shared lock (or none, when the frozen table holds every name).
    pub fn get_many(&self, names: impl Iterator<Item = PeerName>, out: &mut Vec<Option<u32>>) {
        if let Some(f) = self.frozen_whole() {
            out.extend(names.map(|n| f.map.get(&n).copied()));
            return;
        }
        let t = self.read();
        out.extend(names.map(|n| t.map.get(&n).copied()));
    }

    /// Returns the index of `name`, interning it if new.
    pub fn intern(&self, name: PeerName) -> u32 {
        if let Some(i) = self.get(name) {
            return i;
        }
        let mut t = self.write();
        let i = t.insert(name);
        self.inner.len.store(t.names.len(), AtomicOrdering::Release);
        i
    }

    /// Returns the name at `idx`.
    pub fn name(&self, idx: u32) -> Option<PeerName> {
        if let Some(f) = self.inner.frozen.get()
            && let Some(&n) = f.names.get(idx as usize)
        {
            return Some(n);
        }
        self.read().names.get(idx as usize).copied()
    }

    /// Calls `f` with every name interned so far and each one's anti-entropy bucket, by index.
    pub(crate) fn with_names<R>(&self, f: impl FnOnce(&[PeerName], &[u8]) -> R) -> R {
        if let Some(t) = self.frozen_whole() {
            return f(&t.names, &t.buckets);
        }
        let t = self.read();
        f(&t.names, &t.buckets)
    }

    /// Returns the number of names interned.
    pub fn len(&self) -> usize {
        self.inner.len.load(AtomicOrdering::Acquire)
    }

    /// Returns true when no name was interned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Interns a record's name and remotes (in connection order).
    fn intern_record(&self, rec: &PeerInfo) -> (u32, Vec<u32>) {
        {
            let t = self.read();
            let own = t.map.get(&rec.name).copied();
            let remotes: Option<Vec<u32>> = rec
                .connections
                .iter()
                .map(|c| t.map.get(&c.remote).copied())
                .collect();
            if let (Some(own), Some(remotes)) = (own, remotes) {
                return (own, remotes);
            }
        }
        let mut t = self.write();
        let own = t.insert(rec.name);
        let remotes = rec.connections.iter().map(|c| t.insert(c.remote)).collect();
        (own, remotes)
    }
}

/// A record as a peer table holds it: shared by reference count, or interned for good by a
/// [`RecordCache`]. Cloning an interned record copies a pointer; cloning a counted one writes
/// its count, which the simulator's threads did on every record they received (a cache line
/// moving between cores each time).
#[derive(Clone)]
pub struct Record(Held);

#[derive(Clone)]
enum Held {
    Counted(Arc<PeerInfo>),
    Interned(&'static PeerInfo),
}

impl Record {
    /// True when both are the same shared record (not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        std::ptr::eq::<PeerInfo>(&**a, &**b)
    }
}

impl std::ops::Deref for Record {
    type Target = PeerInfo;

    fn deref(&self) -> &PeerInfo {
        match &self.0 {
            Held::Counted(a) => a,
            Held::Interned(r) => r,
        }
    }
}

impl From<Arc<PeerInfo>> for Record {
    fn from(a: Arc<PeerInfo>) -> Self {
        Self(Held::Counted(a))
    }
}

impl From<PeerInfo> for Record {
    fn from(r: PeerInfo) -> Self {
        Self(Held::Counted(Arc::new(r)))
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Record {}

/// A shared intern table of immutable peer records, keyed by name, uid and version.
///
/// Optional. The simulator gives one cache to all of its nodes, so that 5,000 nodes holding
/// 5,000 records each keep one copy of each record. A cached record is reused only when its
/// encoding has the received bytes' length and 128-bit fingerprint (two independent 64-bit
/// hashes); a different record under the same name, uid and version would have to collide in
/// both. Comparing the bytes themselves cost a cache miss on the cached copy for every record
/// a node received (7 % of a 5,000-node cold start).
///
/// A cache made with [`RecordCache::indexed`] also lists each name's records by the name's
/// index in one interner, read without a lock ([`RecordCache::lookup_at`]): the engines look
/// up every record they apply, and with one lock for all, its cache line moved between the
/// simulator's threads on each lookup.
///
/// Interned records are never freed: the tables share them without reference counts (see
/// [`Record`]). A simulation is bounded (a 5,000-node run interns a few versions per node, a
/// few MB); a long-lived process must not use a cache, and the router keeps none.
#[derive(Clone, Default)]
pub struct RecordCache {
    inner: Arc<CacheShared>,
}

#[derive(Default)]
struct CacheShared {
    map: Mutex<CacheInner>,
    /// The interner whose indices [`RecordCache::lookup_at`] takes (see
    /// [`RecordCache::indexed`]).
    names: Option<PeerNames>,
    /// The latest versions of each name, by the interner's index, read without the lock:
    /// every received record is looked up, and the lock's line moved between the threads on
    /// each lookup. Made on first use, for the names interned by then.
    by_index: OnceLock<Box<[NameVersions]>>,
}

/// How many records of one name the lock-free index keeps; further ones are found in the map.
const VERSIONS_INDEXED: usize = 6;

/// The records of one name, in the order they were interned; written under the map's lock.
/// The count shares its cache line with the first record.
#[derive(Default)]
#[repr(C, align(64))]
struct NameVersions {
    len: AtomicUsize,
    records: [OnceLock<IndexedRecord>; VERSIONS_INDEXED],
}

struct IndexedRecord {
    uid: PeerUid,
    version: u64,
    rec: CachedRecord,
}

/// An interned record and the fingerprint of its encoding inside an Update.
type CachedRecord = (&'static PeerInfo, Fingerprint);

/// Length and two independent 64-bit hashes of a record's encoding.
type Fingerprint = (usize, u64, u64);

/// Returns the fingerprint of `bytes` (not cryptographic: the simulator's nodes are honest).
fn fingerprint(bytes: &[u8]) -> Fingerprint {
    let (mut a, mut b) = (0x243f_6a88_85a3_08d3u64, 0x1319_8a2e_0370_7344u64);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w);
        a = (a ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(23);
        b = (b.rotate_left(17) ^ x).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    let x = u64::from_le_bytes(w);
    a = (a ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    b = (b.rotate_left(17) ^ x).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    (bytes.len(), mix64(a), mix64(b ^ 0x5851_f42d_4c95_7f2d))
}

/// SplitMix64's finaliser.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Default)]
struct CacheInner {
    /// Each record with its encoding's fingerprint, so that a received copy is recognised
    /// without decoding it.
    map: HashMap<(PeerName, PeerUid, u64), CachedRecord, crate::peers::NameHashBuilder>,
}

impl fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordCache").finish_non_exhaustive()
    }
}

impl RecordCache {
    /// Makes an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes an empty cache that also indexes its records by `names`' indices, for
    /// [`RecordCache::lookup_at`] and [`RecordCache::intern_at`] (the engines pass the index
    /// when their tables use the same interner).
    pub fn indexed(names: PeerNames) -> Self {
        Self {
            inner: Arc::new(CacheShared {
                names: Some(names),
                ..CacheShared::default()
            }),
        }
    }

    /// The lock-free index's entry for `idx` of `names`, if this cache indexes that interner
    /// and the name was interned when the index was made.
    fn indexed_at(&self, names: &PeerNames, idx: u32) -> Option<&NameVersions> {
        let own = self.inner.names.as_ref()?;
        if own.id() != names.id() {
            return None;
        }
        let table = self
            .inner
            .by_index
            .get_or_init(|| (0..own.len()).map(|_| NameVersions::default()).collect());
        table.get(idx as usize)
    }

    /// Returns the interned copy of `rec`, interning it if no equal record is.
    pub fn intern(&self, rec: PeerInfo) -> Record {
        self.intern_inner(rec, None)
    }

    /// [`RecordCache::intern`] for a record whose name has index `idx` in `names` (if known).
    pub fn intern_at(&self, rec: PeerInfo, names: &PeerNames, idx: Option<u32>) -> Record {
        self.intern_inner(rec, idx.and_then(|i| self.indexed_at(names, i)))
    }

    fn intern_inner(&self, rec: PeerInfo, slot: Option<&NameVersions>) -> Record {
        let mut inner = self
            .inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (rec.name, rec.uid, rec.version);
        let held = match inner.map.get(&key) {
            Some(&found) if *found.0 == rec => found,
            Some(_) | None => {
                let print = fingerprint(rec.encoding());
                let leaked: &'static PeerInfo = Box::leak(Box::new(rec));
                inner.map.insert(key, (leaked, print));
                (leaked, print)
            }
        };
        // Published under the lock, so writers never race; readers see `len` only after the
        // record it counts is set. A record interned without its index joins it here.
        if let Some(v) = slot {
            let len = v.len.load(AtomicOrdering::Relaxed);
            let listed = v.records[..len.min(VERSIONS_INDEXED)]
                .iter()
                .filter_map(OnceLock::get)
                .any(|e| std::ptr::eq(e.rec.0, held.0));
            if !listed
                && let Some(cell) = v.records.get(len)
                && cell
                    .set(IndexedRecord {
                        uid: held.0.uid,
                        version: held.0.version,
                        rec: held,
                    })
                    .is_ok()
            {
                v.len.store(len + 1, AtomicOrdering::Release);
            }
        }
        Record(Held::Interned(held.0))
    }

    /// Returns the cached record whose encoding has `view`'s bytes' fingerprint, without
    /// decoding.
    pub fn lookup(&self, view: &crate::wire::RecordView<'_>) -> Option<Record> {
        let print = fingerprint(view.bytes());
        let inner = self
            .inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let &(rec, cached) = inner.map.get(&(view.name, view.uid, view.version))?;
        (cached == print).then_some(Record(Held::Interned(rec)))
    }

    /// Loads the index's lines for the latest records of the names at `idxs` in `names`, so
    /// that the lookups of a message's records wait for memory together, not one by one.
    pub fn prefetch_at(&self, names: &PeerNames, idxs: impl Iterator<Item = u32>) {
        let mut acc = 0usize;
        for i in idxs {
            if let Some(v) = self.indexed_at(names, i) {
                let len = v.len.load(AtomicOrdering::Relaxed);
                acc ^= len;
                if let Some(e) = len.checked_sub(1).and_then(|k| v.records.get(k)) {
                    acc ^= usize::from(e.get().is_some());
                }
            }
        }
        std::hint::black_box(acc);
    }

    /// [`RecordCache::lookup`] for a record whose name has index `idx` in `names` (if known):
    /// read without the lock when the cache indexes `names`.
    pub fn lookup_at(
        &self,
        view: &crate::wire::RecordView<'_>,
        names: &PeerNames,
        idx: Option<u32>,
    ) -> Option<Record> {
        let Some(v) = idx.and_then(|i| self.indexed_at(names, i)) else {
            return self.lookup(view);
        };
        let len = v.len.load(AtomicOrdering::Acquire);
        // Newest first: a received record is most often the latest version.
        let found = v.records[..len.min(VERSIONS_INDEXED)]
            .iter()
            .rev()
            .filter_map(OnceLock::get)
            .find(|e| e.uid == view.uid && e.version == view.version);
        match found {
            Some(e) => {
                let (rec, cached) = e.rec;
                (cached == fingerprint(view.bytes())).then_some(Record(Held::Interned(rec)))
            }
            // Every record of this name is in the index until it is full.
            None if len < VERSIONS_INDEXED => None,
            None => self.lookup(view),
        }
    }

    /// Returns the number of records cached.
    pub fn len(&self) -> usize {
        self.inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Returns true when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_round_trips_through_text() {
        let n = PeerName::from_bytes([0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x01]);
        assert_eq!(n.to_string(), "aa:bb:0c:dd:ee:01");
        assert_eq!("aa:bb:0c:dd:ee:01".parse::<PeerName>(), Ok(n));
        assert_eq!("aa:bb:c:dd:ee:1".parse::<PeerName>(), Ok(n));
        assert!("aa:bb:cc:dd:ee".parse::<PeerName>().is_err());
        assert!("aa:bb:cc:dd:ee:ff:00".parse::<PeerName>().is_err());
        assert!("aa:bb:cc:dd:ee:fff".parse::<PeerName>().is_err());
        assert!("aa:bb:cc:dd:ee:zz".parse::<PeerName>().is_err());
    }

    #[test]
    fn a_frozen_interner_still_finds_and_adds_names() {
        let a = PeerNames::new();
        let (x, y, z) = (
            PeerName::from_bytes([1; 6]),
            PeerName::from_bytes([2; 6]),
            PeerName::from_bytes([3; 6]),
        );
        let ix = a.intern(x);
        a.freeze();
        let mut out = Vec::new();
        a.get_many([x, y].into_iter(), &mut out);
        assert_eq!(out, vec![Some(ix), None]);
        let iy = a.intern(y);
        assert_ne!(ix, iy);
        out.clear();
        a.get_many([y, x, z].into_iter(), &mut out);
        assert_eq!(out, vec![Some(iy), Some(ix), None]);
        assert_eq!(
            (a.get(y), a.get(z), a.name(iy), a.len()),
            (Some(iy), None, Some(y), 2)
        );
        assert_eq!(a.with_names(|names, _| names.to_vec()), vec![x, y]);
        a.freeze(); // only the first call copies
        assert_eq!(a.intern(x), ix);
    }

    #[test]
    fn names_interner_is_shared_by_clones() {
        let a = PeerNames::new();
        let b = a.clone();
        let (x, y) = (PeerName::from_bytes([1; 6]), PeerName::from_bytes([2; 6]));
        assert_eq!(a.get(x), None);
        let ix = a.intern(x);
        assert_eq!(b.intern(x), ix);
        let iy = b.intern(y);
        assert_ne!(ix, iy);
        let mut out = Vec::new();
        a.get_many([y, PeerName::from_bytes([3; 6]), x].into_iter(), &mut out);
        assert_eq!(out, vec![Some(iy), None, Some(ix)]);
        assert_eq!((a.name(iy), a.len()), (Some(y), 2));
        assert_eq!(
            PeerNames::new().get(x),
            None,
            "another interner is separate"
        );
    }

    #[test]
    fn record_memo_follows_its_interner_and_clones_forget_it() {
        let conn = |b: u8| ConnectionSummary {
            remote: PeerName::from_bytes([b; 6]),
            addr: "192.0.2.1:6783".parse().unwrap_or_else(|_| unreachable!()),
            outbound: true,
            established: true,
        };
        let rec = PeerInfo::new(
            PeerName::from_bytes([1; 6]),
            PeerUid(1),
            1,
            String::new(),
            vec![conn(2), conn(3)],
        );
        let (a, b) = (PeerNames::new(), PeerNames::new());
        b.intern(PeerName::from_bytes([3; 6]));
        let mut tmp = Vec::new();
        let (own, remotes) = rec.ids(&a, &mut tmp);
        assert_eq!((own, remotes.to_vec()), (0, vec![1, 2]));
        let (own, remotes) = rec.ids(&b, &mut tmp);
        assert_eq!((own, remotes.to_vec()), (1, vec![2, 0]));
        let copy = rec.clone();
        assert_eq!(copy, rec);
        let (own, remotes) = copy.ids(&b, &mut tmp);
        assert_eq!((own, remotes.to_vec()), (1, vec![2, 0]));
        let mut enc = Vec::new();
        crate::wire::encode_record_to(&rec, &mut enc);
        assert_eq!(rec.encoding(), &enc[..]);
    }

    #[test]
    fn cache_shares_equal_records() {
        let cache = RecordCache::new();
        let rec = PeerInfo::new(
            PeerName::from_bytes([1; 6]),
            PeerUid(7),
            3,
            "a".into(),
            vec![],
        );
        let a = cache.intern(rec.clone());
        let b = cache.intern(rec);
        assert!(Record::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_indexed_cache_finds_every_version_and_checks_the_encoding() {
        let names = PeerNames::new();
        let name = PeerName::from_bytes([1; 6]);
        let idx = names.intern(name);
        let first = RecordCache::indexed(names.clone());
        let rec = |version: u64, nick: &str| {
            PeerInfo::new(name, PeerUid(7), version, nick.into(), vec![])
        };
        let find = |cache: &RecordCache, names: &PeerNames, r: &PeerInfo| {
            let mut buf = Vec::new();
            crate::wire::encode_update([r].into_iter(), &mut buf);
            let view = crate::wire::UpdateView::parse(&buf).unwrap().unwrap();
            cache.lookup_at(&view.records()[0], names, Some(idx))
        };
        // More versions than the lock-free index keeps: the later ones come from the map.
        let held: Vec<Record> = (1..=VERSIONS_INDEXED as u64 + 3)
            .map(|v| first.intern_at(rec(v, "a"), &names, Some(idx)))
            .collect();
        for (v, h) in (1..).zip(&held) {
            let found = find(&first, &names, &rec(v, "a"));
            assert!(found.is_some_and(|f| Record::ptr_eq(&f, h)), "version {v}");
            assert!(
                find(&first, &names, &rec(v, "b")).is_none(),
                "other content, {v}"
            );
        }
        assert!(find(&first, &names, &rec(99, "a")).is_none());
        // A record interned without its index is missed by the index until it is interned
        // with it (as an engine does after a miss), and then it is the same record.
        let name2 = PeerName::from_bytes([2; 6]);
        let idx2 = names.intern(name2);
        let cache = RecordCache::indexed(names.clone());
        let rec2 = PeerInfo::new(name2, PeerUid(7), 1, "c".into(), vec![]);
        let plain = cache.intern(rec2.clone());
        let find2 = || {
            let mut buf = Vec::new();
            crate::wire::encode_update([&rec2].into_iter(), &mut buf);
            let view = crate::wire::UpdateView::parse(&buf).unwrap().unwrap();
            cache.lookup_at(&view.records()[0], &names, Some(idx2))
        };
        assert!(find2().is_none());
        assert!(Record::ptr_eq(
            &cache.intern_at(rec2.clone(), &names, Some(idx2)),
            &plain
        ));
        assert!(find2().is_some_and(|f| Record::ptr_eq(&f, &plain)));
        assert_eq!(cache.len(), 1);
        // Another interner's indices are not this cache's: the map answers.
        let other = PeerNames::new();
        other.intern(PeerName::from_bytes([9; 6]));
        assert!(find(&first, &other, &rec(1, "a")).is_some_and(|f| Record::ptr_eq(&f, &held[0])));
        assert_eq!(first.len(), VERSIONS_INDEXED + 3);
    }

    #[test]
    fn cache_lookup_needs_the_same_encoding_not_only_the_same_key() {
        let cache = RecordCache::new();
        let rec = |nick: &str| {
            PeerInfo::new(
                PeerName::from_bytes([1; 6]),
                PeerUid(7),
                3,
                nick.into(),
                vec![],
            )
        };
        let held = cache.intern(rec("a"));
        let found = |r: &PeerInfo| {
            let mut buf = Vec::new();
            crate::wire::encode_update([r].into_iter(), &mut buf);
            let view = crate::wire::UpdateView::parse(&buf).unwrap().unwrap();
            cache.lookup(&view.records()[0])
        };
        assert!(found(&rec("a")).is_some_and(|f| Record::ptr_eq(&f, &held)));
        assert!(
            found(&rec("b")).is_none(),
            "same name, uid and version, other content"
        );
        assert_ne!(fingerprint(b"abcdefgh1"), fingerprint(b"abcdefgh2"));
        assert_ne!(fingerprint(b""), fingerprint(b"\0"));
    }
}
