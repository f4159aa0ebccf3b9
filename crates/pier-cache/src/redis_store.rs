//! The Redis store, for many pier processes or machines sharing one cache: one value per URL
//! (its variants, [`crate::wire`]) with a time to live of its freshness plus its RFC 5861 windows
//! (plus a while to revalidate it when it has a validator), large bodies in chunks beside it.
//!
//! Redis is a cache's store, never a reason to fail a request: an operation that fails or takes
//! longer than [`TIMEOUT`] is a miss (or an entry not kept), and after a failure the store is
//! left alone for [`RETRY_AFTER`] (every request meanwhile is a miss at once, not a wait), then
//! tried again. The log says when it went away and when it came back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::entry::Entry;
use crate::memory::Variants;
use crate::wire;

/// How long one operation may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// How long the store is left alone after a failure.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long past its windows an entry with a validator is kept, to be revalidated with a `304`
/// rather than fetched again: as long as it was fresh, within these bounds.
const REVALIDATE_FOR: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(24 * 3600));

/// A cache's entries on a Redis server.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    connection: OnceCell<ConnectionManager>,
    /// Until when the store is left alone, after a failure.
    down_until: Mutex<Option<Instant>>,
    on_error: Box<dyn Fn() + Send + Sync>,
    shown: String,
}

impl RedisStore {
    /// A store on the server at `url` (`redis://HOST:PORT[/DB]`, `rediss://` for TLS), its keys
    /// `prefix` + URL; `on_error` is told of each failed operation. Nothing is connected until
    /// the first operation (a server down at start does not stop pier starting).
    pub fn new(
        url: &str,
        prefix: &str,
        on_error: impl Fn() + Send + Sync + 'static,
    ) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let shown = format!("redis {}", client.get_connection_info().addr);
        Ok(RedisStore {
            client,
            prefix: prefix.to_string(),
            connection: OnceCell::new(),
            down_until: Mutex::new(None),
            on_error: Box::new(on_error),
            shown,
        })
    }

    /// The variants stored for `key`; none when Redis has none, or is away.
    pub(crate) async fn get(&self, key: &str) -> Option<Variants> {
        let key = self.key(key);
        let value: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key)).await?;
        let decoded = wire::decode(&value?)?;
        let chunk_keys = decoded.chunk_keys(&key);
        let chunks = if chunk_keys.is_empty() {
            Vec::new()
        } else {
            self.query(redis::cmd("MGET").arg(&chunk_keys)).await?
        };
        decoded.finish(chunks)
    }

    /// Keeps `variants` for `key`, for as long as the longest-lived of them is of use.
    pub(crate) async fn put(&self, key: &str, variants: &Variants) {
        let key = self.key(key);
        let now = SystemTime::now();
        let Some(ttl) = variants.iter().map(|e| keep_for(e, now)).max() else {
            return;
        };
        let millis = ttl.as_millis().max(1) as u64;
        let encoded = match wire::encode(&key, variants, new_id) {
            Ok(encoded) => encoded,
            Err(e) => {
                tracing::debug!(store = %self.shown, "not stored: {e}");
                return;
            }
        };
        let mut pipe = redis::pipe();
        // The chunks first (and a little longer): a value never names chunks not yet there.
        for (chunk, bytes) in &encoded.chunks {
            pipe.cmd("SET")
                .arg(chunk)
                .arg(bytes.as_ref())
                .arg("PX")
                .arg(millis + 1000)
                .ignore();
        }
        pipe.cmd("SET")
            .arg(&key)
            .arg(encoded.value)
            .arg("PX")
            .arg(millis)
            .ignore();
        let _: Option<()> = self.query_pipe(&pipe).await;
    }

    /// Forgets `key`; whether anything was stored. (Its large bodies' chunks, no longer named,
    /// go when their time to live ends.)
    pub(crate) async fn remove(&self, key: &str) -> bool {
        let n: Option<u64> = self.query(redis::cmd("DEL").arg(self.key(key))).await;
        n.unwrap_or(0) > 0
    }

    /// Forgets every key starting with `prefix` (paged with `SCAN`, never `KEYS`); how many URLs.
    pub(crate) async fn remove_prefix(&self, prefix: &str) -> usize {
        let pattern = format!("{}*", glob_escaped(&self.key(prefix)));
        let mut cursor = 0u64;
        let mut removed = 0;
        loop {
            let page: Option<(u64, Vec<String>)> = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await;
            let Some((next, keys)) = page else {
                return removed;
            };
            if !keys.is_empty() {
                removed += keys.iter().filter(|k| !k.contains(' ')).count();
                let _: Option<u64> = self.query(redis::cmd("DEL").arg(&keys)).await;
            }
            if next == 0 {
                return removed;
            }
            cursor = next;
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.connection
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(TIMEOUT)
                    .set_response_timeout(TIMEOUT)
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        self.bounded(async { cmd.query_async(&mut self.connection().await?).await })
            .await
    }

    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Option<T> {
        self.bounded(async { pipe.query_async(&mut self.connection().await?).await })
            .await
    }

    /// `attempt`'s result, unless the store is away, or the attempt fails or takes longer than
    /// [`TIMEOUT`]: then `None`, and the store is left alone for a while.
    async fn bounded<T>(
        &self,
        attempt: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Option<T> {
        let was_down = {
            let down = self.down_until.lock().unwrap();
            match *down {
                Some(until) if Instant::now() < until => return None,
                other => other.is_some(),
            }
        };
        let error = match tokio::time::timeout(TIMEOUT, attempt).await {
            Ok(Ok(value)) => {
                if was_down {
                    *self.down_until.lock().unwrap() = None;
                    tracing::info!(store = %self.shown, "the cache's store answers again");
                }
                return Some(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}ms", TIMEOUT.as_millis()),
        };
        (self.on_error)();
        *self.down_until.lock().unwrap() = Some(Instant::now() + RETRY_AFTER);
        if !was_down {
            tracing::warn!(
                store = %self.shown,
                "the cache's store failed ({error}): requests bypass the cache until it answers"
            );
        }
        None
    }
}

/// How long `entry` is of use at `now`: until its stale windows close, and, when it has a
/// validator, a while longer to be revalidated.
fn keep_for(entry: &Entry, now: SystemTime) -> Duration {
    let fresh = entry.stale_at.duration_since(now).unwrap_or_default();
    let windows = entry
        .windows
        .while_revalidate
        .max(entry.windows.if_error)
        .unwrap_or_default();
    let validated = entry.headers.contains_key(http::header::ETAG)
        || entry.headers.contains_key(http::header::LAST_MODIFIED);
    let revalidate = if validated {
        let lifetime = entry.policy.time_to_live(now) + entry.policy.age(now);
        lifetime.clamp(REVALIDATE_FOR.0, REVALIDATE_FOR.1)
    } else {
        Duration::ZERO
    };
    fresh + windows + revalidate
}

/// A name no other body stored by any process shares.
fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n:x}", std::process::id())
}

