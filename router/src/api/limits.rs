//! What one client may hold of a local server: a slot among its listener's capped connections,
//! a few seconds for its request head and body, and a bounded head.
//!
//! The cap keeps slow or idle clients from using up the router's file descriptors. A new
//! connection is never turned away: when every slot is taken, the oldest connection that has
//! no request in progress is closed to make room. A client that sends a request and reads the
//! answer (`weft status`, a scrape) is done in milliseconds and so is never the oldest for
//! long; a slow client (slowloris) is, and its time is bounded by [`HEAD_TIMEOUT`] anyway. A
//! connection whose request is being answered (a CNI ADD waiting for IPAM) is never closed:
//! when all are busy, the new one gets a slot beyond the cap.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::AbortHandle;

/// How long a client may take to send a request's head (also the idle time allowed between
/// requests on a kept-alive connection).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes buffered from a client at once: a request head larger than this is refused.
pub const MAX_HEAD: usize = 16 * 1024;
/// Connections kept open per TCP listener (the HTTP API, the metrics address).
pub const TCP_CONNECTIONS: usize = 256;
/// Connections kept open on the API's unix socket (root only; the CNI plugin's calls).
pub const UNIX_CONNECTIONS: usize = 128;

/// A listener's connection slots.
#[derive(Clone, Debug)]
pub struct Slots {
    cap: usize,
    inner: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    /// Oldest first.
    conns: VecDeque<Slot>,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    busy: Busy,
    task: AbortHandle,
}

/// Whether a connection has a request in progress (such a connection is never evicted).
#[derive(Clone, Debug, Default)]
pub struct Busy(Arc<AtomicBool>);

impl Busy {
    /// Marks a request in progress until the returned guard is dropped.
    pub fn begin(&self) -> impl Drop + use<> {
        self.0.store(true, Ordering::Relaxed);
        BusyGuard(Arc::clone(&self.0))
    }

    fn is_busy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Slots {
    /// Slots for at most `cap` connections (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Arc::default(),
        }
    }

    /// Runs one connection (made by `conn` from its [`Busy`] marker) in a task of its own, in
    /// a slot. Returns true when an older idle connection was closed to make room.
    pub fn spawn<F>(&self, conn: impl FnOnce(Busy) -> F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut open = self.lock();
        let id = open.next;
        open.next += 1;
        let evicted = if open.conns.len() >= self.cap {
            let idle = open.conns.iter().position(|s| !s.busy.is_busy());
            idle.and_then(|at| open.conns.remove(at))
        } else {
            None
        };
        let release = Release {
            id,
            inner: Arc::clone(&self.inner),
        };
        let busy = Busy::default();
        let conn = conn(busy.clone());
        let task = tokio::spawn(async move {
            let _release = release;
            conn.await;
        });
        open.conns.push_back(Slot {
            id,
            busy,
            task: task.abort_handle(),
        });
        drop(open);
        // Aborted outside the lock: the aborted task's release takes it.
        evicted.map(|slot| slot.task.abort()).is_some()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Frees a connection's slot when its task ends, finished or aborted.
struct Release {
    id: u64,
    inner: Arc<Mutex<Open>>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let mut open = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = open.conns.iter().position(|s| s.id == self.id) {
            open.conns.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn settle(slots: &Slots, want: usize) {
        for _ in 0..1000 {
            if slots.open() == want {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{} connections open, want {want}", slots.open());
    }

    #[tokio::test]
    async fn a_full_listener_closes_its_oldest_connection() {
        let slots = Slots::new(2);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        // The first connection never finishes on its own; it reports being dropped.
        assert!(!slots.spawn(|_| async move {
            let _dropped = first_tx;
            std::future::pending::<()>().await;
        }));
        assert!(!slots.spawn(|_| std::future::pending()));
        settle(&slots, 2).await;
        assert!(slots.spawn(|_| std::future::pending()), "the third evicts");
        assert!(first_rx.await.is_err(), "the oldest was closed");
        settle(&slots, 2).await;
    }

    #[tokio::test]
    async fn a_connection_with_a_request_in_progress_is_never_closed() {
        let slots = Slots::new(2);
        let (busy_tx, busy_rx) = tokio::sync::oneshot::channel::<()>();
        let (marked_tx, marked_rx) = tokio::sync::oneshot::channel::<()>();
        // The oldest is busy (a CNI ADD waiting for IPAM); the second is idle.
        slots.spawn(move |busy| async move {
            let _request = busy.begin();
            let _dropped = busy_tx;
            let _ = marked_tx.send(());
            std::future::pending::<()>().await;
        });
        marked_rx.await.unwrap();
        slots.spawn(|_| std::future::pending());
        settle(&slots, 2).await;
        assert!(slots.spawn(|_| std::future::pending()), "the idle one goes");
        settle(&slots, 2).await;
        // Still the busy one stays, older as it is: the idle one after it goes.
        assert!(slots.spawn(|_| std::future::pending()));
        settle(&slots, 2).await;
        // When every connection is busy, a new one gets a slot beyond the cap.
        let all_busy = Slots::new(1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        all_busy.spawn(move |busy| async move {
            let _request = busy.begin();
            let _ = tx.send(());
            std::future::pending::<()>().await;
        });
        rx.await.unwrap();
        assert!(!all_busy.spawn(|_| std::future::pending()));
        settle(&all_busy, 2).await;
        drop(busy_rx);
    }

    #[tokio::test]
    async fn a_finished_connection_frees_its_slot() {
        let slots = Slots::new(1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        slots.spawn(|_| async move {
            let _ = rx.await;
        });
        settle(&slots, 1).await;
        tx.send(()).unwrap();
        settle(&slots, 0).await;
        assert!(
            !slots.spawn(|_| std::future::pending()),
            "a free slot, no eviction"
        );
    }
}
