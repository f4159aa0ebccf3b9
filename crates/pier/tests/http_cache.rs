//! The shared HTTP cache (`--cache`, `cache = "NAME"` on a manifest route), end to end: pier
//! with `--upstream` in front of a test origin that counts the requests it gets, one RFC 9111
//! (and RFC 5861, RFC 9211) behaviour per test.
//!
//! The origin answers each request as its query says: `cc` (Cache-Control), `etag`, `vary`,
//! `cookie` (a Set-Cookie), `size` (the body's length; else the body is `body of PATH?QUERY`),
//! `delay` (milliseconds before answering); a request whose `If-None-Match` holds the `etag`
//! gets `304`; while it is down it answers `503`. A request's `X-Forwarded-Host` ends its body
//! (`@HOST`), as an origin that trusts it would.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pier_testkit::{Answer, PierServer, Proto};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// The test origin.
#[derive(Clone, Default)]
struct Origin {
    /// Requests by method and path with query, and the 304s among them.
    seen: Arc<Mutex<HashMap<String, usize>>>,
    down: Arc<AtomicBool>,
}

impl Origin {
    async fn start() -> (Origin, SocketAddr) {
        let origin = Origin::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let origin = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let origin = origin.clone();
                        async move { Ok::<_, Infallible>(origin.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (origin, addr)
    }

    fn count(&self, what: &str) {
        *self
            .seen
            .lock()
            .unwrap()
            .entry(what.to_string())
            .or_default() += 1;
    }

    /// How many `what` (`GET /a?x`, `304 /a?x`) it has seen.
    fn seen(&self, what: &str) -> usize {
        self.seen.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<OriginBody> {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        self.count(&format!("{} {target}", req.method()));
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = v
                    .replace("%20", " ")
                    .replace("%2C", ",")
                    .replace("%3F", "?");
                (k.to_string(), v)
            })
            .collect();
        if let Some(ms) = query.get("delay") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if self.down.load(Ordering::Relaxed) {
            return Response::builder()
                .status(503)
                .body(OriginBody::whole(Bytes::from_static(b"down")))
                .unwrap();
        }
        let mut response = Response::builder();
        if let Some(cc) = query.get("cc") {
            response = response.header("cache-control", cc);
        }
        if let Some(vary) = query.get("vary") {
            response = response.header("vary", vary);
        }
        if let Some(cookie) = query.get("cookie") {
            response = response.header("set-cookie", cookie);
        }
        if let Some(expires) = query.get("expires") {
            response = response.header("expires", expires);
        }
        if let Some(location) = query.get("location") {
            response = response.header("location", location);
        }
        response = response
            .header("x-origin-link", "a")
            .header("x-origin-link", "b");
        if let Some(etag) = query.get("etag") {
            let etag = format!("\"{etag}\"");
            let matches = req
                .headers()
                .get("if-none-match")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
            response = response.header("etag", &etag);
            if matches {
                self.count(&format!("304 {target}"));
                return response
                    .status(304)
                    .body(OriginBody::whole(Bytes::new()))
                    .unwrap();
            }
        }
        let language = req
            .headers()
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // What an origin that trusts X-Forwarded-Host would do with it.
        let host = req
            .headers()
            .get("x-forwarded-host")
            .map(|h| format!("@{}", h.to_str().unwrap()))
            .unwrap_or_default();
        let body = match query.get("size") {
            // Not one byte repeated: a body put back together out of order would show.
            Some(n) => (0..n.parse::<usize>().unwrap())
                .map(|i| b'a' + (i % 23) as u8)
                .collect(),
            None => Bytes::from(format!("body of {target}{language}{host}")),
        };
        if query.contains_key("abort") {
            return response.body(OriginBody::cut(body)).unwrap();
        }
        response.body(OriginBody::whole(body)).unwrap()
    }
}

/// The origin's response body: whole, or cut off 50 ms after its first bytes (`abort`: the
/// head and those bytes are out by then).
struct OriginBody {
    data: Option<Bytes>,
    cut: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl OriginBody {
    fn whole(data: Bytes) -> OriginBody {
        OriginBody {
            data: Some(data),
            cut: None,
        }
    }

    fn cut(data: Bytes) -> OriginBody {
        OriginBody {
            data: Some(data),
            cut: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
        }
    }
}

impl http_body::Body for OriginBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        match &mut self.cut {
            Some(sleep) => sleep
                .as_mut()
                .poll(cx)
                .map(|()| Some(Err(std::io::Error::other("cut off")))),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.cut.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.data, &self.cut) {
            (Some(data), None) => http_body::SizeHint::with_exact(data.len() as u64),
            (None, None) => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// `pier serve` of `manifest`, written into `dir` (where its files are), with the compile
/// cache the Python components (18 MB) are compiled into once and kept between runs.
fn serve_manifest(dir: &Path, manifest: &str) -> PierServer {
    let path = dir.join("pier.toml");
    std::fs::write(&path, manifest).unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("p3-serve-cache");
    PierServer::start_with_env(
        pier(),
        &[path.to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache.to_str().unwrap())],
    )
    .unwrap()
}

/// Where the cache under test keeps its entries.
#[derive(Clone, Copy, Debug)]
enum Storage {
    Memory,
    /// A `redis-server` of the test's own.
    Redis,
}

/// pier in front of an origin, and the Redis server its cache uses, if it uses one.
struct Front {
    pier: PierServer,
    _redis: Option<pier_testkit::RedisServer>,
}

impl std::ops::Deref for Front {
    type Target = PierServer;

