//! Joining the runs of pages a request wrote, so that the pool's reset keeps them all resident.
//!
//! After a request, the pool resets a large memory by asking the kernel (`PAGEMAP_SCAN`) for the
//! runs of pages that were written and copying those back from the image. It asks for at most
//! 32 runs, and hands everything past the 32nd back to the kernel: the next request in that
//! slot faults those pages in again, and in a multi-threaded process each such fault also
//! interrupts the other cores to flush their TLBs. Interpreters write a few hundred pages all
//! over their heap per request (componentize-py hello: ~130 runs; componentize-js: ~57).
//!
//! So before the instance is dropped, pier scans the memory itself (the component's reset hint,
//! [`crate::optimize::hint`], hands it over without a copy) and, when there are more than
//! [`MAX_RUNS`] runs, joins the runs separated by the smallest gaps: it makes the pages of
//! those gaps private copies of what they already hold (`MADV_POPULATE_WRITE`, which changes no
//! byte). The pool's scan then finds few enough runs to reset all of them by copying, gap
//! pages included, and hands nothing back. A gap stays joined in that slot for later requests,
//! so the cost (a copy of each gap page per reset instead of a fault per written page) is paid
//! where it is cheapest. What is kept resident stays within the pool's own budget.
//!
//! It changes no memory content, so it cannot make a reset less complete: whatever it does, the
//! pool still restores every page written since the slot was last reset.
//!
//! Once a slot's runs are joined, later requests there mostly write within them (an interpreter
//! touches the same objects for the same route), and scanning again finds nothing to do: a
//! wasted walk over the memory's page tables, ~3% of a componentize-py request. So a slot whose
//! scans found nothing to join [`SETTLED_AFTER`] times in a row is scanned only after one
//! request in [`SCAN_SETTLED_EVERY`]; a scan that finds runs to join again makes it scanned after
//! every request until it settles. Skipping a scan can only cost speed (the pool handing back
//! pages past its 32nd run until the next scan joins them), never a page left unreset.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmList};

use crate::HostState;
use crate::engine::KEEP_RESIDENT;
use crate::optimize::hint;

/// Runs of written pages the pool's reset takes before it hands the rest back: wasmtime's
/// `MAX_REGIONS`. The pool's scan is pier's query over the same range, made after it with
/// nothing written in between, so it finds the same runs; the kernel stops a scan early only
/// when it meets a run past the last one it has room for.
pub const MAX_RUNS: usize = 32;

/// Scans in a row that found nothing to join before a slot counts as settled.
const SETTLED_AFTER: u8 = 2;

/// A settled slot is scanned after one request in this many.
const SCAN_SETTLED_EVERY: u8 = 8;

/// Scans that found nothing to join before an app that never needed joining is called less.
const QUIET_AFTER: u32 = 64;

/// An app whose memories never needed joining gets the reset hint called after one request in
/// this many.
const CALL_QUIET_EVERY: u32 = 8;

/// Runs read per scan; past these, the memory's later runs are left as they are.
const SCAN_RUNS: usize = 1024;

/// What may be kept resident, written and joined together: the pool's budget
/// ([`KEEP_RESIDENT`]) less a margin, since past the budget the pool hands pages back again.
const BUDGET: usize = KEEP_RESIDENT - KEEP_RESIDENT / 8;

/// What joining did to one memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Joined {
    /// Runs of written pages before joining.
    pub runs: usize,
    /// Gaps joined.
    pub gaps: usize,
    /// Pages in those gaps, now private copies kept resident.
    pub pages: usize,
}

/// Defines the function the reset hint calls. It acts only when pier has armed it
/// (`HostState::reset_hint`) for the call made after a request: a guest importing it
/// itself gets a function that does nothing.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(hint::INTERFACE)?.func_wrap(
        hint::FUNCTION,
        |mut store: StoreContextMut<'_, HostState>, (memory,): (WasmList<u8>,)| {
            if !std::mem::take(&mut store.data_mut().reset_hint) {
                return Ok(());
            }
            let bytes = memory.as_le_slice(&store);
            let (start, len) = (bytes.as_ptr() as usize, bytes.len());
            let joined = slots().join(start, len, BUDGET);
            store.data_mut().joined = joined;
            Ok(())
        },
    )
}

