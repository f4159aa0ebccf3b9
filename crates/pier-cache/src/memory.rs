//! The in-memory store: bounded in bytes, each URL's responses weighed by their size, evicted by
//! moka's TinyLFU policy (frequent entries stay; a burst of one-off URLs does not flush them).

use std::sync::Arc;

use crate::entry::Entry;

/// The responses stored for one URL, most recent first (several when they vary).
pub type Variants = Vec<Arc<Entry>>;

/// A store in memory, bounded in bytes.
#[derive(Clone)]
pub struct MemoryStore {
    entries: moka::sync::Cache<String, Arc<Variants>>,
}

impl MemoryStore {
    /// A store of at most `size` bytes; `on_evict` is told the bytes of each URL's entries
    /// evicted for room (not those replaced or removed).
    pub fn new(size: u64, on_evict: impl Fn(u64) + Send + Sync + 'static) -> MemoryStore {
        let entries = moka::sync::Cache::builder()
            .max_capacity(size)
            .weigher(|_key: &String, variants: &Arc<Variants>| {
                let bytes: u64 = variants.iter().map(|e| e.weight()).sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, variants: Arc<Variants>, cause| {
                if cause.was_evicted() {
                    on_evict(variants.iter().map(|e| e.weight()).sum());
                }
            })
            .build();
        MemoryStore { entries }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Variants>> {
        self.entries.get(key)
    }

    pub(crate) fn put(&self, key: String, variants: Arc<Variants>) {
        self.entries.insert(key, variants);
    }

    pub(crate) fn remove(&self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    pub(crate) fn remove_prefix(&self, prefix: &str) -> usize {
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with(prefix))
            .collect();
        for key in &keys {
            self.entries.invalidate(key.as_str());
        }
        keys.len()
    }

    /// Bytes its entries weigh now (eviction runs behind inserts: briefly above the bound).
    pub fn size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}
