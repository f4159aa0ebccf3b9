//! The embedded store: one SQLite database file per store (the bundled library), in WAL mode.
//!
//! A write runs on the calling thread, in a transaction of its own on the store's one write
//! connection: some microseconds, and the guest calling `set` never waits on another thread (a
//! guest that has to wait leaves pier's fast request path, which costs it far more than the
//! write). When the call returns, the commit is in the operating system's hands
//! (`synchronous = NORMAL`): it survives pier being killed at any moment. The store's syncer
//! thread ([`crate::sync`]) then puts it on the disk, one `fdatasync` of the log for every commit
//! made since its last (group commit), and the HTTP server sends an answer only once the
//! commits of the stores its request used are there: a client never sees an answer that a
//! power cut could undo, and the guest's instance is gone before the disk is waited for.
//!
//! When another process (`--workers`) holds the database's write lock, the write moves to a
//! blocking thread that waits for it (up to 5 s), so a request thread never sleeps on a lock.
//! A read-modify-write (`increment`, compare-and-swap) runs in one immediate transaction, so
//! none is lost across processes. Reads run on read connections of their own, on the calling
//! thread (WAL lets them read while a write commits). Checkpoints (copying the log into the
//! database) run on the syncer thread, never on a request's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::sync::{Disk, SyncPoint, Syncer};
use crate::{Error, Keys, Result, Store, counter};

/// Read connections kept open, at most.
const READERS: usize = 4;

/// How long a write moved off the request thread waits for another process's lock.
const BUSY: Duration = Duration::from_secs(5);

/// A store in one SQLite file.
pub struct Sqlite {
    path: PathBuf,
    /// The write connection: used on the request's thread when free, else on a blocking one.
    writer: Arc<Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    disk: Arc<Disk>,
}

enum Op {
    Set(String, Vec<u8>),
    Delete(String),
    Increment(String, i64),
    SetMany(Vec<(String, Vec<u8>)>),
    DeleteMany(Vec<String>),
    Swap {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
}

enum Outcome {
    Done,
    Counter(i64),
    Swapped(bool),
}

impl Sqlite {
    /// Opens (creating it and its directory if needed) the store in `path`.
    pub fn open(path: &Path) -> Result<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Backend(format!("{}: {e}", dir.display())))?;
        }
        let writer = connect(path, false)?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;",
        )?;
        // Checkpoints run on the syncer thread; a request's write never waits for another
        // process's lock here (it moves to a blocking thread instead).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.busy_timeout(Duration::ZERO)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let disk = Disk::start(
            &path.display().to_string(),
            WalSyncer {
                db: path.to_path_buf(),
                wal: wal.into(),
                file: None,
                checkpointer: None,
            },
        )?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            writer: Arc::new(Mutex::new(writer)),
            readers: Mutex::default(),
            disk,
        })
    }

    /// Runs `op` in a transaction of its own and counts its commit for the syncer: on this
    /// thread if the write connection is free and no other process holds the lock, else on a
    /// blocking thread that waits for them.
    async fn write(&self, op: Op) -> Result<Outcome> {
        self.disk.check()?;
        if let Ok(mut conn) = self.writer.try_lock()
            && let Some(outcome) = transact(&mut conn, &op)
        {
            drop(conn);
            return self.committed(outcome);
        }
        let writer = self.writer.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|e| e.into_inner());
            conn.busy_timeout(BUSY)?;
            let outcome = transact(&mut conn, &op).unwrap_or_else(|| {
                Err(Error::Backend(format!(
                    "the database is locked by another process (waited {}s)",
                    BUSY.as_secs()
                )))
            });
            conn.busy_timeout(Duration::ZERO)?;
            outcome
        })
        .await
        .map_err(|e| Error::Backend(format!("the write stopped: {e}")))?;
        self.committed(outcome)
    }

    fn committed(&self, outcome: Result<Outcome>) -> Result<Outcome> {
        if outcome.is_ok() {
            self.disk.committed();
        }
        outcome
    }

    /// Runs `read` on a read connection, on the calling thread: a point read of a WAL database
    /// takes microseconds (its pages are in memory once warm) and never waits for the writer,
    /// so it costs less done here than handed to a blocking thread and back (measured: a
    /// request doing a get and a set cost ~37 us more than one doing neither with the hand-off).
    fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(conn) => conn,
            None => connect(&self.path, true)?,
        };
        let result = read(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        Ok(result?)
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        self.disk.close();
    }
}

