//! Putting a store's commits on the disk off the request path, and waiting for that where an
//! answer depends on it.
//!
//! A store commits a write on the caller's thread, into the operating system's hands (it then
//! survives the process being killed), and counts it here. One syncer thread per store makes
//! the commits durable with one `fdatasync` for all the commits made since its last one (group
//! commit), and publishes how far it got. A [`SyncPoint`] is a place in that count: waiting on
//! it returns once everything committed before it is on disk. The HTTP server waits on the
//! points of the stores a request used before it sends the answer, so the guest's instance
//! never waits for the disk and a client never sees an answer that a power cut could undo.
//!
//! A failed `fdatasync` leaves it unknown what reached the disk (the kernel may have dropped
//! the pages it could not write), so it is final: every wait after it fails, and so does every
//! write (a restart recovers from what the disk holds).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{Error, Result};

/// How far the disk has got.
#[derive(Debug, Clone, Default)]
struct Synced {
    /// Every commit up to this count is on disk.
    upto: u64,
    /// Why syncing stopped, for good.
    failed: Option<String>,
}

/// One store's commits and the syncer thread's progress on them.
pub(crate) struct Disk {
    /// Commits made so far.
    committed: AtomicU64,
    /// Whether the store is gone (the syncer then ends); guards the syncer's sleep.
    closed: Mutex<bool>,
    /// Whether the syncer is asleep, waiting for a commit (only then is it woken).
    asleep: AtomicBool,
    wake: Condvar,
    synced: watch::Sender<Synced>,
}

/// What the syncer thread does each time there is something to put on the disk.
pub(crate) trait Syncer: Send + 'static {
    /// Makes every commit made so far durable.
    fn sync(&mut self) -> std::io::Result<()>;
    /// Housekeeping (a checkpoint), after every [`TIDY_EVERY`] commits synced and when the store
    /// has been idle for a second after commits.
    fn tidy(&mut self);
}

/// Commits between two calls of [`Syncer::tidy`], at most.
const TIDY_EVERY: u64 = 1000;

/// The shortest time from the start of one sync to the start of the next, under load: when the
/// last sync took in more than one commit. A sync takes a few hundred microseconds on a fast
/// disk, and under load one would start for every commit or two (each costing the machine a
/// sleep and a wake-up of this thread); waiting this long gathers the commits of more requests
/// into each, at a cost of at most this much to those answers' time. Otherwise (a single
/// client, whose next write waits for its answer; a quiet server) a commit is synced at once.
const SYNC_INTERVAL: Duration = Duration::from_millis(2);

impl Disk {
    /// Starts the syncer thread of the store `name` (as logs call it), syncing with `syncer`.
    pub(crate) fn start(name: &str, mut syncer: impl Syncer) -> Result<Arc<Disk>> {
        let disk = Arc::new(Disk {
            committed: AtomicU64::new(0),
            closed: Mutex::new(false),
            asleep: AtomicBool::new(false),
            wake: Condvar::new(),
            synced: watch::Sender::new(Synced::default()),
        });
        let shared = disk.clone();
        let label = name.to_string();
        std::thread::Builder::new()
            .name("pier-kv-sync".into())
            .spawn(move || shared.run(&mut syncer, &label))
            .map_err(|e| Error::Backend(format!("cannot start the store's syncer: {e}")))?;
        Ok(disk)
    }

