//! A store on a Redis server, for many pier processes or machines sharing state: the `redis`
//! crate on tokio, one connection manager per store and serving thread (it multiplexes that
//! thread's requests on one connection, pipelining them with `TCP_NODELAY`, and reconnects
//! after a failure). `rediss://` URLs use TLS.
//!
//! Counters use `INCRBY`; compare-and-swap is one Lua script (atomic on the server);
//! `list-keys` pages with `SCAN` (never `KEYS`, which blocks the server); batches are `MGET`,
//! `MSET` and one `DEL`. Every key is stored under the store's prefix. An operation that does
//! not complete within the timeout fails (Redis down, or a network partition): the guest gets
//! an error at once instead of a hang, and the next operation tries to connect again.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::{Error, Keys, Result, Store};

/// How long one operation may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Compare-and-swap: KEYS[1]; ARGV[1] "1" if a value is expected, ARGV[2] that value,
/// ARGV[3] the new value. 1 if swapped.
const SWAP: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"#;

/// A store on a Redis server.
pub struct Redis {
    client: redis::Client,
    prefix: String,
    /// Connected on first use (a server down at start does not stop pier starting), one per
    /// serving thread ([`pier_threads`]): a connection's replies are read by a task of the
    /// runtime that made it, which wakes the request waiting for them.
    connections: Box<[OnceCell<ConnectionManager>]>,
    swap: redis::Script,
    shown: String,
}

impl Redis {
    /// A store on the server at `url` (`redis://HOST:PORT[/DB]`, `rediss://` for TLS), its
    /// keys under `prefix`. Nothing is connected until the first operation.
    pub fn new(url: &str, prefix: &str) -> Result<Redis> {
        let client = redis::Client::open(url).map_err(|e| Error::Backend(format!("{e}")))?;
        let info = client.get_connection_info();
        let shown = format!("redis {}", info.addr);
        Ok(Redis {
            client,
            prefix: prefix.to_string(),
            connections: (0..pier_threads::slots())
                .map(|_| OnceCell::new())
                .collect(),
            swap: redis::Script::new(SWAP),
            shown,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager> {
        self.connections[pier_threads::slot(self.connections.len())]
            .get_or_try_init(|| {
                // Commands from requests that wait together go out at once, pipelined on the
                // one connection, instead of each waiting (Nagle) for the one before it to be
                // answered: what every Redis client does.
                let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(TIMEOUT)
                    .set_response_timeout(TIMEOUT)
                    .set_number_of_retries(1)
                    .set_tcp_settings(tcp);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: redis::RedisError) -> Error {
        if e.kind() == redis::ErrorKind::TypeError || e.to_string().contains("not an integer") {
            return Error::NotANumber(format!("{}: {e}", self.shown));
        }
        Error::Backend(format!("{}: {e}", self.shown))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `cmd`, within the timeout. An idempotent command (one that does the same run
    /// twice) that fails because the connection broke (Redis restarted, a network blip) is sent
    /// once more on the connection the manager has made again meanwhile, so the first request
    /// after Redis comes back succeeds. Others (`INCRBY`, compare-and-swap) are never sent
    /// twice: one that may have been applied fails instead.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        idempotent: bool,
    ) -> Result<T> {
        self.bounded(async {
            let mut connection = self.connection().await?;
            match cmd.query_async(&mut connection).await {
                Err(e) if idempotent && broken(&e) => cmd.query_async(&mut connection).await,
                done => done,
            }
            .map_err(|e| self.error(e))
        })
        .await
    }

    async fn bounded<T>(&self, attempt: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::Backend(format!(
                "{}: no answer within {}s",
                self.shown,
                TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Whether `e` says the connection broke, rather than the command failed.
fn broken(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal()
}

/// `prefix` with the glob characters of `SCAN ... MATCH` escaped, then `*`.
fn pattern(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

#[async_trait::async_trait]
impl Store for Redis {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.query(redis::cmd("GET").arg(self.key(key)), true).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.query(redis::cmd("SET").arg(self.key(key)).arg(value), true)
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.query(redis::cmd("DEL").arg(self.key(key)), true).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.query(redis::cmd("EXISTS").arg(self.key(key)), true)
            .await
    }

    async fn list_keys(&self, cursor: Option<u64>, limit: usize) -> Result<Keys> {
        let (next, keys): (u64, Vec<String>) = self
            .query(
                redis::cmd("SCAN")
                    .arg(cursor.unwrap_or(0))
                    .arg("MATCH")
                    .arg(pattern(&self.prefix))
                    .arg("COUNT")
                    .arg(limit.max(1)),
                true,
            )
            .await?;
        let keys = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .collect();
        Ok(Keys {
            keys,
            next: (next != 0).then_some(next),
        })
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        self.query(redis::cmd("INCRBY").arg(self.key(key)).arg(delta), false)
            .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.query(redis::cmd("MGET").arg(keys), true).await
    }

    async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("MSET");
        for (k, v) in pairs {
            cmd.arg(self.key(&k)).arg(v);
        }
        self.query(&cmd, true).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.query(redis::cmd("DEL").arg(keys), true).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool> {
        let (has, expected) = match expected {
            Some(v) => ("1", v),
            None => ("0", &[][..]),
        };
        let mut invocation = self.swap.key(self.key(key));
        invocation.arg(has).arg(expected).arg(new);
        let swapped: i64 = self
            .bounded(async {
                let mut connection = self.connection().await?;
                // Never sent twice: a first run that did swap would make the second fail.
                invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|e| self.error(e))
            })
            .await?;
        Ok(swapped == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_operation() {
        let Some(server) = pier_testkit::RedisServer::start() else {
            return;
        };
        let store = Redis::new(&server.url(), "app:").unwrap();
        crate::every_operation(&store).await;
        // Under its prefix only: another prefix on the same server sees none of it.
        let other = Redis::new(&server.url(), "other:").unwrap();
        assert_eq!(other.list_keys(None, 100).await.unwrap().keys.len(), 0);
        assert_eq!(other.get("p00").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swaps_under_contention() {
        let Some(server) = pier_testkit::RedisServer::start() else {
            return;
        };
        let store = Redis::new(&server.url(), "c:").unwrap();
        crate::swaps_under_contention(std::sync::Arc::new(store)).await;
    }

    /// Redis down: an error within the timeout, never a hang; back: served again.
    #[tokio::test]
    async fn a_server_down_is_an_error_then_recovers() {
        let Some(mut server) = pier_testkit::RedisServer::start() else {
            return;
        };
        let store = Redis::new(&server.url(), "").unwrap();
        store.set("a", b"1".to_vec()).await.unwrap();
        server.kill();
        let started = std::time::Instant::now();
        let e = store.get("a").await.unwrap_err();
        assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
        assert!(e.to_string().starts_with("redis 127.0.0.1:"), "{e}");
        let server = pier_testkit::RedisServer::start_on(server.port).unwrap();
        let mut answered = None;
        for _ in 0..50 {
            if let Ok(v) = store.get("a").await {
                answered = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A fresh server: the value is gone, but the store answers.
        assert_eq!(answered, Some(None));
        drop(server);
    }

    #[test]
    fn scan_patterns_match_the_prefix_only() {
        assert_eq!(pattern("app:"), "app:*");
        assert_eq!(pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
        assert_eq!(pattern(""), "*");
    }
}
