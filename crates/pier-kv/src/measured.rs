//! Every store operation counted and timed, by store, backend, operation and result:
//! `pier_kv_operations_total{store,backend,op,result}` (`result` is `ok` or `error`) and
//! `pier_kv_operation_duration_seconds{store,backend,op}`.

use std::sync::Arc;
use std::time::Instant;

use crate::{Keys, Result, Store};

/// Operations by store, backend, operation and result.
pub const OPERATIONS: &str = "pier_kv_operations_total";
/// Time an operation took, by store, backend and operation.
pub const OPERATION_SECONDS: &str = "pier_kv_operation_duration_seconds";

/// A store whose operations are counted and timed.
pub struct Measured {
    inner: Arc<dyn Store>,
    store: Arc<str>,
    backend: &'static str,
}

impl Measured {
    /// `inner`, the store `store` on `backend` (`sqlite`, `redis`), measured.
    pub fn new(inner: Arc<dyn Store>, store: &str, backend: &'static str) -> Measured {
        Measured {
            inner,
            store: store.into(),
            backend,
        }
    }

    async fn measure<T>(
        &self,
        op: &'static str,
        run: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = run.await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(OPERATIONS, "store" => self.store.clone(), "backend" => self.backend, "op" => op, "result" => outcome).increment(1);
        metrics::histogram!(OPERATION_SECONDS, "store" => self.store.clone(), "backend" => self.backend, "op" => op)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait::async_trait]
impl Store for Measured {
    fn sync_point(&self) -> Option<crate::SyncPoint> {
        self.inner.sync_point()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.measure("get", self.inner.get(key)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.measure("set", self.inner.set(key, value)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.measure("delete", self.inner.delete(key)).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.measure("exists", self.inner.exists(key)).await
    }

    async fn list_keys(&self, cursor: Option<u64>, limit: usize) -> Result<Keys> {
        self.measure("list_keys", self.inner.list_keys(cursor, limit))
            .await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        self.measure("increment", self.inner.increment(key, delta))
            .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.measure("get_many", self.inner.get_many(keys)).await
    }

    async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.measure("set_many", self.inner.set_many(pairs)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.measure("delete_many", self.inner.delete_many(keys))
            .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool> {
        self.measure(
            "compare_and_swap",
            self.inner.compare_and_swap(key, expected, new),
        )
        .await
    }
}