    fn deref(&self) -> &PierServer {
        &self.pier
    }
}

/// pier with `--upstream` to `origin` and `--cache` in `storage`, and `args`. `None` when the
/// storage cannot be had here (no `redis-server` outside CI: the test is skipped, loudly).
fn pier_in_front(storage: Storage, origin: SocketAddr, args: &[&str]) -> Option<Front> {
    let redis = match storage {
        Storage::Memory => None,
        Storage::Redis => Some(pier_testkit::RedisServer::start()?),
    };
    let url = redis.as_ref().map(|r| r.url());
    let upstream = format!("http://{origin}");
    let mut all = vec!["--upstream", &upstream, "--cache"];
    all.extend(url.as_deref());
    all.extend_from_slice(args);
    Some(Front {
        pier: PierServer::start(pier(), &all).unwrap(),
        _redis: redis,
    })
}

/// The RFC 9111 cases, each run with the cache in memory and in Redis.
macro_rules! in_both_storages {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Storage::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Storage::Redis).await
            })*
        }
    };
}

in_both_storages!(
    a_fresh_response_is_answered_from_the_cache_with_its_age,
    what_a_shared_cache_must_not_store_goes_to_the_origin_every_time,
    head_conditionals_and_ranges_are_answered_from_a_stored_get,
    responses_vary_by_the_request_headers_vary_names,
    a_stale_response_is_revalidated_and_a_304_refreshes_it,
    stale_if_error_and_stale_while_revalidate,
    an_unsafe_method_invalidates_the_url,
    concurrent_misses_reach_the_origin_once,
    a_body_over_the_entry_size_is_sent_but_not_stored,
    unkeyed_headers_cannot_poison_the_cache,
    the_admin_listener_purges_a_url_or_a_prefix,
    s_maxage_and_expires_give_freshness,
    an_aborted_body_is_not_stored,
    an_unsafe_method_invalidates_its_location_too,
    a_hit_holds_no_slot_of_max_concurrency,
    hits_seconds_apart_tell_their_own_age,
);

