//! `wasi:keyvalue`, in both versions guests import, side by side over the same stores:
//! `0.2.0-draft` (what wasmtime and wit-bindgen users import) and `0.2.0-draft2` (what the Spin
//! SDKs, and componentize-py/-js apps written for Spin, import): `store` (open, get, set, delete,
//! exists, list-keys), `atomics` (increment; in draft2 also compare-and-swap) and `batch`.
//!
//! A component opens only the stores granted to it, by name; any other name is `access-denied`,
//! and the log says which manifest key would grant it. Keys and values have size limits, batch
//! operations a count limit, and keys are listed in pages, so a guest cannot make the host hold
//! more than those limits allow; going past one is an `other(..)` error to the guest, never a
//! trap. A backend failing (a database error, Redis down) is `other(..)` too.
//!
//! Counters are decimal text. In draft2, `cas.current` reads the value that `swap` then requires
//! to be unchanged (the comparison is on the value); a `swap` that finds it changed fails with
//! a new `cas` holding the value now there, as Spin's does.

use std::collections::BTreeMap;
use std::sync::Arc;

use pier_kv::{Store, Unsynced};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::HostState;

mod draft {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
    });
}

mod draft2 {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

/// What a component may do with key-value stores.
#[derive(Clone)]
pub struct KeyValueLimits {
    /// Longest key, in bytes.
    pub max_key: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
    /// Most keys in one batch operation.
    pub max_batch: usize,
    /// Keys in one page of `list-keys`.
    pub page: usize,
    /// Bytes of values one `get-many` may bring back.
    pub max_batch_bytes: usize,
}

impl Default for KeyValueLimits {
    fn default() -> Self {
        KeyValueLimits {
            max_key: 256,
            max_value: 1 << 20,
            max_batch: 1000,
            page: 1000,
            max_batch_bytes: 16 << 20,
        }
    }
}

/// The stores granted to one component, by the name it opens them with, and (in one store of
/// wasmtime's, one request) the stores opened so far.
#[derive(Clone, Default)]
pub struct KeyValueState {
    granted: Arc<Granted>,
    opened: Vec<Arc<dyn Store>>,
}

#[derive(Default)]
struct Granted {
    component: Arc<str>,
    stores: BTreeMap<String, Arc<dyn Store>>,
    limits: KeyValueLimits,
}

impl KeyValueState {
    /// `component` may open `stores`, within `limits`.
    pub fn new(
        component: &str,
        stores: BTreeMap<String, Arc<dyn Store>>,
        limits: KeyValueLimits,
    ) -> KeyValueState {
        KeyValueState {
            granted: Arc::new(Granted {
                component: component.into(),
                stores,
                limits,
            }),
            opened: Vec::new(),
        }
    }

    /// What the answer must wait for: the writes of the stores opened so far that are not on
    /// disk yet (those of other requests committed before included; see [`pier_kv::SyncPoint`]).
    pub fn unsynced(&self) -> Unsynced {
        let mut unsynced = Unsynced::default();
        for store in &self.opened {
            unsynced.add(store.sync_point());
        }
        unsynced
    }
}

impl std::fmt::Debug for KeyValueState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.granted.stores.keys()).finish()
    }
}

/// An open store: the guest's `bucket`.
pub struct Bucket {
    store: Arc<dyn Store>,
}

/// A compare-and-swap in progress (draft2): the key, and the value `current` read.
pub struct Cas {
    store: Arc<dyn Store>,
    key: String,
    seen: Option<Vec<u8>>,
}

/// What the host functions see: the store's resource table, the component's grants and the
/// stores opened.
pub(crate) struct View<'a> {
    table: &'a mut ResourceTable,
    granted: &'a Granted,
    opened: &'a mut Vec<Arc<dyn Store>>,
}

impl KeyValueState {
    pub(crate) fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> View<'a> {
        View {
            table,
            granted: &self.granted,
            opened: &mut self.opened,
        }
    }
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = View<'a>;
}

/// Links both versions of `wasi:keyvalue`.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    draft::wasi::keyvalue::store::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue)?;
    draft::wasi::keyvalue::atomics::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue)?;
    draft::wasi::keyvalue::batch::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue)?;
    draft2::wasi::keyvalue::store::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue)?;
    draft2::wasi::keyvalue::atomics::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue)?;
    draft2::wasi::keyvalue::batch::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue)?;
    Ok(())
}