    /// An error if syncing has failed: the store takes no more writes.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.synced.borrow().failed {
            Some(e) => Err(disk_failed(e)),
            None => Ok(()),
        }
    }

    /// Counts a commit and wakes the syncer if it sleeps.
    pub(crate) fn committed(&self) {
        self.committed.fetch_add(1, Ordering::SeqCst);
        // The syncer says it is asleep before it checks for commits one last time, so either
        // it sees this commit or this sees it asleep (and the lock keeps the wake from coming
        // before its wait).
        if self.asleep.load(Ordering::SeqCst) {
            let _closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
    }

    /// The point covering every commit made so far, unless they are all on disk already.
    pub(crate) fn point(self: &Arc<Self>) -> Option<SyncPoint> {
        let seq = self.committed.load(Ordering::Acquire);
        let synced = self.synced.borrow();
        (synced.upto < seq || synced.failed.is_some()).then(|| SyncPoint {
            disk: self.clone(),
            seq,
        })
    }

    /// Ends the syncer (after one last sync of what is committed).
    pub(crate) fn close(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }

    fn run(&self, syncer: &mut impl Syncer, store: &str) {
        let mut upto = 0;
        let mut untidy = 0;
        let mut last: Option<Instant> = None;
        let mut under_load = false;
        loop {
            {
                let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    self.asleep.store(true, Ordering::SeqCst);
                    if self.committed.load(Ordering::SeqCst) > upto {
                        break;
                    }
                    if *closed {
                        return;
                    }
                    let (guard, waited) = self
                        .wake
                        .wait_timeout(closed, Duration::from_secs(1))
                        .unwrap_or_else(|e| e.into_inner());
                    closed = guard;
                    if waited.timed_out() && untidy > 0 {
                        untidy = 0;
                        syncer.tidy();
                    }
                }
                self.asleep.store(false, Ordering::SeqCst);
            }
            if under_load
                && let Some(wait) = last.and_then(|l| SYNC_INTERVAL.checked_sub(l.elapsed()))
            {
                std::thread::sleep(wait);
            }
            last = Some(Instant::now());
            // Everything committed before the sync starts is covered by it.
            let target = self.committed.load(Ordering::SeqCst);
            if let Err(e) = syncer.sync() {
                tracing::error!(
                    store,
                    "cannot put the store's writes on the disk: {e}; it takes no more writes \
                     until pier restarts"
                );
                self.synced.send_modify(|s| s.failed = Some(e.to_string()));
                return;
            }
            self.synced.send_modify(|s| s.upto = target);
            under_load = target - upto > 1;
            untidy += target - upto;
            upto = target;
            if untidy >= TIDY_EVERY {
                untidy = 0;
                syncer.tidy();
            }
        }
    }
}

fn disk_failed(e: &str) -> Error {
    Error::Backend(format!("the store's disk failed ({e}): restart pier"))
}

/// Everything a store had committed at one moment: [`SyncPoint::wait`] returns once it is all
/// on disk.
#[derive(Clone)]
pub struct SyncPoint {
    disk: Arc<Disk>,
    seq: u64,
}

impl SyncPoint {
    /// Waits until everything committed before this point is on disk; an error if the disk
    /// failed.
    pub async fn wait(self) -> Result<()> {
        let mut synced = self.disk.synced.subscribe();
        let seq = self.seq;
        let state = synced
            .wait_for(|s| s.upto >= seq || s.failed.is_some())
            .await
            .map_err(|_| Error::Backend("the store's syncer has stopped".into()))?;
        match &state.failed {
            Some(e) => Err(disk_failed(e)),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for SyncPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncPoint({})", self.seq)
    }
}

/// The points an answer waits for, one per store it used that had writes not on disk yet.
#[derive(Debug, Default)]
pub struct Unsynced(Vec<SyncPoint>);

impl Unsynced {
    /// Adds a store's point (none: nothing of it to wait for).
    pub fn add(&mut self, point: Option<SyncPoint>) {
        self.0.extend(point);
    }

    /// Whether there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Waits for every point; the first error if a store's disk failed.
    pub async fn wait(self) -> Result<()> {
        for point in self.0 {
            point.wait().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counting(Arc<AtomicUsize>, bool);

    impl Syncer for Counting {
        fn sync(&mut self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if self.1 {
                return Err(std::io::Error::other("no space left"));
            }
            Ok(())
        }
        fn tidy(&mut self) {}
    }

    #[tokio::test]
    async fn a_point_returns_once_its_commits_are_synced() {
        let syncs = Arc::new(AtomicUsize::new(0));
        let disk = Disk::start("t", Counting(syncs.clone(), false)).unwrap();
        assert!(
            disk.point().is_none(),
            "nothing committed, nothing to wait for"
        );
        for _ in 0..100 {
            disk.committed();
        }
        let point = disk.point().expect("commits not synced yet");
        assert_eq!(point.seq, 100);
        point.wait().await.unwrap();
        assert!(disk.synced.borrow().upto >= 100);
        // Group commit: a burst of commits took far fewer syncs than commits.
        assert!(syncs.load(Ordering::SeqCst) <= 100);
        assert!(disk.point().is_none());
        disk.close();
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_wait_and_write_after_it() {
        let disk = Disk::start("t", Counting(Arc::new(AtomicUsize::new(0)), true)).unwrap();
        disk.committed();
        let e = disk.point().unwrap().wait().await.unwrap_err();
        assert!(e.to_string().contains("no space left"), "{e}");
        assert!(disk.check().is_err());
        assert!(disk.point().unwrap().wait().await.is_err());
    }
}