/// The `Age` and `ttl` of hits a couple of seconds apart are those of their own moment, not of
/// an earlier hit's (whose head pier keeps for the hits of the same second).
async fn hits_seconds_apart_tell_their_own_age(storage: Storage) {
    let (_origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/aging?cc=max-age=60";
    get(&pier, target, &[]).await;
    let read = |answer: &Answer| {
        let age: u64 = answer.headers["age"].to_str().unwrap().parse().unwrap();
        let status = status(answer);
        let ttl: i64 = status.rsplit("ttl=").next().unwrap().parse().unwrap();
        (age, ttl)
    };
    let (age, ttl) = read(&get(&pier, target, &[]).await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (later_age, later_ttl) = read(&get(&pier, target, &[]).await);
    assert!(later_age >= age + 2, "age {age} then {later_age}");
    assert!(later_ttl <= ttl - 2, "ttl {ttl} then {later_ttl}");
}

/// `--max-concurrency` counts requests sent on: with its one slot taken by a slow miss, a hit
/// is still answered, and another miss is refused (`503`).
async fn a_hit_holds_no_slot_of_max_concurrency(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &["--max-concurrency", "1"]) else {
        return;
    };
    let stored = "/a?cc=max-age=60";
    assert_eq!(get(&pier, stored, &[]).await.status, StatusCode::OK);
    let slow = "/slow?delay=1500";
    let waiting = {
        let addr = pier.addr.clone();
        tokio::spawn(async move {
            let req = Request::get(slow).body(Full::new(Bytes::new())).unwrap();
            pier_testkit::send(&addr, Proto::H1, req).await.unwrap()
        })
    };
    while origin.seen(&format!("GET {slow}")) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hit = get(&pier, stored, &[]).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert!(status(&hit).contains("hit"), "{}", status(&hit));
    assert_eq!(origin.seen(&format!("GET {stored}")), 1);
    let refused = get(&pier, "/b?cc=max-age=60", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);
}

async fn get(pier: &PierServer, target: &str, headers: &[(&str, &str)]) -> Answer {
    send(pier, "GET", target, headers).await
}

async fn send(pier: &PierServer, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(target);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    pier_testkit::send(&pier.addr, Proto::H1, req)
        .await
        .unwrap()
}

fn status(answer: &Answer) -> String {
    answer
        .headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn a_fresh_response_is_answered_from_the_cache_with_its_age(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/a?cc=max-age=60";
    let first = get(&pier, target, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(status(&first), "pier; fwd=uri-miss; fwd-status=200; stored");
    for proto in [Proto::H1, Proto::H2] {
        let req = Request::get(target).body(Full::new(Bytes::new())).unwrap();
        let hit = pier_testkit::send(&pier.addr, proto, req).await.unwrap();
        assert_eq!(hit.text(), first.text(), "{proto:?}");
        assert!(
            status(&hit).starts_with("pier; hit; ttl="),
            "{}",
            status(&hit)
        );
        assert!(hit.headers.contains_key("age"));
        // Repeated header fields come back as the origin sent them.
        assert_eq!(hit.headers.get_all("x-origin-link").iter().count(), 2);
    }
    assert_eq!(origin.seen(&format!("GET {target}")), 1);
    // Another URL is another entry.
    get(&pier, "/b?cc=max-age=60", &[]).await;
    assert_eq!(origin.seen("GET /b?cc=max-age=60"), 1);
}

async fn what_a_shared_cache_must_not_store_goes_to_the_origin_every_time(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    for target in [
        "/p?cc=private,max-age=60",
        "/p?cc=no-store",
        "/p?cc=max-age=60&cookie=session=1",
    ] {
        for _ in 0..2 {
            let answer = get(&pier, target, &[]).await;
            assert_eq!(status(&answer), "pier; fwd=uri-miss; fwd-status=200");
        }
        assert_eq!(origin.seen(&format!("GET {target}")), 2, "{target}");
    }
    // A request with credentials: stored only when the response says it may be shared.
    let auth = [("authorization", "Bearer secret")];
    get(&pier, "/auth?cc=max-age=60", &auth).await;
    get(&pier, "/auth?cc=max-age=60", &auth).await;
    assert_eq!(origin.seen("GET /auth?cc=max-age=60"), 2);
    get(&pier, "/auth?cc=public,max-age=60", &auth).await;
    get(&pier, "/auth?cc=public,max-age=60", &auth).await;
    assert_eq!(origin.seen("GET /auth?cc=public,max-age=60"), 1);
    // The request's no-store.
    let no_store = [("cache-control", "no-store")];
    get(&pier, "/ns?cc=max-age=60", &no_store).await;
    get(&pier, "/ns?cc=max-age=60", &[]).await;
    assert_eq!(origin.seen("GET /ns?cc=max-age=60"), 2);
}

async fn head_conditionals_and_ranges_are_answered_from_a_stored_get(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/h?cc=max-age=60&etag=v1";
    let full = get(&pier, target, &[]).await;
    let len = full.body.len();
    let head = send(&pier, "HEAD", target, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-length"], len.to_string().as_str());
    assert!(status(&head).starts_with("pier; hit"), "{}", status(&head));

    let not_modified = get(&pier, target, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers["etag"], "\"v1\"");

    let part = get(&pier, target, &[("range", "bytes=0-3")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.text(), "body");
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 0-3/{len}").as_str()
    );
    let beyond = get(&pier, target, &[("range", "bytes=9999-")]).await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(origin.seen(&format!("GET {target}")), 1, "all from one GET");
    assert_eq!(origin.seen(&format!("HEAD {target}")), 0);
}

async fn responses_vary_by_the_request_headers_vary_names(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/v?cc=max-age=60&vary=accept-language";
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(
        get(&pier, target, &en).await.text(),
        format!("body of {target}en")
    );
    let french = get(&pier, target, &fr).await;
    assert_eq!(french.text(), format!("body of {target}fr"));
    assert_eq!(
        status(&french),
        "pier; fwd=vary-miss; fwd-status=200; stored"
    );
    assert_eq!(
        get(&pier, target, &en).await.text(),
        format!("body of {target}en")
    );
    assert_eq!(
        get(&pier, target, &fr).await.text(),
        format!("body of {target}fr")
    );
    assert_eq!(origin.seen(&format!("GET {target}")), 2);
    // Vary: * is never answered from the cache.
    let star = "/v?cc=max-age=60&vary=*";
    get(&pier, star, &[]).await;
    get(&pier, star, &[]).await;
    assert_eq!(origin.seen(&format!("GET {star}")), 2);
}

async fn a_stale_response_is_revalidated_and_a_304_refreshes_it(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/r?cc=max-age=0&etag=v7";
    let first = get(&pier, target, &[]).await;
    let second = get(&pier, target, &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.text(), first.text());
    assert_eq!(status(&second), "pier; fwd=stale; fwd-status=304; ttl=0");
    assert_eq!(origin.seen(&format!("304 {target}")), 1);

    // A request's own no-cache sends a fresh entry to the origin too.
    let fresh = "/r?cc=max-age=60&etag=v8";
    get(&pier, fresh, &[]).await;
    let asked = get(&pier, fresh, &[("cache-control", "no-cache")]).await;
    assert!(
        status(&asked).starts_with("pier; fwd=request; fwd-status=304"),
        "{}",
        status(&asked)
    );
    assert_eq!(origin.seen(&format!("304 {fresh}")), 1);

    // only-if-cached: what is stored, or 504.
    let cached = get(&pier, fresh, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(cached.status, StatusCode::OK);
    let none = get(&pier, "/nothing", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(none.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.seen("GET /nothing"), 0);
}

async fn stale_if_error_and_stale_while_revalidate(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/e?cc=max-age=0,stale-if-error=60";
    let first = get(&pier, target, &[]).await;
    origin.down.store(true, Ordering::Relaxed);
    let stale = get(&pier, target, &[]).await;
    assert_eq!(
        stale.status,
        StatusCode::OK,
        "the stored response, not the 503"
    );
    assert_eq!(stale.text(), first.text());
    assert!(
        status(&stale).ends_with("detail=stale-if-error"),
        "{}",
        status(&stale)
    );
    // Without the directive, the origin's error goes through.
    let plain = "/e?cc=max-age=0";
    origin.down.store(false, Ordering::Relaxed);
    get(&pier, plain, &[]).await;
    origin.down.store(true, Ordering::Relaxed);
    assert_eq!(
        get(&pier, plain, &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    origin.down.store(false, Ordering::Relaxed);

    let target = "/w?cc=max-age=0,stale-while-revalidate=60";
    get(&pier, target, &[]).await;
    let meanwhile = get(&pier, target, &[]).await;
    assert!(
        status(&meanwhile).ends_with("detail=stale-while-revalidate"),
        "{}",
        status(&meanwhile)
    );
    // The revalidation happens behind the answer.
    for _ in 0..100 {
        if origin.seen(&format!("GET {target}")) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.seen(&format!("GET {target}")), 2);
}

async fn an_unsafe_method_invalidates_the_url(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/i?cc=max-age=60";
    get(&pier, target, &[]).await;
    get(&pier, target, &[]).await;
    assert_eq!(origin.seen(&format!("GET {target}")), 1);
    let posted = send(&pier, "POST", target, &[]).await;
    assert_eq!(status(&posted), "pier; fwd=method");
    let after = get(&pier, target, &[]).await;
    assert!(
        status(&after).starts_with("pier; fwd=uri-miss"),
        "{}",
        status(&after)
    );
    assert_eq!(origin.seen(&format!("GET {target}")), 2);
}

async fn concurrent_misses_reach_the_origin_once(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/c?cc=max-age=60&delay=300";
    let mut all = tokio::task::JoinSet::new();
    for i in 0..100 {
        let addr = pier.addr.clone();
        all.spawn(async move {
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let req = Request::get(target).body(Full::new(Bytes::new())).unwrap();
            pier_testkit::send(&addr, proto, req).await.unwrap()
        });
    }
    let mut collapsed = 0;
    while let Some(answer) = all.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), format!("body of {target}"));
        collapsed += status(&answer).contains("collapsed") as usize;
    }
    assert_eq!(origin.seen(&format!("GET {target}")), 1);
    assert!(collapsed > 0);
}

async fn a_body_over_the_entry_size_is_sent_but_not_stored(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &["--cache-max-entry", "1KiB"]) else {
        return;
    };
    let big = "/big?cc=max-age=60&size=2048";
    for _ in 0..2 {
        assert_eq!(get(&pier, big, &[]).await.body.len(), 2048);
    }
    assert_eq!(origin.seen(&format!("GET {big}")), 2);
    let small = "/small?cc=max-age=60&size=512";
    get(&pier, small, &[]).await;
    get(&pier, small, &[]).await;
    assert_eq!(origin.seen(&format!("GET {small}")), 1);
}

/// Many pier processes naming one Redis share its entries: what one stored, another answers
/// without asking the origin, a large body (kept in chunks) byte for byte; what one
/// invalidates, the other no longer answers.
#[tokio::test]
async fn processes_naming_one_redis_share_its_entries() {
    let Some(redis) = pier_testkit::RedisServer::start() else {
        return;
    };
    let (origin, addr) = Origin::start().await;
    let upstream = format!("http://{addr}");
    let url = redis.url();
    let start = || PierServer::start(pier(), &["--upstream", &upstream, "--cache", &url]).unwrap();
    let (one, other) = (start(), start());
    for target in ["/shared?cc=max-age=60", "/large?cc=max-age=60&size=1500000"] {
        let first = get(&one, target, &[]).await;
        let second = get(&other, target, &[]).await;
        assert!(
            status(&second).starts_with("pier; hit"),
            "{target}: {}",
            status(&second)
        );
        assert_eq!(second.body, first.body, "{target}");
        assert_eq!(origin.seen(&format!("GET {target}")), 1, "{target}");
    }
    send(&one, "POST", "/shared?cc=max-age=60", &[]).await;
    let after = get(&other, "/shared?cc=max-age=60", &[]).await;
    assert!(status(&after).starts_with("pier; fwd=uri-miss"));
    assert_eq!(origin.seen("GET /shared?cc=max-age=60"), 2);
}

/// Redis going away makes the cache miss, never fail: every request is answered by the origin
/// meanwhile, the failures are counted, and once Redis is back responses are stored and
/// answered from it again.
#[tokio::test]
async fn redis_down_is_a_bypass_and_back_is_a_cache_again() {
    let Some(mut redis) = pier_testkit::RedisServer::start() else {
        return;
    };
    let port = redis.port;
    let (origin, addr) = Origin::start().await;
    let upstream = format!("http://{addr}");
    let url = redis.url();
    let pier = PierServer::start(
        pier(),
        &[
            "--upstream",
            &upstream,
            "--cache",
            &url,
            "--admin-addr",
            "127.0.0.1:0",
        ],
    )
    .unwrap();
    let target = "/d?cc=max-age=60";
    get(&pier, target, &[]).await;
    assert!(status(&get(&pier, target, &[]).await).starts_with("pier; hit"));
    redis.kill();
    for _ in 0..5 {
        let answer = get(&pier, target, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), format!("body of {target}"));
    }
    assert_eq!(origin.seen(&format!("GET {target}")), 6);
    let admin = pier.admin_addr.clone().unwrap();
    let metrics = pier_testkit::get(&admin, Proto::H1, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics
            .text()
            .lines()
            .any(|l| l.starts_with("pier_cache_store_errors_total{cache=\"default\"}")),
        "{}",
        metrics.text()
    );

    let _back = pier_testkit::RedisServer::start_on(port).unwrap();
    let mut hit = false;
    for _ in 0..50 {
        if status(&get(&pier, target, &[]).await).starts_with("pier; hit") {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hit, "stored and answered again once Redis is back");
}

/// A manifest's routes name a `[cache.NAME]`: a component's cacheable answer is sent again
/// without running the component (its random body comes back the same), a private one never
/// is; the route's Proxy-Wasm filter runs on hits too (its response header is on them, and a
/// request it refuses is refused though its answer is stored), before the cache.
#[tokio::test]
async fn a_manifest_route_caches_a_component_behind_its_filters() {
    let Some(service) = pier_testkit::toolchain_guest("python-p3.wasm") else {
        return;
    };
    let (origin, addr) = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(service, dir.path().join("service.wasm")).unwrap();
    std::fs::copy(
        pier_testkit::guest("filter-headers"),
        dir.path().join("filter.wasm"),
    )
    .unwrap();
    let manifest = format!(
        r#"manifest_version = 1
[[route]]
path = "/random/..."
component = "service"
cache = "pages"
filters = ["headers"]

[[route]]
path = "/t/..."
upstream = "http://{addr}"
cache = "pages"
filters = ["headers"]

[component.service]
source = "service.wasm"

[filter.headers]
source = "filter.wasm"

[cache.pages]
size = "16MiB"
"#
    );
    let pier = serve_manifest(dir.path(), &manifest);

    let first = get(&pier, "/random/a", &[]).await;
    let again = get(&pier, "/random/a", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        again.text(),
        first.text(),
        "the same answer, from the cache"
    );
    assert!(
        status(&again).starts_with("pier; hit"),
        "{}",
        status(&again)
    );
    assert_eq!(
        again.headers["x-filter-response"], "1",
        "the filter ran on the hit"
    );
    let private = get(&pier, "/random/private", &[]).await;
    let private_again = get(&pier, "/random/private", &[]).await;
    assert_ne!(private.text(), private_again.text(), "never shared");

    // A request the filter refuses is refused on a hit too.
    let denied = get(&pier, "/random/a", &[("x-deny", "1")]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(!denied.headers.contains_key("cache-status"));

    let local = get(&pier, "/t/local?cc=max-age=60", &[]).await;
    assert_eq!(local.status, StatusCode::NO_CONTENT);
    assert!(!local.headers.contains_key("cache-status"));
    assert_eq!(origin.seen("GET /t/local?cc=max-age=60"), 0);
}

/// A header that is not part of the key cannot change what is stored for everyone: the
/// X-Forwarded-Host family does not reach the origin through the cache.
async fn unkeyed_headers_cannot_poison_the_cache(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/poison?cc=max-age=60";
    let evil = get(&pier, target, &[("x-forwarded-host", "evil.example")]).await;
    assert_eq!(evil.text(), format!("body of {target}"));
    let next = get(&pier, target, &[]).await;
    assert_eq!(next.text(), format!("body of {target}"));
    assert!(status(&next).starts_with("pier; hit"));
    assert_eq!(origin.seen(&format!("GET {target}")), 1);
}

/// The admin listener purges one URL (`PURGE /cache/NAME?url=URL`) or every URL under a prefix
/// (`?prefix=URL`); the next request for it goes to the origin.
async fn the_admin_listener_purges_a_url_or_a_prefix(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &["--admin-addr", "127.0.0.1:0"]) else {
        return;
    };
    let admin = pier.admin_addr.clone().expect("the admin listener");
    let purge = |method: &'static str, query: &'static str| {
        let admin = admin.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(format!("/cache/default?{query}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            pier_testkit::send(&admin, Proto::H1, req).await.unwrap()
        }
    };
    for target in [
        "/api/a?cc=max-age=60",
        "/api/b?cc=max-age=60",
        "/other?cc=max-age=60",
    ] {
        get(&pier, target, &[]).await;
        get(&pier, target, &[]).await;
    }
    let one = purge(
        "PURGE",
        "url=http%3A%2F%2Flocalhost%2Fapi%2Fa%3Fcc%3Dmax-age%3D60",
    )
    .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text());
    assert_eq!(one.text(), "purged 1\n");
    get(&pier, "/api/a?cc=max-age=60", &[]).await;
    assert_eq!(origin.seen("GET /api/a?cc=max-age=60"), 2);
    assert_eq!(origin.seen("GET /api/b?cc=max-age=60"), 1);

    let under = purge("DELETE", "prefix=http%3A%2F%2Flocalhost%2Fapi%2F").await;
    assert_eq!(under.text(), "purged 2\n");
    get(&pier, "/api/b?cc=max-age=60", &[]).await;
    get(&pier, "/other?cc=max-age=60", &[]).await;
    assert_eq!(origin.seen("GET /api/b?cc=max-age=60"), 2);
    assert_eq!(
        origin.seen("GET /other?cc=max-age=60"),
        1,
        "not under the prefix"
    );

    assert_eq!(
        purge("GET", "url=x").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        purge("PURGE", "nothing").await.status,
        StatusCode::BAD_REQUEST
    );
    let req = Request::builder()
        .method("PURGE")
        .uri("/cache/nope?url=http%3A%2F%2Flocalhost%2F")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let unknown = pier_testkit::send(&admin, Proto::H1, req).await.unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// Freshness from `s-maxage` (which a shared cache takes over `max-age`) and from `Expires`.
async fn s_maxage_and_expires_give_freshness(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let shared = "/s?cc=max-age=0,s-maxage=60";
    get(&pier, shared, &[]).await;
    assert!(status(&get(&pier, shared, &[]).await).starts_with("pier; hit"));
    assert_eq!(origin.seen(&format!("GET {shared}")), 1);
    let expires = "/x?expires=Thu,%2001%20Jan%202099%2000:00:00%20GMT";
    get(&pier, expires, &[]).await;
    assert!(status(&get(&pier, expires, &[]).await).starts_with("pier; hit"));
    assert_eq!(origin.seen(&format!("GET {expires}")), 1);
    let expired = "/x?expires=Thu,%2001%20Jan%201970%2000:00:00%20GMT";
    get(&pier, expired, &[]).await;
    get(&pier, expired, &[]).await;
    assert_eq!(origin.seen(&format!("GET {expired}")), 2);
}

/// A body the origin cuts off reaches the client as an error and is not stored; the next
/// request goes to the origin again.
async fn an_aborted_body_is_not_stored(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let target = "/cut?cc=max-age=60&abort=1";
    for _ in 0..2 {
        let req = Request::get(target).body(Full::new(Bytes::new())).unwrap();
        let mut client = pier_testkit::Client::connect(&pier.addr, Proto::H2)
            .await
            .unwrap();
        if let Ok(response) = client.send(req).await {
            let read = http_body_util::BodyExt::collect(response.into_body()).await;
            assert!(read.is_err(), "a cut body ended cleanly");
        }
    }
    assert_eq!(origin.seen(&format!("GET {target}")), 2);
}

/// An unsafe method's success also forgets the same-host URL its `Location` names.
async fn an_unsafe_method_invalidates_its_location_too(storage: Storage) {
    let (origin, addr) = Origin::start().await;
    let Some(pier) = pier_in_front(storage, addr, &[]) else {
        return;
    };
    let other = "/other?cc=max-age=60";
    get(&pier, other, &[]).await;
    get(&pier, other, &[]).await;
    assert_eq!(origin.seen(&format!("GET {other}")), 1);
    send(&pier, "POST", "/make?location=/other%3Fcc=max-age=60", &[]).await;
    get(&pier, other, &[]).await;
    assert_eq!(origin.seen(&format!("GET {other}")), 2);
}

/// A component's outgoing requests through a cache (`outbound_cache`): the second fetch of a
/// cacheable URL is answered from it; a component sharing the cache but not allowed the URL is
/// refused, the stored answer notwithstanding.
#[tokio::test]
async fn guests_outgoing_requests_share_a_cache_under_their_own_policy() {
    let Some(service) = pier_testkit::toolchain_guest("python-p3.wasm") else {
        return;
    };
    let (origin, addr) = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(service, dir.path().join("service.wasm")).unwrap();
    let manifest = format!(
        r#"manifest_version = 1
[[route]]
host = "allowed.test"
path = "/..."
component = "allowed"

[[route]]
host = "denied.test"
path = "/..."
component = "denied"

[component.allowed]
source = "service.wasm"
allowed_outbound = ["http://{addr}"]
outbound_cache = "api"

[component.denied]
source = "service.wasm"
outbound_cache = "api"

[cache.api]
size = "16MiB"
"#
    );
    let pier = serve_manifest(dir.path(), &manifest);
    let url = format!("http://{addr}/o?cc=max-age=60");
    let fetch = |host: &'static str| {
        let url = url.clone();
        let pier = &pier;
        async move { get(pier, "/fetch", &[("host", host), ("x-fetch", url.as_str())]).await }
    };
    let first = fetch("allowed.test").await;
    assert_eq!(first.text(), "status 200: body of /o?cc=max-age=60");
    let second = fetch("allowed.test").await;
    assert_eq!(second.text(), first.text());
    assert_eq!(
        origin.seen("GET /o?cc=max-age=60"),
        1,
        "the second from the cache"
    );
    let denied = fetch("denied.test").await;
    assert_eq!(denied.status, StatusCode::BAD_GATEWAY);
    assert_eq!(denied.text(), "error ErrorCode_HttpRequestDenied\n");
    assert_eq!(origin.seen("GET /o?cc=max-age=60"), 1);
}

/// A reload keeps a cache declared again with the same settings, entries and all; one whose
/// settings changed starts empty.
#[tokio::test]
async fn a_reload_keeps_an_unchanged_cache() {
    let (origin, addr) = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = |size: &str| {
        format!(
            "manifest_version = 1\n[[route]]\npath = \"/...\"\nupstream = \"http://{addr}\"\n\
             cache = \"pages\"\n[cache.pages]\nsize = \"{size}\"\n"
        )
    };
    let path = dir.path().join("pier.toml");
    std::fs::write(&path, manifest("16MiB")).unwrap();
    let pier = PierServer::start(pier(), &[path.to_str().unwrap()]).unwrap();
    let target = "/kept?cc=max-age=60";
    get(&pier, target, &[]).await;
    let reload = |n: usize| {
        pier_testkit::signal(pier.pid(), "HUP").unwrap();
        let waited = std::time::Instant::now();
        while pier.log().matches("reloaded (SIGHUP)").count() < n {
            assert!(waited.elapsed() < Duration::from_secs(30), "{}", pier.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    reload(1);
    assert!(status(&get(&pier, target, &[]).await).starts_with("pier; hit"));
    assert_eq!(origin.seen(&format!("GET {target}")), 1);
    std::fs::write(&path, manifest("32MiB")).unwrap();
    reload(2);
    assert!(status(&get(&pier, target, &[]).await).starts_with("pier; fwd=uri-miss"));
    assert_eq!(origin.seen(&format!("GET {target}")), 2);
}

/// 1,000 concurrent misses for one URL (over 20 HTTP/2 connections) reach the origin once.
#[tokio::test]
async fn a_thousand_concurrent_misses_reach_the_origin_once() {
    let (origin, addr) = Origin::start().await;
    let pier = pier_in_front(Storage::Memory, addr, &["--max-concurrency", "2000"]).unwrap();
    let target = "/herd?cc=max-age=60&delay=500";
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(
            pier_testkit::Client::<Full<Bytes>>::connect(&pier.addr, Proto::H2)
                .await
                .unwrap(),
        );
    }
    let mut all = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let pier_testkit::Client::H2(sender) = &clients[i % 20] else {
            unreachable!("HTTP/2 connections")
        };
        let mut sender = sender.clone();
        all.spawn(async move {
            let req = Request::get(format!("http://localhost{target}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender.ready().await.unwrap();
            let response = sender.send_request(req).await.unwrap();
            pier_testkit::read(response).await.unwrap().status
        });
    }
    while let Some(status) = all.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(origin.seen(&format!("GET {target}")), 1);
}

/// The single-component form: `--outbound-cache` sends the component's outgoing requests
/// through a cache of its own, under its `--allow-outbound` policy: the second and third fetch of
/// a cacheable URL come from it. It has no meaning beside `--upstream` or a manifest (whose
/// components name their caches), and says so.
#[tokio::test]
async fn a_single_component_caches_its_outgoing_requests_with_a_flag() {
    let (origin, addr) = Origin::start().await;
    let app = pier_testkit::guest("forward");
    let allow = format!("http://{addr}");
    let server = PierServer::start(
        pier(),
        &[
            "--outbound-cache",
            "--allow-outbound",
            &allow,
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    let target = addr.to_string();
    for _ in 0..3 {
        let answer = get(
            &server,
            "/o?cc=max-age=60",
            &[("x-forward-to", target.as_str())],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    assert_eq!(origin.seen("GET /o?cc=max-age=60"), 1, "two from the cache");

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pier.toml");
    std::fs::write(&manifest, "manifest_version = 1\n").unwrap();
    for (args, says) in [
        (
            vec!["--outbound-cache", "memory", manifest.to_str().unwrap()],
            "--outbound-cache with a manifest",
        ),
        (
            vec!["--outbound-cache", "memory", "--upstream", allow.as_str()],
            "--upstream has no component",
        ),
    ] {
        let mut all = vec!["serve"];
        all.extend(args);
        pier_testkit::assert_one_line_error(pier(), &all, &[says]);
    }
}
