//! The request path, in order: limits on the head, the route's cache (a hit is answered
//! there), admission (`--max-concurrency`; a fresh component instance then starts at the pace
//! of [`crate::pace`]), the handler, and the access record that logs the response when it is
//! done. (On a route with filters, the request filters run after admission and the cache
//! behind them.)

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use pier_config::Limits;
use pier_engine::HttpApp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{
    AccessRecord, GuestOutcome, Observed, ResponseBody, busy_response, error_response,
};
use crate::conn::InFlight;
use crate::filters::{FilterChain, RequestBody};
use crate::handler;
use crate::limits::{BodyLimit, LimitedBody, content_length, header_problem};
use crate::pace::Pace;
use crate::upstream::Upstream;

/// What answers requests once the filters have let them through.
#[derive(Clone)]
pub enum Handler {
    /// A `wasi:http/proxy` component, a fresh instance per request.
    Component(Arc<HttpApp>),
    /// A reverse proxy to one origin.
    Upstream(Arc<Upstream>),
    /// Static files under one directory.
    Files(Arc<crate::files::Files>),
    /// WASI 0.3 middleware components in front of one of the others.
    Chain(Arc<crate::middleware::Chain>),
    /// A shared HTTP cache in front of one of the others.
    Cached(Arc<crate::cache::SharedCache>, Box<Handler>),
    /// No route: 404.
    NotFound,
}

/// The address a request made in process (`http://self`) comes from, for filters that ask.
const SELF_PEER: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

/// What the requests of one route share: its handler, its filters, and the limits on them.
pub struct Pipeline {
    handler: Handler,
    /// The route's and component's names on its metrics and access log lines (a manifest's
    /// routes only).
    labels: Option<crate::body::Labels>,
    limits: Limits,
    /// The server's `--max-concurrency` and pace of live instances, shared by every route.
    admission: Admission,
    /// The component's own concurrency limit, shared by every route to it.
    component_limit: Option<Arc<Semaphore>>,
    filters: FilterChain,
    local: Option<std::net::SocketAddr>,
}

