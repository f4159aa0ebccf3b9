//! The shared HTTP cache ([`pier_cache`]), both ways: in front of a route's handler (after the
//! route's request filters and before its handler, so a filter that refuses a request refuses
//! it on a hit too, and the response filters see what is sent, hit or miss), and in front of a
//! component's outgoing client ([`CachedOutbound`], after the component's policy check). A hit
//! costs no instance and no origin request. What the cache fronts is a [`Fetch`].
//!
//! - `GET` (and `HEAD`, answered from a stored `GET`): a fresh stored response is sent with its
//!   `Age` (a conditional request gets its `304`, a one-range request its `206`); a stale one is
//!   revalidated with its validators (a `304` refreshes it), or sent while it is revalidated in
//!   the background (`stale-while-revalidate`), or sent in place of the origin's failure
//!   (`stale-if-error`); a miss goes to the handler and, if storable, is kept as its body
//!   streams to the client (an aborted or oversize body is not kept). `only-if-cached` with
//!   nothing usable stored: `504`.
//! - Concurrent misses for one URL wait for the first one's response instead of each asking the
//!   origin (request collapsing), for at most [`COLLAPSE_WAIT`].
//! - A successful unsafe method (`POST`, `PUT`, `DELETE`, ...) forgets what is stored for its
//!   URL, and for the URLs its `Location` and `Content-Location` name on the same host.
//! - Every response says what happened in `Cache-Status` (RFC 9211).
//! - Request fields that could change an answer without being in the key (`X-Forwarded-Host`
//!   and the like, [`UNKEYED`]) are not passed on, so no client can have a poisoned response
//!   stored for others.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header, request};
use http_body::{Body, Frame, SizeHint};
use pier_cache::{Cache, CacheStatus, Entry, Forward, Lookup, MemoryStore, RedisStore, Store};
use tokio::sync::watch;

use crate::body::{BodyError, GuestOutcome, ResponseBody, error_response};
use crate::conditional::{self, Condition};
use crate::filters::RequestBody;
use crate::limits::BodyLimit;
use crate::service::{Handler, Permits, answer};

/// Longest a request waits for another's fetch of the same URL before sending its own.
pub const COLLAPSE_WAIT: Duration = Duration::from_secs(10);

/// Request fields that origins and frameworks commonly let change a response (the host, scheme
/// or path they think they serve, the method) but that are not part of the cache's key: removed
/// from `GET` and `HEAD` requests through a cache.
const UNKEYED: [&str; 9] = [
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A response, and how its guest ended if a guest answered it.
type Answered = (Response<ResponseBody>, Option<Arc<GuestOutcome>>);

/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: &str = "cache-status";

/// One named cache as the server uses it: its store, and the fetches in flight.
pub struct SharedCache {
    cache: Cache,
    spec: pier_config::CacheSpec,
    /// URLs being fetched, each with what tells the requests waiting for it that it is done
    /// (its sender is dropped).
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
    counts: Counts,
}

impl SharedCache {
    /// The cache `name` as `spec` describes it. (A Redis store is connected on first use: a
    /// server away at start is a cache that misses, not a server that does not start.)
    pub fn new(name: &str, spec: &pier_config::CacheSpec) -> anyhow::Result<Arc<SharedCache>> {
        let store = match &spec.store {
            pier_config::CacheStore::Memory => {
                let evicted = metrics::counter!(crate::metrics::CACHE_EVICTED_BYTES, "cache" => name.to_string());
                Store::Memory(MemoryStore::new(spec.size, move |bytes| {
                    evicted.increment(bytes)
                }))
            }
            pier_config::CacheStore::Redis { url, prefix } => {
                let errors = metrics::counter!(crate::metrics::CACHE_STORE_ERRORS, "cache" => name.to_string());
                let prefix = pier_config::CacheSpec::redis_prefix(name, prefix.as_deref());
                let redis = RedisStore::new(url, &prefix, move || errors.increment(1))
                    .map_err(|e| anyhow::anyhow!("cache {name}: {e}"))?;
                Store::Redis(Box::new(redis))
            }
        };
        Ok(Arc::new(SharedCache {
            cache: Cache::new(name, store, spec.max_entry),
            spec: spec.clone(),
            inflight: Mutex::default(),
            counts: Counts::new(name),
        }))
    }

    /// What it was made from.
    pub fn spec(&self) -> &pier_config::CacheSpec {
        &self.spec
    }

    /// The cache itself.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Leads the fetch of `key`, or, when another request leads it, what tells when it is done.
    fn join(self: &Arc<Self>, key: &str) -> Result<Leading, watch::Receiver<()>> {
        match self.inflight.lock().unwrap().entry(key.to_string()) {
            Slot::Occupied(fetch) => Err(fetch.get().clone()),
            Slot::Vacant(slot) => {
                let (done, waiting) = watch::channel(());
                slot.insert(waiting);
                Ok(Leading {
                    shared: self.clone(),
                    key: key.to_string(),
                    _done: done,
                })
            }
        }
    }

    /// Forgets what is stored for `uri`, and for the same-host URLs `headers`' `Location` and
    /// `Content-Location` name.
    async fn invalidate(&self, uri: &Uri, headers: &HeaderMap) {
        self.cache.invalidate(uri).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(target) = target.parse::<Uri>() else {
                continue;
            };
            let same_host = target
                .authority()
                .is_none_or(|a| Some(a) == uri.authority());
            if !same_host {
                continue;
            }
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = target.path_and_query().cloned();
            if let Ok(other) = Uri::from_parts(parts) {
                self.cache.invalidate(&other).await;
            }
        }
    }
}

