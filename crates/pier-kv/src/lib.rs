//! pier's key-value stores, behind one small async trait ([`Store`]), each backend tested on
//! its own: [`Sqlite`], an embedded durable store (the bundled SQLite library, WAL, writes of
//! requests arriving together committed in one transaction). No wasmtime here: the guest-facing
//! `wasi:keyvalue` interfaces live in pier-engine and call these.
//!
//! Counters (`increment`) are stored as decimal text (`"42"`), so a counter reads back as what
//! it is, and a Redis backend's `INCRBY` keeps the same format.

#![deny(missing_docs)]

mod sqlite;

pub use sqlite::Sqlite;

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
    /// Sets `key` to `value`; once this returns, the value is durable (as the backend makes it).
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
}

/// `value` as a counter: decimal text, surrounding spaces allowed.
pub fn counter(value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::NotANumber("the value is not a decimal integer".into()))
}