/// Why an operation was refused or failed, before it is put in a version's `error`.
enum Refusal {
    AccessDenied,
    Other(String),
}

impl From<pier_kv::Error> for Refusal {
    fn from(e: pier_kv::Error) -> Refusal {
        Refusal::Other(e.to_string())
    }
}

impl View<'_> {
    fn open(&mut self, name: &str) -> wasmtime::Result<Result<Resource<Bucket>, Refusal>> {
        let Some(store) = self.granted.stores.get(name) else {
            tracing::warn!(
                component = &*self.granted.component,
                store = name,
                "key-value store {name:?} is not granted: access denied (grant it with key_value_stores = [{name:?}] in [component.{}], or --kv {name})",
                self.granted.component
            );
            return Ok(Err(Refusal::AccessDenied));
        };
        if !self.opened.iter().any(|o| Arc::ptr_eq(o, store)) {
            self.opened.push(store.clone());
        }
        let bucket = self.table.push(Bucket {
            store: store.clone(),
        })?;
        Ok(Ok(bucket))
    }

    fn store(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<Arc<dyn Store>> {
        Ok(self.table.get(bucket)?.store.clone())
    }

    fn check_key(&self, key: &str) -> Result<(), Refusal> {
        let max = self.granted.limits.max_key;
        if key.len() > max {
            return Err(Refusal::Other(format!(
                "a key of {} bytes is longer than the limit of {max} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Refusal> {
        let max = self.granted.limits.max_value;
        if value.len() > max {
            return Err(Refusal::Other(format!(
                "a value of {} bytes is larger than the limit of {max} bytes",
                value.len()
            )));
        }
        Ok(())
    }

    fn check_batch(&self, n: usize) -> Result<(), Refusal> {
        let max = self.granted.limits.max_batch;
        if n > max {
            return Err(Refusal::Other(format!(
                "a batch of {n} keys is more than the limit of {max}"
            )));
        }
        Ok(())
    }

    async fn get(&mut self, bucket: &Resource<Bucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let store = self.store(bucket)?;
        Ok(match self.check_key(&key) {
            Ok(()) => store.get(&key).await.map_err(Refusal::from),
            Err(e) => Err(e),
        })
    }

    async fn set(&mut self, bucket: &Resource<Bucket>, key: String, value: Vec<u8>) -> Answer<()> {
        let store = self.store(bucket)?;
        if let Err(e) = self.check_key(&key).and(self.check_value(&value)) {
            return Ok(Err(e));
        }
        Ok(store.set(&key, value).await.map_err(Refusal::from))
    }

    async fn delete(&mut self, bucket: &Resource<Bucket>, key: String) -> Answer<()> {
        let store = self.store(bucket)?;
        if let Err(e) = self.check_key(&key) {
            return Ok(Err(e));
        }
        Ok(store.delete(&key).await.map_err(Refusal::from))
    }

    async fn exists(&mut self, bucket: &Resource<Bucket>, key: String) -> Answer<bool> {
        let store = self.store(bucket)?;
        if let Err(e) = self.check_key(&key) {
            return Ok(Err(e));
        }
        Ok(store.exists(&key).await.map_err(Refusal::from))
    }

    async fn list_keys(
        &mut self,
        bucket: &Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Answer<pier_kv::Keys> {
        let store = self.store(bucket)?;
        let page = self.granted.limits.page;
        Ok(store.list_keys(cursor, page).await.map_err(Refusal::from))
    }

    async fn increment(
        &mut self,
        bucket: &Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Answer<i64> {
        let store = self.store(bucket)?;
        if let Err(e) = self.check_key(&key) {
            return Ok(Err(e));
        }
        Ok(store.increment(&key, delta).await.map_err(Refusal::from))
    }

    async fn get_many(
        &mut self,
        bucket: &Resource<Bucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<(String, Option<Vec<u8>>)>> {
        let store = self.store(bucket)?;
        if let Err(e) = self
            .check_batch(keys.len())
            .and(keys.iter().try_for_each(|k| self.check_key(k)))
        {
            return Ok(Err(e));
        }
        // In chunks, so a batch of large values is refused before the host holds all of them.
        let budget = self.granted.limits.max_batch_bytes;
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for chunk in keys.chunks(BATCH_CHUNK) {
            match store.get_many(chunk).await {
                Ok(got) => {
                    bytes += got.iter().flatten().map(Vec::len).sum::<usize>();
                    if bytes > budget {
                        return Ok(Err(Refusal::Other(format!(
                            "the values asked for come to more than {budget} bytes: ask for fewer keys at once"
                        ))));
                    }
                    values.extend(got);
                }
                Err(e) => return Ok(Err(e.into())),
            }
        }
        Ok(Ok(keys.into_iter().zip(values).collect()))
    }

    async fn set_many(
        &mut self,
        bucket: &Resource<Bucket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Answer<()> {
        let store = self.store(bucket)?;
        let checked = self.check_batch(pairs.len()).and(
            pairs
                .iter()
                .try_for_each(|(k, v)| self.check_key(k).and(self.check_value(v))),
        );
        if let Err(e) = checked {
            return Ok(Err(e));
        }
        Ok(store.set_many(pairs).await.map_err(Refusal::from))
    }

    async fn delete_many(&mut self, bucket: &Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
        let store = self.store(bucket)?;
        if let Err(e) = self
            .check_batch(keys.len())
            .and(keys.iter().try_for_each(|k| self.check_key(k)))
        {
            return Ok(Err(e));
        }
        Ok(store.delete_many(&keys).await.map_err(Refusal::from))
    }
}

/// Keys read at once in a `get-many`.
const BATCH_CHUNK: usize = 16;

/// A host function's result: a trap (a bad handle), or the operation's outcome.
type Answer<T> = wasmtime::Result<Result<T, Refusal>>;

/// What both versions' bindings share, written once: their `error` is the same variant, and
/// `open` the same function (expanded inside `v1` and `v2`, where `store` is that version's).
macro_rules! shared {
    () => {
        fn error(r: Refusal) -> store::Error {
            match r {
                Refusal::AccessDenied => store::Error::AccessDenied,
                Refusal::Other(m) => store::Error::Other(m),
            }
        }

        impl store::Host for View<'_> {
            async fn open(
                &mut self,
                identifier: String,
            ) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
                Ok(View::open(self, &identifier)?.map_err(error))
            }
        }
    };
}

/// The `bucket` methods both versions share (`list-keys` differs in its cursor).
macro_rules! bucket_methods {
    () => {
        async fn get(
            &mut self,
            b: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
            Ok(View::get(self, &b, key).await?.map_err(error))
        }

        async fn set(
            &mut self,
            b: Resource<Bucket>,
            key: String,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), store::Error>> {
            Ok(View::set(self, &b, key, value).await?.map_err(error))
        }

        async fn delete(
            &mut self,
            b: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<(), store::Error>> {
            Ok(View::delete(self, &b, key).await?.map_err(error))
        }

        async fn exists(
            &mut self,
            b: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<bool, store::Error>> {
            Ok(View::exists(self, &b, key).await?.map_err(error))
        }

        async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
            self.table.delete(b)?;
            Ok(())
        }
    };
}

/// The batch writes both versions share (`get-many` differs in its result).
macro_rules! batch_writes {
    () => {
        async fn set_many(
            &mut self,
            b: Resource<Bucket>,
            pairs: Vec<(String, Vec<u8>)>,
        ) -> wasmtime::Result<Result<(), store::Error>> {
            Ok(View::set_many(self, &b, pairs).await?.map_err(error))
        }

        async fn delete_many(
            &mut self,
            b: Resource<Bucket>,
            keys: Vec<String>,
        ) -> wasmtime::Result<Result<(), store::Error>> {
            Ok(View::delete_many(self, &b, keys).await?.map_err(error))
        }
    };
}

mod v1 {
    //! `wasi:keyvalue@0.2.0-draft`.
    use super::draft::wasi::keyvalue::{atomics, batch, store};
    use super::*;

    shared!();

    impl store::HostBucket for View<'_> {
        bucket_methods!();

        async fn list_keys(
            &mut self,
            b: Resource<Bucket>,
            cursor: Option<u64>,
        ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
            Ok(View::list_keys(self, &b, cursor)
                .await?
                .map(|page| store::KeyResponse {
                    keys: page.keys,
                    cursor: page.next,
                })
                .map_err(error))
        }
    }

    impl atomics::Host for View<'_> {
        async fn increment(
            &mut self,
            b: Resource<Bucket>,
            key: String,
            delta: u64,
        ) -> wasmtime::Result<Result<u64, store::Error>> {
            let Ok(delta) = i64::try_from(delta) else {
                return Ok(Err(store::Error::Other(format!(
                    "a delta of {delta} is beyond a 64-bit signed integer"
                ))));
            };
            Ok(match View::increment(self, &b, key, delta).await? {
                Ok(n) => u64::try_from(n)
                    .map_err(|_| store::Error::Other(format!("the counter is {n}, below zero"))),
                Err(r) => Err(error(r)),
            })
        }
    }

    impl batch::Host for View<'_> {
        batch_writes!();
        async fn get_many(
            &mut self,
            b: Resource<Bucket>,
            keys: Vec<String>,
        ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
            Ok(View::get_many(self, &b, keys)
                .await?
                .map(|pairs| pairs.into_iter().map(|(k, v)| v.map(|v| (k, v))).collect())
                .map_err(error))
        }
    }
}

mod v2 {
    //! `wasi:keyvalue@0.2.0-draft2`.
    use super::draft2::wasi::keyvalue::{atomics, batch, store};
    use super::*;

    shared!();

    impl store::HostBucket for View<'_> {
        bucket_methods!();

        async fn list_keys(
            &mut self,
            b: Resource<Bucket>,
            cursor: Option<String>,
        ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
            let cursor = match cursor.map(|c| c.parse::<u64>()) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(_)) => {
                    return Ok(Err(store::Error::Other(
                        "not a cursor list-keys gave".into(),
                    )));
                }
            };
            Ok(View::list_keys(self, &b, cursor)
                .await?
                .map(|page| store::KeyResponse {
                    keys: page.keys,
                    cursor: page.next.map(|n| n.to_string()),
                })
                .map_err(error))
        }
    }

    impl atomics::Host for View<'_> {
        async fn increment(
            &mut self,
            b: Resource<Bucket>,
            key: String,
            delta: i64,
        ) -> wasmtime::Result<Result<i64, store::Error>> {
            Ok(View::increment(self, &b, key, delta).await?.map_err(error))
        }

        async fn swap(
            &mut self,
            cas: Resource<Cas>,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), atomics::CasError>> {
            let Cas { store, key, seen } = self.table.delete(cas)?;
            if let Err(e) = self.check_value(&value) {
                return Ok(Err(atomics::CasError::StoreError(error(e))));
            }
            match store.compare_and_swap(&key, seen.as_deref(), value).await {
                Ok(true) => Ok(Ok(())),
                Ok(false) => {
                    // Changed since `current`: a new cas holding what is there now.
                    let seen = match store.get(&key).await {
                        Ok(seen) => seen,
                        Err(e) => return Ok(Err(atomics::CasError::StoreError(error(e.into())))),
                    };
                    let fresh = self.table.push(Cas { store, key, seen })?;
                    Ok(Err(atomics::CasError::CasFailed(fresh)))
                }
                Err(e) => Ok(Err(atomics::CasError::StoreError(error(e.into())))),
            }
        }
    }

    impl atomics::HostCas for View<'_> {
        async fn new(
            &mut self,
            b: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
            let store = self.store(&b)?;
            if let Err(e) = self.check_key(&key) {
                return Ok(Err(error(e)));
            }
            // What `current` reads is what the swap compares with: read it now, so a guest
            // that swaps without asking still swaps only over the value there at `new`.
            let seen = match store.get(&key).await {
                Ok(seen) => seen,
                Err(e) => return Ok(Err(error(e.into()))),
            };
            Ok(Ok(self.table.push(Cas { store, key, seen })?))
        }

        async fn current(
            &mut self,
            cas: Resource<Cas>,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
            // The value now, which the swap then requires to be unchanged.
            let (store, key) = {
                let cas = self.table.get(&cas)?;
                (cas.store.clone(), cas.key.clone())
            };
            let seen = match store.get(&key).await {
                Ok(seen) => seen,
                Err(e) => return Ok(Err(error(e.into()))),
            };
            self.table.get_mut(&cas)?.seen = seen.clone();
            Ok(Ok(seen))
        }

        async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
            self.table.delete(cas)?;
            Ok(())
        }
    }

    impl batch::Host for View<'_> {
        batch_writes!();
        async fn get_many(
            &mut self,
            b: Resource<Bucket>,
            keys: Vec<String>,
        ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
            Ok(View::get_many(self, &b, keys).await?.map_err(error))
        }
    }
}