impl Pipeline {
    /// The pipeline for `handler` behind `filters` under `limits`, on a server listening at
    /// `local`; requests take a permit of `admission` (and of `component_limit`) or get 503.
    pub(crate) fn new(
        handler: Handler,
        limits: Limits,
        filters: FilterChain,
        local: Option<std::net::SocketAddr>,
        admission: Admission,
        component_limit: Option<Arc<Semaphore>>,
        labels: Option<crate::body::Labels>,
    ) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            handler,
            labels,
            limits,
            admission,
            component_limit,
            filters,
            local,
        })
    }

    /// A 404 pipeline, for tests of what routes where.
    #[cfg(test)]
    pub fn not_found_for_tests() -> Arc<Pipeline> {
        let limits = Limits::default();
        let admission = Admission::new(&limits, 1);
        Pipeline::new(
            Handler::NotFound,
            limits,
            FilterChain::default(),
            None,
            admission,
            None,
            None,
        )
    }

    /// Answers one request, which keeps its connection busy (`in_flight`) until the response
    /// has been sent; with no connection, a request a component made to the app
    /// (`http://self`).
    pub async fn serve<B>(&self, req: Request<B>, in_flight: Option<InFlight>) -> Response<Observed>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let peer = in_flight.as_ref().map_or(SELF_PEER, InFlight::peer);
        let from_outside = in_flight.is_some();
        let mut record = AccessRecord::new(
            req.method().clone(),
            req.uri().clone(),
            Instant::now(),
            in_flight,
        );
        record.labels = self.labels.clone();
        let limits = &self.limits;

        if let Some(problem) =
            header_problem(req.headers(), limits.max_headers, limits.max_header_size)
        {
            return reject(
                record,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &problem,
                "headers_too_large",
            );
        }
        if let Some(declared) = content_length(req.headers()).filter(|&n| n > limits.max_body) {
            let message = format!(
                "request body of {declared} bytes is larger than {} bytes",
                limits.max_body
            );
            return reject(
                record,
                StatusCode::PAYLOAD_TOO_LARGE,
                &message,
                "body_too_large",
            );
        }
        if let Handler::NotFound = self.handler {
            let message = format!("no route for {}", record.uri.path());
            return reject(record, StatusCode::NOT_FOUND, &message, "no_route");
        }
        // A route with a cache and no filters looks up first: a hit is answered here, with no
        // slot of `--max-concurrency` (it runs no guest) and no request body wrapped.
        let mut known = None;
        if let Handler::Cached(cache, _) = &self.handler
            && self.filters.is_empty()
        {
            match crate::cache::lookup(cache, &req).await {
                crate::cache::Looked::Hit(response) => return record.attach(response),
                crate::cache::Looked::Found(found) => known = Some(found),
                crate::cache::Looked::Unsafe => {}
            }
        }
        // Admission: answer at once rather than queue without bound.
        let Ok(permit) = self.admission.concurrency.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::REJECTED, "reason" => "overload").increment(1);
            let response =
                busy_response("server busy: too many requests in progress, retry shortly");
            return record.attach(response);
        };
        let component_permit = match &self.component_limit {
            None => None,
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::counter!(crate::metrics::REJECTED, "reason" => "overload")
                        .increment(1);
                    let response = busy_response(
                        "component busy: too many requests in progress, retry shortly",
                    );
                    return record.attach(response);
                }
            },
        };
        let permit = Permits {
            _server: permit,
            _component: component_permit,
            // A request a component made to the app runs while that component's instance
            // waits for it: it is not held back behind new requests.
            pace: from_outside.then(|| self.admission.pace()),
        };

        let limit = BodyLimit::new(limits.max_body);
        let req = req.map(|body| LimitedBody::new(body, limit.clone()).boxed_unsync());
        if !self.filters.is_empty() {
            // Boxed: the filters' futures would make every request's future that much bigger.
            return Box::pin(self.filtered(req, record, peer, limit, permit)).await;
        }
        // Boxed: what every request's future holds (and hyper moves with it) stays what a hit
        // needs; a request sent on pays one allocation.
        let (response, outcome) = Box::pin(self.handle(req, peer, limit, permit, known)).await;
        record.guest = outcome;
        record.attach(response)
    }

    /// [`serve`](Self::serve)'s last steps on a route with filters: the request through them,
    /// the handler, the response back through them.
    async fn filtered(
        &self,
        req: Request<RequestBody>,
        mut record: AccessRecord,
        peer: std::net::SocketAddr,
        limit: BodyLimit,
        permit: Permits,
    ) -> Response<Observed> {
        // Request-side filters may answer themselves, or change the head the handler sees.
        let (mut parts, body) = req.into_parts();
        let end_of_stream = http_body::Body::is_end_stream(&body);
        let (streams, answered) = self
            .filters
            .on_request(&mut parts, end_of_stream, peer, self.local)
            .await;
        record.streams = streams;
        if let Some(local) = answered {
            return record.attach(local);
        }
        let body = FilterChain::request_body(&record.streams, &mut parts.headers, body);
        let req = Request::from_parts(parts, body);
        let (response, outcome) = self.handle(req, peer, limit, permit, None).await;
        record.guest = outcome;
        let response = FilterChain::on_response(&record.streams, response).await;
        record.attach(response)
    }

    /// Calls the handler; `known`, what the route's cache found for `req` before admission.
    async fn handle(
        &self,
        req: Request<RequestBody>,
        peer: std::net::SocketAddr,
        limit: BodyLimit,
        permit: Permits,
        known: Option<crate::cache::Known>,
    ) -> (Response<ResponseBody>, Option<Arc<GuestOutcome>>) {
        match (&self.handler, known) {
            (Handler::Cached(cache, inner), known @ Some(_)) => {
                cached(cache, inner, req, peer, known, Some(limit), Some(permit)).await
            }
            _ => answer(&self.handler, req, peer, Some(limit), Some(permit)).await,
        }
    }
}

