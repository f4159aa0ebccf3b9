//! pier's key-value stores, behind one small async trait ([`Store`]), each backend tested on
//! its own: [`Sqlite`], an embedded durable store (the bundled SQLite library, WAL, each write
//! committed on the caller's thread, the commits of requests arriving together put on the disk
//! by one `fdatasync`, which answers wait for: [`SyncPoint`]), and [`Redis`], for many
//! processes or machines sharing state. No wasmtime here: the guest-facing `wasi:keyvalue`
//! interfaces live in pier-engine and call these.
//!
//! Counters (`increment`) are stored as decimal text (`"42"`), so a counter reads back as what
//! it is, and a Redis backend's `INCRBY` keeps the same format.

#![deny(missing_docs)]

mod measured;
mod redis;
mod sqlite;
mod sync;

pub use measured::{Measured, OPERATION_SECONDS, OPERATIONS};
pub use redis::Redis;
pub use sqlite::Sqlite;
pub use sync::{SyncPoint, Unsynced};

/// What a store operation can fail with (the guest sees `other(...)` with the message).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend failed (I/O, the database, the network).
    #[error("{0}")]
    Backend(String),
    /// `increment` on a value that is not a decimal integer, or past the integer's range.
    #[error("{0}")]
    NotANumber(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Backend(format!("sqlite: {e}"))
    }
}

/// A result of a store operation.
pub type Result<T> = std::result::Result<T, Error>;

/// A page of keys, and where the next page starts (`None`: there is no more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The keys of this page.
    pub keys: Vec<String>,
    /// The cursor of the next page: an opaque decimal number.
    pub next: Option<u64>,
}

/// One key-value store: a flat map from string keys to byte values.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of `key`, if it has one.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Sets `key` to `value`; once this returns, the value outlives pier's process (and is on
    /// disk as the backend makes it: see [`Store::sync_point`]).
    async fn set(&self, key: &str, value: Vec<u8>) -> Result<()>;
    /// Removes `key` (nothing if it has no value).
    async fn delete(&self, key: &str) -> Result<()>;
    /// Whether `key` has a value.
    async fn exists(&self, key: &str) -> Result<bool>;
    /// Up to `limit` keys from `cursor` (`None`: the start), and the cursor after them.
    async fn list_keys(&self, cursor: Option<u64>, limit: usize) -> Result<Keys>;
    /// Adds `delta` to the counter at `key` (0 if it has no value), atomically; the new value.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64>;
    /// The values of `keys`, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;
    /// Sets every pair, all or none.
    async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()>;
    /// Removes every key, all or none.
    async fn delete_many(&self, keys: &[String]) -> Result<()>;
    /// Sets `key` to `new` if its value is still `expected` (`None`: it has none); whether it did.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool>;

    /// What an answer that used this store must wait for before it is sent: the point covering
    /// every write it has committed so far, when they are not all on disk yet. `None` for a
    /// backend that makes a write as durable as it ever will before the call returns.
    fn sync_point(&self) -> Option<SyncPoint> {
        None
    }
}

/// `value` as a counter: decimal text, surrounding spaces allowed.
pub fn counter(value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::NotANumber("the value is not a decimal integer".into()))
}

/// What every backend must do, run on each (`sqlite`'s and `redis`'s tests).
#[cfg(test)]
pub(crate) async fn every_operation(s: &dyn Store) {
    assert_eq!(s.get("a").await.unwrap(), None);
    s.set("a", b"1".to_vec()).await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), Some(b"1".to_vec()));
    assert!(s.exists("a").await.unwrap());
    s.delete("a").await.unwrap();
    assert!(!s.exists("a").await.unwrap());
    s.delete("a").await.unwrap();

    assert_eq!(s.increment("n", 5).await.unwrap(), 5);
    assert_eq!(s.increment("n", -7).await.unwrap(), -2);
    assert_eq!(s.get("n").await.unwrap(), Some(b"-2".to_vec()));
    s.set("text", b"abc".to_vec()).await.unwrap();
    assert!(matches!(
        s.increment("text", 1).await,
        Err(Error::NotANumber(_))
    ));
    s.set("max", i64::MAX.to_string().into_bytes())
        .await
        .unwrap();
    assert!(s.increment("max", 1).await.is_err(), "overflow is an error");

    s.set_many(vec![
        ("b".into(), b"2".to_vec()),
        ("c".into(), b"3".to_vec()),
    ])
    .await
    .unwrap();
    let keys: Vec<String> = ["b", "c", "zz"].map(String::from).to_vec();
    assert_eq!(
        s.get_many(&keys).await.unwrap(),
        [Some(b"2".to_vec()), Some(b"3".to_vec()), None]
    );
    s.delete_many(&keys).await.unwrap();
    assert_eq!(s.get_many(&keys).await.unwrap(), [None, None, None]);
    assert_eq!(
        s.get_many(&[]).await.unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );

    assert!(s.compare_and_swap("k", None, b"x".to_vec()).await.unwrap());
    assert!(!s.compare_and_swap("k", None, b"y".to_vec()).await.unwrap());
    assert!(
        !s.compare_and_swap("k", Some(b"w"), b"y".to_vec())
            .await
            .unwrap()
    );
    assert!(
        s.compare_and_swap("k", Some(b"x"), b"z".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(s.get("k").await.unwrap(), Some(b"z".to_vec()));

    // Binary values come back exactly.
    let bytes: Vec<u8> = (0..=255).collect();
    s.set("bin", bytes.clone()).await.unwrap();
    assert_eq!(s.get("bin").await.unwrap(), Some(bytes));

    // Keys, in pages, all of them once.
    s.delete_many(&["bin", "k", "max", "n", "text"].map(String::from))
        .await
        .unwrap();
    let pairs = (0..25).map(|i| (format!("p{i:02}"), vec![])).collect();
    s.set_many(pairs).await.unwrap();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list_keys(cursor, 10).await.unwrap();
        assert!(page.keys.len() <= 20, "a page of about the limit");
        all.extend(page.keys);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 25, "{all:?}");
    assert_eq!(all[0], "p00");
}

/// Writers racing with compare-and-swap, each retrying until its swap holds: every writer's
/// increment is in the final value, none lost, none twice.
#[cfg(test)]
pub(crate) async fn swaps_under_contention(s: std::sync::Arc<dyn Store>) {
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                for _ in 0..25 {
                    loop {
                        let seen = s.get("cas").await.unwrap();
                        let n = seen.as_deref().map_or(0, |v| counter(v).unwrap());
                        let next = (n + 1).to_string().into_bytes();
                        if s.compare_and_swap("cas", seen.as_deref(), next)
                            .await
                            .unwrap()
                        {
                            break;
                        }
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for w in writers {
        failed += w.await.unwrap();
    }
    assert_eq!(
        s.get("cas").await.unwrap(),
        Some(b"200".to_vec()),
        "{failed} swaps retried"
    );
}
