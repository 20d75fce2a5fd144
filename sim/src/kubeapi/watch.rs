//! Watches: a task per watch reads the store's history after its resourceVersion and streams
//! newline-delimited events into the response body.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::error::ApiError;
use super::kind::{Filter, Kind};
use super::store::EventType;
use super::{Inner, StandIn, lock};

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// After this resourceVersion.
    After(u64),
    /// Now, with ADDED events for the current objects first (`""` or `"0"`).
    Now,
}

/// A watch request's parameters.
#[derive(Clone, Debug)]
pub(crate) struct WatchRequest {
    pub(crate) kind: Kind,
    pub(crate) filter: Filter,
    pub(crate) start: Start,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Option<Duration>,
    /// `sendInitialEvents=true`: initial ADDED events, then an annotated bookmark.
    pub(crate) initial_events: bool,
}

/// A response body fed by a watch task through a channel.
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(Frame::data(b))))
    }
}

/// Starts a watch and returns the body its events stream into. A start older than the
/// compaction point yields one `ERROR` event with a 410 `Status`, as a real server sends.
pub(crate) fn start(standin: &StandIn, req: WatchRequest) -> ChannelBody {
    let (tx, rx) = mpsc::channel(CHANNEL_LINES);
    let inner = Arc::clone(&standin.inner);
    let mut pending = VecDeque::new();
    let store = lock(&inner.store);
    let (pos, gone) = match req.start {
        Start::After(rv) if rv < store.compacted() && !req.initial_events => {
            let err = ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                store.compacted()
            ));
            (rv, Some(err))
        }
        Start::After(rv) if !req.initial_events => (rv, None),
        Start::After(_) | Start::Now => {
            for obj in store.objects(req.kind, &req.filter) {
                pending.push_back(line("ADDED", &obj));
            }
            (store.rv(), None)
        }
    };
    if req.initial_events {
        let mut mark = bookmark(req.kind, pos);
        mark["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        pending.push_back(line("BOOKMARK", &mark));
    }
    drop(store);
    if let Some(err) = gone {
        pending.push_back(line("ERROR", &err.status()));
        tokio::spawn(async move {
            for l in pending {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
        });
        return ChannelBody { rx };
    }
    lock(&inner.counts).watches_open += 1;
    *lock(&inner.counts)
        .watches_opened
        .entry(req.kind)
        .or_default() += 1;
    let deadline = req.timeout.map(|t| Instant::now() + t);
    let epoch = inner.drops.borrow().0;
    tokio::spawn(async move {
        let _open = OpenWatch(Arc::clone(&inner));
        run(&inner, &tx, &req, pos, pending, deadline, epoch).await;
    });
    ChannelBody { rx }
}

/// Streams events until the client goes away, the deadline passes or the history no longer
/// reaches back to the watch's position.
async fn run(
    inner: &Inner,
    tx: &mpsc::Sender<Bytes>,
    req: &WatchRequest,
    mut pos: u64,
    mut pending: VecDeque<Bytes>,
    deadline: Option<Instant>,
    epoch: u64,
) {
    let mut changed = inner.changed.subscribe();
    let mut faults = inner.faults_changed.subscribe();
    let mut last_sent = Instant::now();
    loop {
        changed.borrow_and_update();
        let events = lock(&inner.store).events_since(req.kind, pos);
        let mut end = false;
        match events {
            Ok((events, reached)) => {
                for e in events {
                    if let Some(l) = translate(req, e.ty, &e.object, e.prev.as_ref()) {
                        pending.push_back(l);
                    }
                }
                pos = reached;
            }
            Err(err) => {
                pending.push_back(line("ERROR", &err.status()));
                end = true;
            }
        }
        if !pending.is_empty() {
            if !wait_unsilenced(inner, &mut faults, tx.closed()).await {
                return;
            }
            // A drop fault closes the connection from its own task; until that task runs, this
            // check keeps events written after the fault off the dropped watch (and ending the
            // body here would end the stream cleanly, not drop it).
            if inner.drops.borrow().0 != epoch {
                tx.closed().await;
                return;
            }
            while let Some(l) = pending.pop_front() {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            last_sent = Instant::now();
            if end {
                return;
            }
            continue;
        }
        let interval = *lock(&inner.bookmark_interval);
        let bookmark_at = last_sent + interval;
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = faults.changed() => {
                if r.is_err() {
                    return;
                }
            }
            () = sleep_until(bookmark_at), if req.bookmarks => {
                pending.push_back(line("BOOKMARK", &bookmark(req.kind, pos)));
            }
            () = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                // Ending the stream is a byte on the wire too: not while silent.
                wait_unsilenced(inner, &mut faults, tx.closed()).await;
                return;
            }
            () = tx.closed() => return,
        }
    }
}

/// Waits while the stand-in is silent; false if its state went away or `gone` (the client
/// leaving) finished first.
pub(super) async fn wait_unsilenced(
    inner: &Inner,
    faults: &mut tokio::sync::watch::Receiver<u64>,
    gone: impl Future<Output = ()>,
) -> bool {
    tokio::pin!(gone);
    loop {
        faults.borrow_and_update();
        let Some(until) = lock(&inner.faults).silent_until(Instant::now()) else {
            return true;
        };
        tokio::select! {
            () = sleep_until(until) => {}
            r = faults.changed() => {
                if r.is_err() {
                    return false;
                }
            }
            () = &mut gone => return false,
        }
    }
}

/// Turns a stored event into the line this watch sends, if any: a modification that makes an
/// object start or stop matching the filter is an ADDED or a DELETED (of the previous state,
/// at the new version), as the API server's watch cache sends them.
fn translate(
    req: &WatchRequest,
    ty: EventType,
    obj: &Value,
    prev: Option<&Value>,
) -> Option<Bytes> {
    match ty {
        EventType::Added | EventType::Deleted => {
            req.filter.matches(obj).then(|| line(ty.as_str(), obj))
        }
        EventType::Modified => {
            let now = req.filter.matches(obj);
            let before = prev.is_some_and(|p| req.filter.matches(p));
            match (before, now) {
                (true, true) => Some(line("MODIFIED", obj)),
                (false, true) => Some(line("ADDED", obj)),
                (true, false) => {
                    let mut gone = prev.cloned().unwrap_or(Value::Null);
                    gone["metadata"]["resourceVersion"] =
                        obj["metadata"]["resourceVersion"].clone();
                    Some(line("DELETED", &gone))
                }
                (false, false) => None,
            }
        }
    }
}

/// A bookmark object: the kind and the resourceVersion the watch has reached.
fn bookmark(kind: Kind, rv: u64) -> Value {
    json!({
        "kind": kind.name(),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
    })
}

/// One event line: `{"type":T,"object":O}` and a newline.
fn line(ty: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": ty, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Counts a watch as open while it lives.
struct OpenWatch(Arc<Inner>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut counts = lock(&self.0.counts);
        counts.watches_open = counts.watches_open.saturating_sub(1);
    }
}

/// Lines buffered between a watch task and its connection.
const CHANNEL_LINES: usize = 64;