/// A cache's request counters, registered once.
struct Counts {
    hit: metrics::Counter,
    stale: metrics::Counter,
    revalidated: metrics::Counter,
    miss: metrics::Counter,
    bypass: metrics::Counter,
    collapsed: metrics::Counter,
    stored_bytes: metrics::Counter,
}

impl Counts {
    fn new(cache: &str) -> Counts {
        let count = |result: &'static str| metrics::counter!(crate::metrics::CACHE_REQUESTS, "cache" => cache.to_string(), "result" => result);
        Counts {
            hit: count("hit"),
            stale: count("stale"),
            revalidated: count("revalidated"),
            miss: count("miss"),
            bypass: count("bypass"),
            collapsed: count("collapsed"),
            stored_bytes: metrics::counter!(crate::metrics::CACHE_STORED_BYTES, "cache" => cache.to_string()),
        }
    }
}

/// The fetch of one URL that other requests for it wait for; done when dropped (once its
/// response is stored, or known not to be).
struct Leading {
    shared: Arc<SharedCache>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.shared.inflight.lock().unwrap().remove(&self.key);
    }
}

/// A fetch's answer, or why there is none (an outgoing request that failed).
type Fetched = Result<Answered, wasmtime_wasi_http::Error>;

/// Where a cache's misses and revalidations go: a route's handler ([`ToHandler`]), or a
/// component's outgoing client ([`CachedOutbound`]).
pub(crate) trait Fetch: Clone + Send + Sync + 'static {
    /// Sends `req` on, `limit` and `permit` being the request's.
    fn fetch(
        &self,
        req: Request<RequestBody>,
        limit: Option<BodyLimit>,
        permit: Option<Permits>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + '_>>;
}

/// A route's handler, as the cache in front of it reaches it.
#[derive(Clone)]
pub(crate) struct ToHandler {
    handler: Handler,
    peer: SocketAddr,
}

impl ToHandler {
    pub(crate) fn new(handler: &Handler, peer: SocketAddr) -> ToHandler {
        ToHandler {
            handler: handler.clone(),
            peer,
        }
    }
}

impl Fetch for ToHandler {
    fn fetch(
        &self,
        req: Request<RequestBody>,
        limit: Option<BodyLimit>,
        permit: Option<Permits>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + '_>> {
        Box::pin(async move { Ok(answer(&self.handler, req, self.peer, limit, permit).await) })
    }
}