/// Which of an app's requests end with a call to its reset hint. The call is a call into the
/// guest (~4 us for a compiled Rust 0.3 service, a few percent of its request), made even when
/// the slot's scan is then skipped. Interpreters need their runs joined; a compiled guest with
/// a compact heap writes a few runs and never does. So an app none of whose scans has ever
/// found runs to join is called after one request in [`CALL_QUIET_EVERY`] once [`QUIET_AFTER`]
/// scans found nothing; the first scan that joins something makes it called after every
/// request for good. Calling less can only cost speed, never a page left unreset.
#[derive(Debug, Default)]
pub(crate) struct HintCalls {
    /// Scans that found nothing to join (at most [`QUIET_AFTER`]).
    quiet: AtomicU32,
    /// Whether a scan has ever found runs to join.
    joined: AtomicBool,
    /// Requests since the app went quiet, to pick one in [`CALL_QUIET_EVERY`].
    turn: AtomicU32,
}

impl HintCalls {
    /// Whether the request ending now calls the hint.
    pub(crate) fn due(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
            || self.quiet.load(Ordering::Relaxed) < QUIET_AFTER
            || self
                .turn
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(CALL_QUIET_EVERY)
    }

    /// What the hint's scan found (`None`: the slot's scan was skipped, or cannot be made).
    pub(crate) fn record(&self, joined: Option<Joined>) {
        match joined {
            // More runs than the pool takes: joining was needed (and done, as far as the
            // budget allowed).
            Some(j) if j.runs > MAX_RUNS => {
                self.joined.store(true, Ordering::Relaxed);
            }
            Some(_) => {
                let _ = self
                    .quiet
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                        (q < QUIET_AFTER).then_some(q + 1)
                    });
            }
            None => {}
        }
    }
}

/// How recent scans of one pool slot's memory went.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Scans in a row that found nothing to join (at most [`SETTLED_AFTER`]).
    settled: u8,
    /// Requests since the last scan.
    skipped: u8,
}

/// The slots pier has scanned, by the address of their memory (a slot's memory stays at one
/// address for its pool's lifetime, so there is at most one entry per slot). Entries outlive a
/// pool dropped while the process goes on; a slot of a later pool at the same address may then
/// skip up to seven scans it needed, which costs speed only.
#[derive(Debug, Default)]
struct Slots(Mutex<HashMap<usize, Slot>>);

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(Slots::default)
}

impl Slots {
    /// [`join_written_runs`] for the memory at `[start, start + len)`, unless its slot is
    /// settled and not due for a scan (`None` then, as when the kernel cannot scan).
    fn join(&self, start: usize, len: usize, budget: usize) -> Option<Joined> {
        {
            let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let slot = slots.entry(start).or_default();
            if slot.settled >= SETTLED_AFTER && slot.skipped + 1 < SCAN_SETTLED_EVERY {
                slot.skipped += 1;
                return None;
            }
            slot.skipped = 0;
        }
        let joined = join_written_runs(start, len, budget);
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(start).or_default();
        slot.settled = match joined {
            // Within the pool's runs: nothing was (or needed to be) joined.
            Some(j) if j.runs <= MAX_RUNS => (slot.settled + 1).min(SETTLED_AFTER),
            _ => 0,
        };
        joined
    }
}

/// `struct pm_scan_arg` of `<linux/fs.h>`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

fn pagemap() -> Option<&'static File> {
    static PAGEMAP: OnceLock<Option<File>> = OnceLock::new();
    PAGEMAP
        .get_or_init(|| File::open("/proc/self/pagemap").ok())
        .as_ref()
}

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
    })
}

/// The runs of pages in `[start, start + len)` that the pool's reset counts as written (present,
/// and neither the shared zero page nor the image's file page: the pool's own query), given to
/// `with` in order. `None` when the kernel cannot scan (before Linux 6.7).
fn written_runs<R>(start: usize, len: usize, with: impl FnOnce(&[PageRegion]) -> R) -> Option<R> {
    thread_local! {
        // The kernel's answer, reused: a scan runs after every request.
        static REGIONS: std::cell::RefCell<Vec<PageRegion>> =
            std::cell::RefCell::new(vec![PageRegion::default(); SCAN_RUNS]);
    }
    REGIONS.with_borrow_mut(|regions| {
        let (n, _) = scan(start, len, regions)?;
        Some(with(&regions[..n]))
    })
}