/// A connection to `path`, set up for pier: WAL, commits left to the syncer to make durable,
/// waiting on other processes (while it is set up).
fn connect(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Backend(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(BUSY)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// `op` in an immediate transaction of its own: committed, or rolled back whole. `None` when
/// another process holds the write lock (past the connection's busy timeout).
fn transact(conn: &mut Connection, op: &Op) -> Option<Result<Outcome>> {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => return None,
        Err(e) => return Some(Err(e.into())),
    };
    Some(apply(&tx, op).and_then(|outcome| {
        tx.commit()?;
        Ok(outcome)
    }))
}

/// Makes a SQLite store's commits durable: `fdatasync` of its write-ahead log (opened when
/// first needed; SQLite creates it with the first write), and a passive checkpoint now and
/// then on a connection of its own.
struct WalSyncer {
    db: PathBuf,
    wal: PathBuf,
    file: Option<std::fs::File>,
    checkpointer: Option<Connection>,
}

impl Syncer for WalSyncer {
    fn sync(&mut self) -> std::io::Result<()> {
        let file = match &self.file {
            Some(file) => file,
            None => self.file.insert(std::fs::File::open(&self.wal)?),
        };
        file.sync_data()
    }

    fn tidy(&mut self) {
        if self.checkpointer.is_none() {
            match connect(&self.db, false) {
                Ok(conn) => self.checkpointer = Some(conn),
                Err(e) => {
                    tracing::warn!(store = %self.db.display(), "cannot checkpoint: {e}");
                    return;
                }
            }
        }
        if let Some(conn) = &self.checkpointer
            && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(store = %self.db.display(), "checkpoint failed: {e}");
        }
    }
}

const UPSERT: &str = "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value";