/// Answers `req` from `shared` or through `origin` (see the module's description). `known` is
/// what a [`lookup`] made for `req` already found (a route looks up before admission). `permit`
/// and `limit` are the request's, as for the origin alone. (Boxed: a handler behind a cache is
/// answered by [`answer`], which calls this for the cache.)
pub(crate) fn serve<'a, B, F>(
    shared: &'a Arc<SharedCache>,
    origin: F,
    req: Request<B>,
    known: Option<Known>,
    limit: Option<BodyLimit>,
    permit: Option<Permits>,
) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
    F: Fetch,
{
    use http_body_util::BodyExt;

    let req = req.map(|body| body.map_err(Into::into).boxed_unsync());
    Box::pin(async move {
        let known = match known {
            Some(known) => known,
            None => match lookup(shared, &req).await {
                Looked::Hit(response) => return Ok((response, None)),
                Looked::Found(known) => known,
                Looked::Unsafe => {
                    let uri = effective_uri(&req);
                    return Box::pin(serve_unsafe(shared, &origin, req, uri, limit, permit)).await;
                }
            },
        };
        Box::pin(serve_stored(shared, &origin, req, known, limit, permit)).await
    })
}

/// What the store holds for a request, looked up before anything else is done for it.
pub(crate) enum Looked {
    /// A fresh entry, and a request with no directives of its own: its answer.
    Hit(Response<ResponseBody>),
    /// A `GET` or `HEAD` request that takes more than the stored entry (a miss, a stale entry,
    /// directives of its own, a variant to choose): what was found, for [`serve`].
    Found(Known),
    /// A method other than `GET` and `HEAD`: nothing looked up.
    Unsafe,
}

/// Looks `req` up in `shared`: the common case, a plain hit, is answered at once (a route does
/// this before admission, so a hit holds no slot of `--max-concurrency` and its request body
/// is never wrapped).
pub(crate) fn lookup<'a, B>(
    shared: &'a SharedCache,
    req: &'a Request<B>,
) -> impl Future<Output = Looked> + Send + 'a {
    let method = req.method();
    let uri = (method == Method::GET || method == Method::HEAD).then(|| effective_uri(req));
    let headers = req.headers();
    async move {
        let Some(uri) = uri else {
            return Looked::Unsafe;
        };
        let key = pier_cache::key(&uri);
        let stored = shared.cache.stored(&key).await;
        let now = SystemTime::now();
        if let Some(entry) = shared.cache.fresh(&stored, headers, now) {
            shared.counts.hit.increment(1);
            return Looked::Hit(plain_hit(&entry, method, headers, now));
        }
        Looked::Found(Known { uri, key, stored })
    }
}

/// [`from_entry`] for a fresh entry and a request with no directives of its own. Without
/// conditions or a range its head depends only on `Age` and `ttl`: built once, then cloned by
/// the hits that find the same two (the next second or so of hits).
fn plain_hit(
    entry: &Entry,
    method: &Method,
    headers_in: &HeaderMap,
    now: SystemTime,
) -> Response<ResponseBody> {
    let (age, ttl) = (entry.age(now), entry.ttl(now));
    let plain = entry.status != StatusCode::OK || !has_conditions(headers_in);
    if plain && let Some(head) = entry.hit_head.get(age, ttl) {
        let mut response = Response::new(answer_body(method, entry.body.clone()));
        *response.status_mut() = entry.status;
        *response.headers_mut() = head;
        return response;
    }
    let response = from_entry(entry, method, headers_in, &CacheStatus::hit(ttl), now);
    if plain {
        entry.hit_head.keep(age, ttl, response.headers().clone());
    }
    response
}

