//! pier's shared HTTP cache (RFC 9111, with RFC 5861's `stale-while-revalidate` and
//! `stale-if-error`): what may be stored and for how long, what a request may be answered with,
//! and the store the responses are kept in.
//!
//! The freshness rules (`Cache-Control`, `Expires`, `Age`, heuristics, `Vary`, the request's own
//! directives, `Authorization`) are `http-cache-semantics`' [`CachePolicy`], as a shared cache.
//! pier adds what a reverse proxy needs around it: the exact headers kept (repeated fields stay
//! repeated), `Set-Cookie` never stored, the RFC 5861 windows, conditional requests answered from
//! the store, invalidation by unsafe methods, the `Cache-Status` header (RFC 9211), and the
//! stores: in memory, bounded in bytes ([`MemoryStore`]), or on a Redis server shared by many
//! processes ([`RedisStore`]).
//!
//! This crate knows nothing of servers or bodies in flight: pier-http reads what is stored for
//! a URL ([`Cache::stored`]), asks what a request may be answered with ([`Cache::lookup`]), and
//! gives it complete responses to keep ([`Cache::store`]).

#![deny(missing_docs)]

mod entry;
mod memory;
mod redis_store;
mod status;
mod wire;

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method, Uri, request};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions};

pub use entry::{Entry, HitHead, Windows};
pub use http_cache_semantics::CachePolicy;
pub use memory::{MemoryStore, Variants};
pub use redis_store::RedisStore;
pub use status::{CacheStatus, Forward};

/// What a request may be answered with.
#[derive(Debug)]
pub enum Lookup {
    /// A stored response that may be sent as it is.
    Fresh(Arc<Entry>),
    /// A stored response that must be revalidated with the origin first (`revalidate` is the
    /// request to send it: the client's, with the entry's validators added); `while_revalidating`
    /// when `stale-while-revalidate` lets it be sent meanwhile.
    Stale {
        /// The stored response.
        entry: Arc<Entry>,
        /// The conditional request that asks the origin whether it is still good.
        revalidate: Box<request::Parts>,
        /// Whether it may be sent now, revalidated in the background.
        while_revalidating: bool,
    },
    /// Nothing stored for the request; `vary` when something is stored for its URL, but for
    /// other values of the headers its `Vary` names.
    Miss {
        /// Stored for other values of the `Vary` headers.
        vary: bool,
    },
}

/// Most variants (responses differing by `Vary`) kept for one URL; the oldest goes first.
const MAX_VARIANTS: usize = 8;

/// Where a cache keeps its entries.
pub enum Store {
    /// In this process, bounded in bytes.
    Memory(MemoryStore),
    /// On a Redis server, shared by every process that names it.
    Redis(Box<RedisStore>),
}

// Redis's futures are boxed: a few KiB each, they would make every caller's future (moved with
// each request, hit or miss, memory or Redis) that big.
impl Store {
    async fn get(&self, key: &str) -> Option<Arc<Variants>> {
        match self {
            Store::Memory(memory) => memory.get(key),
            Store::Redis(redis) => Box::pin(redis.get(key)).await.map(Arc::new),
        }
    }

    async fn put(&self, key: String, variants: Arc<Variants>) {
        match self {
            Store::Memory(memory) => memory.put(key, variants),
            Store::Redis(redis) => Box::pin(redis.put(&key, &variants)).await,
        }
    }

    async fn remove(&self, key: &str) -> bool {
        match self {
            Store::Memory(memory) => memory.remove(key),
            Store::Redis(redis) => Box::pin(redis.remove(key)).await,
        }
    }

    async fn remove_prefix(&self, prefix: &str) -> usize {
        match self {
            Store::Memory(memory) => memory.remove_prefix(prefix),
            Store::Redis(redis) => Box::pin(redis.remove_prefix(prefix)).await,
        }
    }
}

/// What is stored for one URL (its variants), as read once for a request.
#[derive(Debug, Default)]
pub struct Stored(Option<Arc<Variants>>);

/// A named cache over a store.
pub struct Cache {
    name: String,
    store: Store,
    /// Largest body one entry keeps.
    max_entry: u64,
}

impl Cache {
    /// The cache `name`, keeping entries of up to `max_entry` bytes in `store`.
    pub fn new(name: &str, store: Store, max_entry: u64) -> Cache {
        Cache {
            name: name.to_string(),
            store,
            max_entry,
        }
    }