/// `text` with the glob characters of `SCAN ... MATCH` escaped.
fn glob_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;

    use super::*;

    fn variants(body: Bytes, cache_control: &str) -> Variants {
        vec![crate::entry::sample(
            &[],
            &[("cache-control", cache_control)],
            body,
        )]
    }

    /// Entries go in and come back (a large one from its chunks), expire with their freshness,
    /// and are removed one by one or by prefix; with the server gone every operation is a
    /// quick nothing, counted, and the store is used again once the server is back.
    #[tokio::test]
    async fn entries_round_trip_expire_and_the_store_survives_the_server() {
        let Some(mut server) = pier_testkit::RedisServer::start() else {
            return;
        };
        let errors = Arc::new(AtomicUsize::new(0));
        let counted = errors.clone();
        let store = RedisStore::new(&server.url(), "t:", move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        let large = Bytes::from(
            (0..wire::CHUNK * 2 + 3)
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        store
            .put("http://h/large", &variants(large.clone(), "max-age=60"))
            .await;
        store
            .put(
                "http://h/small",
                &variants(Bytes::from_static(b"s"), "max-age=60"),
            )
            .await;
        store
            .put(
                "http://h/brief",
                &variants(Bytes::from_static(b"b"), "max-age=1"),
            )
            .await;
        assert_eq!(store.get("http://h/large").await.unwrap()[0].body, large);
        assert_eq!(store.get("http://h/small").await.unwrap()[0].body, "s");
        assert!(store.get("http://h/none").await.is_none());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(store.get("http://h/brief").await.is_none(), "expired");
        assert!(store.remove("http://h/small").await);
        assert!(!store.remove("http://h/small").await);
        assert_eq!(store.remove_prefix("http://h/").await, 1, "the large one");
        assert!(store.get("http://h/large").await.is_none());
        assert_eq!(errors.load(Ordering::Relaxed), 0);

        store
            .put(
                "http://h/kept",
                &variants(Bytes::from_static(b"k"), "max-age=60"),
            )
            .await;
        server.kill();
        let started = Instant::now();
        assert!(store.get("http://h/kept").await.is_none());
        assert!(store.get("http://h/kept").await.is_none());
        assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
        assert_eq!(errors.load(Ordering::Relaxed), 1, "then left alone");
        let _back = pier_testkit::RedisServer::start_on(server.port).unwrap();
        tokio::time::sleep(RETRY_AFTER).await;
        let mut stored = false;
        for _ in 0..50 {
            store
                .put(
                    "http://h/again",
                    &variants(Bytes::from_static(b"a"), "max-age=60"),
                )
                .await;
            if store.get("http://h/again").await.is_some() {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stored, "used again once the server is back");
    }

    #[test]
    fn glob_characters_in_a_url_are_matched_as_themselves() {
        assert_eq!(
            glob_escaped("http://h/a?b=[1]*"),
            "http://h/a\\?b=\\[1\\]\\*"
        );
    }
}