/// A request with a method other than `GET` and `HEAD`: sent on, and if it succeeds and is not
/// safe, what is stored for its URL (and the URLs its response names) forgotten.
async fn serve_unsafe<F: Fetch>(
    shared: &Arc<SharedCache>,
    origin: &F,
    req: Request<RequestBody>,
    uri: Uri,
    limit: Option<BodyLimit>,
    permit: Option<Permits>,
) -> Fetched {
    let method = req.method().clone();
    let (mut response, outcome) = origin.fetch(req, limit, permit).await?;
    let safe = matches!(method, Method::OPTIONS | Method::TRACE);
    let status = response.status();
    if !safe && (status.is_success() || status.is_redirection()) {
        shared.invalidate(&uri, response.headers()).await;
    }
    shared.counts.bypass.increment(1);
    mark(&mut response, &CacheStatus::forward(Forward::Method));
    Ok((response, outcome))
}

/// What a `GET` or `HEAD` request found: its URL, its key, and what is stored there.
pub(crate) struct Known {
    uri: Uri,
    key: String,
    stored: pier_cache::Stored,
}

/// A `GET` or `HEAD` request that is not a plain hit: its own directives, a stale or missing
/// entry, or a variant to choose.
async fn serve_stored<F: Fetch>(
    shared: &Arc<SharedCache>,
    origin: &F,
    req: Request<RequestBody>,
    known: Known,
    limit: Option<BodyLimit>,
    permit: Option<Permits>,
) -> Fetched {
    let Known {
        uri,
        key,
        mut stored,
    } = known;
    let method = req.method().clone();
    // Fields that could change the answer without being part of the key are not passed on: a
    // client cannot have a poisoned response stored for everyone.
    let mut req = req;
    for name in UNKEYED {
        req.headers_mut().remove(name);
    }
    // The request as the cache sees it: a GET (a HEAD is answered from one) for the absolute
    // URL, its Host the URL's authority whatever the protocol said.
    let keyed = keyed(&req, &uri);
    let mut collapsed = false;
    let (status, leading) = loop {
        let now = SystemTime::now();
        match shared.cache.lookup(&stored, &keyed, now) {
            Lookup::Fresh(entry) => {
                if collapsed {
                    shared.counts.collapsed.increment(1);
                } else {
                    shared.counts.hit.increment(1);
                }
                let mut status = CacheStatus::hit(entry.ttl(now));
                status.collapsed = collapsed;
                return Ok((
                    from_entry(&entry, req.method(), req.headers(), &status, now),
                    None,
                ));
            }
            Lookup::Stale {
                entry,
                revalidate,
                while_revalidating,
            } => {
                if while_revalidating {
                    if let Ok(leading) = shared.join(&key) {
                        tokio::spawn(refresh(
                            shared.clone(),
                            origin.clone(),
                            entry.clone(),
                            keyed.clone(),
                            revalidate,
                            leading,
                        ));
                    }
                    shared.counts.stale.increment(1);
                    let mut status = CacheStatus::hit(entry.ttl(now));
                    status.fwd = Some(Forward::Stale);
                    status.detail = Some("stale-while-revalidate");
                    return Ok((
                        from_entry(&entry, req.method(), req.headers(), &status, now),
                        None,
                    ));
                }
                if only_if_cached(req.headers()) {
                    return Ok((not_cached(), None));
                }
                let leading = shared.join(&key).ok();
                let fetched = origin
                    .fetch(empty_request(*revalidate), limit, permit)
                    .await;
                let now = SystemTime::now();
                let mut status = CacheStatus::forward(forward_reason(req.headers()));
                let (response, outcome) = match fetched {
                    Ok(answered) => answered,
                    // No answer at all: stale-if-error, or the failure.
                    Err(e) if entry.usable_on_error(now) => {
                        tracing::debug!(cache = shared.cache.name(), "revalidation failed: {e}");
                        (
                            crate::body::error_response(StatusCode::BAD_GATEWAY, "unreachable"),
                            None,
                        )
                    }
                    Err(e) => return Err(e),
                };
                status.fwd_status = Some(response.status().as_u16());
                return Ok(
                    match revalidated(shared, &entry, &keyed, response, now).await {
                        Revalidated::Refreshed(entry) => {
                            shared.counts.revalidated.increment(1);
                            status.ttl = Some(entry.ttl(now));
                            (
                                from_entry(&entry, req.method(), req.headers(), &status, now),
                                None,
                            )
                        }
                        Revalidated::Failed => {
                            shared.counts.stale.increment(1);
                            status.hit = true;
                            status.ttl = Some(entry.ttl(now));
                            status.detail = Some("stale-if-error");
                            (
                                from_entry(&entry, req.method(), req.headers(), &status, now),
                                None,
                            )
                        }
                        Revalidated::Replaced(response) => {
                            shared.counts.miss.increment(1);
                            let stored =
                                store_through(shared, *response, &keyed, &uri, leading, status);
                            (stored, outcome)
                        }
                    },
                );
            }
            Lookup::Miss { vary } => {
                if only_if_cached(req.headers()) {
                    return Ok((not_cached(), None));
                }
                let why = if vary {
                    Forward::VaryMiss
                } else {
                    Forward::UriMiss
                };
                match shared.join(&key) {
                    Ok(leading) => break (CacheStatus::forward(why), Some(leading)),
                    Err(mut done) if !collapsed => {
                        collapsed = true;
                        let _ = tokio::time::timeout(COLLAPSE_WAIT, done.changed()).await;
                        stored = shared.cache.stored(&key).await;
                    }
                    // Waited once already: fetch without leading.
                    Err(_) => break (CacheStatus::forward(why), None),
                }
            }
        }
    };
    shared.counts.miss.increment(1);
    let head = method == Method::HEAD;
    let (response, outcome) = origin.fetch(req, limit, permit).await?;
    let mut status = status;
    status.fwd_status = Some(response.status().as_u16());
    if head {
        let mut response = response;
        mark(&mut response, &status);
        return Ok((response, outcome));
    }
    Ok((
        store_through(shared, response, &keyed, &uri, leading, status),
        outcome,
    ))
}

