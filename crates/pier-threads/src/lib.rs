//! Per-thread sets of what requests use together: a server serves on one single-threaded runtime
//! per core (`pier_http::Server`), and what a request's work waits on (a reused instance's
//! worker, a pooled outgoing connection, a Redis connection, the pace of its thread's
//! instances) is best run by that same thread's runtime. Serving thread `i` takes slot `i`
//! ([`claim`]); any other thread is numbered the first time it asks. State kept per slot
//! ([`slots`] of them, one per core) is shared by the threads whose slots fall on the same
//! index, which is only slower.

#![deny(missing_docs)]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many slots to keep per-thread state in, and how many threads a server serves on unless
/// told otherwise: one per core.
pub fn slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Makes `slot` the calling thread's: serving thread `i` claims slot `i` before it serves.
pub fn claim(slot: usize) {
    SLOT.with(|s| s.set(Some(slot)));
}

/// The calling thread's slot, below `n` (the length of the caller's per-slot state).
pub fn slot(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let slot = SLOT.with(|s| match s.get() {
        Some(slot) => slot,
        None => {
            let slot = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(Some(slot));
            slot
        }
    });
    slot % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_slot_and_another_thread_gets_another() {
        let mine = slot(usize::MAX);
        assert_eq!(slot(usize::MAX), mine);
        let theirs = std::thread::spawn(|| slot(usize::MAX)).join().unwrap();
        assert_ne!(theirs, mine);
        assert_eq!(slot(1), 0);
    }

    #[test]
    fn a_serving_thread_has_the_slot_it_claimed() {
        let slots = std::thread::spawn(|| {
            slot(usize::MAX);
            claim(3);
            (slot(usize::MAX), slot(2))
        })
        .join()
        .unwrap();
        assert_eq!(slots, (3, 1));
    }
}