/// Answers `req` (from `peer`, its body under `limit`) with `handler`, holding `permit` while
/// the handler works: for a route, for the last link of a middleware chain, or for what a cache
/// fronts.
pub(crate) async fn answer<B>(
    handler: &Handler,
    req: Request<B>,
    peer: std::net::SocketAddr,
    limit: Option<BodyLimit>,
    permit: Option<Permits>,
) -> (Response<ResponseBody>, Option<Arc<GuestOutcome>>)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    // The futures of components, chains, upstreams and files are boxed: from ~0.6 to a few KiB
    // each, they would make this one, and every future around it (moved with each request),
    // that big, whatever the route (a cache hit answered in a few microseconds among them).
    match handler {
        Handler::Component(app) => {
            Box::pin(handler::handle(app.clone(), req, limit, permit, None)).await
        }
        Handler::Chain(chain) => Box::pin(chain.handle(req, peer, limit, permit)).await,
        Handler::Cached(cache, inner) => cached(cache, inner, req, peer, None, limit, permit).await,
        Handler::Upstream(upstream) => {
            let response = Box::pin(upstream.handle(req, peer)).await;
            drop(permit);
            (response, None)
        }
        Handler::Files(files) => {
            let (head, _body) = req.into_parts();
            let response = Box::pin(files.serve(&head)).await;
            drop(permit);
            (response, None)
        }
        Handler::NotFound => unreachable!("answered before admission"),
    }
}

/// Answers `req` from `cache`, or through `inner` (see [`crate::cache::serve`]).
async fn cached<B>(
    cache: &Arc<crate::cache::SharedCache>,
    inner: &Handler,
    req: Request<B>,
    peer: std::net::SocketAddr,
    known: Option<crate::cache::Known>,
    limit: Option<BodyLimit>,
    permit: Option<Permits>,
) -> (Response<ResponseBody>, Option<Arc<GuestOutcome>>)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let origin = crate::cache::ToHandler::new(inner, peer);
    match crate::cache::serve(cache, origin, req, known, limit, permit).await {
        Ok(answered) => answered,
        // (A handler always answers.)
        Err(e) => (
            error_response(StatusCode::BAD_GATEWAY, &format!("no answer: {e}")),
            None,
        ),
    }
}

/// The permits a request in a guest holds: the server's, and its component's if it has a limit
/// of its own; and the pace its instance is to start at (none for a request a component made
/// to the app).
pub struct Permits {
    _server: OwnedSemaphorePermit,
    _component: Option<OwnedSemaphorePermit>,
    pub(crate) pace: Option<Arc<Pace>>,
}

/// What a server admits requests by, shared by every route of every version of its routes:
/// `--max-concurrency`, for all its threads, and the pace of live instances, one for each
/// serving thread (each runs the instances of the requests it accepted).
#[derive(Clone)]
pub(crate) struct Admission {
    concurrency: Arc<Semaphore>,
    paces: Arc<[Arc<Pace>]>,
}

impl Admission {
    /// The admission `limits` ask for, for a server of `threads` serving threads.
    pub(crate) fn new(limits: &Limits, threads: usize) -> Admission {
        Admission {
            concurrency: Arc::new(Semaphore::new(limits.max_concurrency)),
            paces: (0..threads.max(1))
                .map(|_| Arc::new(Pace::new(1)))
                .collect(),
        }
    }

    /// The calling serving thread's pace.
    fn pace(&self) -> Arc<Pace> {
        let slot = pier_threads::slot(self.paces.len());
        self.paces[slot].clone()
    }
}

fn reject(
    record: AccessRecord,
    status: StatusCode,
    message: &str,
    reason: &'static str,
) -> Response<Observed> {
    record.attach(reject_response(status, message, reason))
}

fn reject_response(
    status: StatusCode,
    message: &str,
    reason: &'static str,
) -> Response<crate::body::ResponseBody> {
    metrics::counter!(crate::metrics::REJECTED, "reason" => reason).increment(1);
    error_response(status, message)
}