/// How a revalidation ended.
enum Revalidated {
    /// `304`: the stored response, refreshed.
    Refreshed(Arc<Entry>),
    /// The origin failed and `stale-if-error` lets the stored response be sent.
    Failed,
    /// Anything else: a new response, in place of the stored one.
    Replaced(Box<Response<ResponseBody>>),
}

/// What the origin's `response` to the revalidation of `entry` makes of it.
async fn revalidated(
    shared: &SharedCache,
    entry: &Arc<Entry>,
    keyed: &request::Parts,
    response: Response<ResponseBody>,
    now: SystemTime,
) -> Revalidated {
    let code = response.status();
    if code == StatusCode::NOT_MODIFIED {
        let (parts, _) = response.into_parts();
        return Revalidated::Refreshed(shared.cache.refresh(entry, keyed, &parts, now).await);
    }
    let failed = matches!(code.as_u16(), 500 | 502 | 503 | 504);
    if failed && entry.usable_on_error(now) {
        return Revalidated::Failed;
    }
    Revalidated::Replaced(Box::new(response))
}

/// Revalidates `entry` in the background (`stale-while-revalidate`), storing what comes back.
async fn refresh<F: Fetch>(
    shared: Arc<SharedCache>,
    origin: F,
    entry: Arc<Entry>,
    keyed: request::Parts,
    revalidate: Box<request::Parts>,
    leading: Leading,
) {
    use http_body_util::BodyExt;

    let uri = keyed.uri.clone();
    let Ok((response, _)) = origin.fetch(empty_request(*revalidate), None, None).await else {
        return;
    };
    let now = SystemTime::now();
    if let Revalidated::Replaced(response) =
        revalidated(&shared, &entry, &keyed, response, now).await
    {
        let status = CacheStatus::forward(Forward::Stale);
        let stored = store_through(&shared, *response, &keyed, &uri, Some(leading), status);
        // Read it through, so that it is stored.
        let _ = stored.into_body().collect().await;
    }
}