    /// Its name, as its metrics and log say it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Largest body one entry keeps.
    pub fn max_entry(&self) -> u64 {
        self.max_entry
    }

    /// The bytes its entries take now, for a store in memory.
    pub fn size(&self) -> Option<u64> {
        match &self.store {
            Store::Memory(memory) => Some(memory.size()),
            Store::Redis(_) => None,
        }
    }

    /// What is stored for `key` (see [`key`]): read once, then asked by [`fresh`](Self::fresh)
    /// and [`lookup`](Self::lookup). Nothing when the store is away.
    pub async fn stored(&self, key: &str) -> Stored {
        Stored(self.store.get(key).await)
    }

    /// A fresh entry in `stored` for a request with `headers` at `now`, when the request has no
    /// directives of its own (no `Cache-Control`, no `Pragma`): the common case, answered
    /// without building the request's view for [`lookup`](Self::lookup). `None`: ask
    /// [`lookup`](Self::lookup).
    pub fn fresh(
        &self,
        stored: &Stored,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Arc<Entry>> {
        if headers.contains_key(http::header::CACHE_CONTROL)
            || headers.contains_key(http::header::PRAGMA)
        {
            return None;
        }
        stored
            .0
            .as_ref()?
            .iter()
            .find(|entry| entry.matches(headers))
            .filter(|entry| now < entry.stale_at)
            .cloned()
    }

    /// What `req` (a `GET` or `HEAD`, its URI absolute: see [`key`]) may be answered with at
    /// `now`, from what is `stored` for its URL.
    pub fn lookup(&self, stored: &Stored, req: &request::Parts, now: SystemTime) -> Lookup {
        let Some(variants) = &stored.0 else {
            return Lookup::Miss { vary: false };
        };
        let mut vary = false;
        for entry in variants.iter() {
            match entry.policy.before_request(req, now) {
                BeforeRequest::Fresh(_) => return Lookup::Fresh(entry.clone()),
                BeforeRequest::Stale { matches: false, .. } => vary = true,
                BeforeRequest::Stale {
                    request,
                    matches: true,
                } => {
                    return Lookup::Stale {
                        while_revalidating: entry.windows.while_revalidating(entry.stale_at, now)
                            && !no_cache(&req.headers),
                        entry: entry.clone(),
                        revalidate: Box::new(request),
                    };
                }
            }
        }
        Lookup::Miss { vary }
    }

    /// The policy for `response` to `req` received at `now`, if pier may store it: storable by
    /// RFC 9111 as a shared cache, and without `Set-Cookie` (which must never reach another
    /// client).
    pub fn policy(
        &self,
        req: &request::Parts,
        response: &http::response::Parts,
        now: SystemTime,
    ) -> Option<CachePolicy> {
        if response.headers.contains_key(http::header::SET_COOKIE) {
            return None;
        }
        if req.method != Method::GET {
            return None;
        }
        let options = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let policy = CachePolicy::new_options(&kept_request(req, response), response, now, options);
        policy.is_storable().then_some(policy)
    }

    /// Keeps `entry` for its request's URL, in place of a variant with the same `Vary` values.
    /// A body over [`max_entry`](Self::max_entry) is not kept.
    pub async fn store(&self, uri: &Uri, entry: Entry) {
        if entry.body.len() as u64 > self.max_entry {
            return;
        }
        self.keep(uri, Arc::new(entry)).await;
    }

    async fn keep(&self, uri: &Uri, entry: Arc<Entry>) {
        let key = key(uri);
        let mut variants: Vec<Arc<Entry>> = self
            .store
            .get(&key)
            .await
            .map(|v| {
                v.iter()
                    .filter(|old| !old.same_variant(&entry))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        variants.insert(0, entry);
        variants.truncate(MAX_VARIANTS);
        self.store.put(key, Arc::new(variants)).await;
    }

    /// `entry` revalidated by the origin's `304 Not Modified` (`not_modified`) to `req` at
    /// `now`, kept in its place.
    pub async fn refresh(
        &self,
        entry: &Entry,
        req: &request::Parts,
        not_modified: &http::response::Parts,
        now: SystemTime,
    ) -> Arc<Entry> {
        let policy = match entry.policy.after_response(req, not_modified, now) {
            AfterResponse::NotModified(policy, _) | AfterResponse::Modified(policy, _) => policy,
        };
        let fresh = Arc::new(entry.revalidated(policy, &not_modified.headers, now));
        self.keep(&req.uri, fresh.clone()).await;
        fresh
    }

    /// Forgets every response stored for `uri` (an unsafe method succeeded on it, or an
    /// operator purged it); whether any was.
    pub async fn invalidate(&self, uri: &Uri) -> bool {
        self.store.remove(&key(uri)).await
    }

    /// Forgets every response stored under URLs starting with `prefix`
    /// (`https://example.com/api/`); how many URLs were forgotten.
    pub async fn invalidate_prefix(&self, prefix: &str) -> usize {
        self.store.remove_prefix(prefix).await
    }
}

/// The key of a URI: scheme, authority (lower case) and path with query. `GET` and `HEAD` share
/// it (a `HEAD` is answered from a stored `GET`).
pub fn key(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut key = String::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(authority);
    key[scheme.len() + 3..].make_ascii_lowercase();
    key.push_str(path);
    key
}

/// What of the request an entry's policy keeps: what RFC 9111 decisions read later (`Host`,
/// `Cache-Control`, `Pragma`, the fields the response's `Vary` names) and whether it carried
/// credentials (`Authorization` present: its value is not kept). A stored entry, in memory or in
/// Redis, holds no client's credentials or cookies unless `Vary` makes them part of the key.
fn kept_request(req: &request::Parts, response: &http::response::Parts) -> request::Parts {
    let mut kept = http::Request::new(());
    *kept.method_mut() = req.method.clone();
    *kept.uri_mut() = req.uri.clone();
    *kept.version_mut() = req.version;
    let (mut parts, ()) = kept.into_parts();
    let vary: Vec<http::HeaderName> = entry::vary_names(&response.headers).collect();
    for (name, value) in &req.headers {
        let keyed = vary.contains(name);
        if keyed
            || *name == http::header::HOST
            || *name == http::header::CACHE_CONTROL
            || *name == http::header::PRAGMA
        {
            parts.headers.append(name.clone(), value.clone());
        } else if *name == http::header::AUTHORIZATION {
            parts
                .headers
                .insert(name.clone(), http::HeaderValue::from_static("(present)"));
        }
    }
    parts
}

/// Whether the request says `no-cache` (`Cache-Control` or `Pragma`): nothing stored may be sent
/// without asking the origin, not even while revalidating.
fn no_cache(headers: &HeaderMap) -> bool {
    let says = |name: http::header::HeaderName| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
    };
    says(http::header::CACHE_CONTROL) || says(http::header::PRAGMA)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};

    use super::*;

    fn cache() -> Cache {
        Cache::new(
            "test",
            Store::Memory(MemoryStore::new(1 << 20, |_| {})),
            1 << 16,
        )
    }

    fn get(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut req = Request::get(uri).header("host", "example.com");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn response(headers: &[(&str, &str)]) -> http::response::Parts {
        let mut res = Response::builder().status(200);
        for (n, v) in headers {
            res = res.header(*n, *v);
        }
        res.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_key_is_the_url_with_its_host_in_lower_case() {
        let uri: Uri = "http://Example.COM:8080/Path/A?Q=Mixed".parse().unwrap();
        assert_eq!(key(&uri), "http://example.com:8080/Path/A?Q=Mixed");
        let uri: Uri = "https://h/".parse().unwrap();
        assert_eq!(key(&uri), "https://h/");
    }

    async fn lookup(cache: &Cache, req: &request::Parts, at: SystemTime) -> Lookup {
        let stored = cache.stored(&key(&req.uri)).await;
        cache.lookup(&stored, req, at)
    }

    async fn fresh(
        cache: &Cache,
        key: &str,
        headers: &HeaderMap,
        at: SystemTime,
    ) -> Option<Arc<Entry>> {
        cache.fresh(&cache.stored(key).await, headers, at)
    }

    /// Stores `res` for `req` at `at` if the cache takes it.
    async fn keep(
        cache: &Cache,
        req: &request::Parts,
        res: &http::response::Parts,
        at: SystemTime,
    ) -> bool {
        let Some(policy) = cache.policy(req, res, at) else {
            return false;
        };
        let entry = Entry::new(
            req,
            policy,
            res.status,
            &res.headers,
            Bytes::from("body"),
            at,
        );
        cache.store(&req.uri, entry).await;
        true
    }

    #[tokio::test]
    async fn a_fresh_response_is_a_hit_until_it_goes_stale_then_it_is_revalidated() {
        let cache = cache();
        let t0 = SystemTime::now();
        let req = get("http://example.com/a", &[]);
        let res = response(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
        assert!(keep(&cache, &req, &res, t0).await);
        let Lookup::Fresh(entry) = lookup(&cache, &req, t0 + Duration::from_secs(10)).await else {
            panic!("fresh for 60 s");
        };
        let k = key(&req.uri);
        assert!(
            fresh(&cache, &k, &req.headers, t0 + Duration::from_secs(59))
                .await
                .is_some()
        );
        assert!(
            fresh(&cache, &k, &req.headers, t0 + Duration::from_secs(60))
                .await
                .is_none()
        );
        assert_eq!(entry.age(t0 + Duration::from_secs(10)), 10);
        assert_eq!(entry.ttl(t0 + Duration::from_secs(10)), 50);
        match lookup(&cache, &req, t0 + Duration::from_secs(61)).await {
            Lookup::Stale {
                revalidate,
                while_revalidating,
                ..
            } => {
                assert_eq!(revalidate.headers["if-none-match"], "\"v1\"");
                assert!(!while_revalidating);
            }
            other => panic!("stale after 60 s: {other:?}"),
        }
        // The request's own max-age=5 finds a 10 s old response too old.
        let strict = get("http://example.com/a", &[("cache-control", "max-age=5")]);
        assert!(matches!(
            lookup(&cache, &strict, t0 + Duration::from_secs(10)).await,
            Lookup::Stale { .. }
        ));
        assert!(matches!(
            lookup(&cache, &get("http://example.com/b", &[]), t0).await,
            Lookup::Miss { vary: false }
        ));
        cache.invalidate(&req.uri).await;
        assert!(matches!(
            lookup(&cache, &req, t0).await,
            Lookup::Miss { .. }
        ));
    }

    #[tokio::test]
    async fn responses_vary_by_the_headers_vary_names() {
        let cache = cache();
        let t0 = SystemTime::now();
        let res = response(&[("cache-control", "max-age=60"), ("vary", "accept-language")]);
        let en = get("http://example.com/v", &[("accept-language", "en")]);
        let fr = get("http://example.com/v", &[("accept-language", "fr")]);
        assert!(keep(&cache, &en, &res, t0).await);
        assert!(matches!(lookup(&cache, &en, t0).await, Lookup::Fresh(_)));
        assert!(matches!(
            lookup(&cache, &fr, t0).await,
            Lookup::Miss { vary: true }
        ));
        assert!(keep(&cache, &fr, &res, t0).await);
        assert!(matches!(lookup(&cache, &fr, t0).await, Lookup::Fresh(_)));
        assert!(
            matches!(lookup(&cache, &en, t0).await, Lookup::Fresh(_)),
            "both kept"
        );
        let key = |r: &request::Parts| super::key(&r.uri);
        assert!(fresh(&cache, &key(&en), &en.headers, t0).await.is_some());
        let de = get("http://example.com/v", &[("accept-language", "de")]);
        assert!(fresh(&cache, &key(&de), &de.headers, t0).await.is_none());
        let star = response(&[("cache-control", "max-age=60"), ("vary", "*")]);
        let req = get("http://example.com/star", &[]);
        assert!(keep(&cache, &req, &star, t0).await);
        assert!(matches!(
            lookup(&cache, &req, t0).await,
            Lookup::Miss { vary: true }
        ));
        assert!(fresh(&cache, &key(&req), &req.headers, t0).await.is_none());
    }

    /// An entry's policy keeps no credentials or cookies (they would sit in Redis for anyone
    /// with access to it), unless `Vary` makes them part of the key; it decides as before: a
    /// `public` answer to an authorized request is stored, `Vary: Cookie` still tells cookies
    /// apart.
    #[tokio::test]
    async fn a_stored_policy_keeps_no_credentials_unless_they_are_keyed() {
        let cache = cache();
        let t0 = SystemTime::now();
        let secret = [("authorization", "Bearer s3cret"), ("cookie", "id=c00kie")];
        let req = get("http://example.com/c", &secret);
        let public = response(&[("cache-control", "public, max-age=60")]);
        let policy = cache.policy(&req, &public, t0).expect("public: stored");
        let kept = serde_json::to_string(&policy).unwrap();
        assert!(
            !kept.contains("s3cret") && !kept.contains("c00kie"),
            "{kept}"
        );
        assert!(kept.contains("example.com"), "the host is kept: {kept}");

        let by_cookie = response(&[("cache-control", "public, max-age=60"), ("vary", "cookie")]);
        assert!(keep(&cache, &req, &by_cookie, t0).await);
        assert!(matches!(lookup(&cache, &req, t0).await, Lookup::Fresh(_)));
        let other = get("http://example.com/c", &[("cookie", "id=other")]);
        assert!(
            matches!(
                lookup(&cache, &other, t0).await,
                Lookup::Miss { vary: true }
            ),
            "another cookie is another variant"
        );
    }

    #[tokio::test]
    async fn what_a_shared_cache_must_not_store_is_not_stored() {
        let cache = cache();
        let t0 = SystemTime::now();
        let req = get("http://example.com/p", &[]);
        for headers in [
            &[("cache-control", "private, max-age=60")][..],
            &[("cache-control", "no-store")],
            &[("cache-control", "max-age=60"), ("set-cookie", "id=1")],
        ] {
            assert!(
                !keep(&cache, &req, &response(headers), t0).await,
                "{headers:?}"
            );
        }
        let authorized = get("http://example.com/p", &[("authorization", "Bearer x")]);
        let res = response(&[("cache-control", "max-age=60")]);
        assert!(!keep(&cache, &authorized, &res, t0).await);
        let public = response(&[("cache-control", "public, max-age=60")]);
        assert!(keep(&cache, &authorized, &public, t0).await);
        let no_store = get("http://example.com/p", &[("cache-control", "no-store")]);
        assert!(!keep(&cache, &no_store, &res, t0).await);
        let post = Request::post("http://example.com/p")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(!keep(&cache, &post, &res, t0).await);
    }

    #[tokio::test]
    async fn stale_while_revalidate_lets_a_stale_response_be_sent_meanwhile() {
        let cache = cache();
        let t0 = SystemTime::now();
        let req = get("http://example.com/s", &[]);
        let res = response(&[("cache-control", "max-age=1, stale-while-revalidate=30")]);
        assert!(keep(&cache, &req, &res, t0).await);
        let at = t0 + Duration::from_secs(10);
        assert!(matches!(
            lookup(&cache, &req, at).await,
            Lookup::Stale {
                while_revalidating: true,
                ..
            }
        ));
        let at = t0 + Duration::from_secs(40);
        assert!(matches!(
            lookup(&cache, &req, at).await,
            Lookup::Stale {
                while_revalidating: false,
                ..
            }
        ));
        let no_cache = get("http://example.com/s", &[("cache-control", "no-cache")]);
        assert!(matches!(
            lookup(&cache, &no_cache, t0 + Duration::from_secs(10)).await,
            Lookup::Stale {
                while_revalidating: false,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn the_store_is_bounded_in_bytes_and_big_bodies_are_not_kept() {
        let evicted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = evicted.clone();
        let store = MemoryStore::new(64 << 10, move |bytes| {
            counted.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        });
        let cache = Cache::new("small", Store::Memory(store), 8 << 10);
        let t0 = SystemTime::now();
        let res = response(&[("cache-control", "max-age=60")]);
        for i in 0..100 {
            let req = get(&format!("http://example.com/{i}"), &[]);
            let policy = cache.policy(&req, &res, t0).unwrap();
            let body = Bytes::from(vec![b'x'; 4 << 10]);
            cache
                .store(
                    &req.uri,
                    Entry::new(&req, policy, res.status, &res.headers, body, t0),
                )
                .await;
        }
        let size = cache.size().unwrap();
        assert!(size <= 64 << 10, "{size}");
        assert!(evicted.load(std::sync::atomic::Ordering::Relaxed) > 0);
        let req = get("http://example.com/big", &[]);
        let policy = cache.policy(&req, &res, t0).unwrap();
        let body = Bytes::from(vec![b'x'; 9 << 10]);
        cache
            .store(
                &req.uri,
                Entry::new(&req, policy, res.status, &res.headers, body, t0),
            )
            .await;
        assert!(matches!(
            lookup(&cache, &req, t0).await,
            Lookup::Miss { .. }
        ));
    }
}