fn apply(conn: &Connection, op: &Op) -> Result<Outcome> {
    match op {
        Op::Set(key, value) => {
            conn.prepare_cached(UPSERT)?.execute(params![key, value])?;
        }
        Op::Delete(key) => {
            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                .execute([key])?;
        }
        Op::Increment(key, delta) => {
            let current: Option<Vec<u8>> = conn
                .prepare_cached("SELECT value FROM kv WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()?;
            let current = current.as_deref().map(counter).transpose()?.unwrap_or(0);
            let next = current.checked_add(*delta).ok_or_else(|| {
                Error::NotANumber(format!("{current} + {delta} is beyond a 64-bit integer"))
            })?;
            conn.prepare_cached(UPSERT)?
                .execute(params![key, next.to_string().into_bytes()])?;
            return Ok(Outcome::Counter(next));
        }
        Op::SetMany(pairs) => {
            let mut upsert = conn.prepare_cached(UPSERT)?;
            for (key, value) in pairs {
                upsert.execute(params![key, value])?;
            }
        }
        Op::DeleteMany(keys) => {
            let mut delete = conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
            for key in keys {
                delete.execute([key])?;
            }
        }
        Op::Swap { key, expected, new } => {
            let current: Option<Vec<u8>> = conn
                .prepare_cached("SELECT value FROM kv WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()?;
            if current != *expected {
                return Ok(Outcome::Swapped(false));
            }
            conn.prepare_cached(UPSERT)?.execute(params![key, new])?;
            return Ok(Outcome::Swapped(true));
        }
    }
    Ok(Outcome::Done)
}

fn done(outcome: Outcome) -> Result<()> {
    match outcome {
        Outcome::Done => Ok(()),
        _ => Err(Error::Backend("unexpected outcome".into())),
    }
}

#[async_trait::async_trait]
impl Store for Sqlite {
    fn sync_point(&self) -> Option<SyncPoint> {
        self.disk.point()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()
        })
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<()> {
        done(self.write(Op::Set(key.to_string(), value)).await?)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        done(self.write(Op::Delete(key.to_string())).await?)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.read(|conn| {
            conn.prepare_cached("SELECT 1 FROM kv WHERE key = ?1")?
                .query_row([key], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
        })
    }

    async fn list_keys(&self, cursor: Option<u64>, limit: usize) -> Result<Keys> {
        let offset = cursor.unwrap_or(0);
        let limit = limit.max(1);
        let mut keys: Vec<String> = self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT key FROM kv ORDER BY key LIMIT ?1 OFFSET ?2")?;
            let rows = stmt.query_map(
                params![
                    i64::try_from(limit + 1).unwrap_or(i64::MAX),
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
                |row| row.get(0),
            )?;
            rows.collect()
        })?;
        // One more than asked tells whether there is a next page.
        let next = (keys.len() > limit).then(|| offset + limit as u64);
        keys.truncate(limit);
        Ok(Keys { keys, next })
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        match self.write(Op::Increment(key.to_string(), delta)).await? {
            Outcome::Counter(n) => Ok(n),
            _ => Err(Error::Backend("unexpected outcome".into())),
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
            keys.iter()
                .map(|key| stmt.query_row([key], |row| row.get(0)).optional())
                .collect()
        })
    }

    async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        done(self.write(Op::SetMany(pairs)).await?)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        done(self.write(Op::DeleteMany(keys.to_vec())).await?)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool> {
        let op = Op::Swap {
            key: key.to_string(),
            expected: expected.map(<[u8]>::to_vec),
            new,
        };
        match self.write(op).await? {
            Outcome::Swapped(swapped) => Ok(swapped),
            _ => Err(Error::Backend("unexpected outcome".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(&dir.path().join("data/kv.sqlite")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn every_operation() {
        let (_dir, s) = store();
        crate::every_operation(&s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swaps_under_contention() {
        let (_dir, s) = store();
        crate::swaps_under_contention(Arc::new(s)).await;
    }

    /// Concurrent increments from many tasks and two store handles on one file (as two worker
    /// processes would have): none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_increments_are_all_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.sqlite");
        let stores = [
            Arc::new(Sqlite::open(&path).unwrap()),
            Arc::new(Sqlite::open(&path).unwrap()),
        ];
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = stores[i % 2].clone();
                tokio::spawn(async move { store.increment("hits", 1).await.unwrap() })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(stores[0].get("hits").await.unwrap(), Some(b"200".to_vec()));
    }

    /// A failing write in a group fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_failing_write_does_not_undo_the_others() {
        let (_dir, s) = store();
        let s = Arc::new(s);
        s.set("word", b"abc".to_vec()).await.unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    if i == 25 {
                        s.increment("word", 1).await.is_err()
                    } else {
                        s.set(&format!("k{i}"), b"v".to_vec()).await.is_ok()
                    }
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap());
        }
        assert_eq!(s.list_keys(None, 100).await.unwrap().keys.len(), 50);
    }

    /// What was acknowledged is in the file, for a new process to read.
    #[tokio::test]
    async fn acknowledged_writes_are_in_the_file() {
        let (dir, s) = store();
        s.set("kept", b"yes".to_vec()).await.unwrap();
        // What an answer waits for: the syncer's fdatasync of the log.
        if let Some(point) = s.sync_point() {
            point.wait().await.unwrap();
        }
        assert!(s.sync_point().is_none(), "synced, nothing left to wait for");
        // Not dropped (as a killed process would not): a fresh connection reads it.
        let other = Sqlite::open(&dir.path().join("data/kv.sqlite")).unwrap();
        assert_eq!(other.get("kept").await.unwrap(), Some(b"yes".to_vec()));
        std::mem::forget(s);
    }

    /// A write while another process holds the database's write lock waits for it on a
    /// blocking thread (the request's thread is free meanwhile), then succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waits_for_another_process_lock() {
        let (dir, s) = store();
        let other = Connection::open(dir.path().join("data/kv.sqlite")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let s = Arc::new(s);
        let write = tokio::spawn({
            let s = s.clone();
            async move { s.set("k", b"v".to_vec()).await }
        });
        // The runtime keeps running while the write waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!write.is_finished(), "the write did not wait for the lock");
        assert_eq!(s.get("k").await.unwrap(), None);
        other.execute_batch("COMMIT").unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(s.get("k").await.unwrap(), Some(b"v".to_vec()));
    }
}