/// `response` on its way to the client, stored as its body streams if the cache may keep it.
fn store_through(
    shared: &Arc<SharedCache>,
    response: Response<ResponseBody>,
    keyed: &request::Parts,
    uri: &Uri,
    leading: Option<Leading>,
    mut status: CacheStatus,
) -> Response<ResponseBody> {
    let now = SystemTime::now();
    let (mut parts, body) = response.into_parts();
    let too_big = content_length(&parts.headers).is_some_and(|n| n > shared.cache.max_entry());
    let policy = (!too_big && parts.status != StatusCode::PARTIAL_CONTENT)
        .then(|| shared.cache.policy(keyed, &parts, now))
        .flatten();
    let Some(policy) = policy else {
        mark_parts(&mut parts.headers, &status);
        return Response::from_parts(parts, body);
    };
    let stored = Storing {
        inner: body,
        kept: BytesMut::new(),
        keep: true,
        expected: content_length(&parts.headers),
        saving: None,
        store: Some(ToStore {
            shared: shared.clone(),
            keyed: keyed.clone(),
            uri: uri.clone(),
            policy,
            status: parts.status,
            headers: parts.headers.clone(),
            received: now,
        }),
        leading,
    };
    status.stored = true;
    mark_parts(&mut parts.headers, &status);
    Response::from_parts(parts, ResponseBody::Storing(Box::new(stored)))
}

/// What a [`Storing`] body stores when it ends cleanly.
struct ToStore {
    shared: Arc<SharedCache>,
    keyed: request::Parts,
    uri: Uri,
    policy: pier_cache::CachePolicy,
    status: StatusCode,
    headers: HeaderMap,
    received: SystemTime,
}

/// A response body kept as it streams to the client, and stored when it has ended cleanly
/// within the cache's entry size (an error, trailers, or too many bytes: not stored).
///
/// Its last frame goes to the client once the entry is stored (at once in memory; when Redis
/// has answered, or given up, otherwise): a client that has the whole response finds it
/// stored on its next request, and the requests waiting for this fetch find it too.
pub struct Storing {
    inner: ResponseBody,
    kept: BytesMut,
    keep: bool,
    /// Its `Content-Length`, when it has one: all of it has come when that much has.
    expected: Option<u64>,
    store: Option<ToStore>,
    leading: Option<Leading>,
    /// The entry being stored, and the frame held back meanwhile.
    saving: Option<(Saving, Option<BodyFrame>)>,
}

/// A frame of a response body, or its error.
type BodyFrame = Result<Frame<Bytes>, BodyError>;

/// The storing of an entry, under way.
type Saving = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Storing {
    /// The body has ended (cleanly if `keep`): what stores it, if all of it was kept. The
    /// requests waiting for this fetch look again once that is done.
    fn finish(&mut self) -> Option<Saving> {
        let leading = self.leading.take();
        let store = self.store.take().filter(|_| self.keep)?;
        let body = std::mem::take(&mut self.kept).freeze();
        let bytes = body.len() as u64;
        let entry = Entry::new(
            &store.keyed,
            store.policy,
            store.status,
            &store.headers,
            body,
            store.received,
        );
        Some(Box::pin(async move {
            store.shared.cache.store(&store.uri, entry).await;
            store.shared.counts.stored_bytes.increment(bytes);
            drop(leading);
        }))
    }
}

impl Drop for Storing {
    /// A client gone while its response was being stored: the storing goes on without it.
    fn drop(&mut self) {
        if let Some((saving, _)) = self.saving.take() {
            tokio::spawn(saving);
        }
    }
}

