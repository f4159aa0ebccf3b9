//! Per-thread sets of what requests use together: a server serves on one single-threaded runtime
//! per core (`pier_http::Server`), and what a request's work waits on (a reused instance's
//! worker, a pooled outgoing connection) is best run by that same thread's runtime. Threads get
//! a slot each, in the order they first ask; state kept per slot ([`slots`] of them, one per
//! core) is shared by threads past that count, which is only slower.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many slots to keep per-thread state in: one per core.
pub fn slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The calling thread's slot, below `n` (the length of the caller's per-slot state).
pub fn slot(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_slot_and_the_next_thread_gets_the_next() {
        let mine = slot(usize::MAX);
        assert_eq!(slot(usize::MAX), mine);
        let theirs = std::thread::spawn(|| slot(usize::MAX)).join().unwrap();
        assert_ne!(theirs, mine);
        assert_eq!(slot(1), 0);
    }
}
