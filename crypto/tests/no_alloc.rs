//! The per-packet path allocates nothing: a counting global allocator watches seal_batch and
//! open_batch over many packets. Only the test's own thread is counted: libtest's main thread
//! may allocate meanwhile (a CI run on a loaded machine counted 4 such allocations).

// A real instant anchors the virtual clock; the code under test never reads it.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crypto::{HEADER_LEN, Mode, OVERHEAD, PacketBuf, PacketStatus, SessionConfig};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised, so reading it inside the allocator never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, which we pass through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROOM: usize = 1400 + OVERHEAD;

#[test]
fn seal_and_open_batches_do_not_allocate() {
    let now = Instant::now();
    // Rekeying is on the per-packet path too: make it happen inside the measured loop.
    let config = SessionConfig {
        rekey_after_packets: 100,
        ..SessionConfig::default()
    };
    let (mut a, mut b) = common::sessions(config, now);
    let mut batch: Vec<PacketBuf<[u8; ROOM]>> = (0..64)
        .map(|_| PacketBuf::new([0x42u8; ROOM], HEADER_LEN, 1400))
        .collect();
    // The counter sees this thread's allocations.
    COUNTING.with(|c| c.set(true));
    let control = ALLOCS.load(Ordering::Relaxed);
    drop(std::hint::black_box(Box::new(7u64)));
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - control, 1);
    let before = ALLOCS.load(Ordering::Relaxed);
    for round in 0..50u32 {
        let t = now + Duration::from_millis(u64::from(round));
        if round == 25 {
            a.set_mode(Mode::Plain);
        }
        assert_eq!(a.seal_batch(t, &mut batch), 64);
        assert_eq!(b.open_batch(t, &mut batch), 64);
        assert!(
            batch
                .iter()
                .all(|p| matches!(p.status, PacketStatus::Opened(_)))
        );
    }
    COUNTING.with(|c| c.set(false));
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "allocations in 3,200 seal+open round trips"
    );
}