impl Body for Storing {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some((saving, _)) = &mut this.saving {
            std::task::ready!(saving.as_mut().poll(cx));
            let (_, held) = this.saving.take().expect("saving");
            return Poll::Ready(held);
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let saving = match &frame {
            Some(Ok(frame)) => {
                match frame.data_ref() {
                    Some(data) if this.keep => {
                        let max = this
                            .store
                            .as_ref()
                            .map_or(0, |s| s.shared.cache.max_entry());
                        if (this.kept.len() + data.len()) as u64 > max {
                            this.keep = false;
                            this.kept = BytesMut::new();
                        } else {
                            this.kept.extend_from_slice(data);
                        }
                    }
                    Some(_) => {}
                    None => this.keep = false,
                }
                // A body of known length may not be polled past its last bytes.
                let complete = this.expected == Some(this.kept.len() as u64);
                if this.keep && (complete || this.inner.is_end_stream()) {
                    this.finish()
                } else {
                    None
                }
            }
            Some(Err(_)) => {
                this.keep = false;
                this.finish()
            }
            None => this.finish(),
        };
        match saving {
            Some(saving) => {
                this.saving = Some((saving, frame));
                self.poll_frame(cx)
            }
            None => Poll::Ready(frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.saving.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = match &self.saving {
            Some((_, Some(Ok(frame)))) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        crate::body::size_hint_plus(self.inner.size_hint(), held)
    }
}

/// The response from `entry` to a request (its `method` and `headers_in`), at `now`, with
/// `status`: its stored head with `Age`, or what the request's conditions or range make of it
/// (`304`, `412`, `206`, `416`).
fn from_entry(
    entry: &Entry,
    method: &Method,
    headers_in: &HeaderMap,
    status: &CacheStatus,
    now: SystemTime,
) -> Response<ResponseBody> {
    // Sized for what is added below (`Age`, `Cache-Status`, `Content-Length` or
    // `Content-Range`), so adding them does not grow it.
    let mut headers = HeaderMap::with_capacity(entry.headers.len() + 4);
    for (name, value) in &entry.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(header::AGE, HeaderValue::from(entry.age(now)));
    let mut code = entry.status;
    let mut body = entry.body.clone();
    if entry.status == StatusCode::OK && has_conditions(headers_in) {
        let etag = entry
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok());
        let last_modified = entry
            .headers
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok());
        let modified = last_modified.and_then(|d| httpdate::parse_http_date(d).ok());
        match conditional::evaluate(headers_in, etag, modified) {
            Condition::NotModified => {
                code = StatusCode::NOT_MODIFIED;
                body = Bytes::new();
                headers.remove(header::CONTENT_LENGTH);
            }
            Condition::Failed => {
                code = StatusCode::PRECONDITION_FAILED;
                body = Bytes::new();
            }
            Condition::Proceed => {
                let len = entry.body.len() as u64;
                match conditional::range(headers_in, len, etag, last_modified) {
                    Ok(Some((first, last))) => {
                        code = StatusCode::PARTIAL_CONTENT;
                        body = entry.body.slice(first as usize..=last as usize);
                        headers.insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
                                .expect("digits"),
                        );
                    }
                    Ok(None) => {}
                    Err(()) => {
                        code = StatusCode::RANGE_NOT_SATISFIABLE;
                        body = Bytes::new();
                        headers.insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes */{len}")).expect("digits"),
                        );
                    }
                }
            }
        }
    }
    if code != StatusCode::NOT_MODIFIED && content_length(&headers) != Some(body.len() as u64) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    mark_parts(&mut headers, status);
    let mut response = Response::new(answer_body(method, body));
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    response
}

/// `body` as the answer to a request with `method` (none to a `HEAD`).
fn answer_body(method: &Method, body: Bytes) -> ResponseBody {
    if *method == Method::HEAD || body.is_empty() {
        ResponseBody::Full(None)
    } else {
        ResponseBody::Full(Some(body))
    }
}

/// Whether a request has preconditions or asks for a range (what can make a stored `200`
/// something else).
fn has_conditions(headers: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::RANGE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

/// `504` for an `only-if-cached` request with nothing usable stored (RFC 9111 §5.2.1.7).
fn not_cached() -> Response<ResponseBody> {
    let mut response = error_response(
        StatusCode::GATEWAY_TIMEOUT,
        "only-if-cached: no stored response for the request",
    );
    let mut status = CacheStatus::forward(Forward::UriMiss);
    status.detail = Some("only-if-cached");
    mark(&mut response, &status);
    response
}

fn mark(response: &mut Response<ResponseBody>, status: &CacheStatus) {
    mark_parts(response.headers_mut(), status);
}

fn mark_parts(headers: &mut HeaderMap, status: &CacheStatus) {
    headers.append(CACHE_STATUS, status.header());
}

/// Why a request with a stored response went to the origin: its own directives, or the
/// response's staleness.
fn forward_reason(headers: &HeaderMap) -> Forward {
    let says = |directive: &str| {
        headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .chain(headers.get_all(header::PRAGMA))
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case(directive))
    };
    if says("no-cache") || says("max-age=0") {
        Forward::Request
    } else {
        Forward::Stale
    }
}