/// The pool's query over `[start, start + len)`, into `regions`: how many runs it filled, and
/// the address where the kernel stopped (the end of the range, unless `regions` filled up
/// before the last run).
fn scan(start: usize, len: usize, regions: &mut [PageRegion]) -> Option<(usize, u64)> {
    let pagemap = pagemap()?;
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags: 0,
        start: start as u64,
        end: (start + len) as u64,
        walk_end: 0,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        max_pages: 0,
        category_inverted: PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_anyof_mask: 0,
        return_mask: 0,
    };
    // SAFETY: `arg` is a valid `pm_scan_arg` whose `vec` has room for `vec_len` regions;
    // the kernel only reads the page tables of the range.
    let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    let n = usize::try_from(n).ok()?;
    Some((n.min(regions.len()), arg.walk_end))
}

/// Joins runs of written pages in the memory at `[start, start + len)` until at most
/// [`MAX_RUNS`] are left, filling the smallest gaps first, while everything written and joined
/// stays within `budget` bytes. `None` when the kernel cannot scan.
pub fn join_written_runs(start: usize, len: usize, budget: usize) -> Option<Joined> {
    written_runs(start, len, |runs| {
        let mut joined = Joined {
            runs: runs.len(),
            ..Joined::default()
        };
        if runs.len() <= MAX_RUNS {
            return joined;
        }
        let page = page_size();
        let mut resident: u64 = runs.iter().map(|r| r.end - r.start).sum();
        // (length, address) of each gap, smallest first.
        let mut gaps: Vec<(u64, u64)> = runs
            .windows(2)
            .map(|w| (w[1].start - w[0].end, w[0].end))
            .collect();
        gaps.sort_unstable();
        for &(gap, at) in &gaps[..runs.len() - MAX_RUNS] {
            if resident + gap > budget as u64 {
                break;
            }
            // SAFETY: the gap lies inside the guest's memory, which stays mapped while its
            // instance lives; populating changes no byte of it.
            let populated = unsafe {
                libc::madvise(
                    at as *mut libc::c_void,
                    gap as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if populated != 0 {
                break;
            }
            resident += gap;
            joined.gaps += 1;
            joined.pages += gap as usize / page;
        }
        joined
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(runs: usize, gaps: usize) -> Option<Joined> {
        Some(Joined {
            runs,
            gaps,
            pages: gaps,
        })
    }

    #[test]
    fn an_app_that_never_needs_joining_is_called_less_once_quiet() {
        let calls = HintCalls::default();
        for _ in 0..QUIET_AFTER {
            assert!(calls.due());
            calls.record(scanned(3, 0));
            // Skipped scans say nothing.
            calls.record(None);
        }
        let due = (0..CALL_QUIET_EVERY * 10).filter(|_| calls.due()).count();
        assert_eq!(due, 10);
    }

    #[test]
    fn an_app_that_once_needed_joining_is_called_after_every_request() {
        let calls = HintCalls::default();
        calls.record(scanned(40, 8));
        for _ in 0..QUIET_AFTER * 2 {
            calls.record(scanned(3, 0));
        }
        assert!((0..CALL_QUIET_EVERY * 4).all(|_| calls.due()));
        // Too many runs to join within the budget counts too.
        let calls = HintCalls::default();
        calls.record(scanned(40, 0));
        for _ in 0..QUIET_AFTER * 2 {
            calls.record(scanned(3, 0));
        }
        assert!((0..CALL_QUIET_EVERY * 4).all(|_| calls.due()));
    }

    /// A private mapping of a file, like a pool slot with its image: pages read map the file,
    /// pages written become private copies.
    struct Mapping {
        ptr: *mut u8,
        len: usize,
        _file: File,
    }

    impl Mapping {
        fn new(pages: usize) -> Mapping {
            let page = page_size();
            let file = tempfile::tempfile().unwrap();
            let content: Vec<u8> = (0..pages * page).map(|i| (i / page) as u8).collect();
            std::io::Write::write_all(&mut &file, &content).unwrap();
            // SAFETY: a fresh private mapping of a file of that length.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    pages * page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            Mapping {
                ptr: ptr.cast(),
                len: pages * page,
                _file: file,
            }
        }

        fn page(&self, i: usize) -> *mut u8 {
            self.ptr.wrapping_add(i * page_size())
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping what `new` mapped.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    #[test]
    fn runs_are_joined_across_the_smallest_gaps_and_no_byte_changes() {
        let m = Mapping::new(400);
        if written_runs(m.ptr as usize, m.len, |_| ()).is_none() {
            eprintln!("no PAGEMAP_SCAN on this kernel: skipped");
            return;
        }
        // Read everything (file pages), then write every third page: 100 runs of one page,
        // separated by gaps of two.
        for i in 0..400 {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::read_volatile(m.page(i)) };
        }
        for i in (0..300).step_by(3) {
            // SAFETY: inside the mapping.
            unsafe { m.page(i).add(1).write_volatile(0xee) };
        }
        let before: Vec<u8> = (0..400).map(|i| unsafe { *m.page(i) }).collect();
        assert_eq!(
            written_runs(m.ptr as usize, m.len, <[_]>::len).unwrap(),
            100
        );

        let joined = join_written_runs(m.ptr as usize, m.len, 16 << 20).unwrap();
        assert_eq!(joined.runs, 100);
        assert_eq!(joined.gaps, 100 - MAX_RUNS);
        assert_eq!(joined.pages, 2 * (100 - MAX_RUNS));
        assert_eq!(
            written_runs(m.ptr as usize, m.len, <[_]>::len).unwrap(),
            MAX_RUNS
        );
        // The pool's own scan, with room for exactly MAX_RUNS runs, takes them all and reaches
        // the end of the memory: it hands nothing back.
        let mut pools = [PageRegion::default(); MAX_RUNS];
        let (taken, walk_end) = scan(m.ptr as usize, m.len, &mut pools).unwrap();
        assert_eq!(
            (taken, walk_end),
            (MAX_RUNS, (m.ptr as usize + m.len) as u64)
        );
        // One run more than it has room for, and it stops short.
        let mut fewer = [PageRegion::default(); MAX_RUNS - 1];
        let (_, stopped) = scan(m.ptr as usize, m.len, &mut fewer).unwrap();
        assert!(stopped < (m.ptr as usize + m.len) as u64);
        let after: Vec<u8> = (0..400).map(|i| unsafe { *m.page(i) }).collect();
        assert_eq!(before, after, "joining changed memory");
        for i in 0..400 {
            // SAFETY: inside the mapping.
            let second = unsafe { *m.page(i).add(1) };
            let expect = if i % 3 == 0 && i < 300 { 0xee } else { i as u8 };
            assert_eq!(second, expect, "page {i}");
        }
        // Already joined: nothing more to do.
        let again = join_written_runs(m.ptr as usize, m.len, 16 << 20).unwrap();
        assert_eq!((again.runs, again.gaps), (MAX_RUNS, 0));
    }

    #[test]
    fn a_settled_slot_is_scanned_after_one_request_in_eight() {
        let m = Mapping::new(400);
        if written_runs(m.ptr as usize, m.len, |_| ()).is_none() {
            return;
        }
        let write_every_third = |pages: std::ops::Range<usize>| {
            for i in pages.step_by(3) {
                // SAFETY: inside the mapping.
                unsafe { m.page(i).write_volatile(1) };
            }
        };
        let slots = Slots::default();
        let join = || slots.join(m.ptr as usize, m.len, 16 << 20);

        // 100 runs: the first request's scan joins them, the next two find nothing to join.
        write_every_third(0..300);
        assert_eq!(join().unwrap().gaps, 100 - MAX_RUNS);
        for _ in 0..SETTLED_AFTER {
            assert_eq!(
                join().unwrap(),
                Joined {
                    runs: MAX_RUNS,
                    gaps: 0,
                    pages: 0
                }
            );
        }
        // Settled: seven requests skip the scan, the eighth scans.
        for round in 0..2 {
            for _ in 1..SCAN_SETTLED_EVERY {
                assert_eq!(join(), None, "round {round}");
            }
            assert_eq!(join().unwrap().gaps, 0, "round {round}");
        }

        // New runs written while the scans are skipped are joined at the next one due, and
        // from then on every request is scanned until the slot settles again.
        write_every_third(302..400);
        for _ in 1..SCAN_SETTLED_EVERY {
            assert_eq!(join(), None);
        }
        let due = join().unwrap();
        assert_eq!((due.runs, due.gaps), (MAX_RUNS + 33, 33));
        assert_eq!(join().unwrap().gaps, 0);
        assert_eq!(join().unwrap().gaps, 0);
        assert_eq!(join(), None);
    }

    #[test]
    fn joining_stays_within_the_budget() {
        let page = page_size();
        let m = Mapping::new(200);
        if written_runs(m.ptr as usize, m.len, |_| ()).is_none() {
            return;
        }
        for i in (0..200).step_by(4) {
            // SAFETY: inside the mapping.
            unsafe { m.page(i).write_volatile(1) };
        }
        // 50 one-page runs, gaps of three pages: a budget of 60 pages allows three gaps.
        let joined = join_written_runs(m.ptr as usize, m.len, 60 * page).unwrap();
        assert_eq!((joined.runs, joined.gaps, joined.pages), (50, 3, 9));
    }
}