fn only_if_cached(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The URL a request is for: its scheme (the connection's for HTTP/1.1), authority (`Host` on
/// HTTP/1.1) and path with query.
fn effective_uri<B>(req: &Request<B>) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(pier_engine::p3::scheme(req));
    parts.authority = pier_engine::p3::authority(req)
        .or_else(|| Some(http::uri::Authority::from_static("localhost")));
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).expect("scheme, authority and path make a URI")
}

/// `req`'s head as the cache judges it: a `GET` of `uri`, its `Host` the URI's authority.
fn keyed<B>(req: &Request<B>, uri: &Uri) -> request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::GET;
    parts.uri = uri.clone();
    parts.headers = req.headers().clone();
    if let Some(authority) = uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    parts
}

/// A request with `head` and no body (a revalidation).
fn empty_request(head: request::Parts) -> Request<RequestBody> {
    use http_body_util::BodyExt;

    let empty = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {});
    Request::from_parts(head, empty.boxed_unsync())
}

/// A component's outgoing requests through a shared cache (`outbound_cache = "NAME"`): checked
/// against the component's own outbound policy first, so a stored answer never reaches a guest
/// that could not have made the request; then answered as a route's requests are.
pub struct CachedOutbound {
    shared: Arc<SharedCache>,
    policy: Arc<pier_config::OutboundPolicy>,
    client: Arc<dyn pier_engine::Outbound>,
}

impl CachedOutbound {
    /// `client`'s requests through `shared`, under `policy`.
    pub fn new(
        shared: Arc<SharedCache>,
        policy: pier_config::OutboundPolicy,
        client: Arc<dyn pier_engine::Outbound>,
    ) -> CachedOutbound {
        CachedOutbound {
            shared,
            policy: Arc::new(policy),
            client,
        }
    }
}

/// The client behind a [`CachedOutbound`], with one request's options.
#[derive(Clone)]
struct ToClient {
    client: Arc<dyn pier_engine::Outbound>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
}

impl Fetch for ToClient {
    fn fetch(
        &self,
        req: Request<RequestBody>,
        _limit: Option<BodyLimit>,
        _permit: Option<Permits>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + '_>> {
        Box::pin(async move {
            let response = self.client.send(req, self.options).await?;
            let body = |body| ResponseBody::guest(body, Arc::new(GuestOutcome::default()));
            Ok((response.map(body), None))
        })
    }
}

impl pier_engine::Outbound for CachedOutbound {
    fn send(
        &self,
        request: Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
    ) -> Pin<
        Box<
            dyn Future<
                    Output = Result<
                        Response<wasmtime_wasi_http::WasiBody>,
                        wasmtime_wasi_http::Error,
                    >,
                > + Send,
        >,
    > {
        use http_body_util::BodyExt;

        let uri = request.uri();
        let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let scheme = if tls { "https" } else { "http" };
        if let Err(denied) = self
            .policy
            .check_url(scheme, uri.host().unwrap_or_default(), port)
        {
            pier_engine::warn_denied(&format!("outgoing request denied: {denied}"));
            metrics::counter!(crate::metrics::OUTBOUND_REQUESTS, "result" => "denied").increment(1);
            return Box::pin(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let shared = self.shared.clone();
        let origin = ToClient {
            client: self.client.clone(),
            options,
        };
        Box::pin(async move {
            let (response, _) = serve(&shared, origin, request, None, None, None).await?;
            // A body that ends in an error reaches the guest as an incomplete response.
            Ok(response.map(|body| {
                body.map_err(|_| wasmtime_wasi_http::Error::HttpResponseIncomplete)
                    .boxed_unsync()
            }))
        })
    }
}
