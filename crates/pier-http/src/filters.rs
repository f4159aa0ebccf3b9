//! The Proxy-Wasm filter chain around a handler, like Envoy's: request phases in filter order,
//! response phases in reverse. Header phases run (and may pause) here; bodies and trailers run
//! through `FilteredBody` as they stream, only for filters that have body callbacks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pier_proxywasm::{
    BodyStep, Direction, Filter, LocalResponse, Outcome, Pairs, Stream, StreamInfo,
};

use crate::body::{BodyError, ResponseBody};

/// The filters of a server, in the order given.
#[derive(Default, Clone)]
pub struct FilterChain(pub Vec<Arc<Filter>>);

/// The streams a request opened, in filter order. They end (`proxy_on_log`...) when the last
/// holder lets go: the response body once sent, and any filtered request body.
pub type Streams = Vec<Arc<Stream>>;

/// A request body on its way to the handler.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

/// How every filter VM of a server runs (the `--filter-*` settings that are not per plugin).
#[derive(Debug, Clone)]
pub struct FilterSettings {
    /// VMs per filter module.
    pub vms: usize,
    /// Linear memory one VM may have.
    pub max_memory: usize,
    /// How long one callback may run.
    pub callback_timeout: std::time::Duration,
    /// How long a paused stream may wait.
    pub pause_timeout: std::time::Duration,
    /// The most body a filter may make the host buffer.
    pub max_buffered: usize,
    /// Bytes all filters' shared data and queues may hold together.
    pub shared_size: usize,
}

/// A filter that cannot be loaded.
pub type LoadError = pier_proxywasm::FilterError;

impl FilterChain {
    /// Loads the filters `specs` describe, in order: plugins that share a VM id and code (see
    /// `pier_config::vm_groups`) run as root contexts of the same VMs.
    pub fn load(
        engine: &wasmtime::Engine,
        specs: &[pier_config::FilterSpec],
        settings: &FilterSettings,
        callouts: Option<Arc<dyn pier_proxywasm::Callouts>>,
    ) -> Result<FilterChain, LoadError> {
        let shared = Arc::new(pier_proxywasm::Shared::new(settings.shared_size));
        let mut chain: Vec<Option<Arc<Filter>>> = vec![None; specs.len()];
        for group in pier_config::vm_groups(specs) {
            let first = &specs[group[0]];
            let vm = pier_proxywasm::VmConfig {
                vm_id: first.vm_id.clone(),
                configuration: first.vm_config.clone().into(),
                env: first.environment(|name| std::env::var(name).ok()),
                vms: settings.vms,
                max_memory: settings.max_memory,
                callback_timeout: settings.callback_timeout,
            };
            let plugins = group
                .iter()
                .map(|&i| {
                    let spec = &specs[i];
                    pier_proxywasm::PluginConfig {
                        name: spec.name.clone().unwrap_or_default(),
                        root_id: spec.root_id.clone(),
                        configuration: spec.config.clone().into(),
                        failure: match spec.failure {
                            pier_config::FilterFailure::FailClosed => {
                                pier_proxywasm::FailurePolicy::FailClosed
                            }
                            pier_config::FilterFailure::FailOpen => {
                                pier_proxywasm::FailurePolicy::FailOpen
                            }
                        },
                        pause_timeout: settings.pause_timeout,
                        max_buffered: settings.max_buffered,
                    }
                })
                .collect();
            let filters = Filter::load(
                engine,
                &first.path,
                vm,
                plugins,
                shared.clone(),
                callouts.clone(),
            )?;
            for (i, filter) in group.into_iter().zip(filters) {
                chain[i] = Some(Arc::new(filter));
            }
        }
        Ok(FilterChain(chain.into_iter().flatten().collect()))
    }
}

impl FilterChain {
    /// Whether there are no filters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every filter's request-headers phase on `parts`. Returns the streams opened, and a
    /// response to send instead of calling the handler when a filter answered (or failed
    /// closed).
    pub async fn on_request(
        &self,
        parts: &mut http::request::Parts,
        end_of_stream: bool,
        peer: std::net::SocketAddr,
        local: Option<std::net::SocketAddr>,
    ) -> (Streams, Option<Response<ResponseBody>>) {
        let info = Arc::new(StreamInfo {
            peer: Some(peer),
            local,
            protocol: if parts.version == http::Version::HTTP_2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            },
            serial: REQUEST_IDS.fetch_add(1, Ordering::Relaxed),
            started: std::time::SystemTime::now(),
        });
        let mut pairs = request_pairs(parts);
        let mut streams = Vec::with_capacity(self.0.len());
        let mut changed = false;
        for filter in &self.0 {
            let (outcome, stream) = filter
                .on_request_headers(info.clone(), &mut pairs, end_of_stream)
                .await;
            streams.extend(stream);
            match outcome {
                Outcome::Continue { changed: c } => changed |= c,
                Outcome::Respond(local) => return (streams, Some(local_response(local))),
                Outcome::Close => return (streams, Some(reset_response())),
            }
        }
        // Filters that only looked leave the head as it came.
        if changed {
            apply_request(parts, pairs);
        }
        (streams, None)
    }

    /// Passes the request body through the filters that look at request bodies. Such a filter
    /// may change the body's length, so `content-length` is dropped from `headers` then.
    pub fn request_body(
        streams: &Streams,
        headers: &mut HeaderMap,
        mut body: RequestBody,
    ) -> RequestBody {
        use http_body_util::BodyExt;
        for stream in streams.iter().filter(|s| s.filters_request_body()) {
            headers.remove(http::header::CONTENT_LENGTH);
            body = FilteredBody::new(body, stream.clone(), Direction::Request)
                .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
                .boxed_unsync();
        }
        body
    }

    /// Runs the response-headers phase of the filters that saw the request, last first, and
    /// passes the body through those that look at response bodies.
    pub async fn on_response(
        streams: &Streams,
        response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let (mut parts, mut body) = response.into_parts();
        let mut pairs: Pairs = Vec::with_capacity(parts.headers.len() + 1);
        pairs.push((
            b":status".to_vec(),
            parts.status.as_str().as_bytes().to_vec(),
        ));
        pairs.extend(
            parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        let end_of_stream = body.is_end_stream();
        let mut changed = false;
        for stream in streams.iter().rev() {
            match stream.on_response_headers(&mut pairs, end_of_stream).await {
                Outcome::Continue { changed: c } => changed |= c,
                Outcome::Respond(local) => return local_response(local),
                Outcome::Close => return reset_response(),
            }
            if stream.filters_response_body() {
                // The filter may change the body's length.
                pairs.retain(|(name, _)| name != b"content-length");
                changed = true;
                body = ResponseBody::Filtered(Box::new(FilteredBody::new(
                    body,
                    stream.clone(),
                    Direction::Response,
                )));
            }
        }
        if !changed {
            return Response::from_parts(parts, body);
        }
        let mut status = parts.status;
        parts.headers = headers_from(&pairs, |name, value| {
            if name == b":status"
                && let Some(s) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .and_then(|v| StatusCode::from_u16(v).ok())
            {
                status = s;
            }
        });
        parts.status = status;
        Response::from_parts(parts, body)
    }
}

/// A body passed through one filter's body and trailer callbacks as it streams. When the filter
/// pauses a body callback, data is held back (up to the filter's buffer limit) and handed to it
/// again with what follows, until it lets the data through or the body ends.
pub struct FilteredBody<B> {
    inner: B,
    stream: Arc<Stream>,
    direction: Direction,
    /// Data the filter has seen but not yet let through.
    held: Vec<u8>,
    /// Trailers to send once the held data is out.
    trailers: Option<HeaderMap>,
    /// The filter paused the end of the body: its resumption.
    waiting: Option<Resumption>,
    done: bool,
}

/// A paused body's resumption: the body to pass on, or `None` to abort it.
type Resumption = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// What feeding data to a body filter gives.
enum Fed {
    /// Data to pass on, if any.
    Pass(Option<Bytes>),
    /// The filter paused the end of the body: wait for it.
    Wait,
}

impl<B> FilteredBody<B> {
    fn new(inner: B, stream: Arc<Stream>, direction: Direction) -> Self {
        FilteredBody {
            inner,
            stream,
            direction,
            held: Vec::new(),
            trailers: None,
            waiting: None,
            done: false,
        }
    }

    fn aborted(&self) -> BodyError {
        format!("filter {} stopped the body", self.stream.filter_name()).into()
    }

    /// Hands the held data (plus `data`) to the filter.
    fn feed(&mut self, data: Option<Bytes>, end: bool) -> Result<Fed, BodyError> {
        if let Some(data) = data {
            if self.held.is_empty() {
                self.held = Vec::from(data);
            } else {
                self.held.extend_from_slice(&data);
            }
        }
        if self.held.len() > self.stream.max_buffered() {
            return Err(format!(
                "filter {} buffered more than {} bytes of body",
                self.stream.filter_name(),
                self.stream.max_buffered()
            )
            .into());
        }
        match self.stream.on_body(self.direction, &mut self.held, end) {
            BodyStep::Abort => Err(self.aborted()),
            BodyStep::Buffer => Ok(Fed::Pass(None)),
            BodyStep::Wait => {
                let held = std::mem::take(&mut self.held);
                let stream = self.stream.clone();
                self.waiting = Some(Box::pin(stream.resume_body(self.direction, held)));
                Ok(Fed::Wait)
            }
            BodyStep::Continue if self.held.is_empty() => Ok(Fed::Pass(None)),
            BodyStep::Continue => Ok(Fed::Pass(Some(Bytes::from(std::mem::take(&mut self.held))))),
        }
    }
}

impl<B> Body for FilteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(waiting) = this.waiting.as_mut() {
                let resumed = ready!(waiting.as_mut().poll(cx));
                this.waiting = None;
                match resumed {
                    Some(data) if !data.is_empty() => {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
                    }
                    Some(_) => continue,
                    None => return Poll::Ready(Some(Err(this.aborted()))),
                }
            }
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    // The end: the filter sees end_of_stream with whatever it held back.
                    this.done = true;
                    match this.feed(None, true) {
                        Ok(Fed::Pass(Some(data))) => {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(Fed::Pass(None) | Fed::Wait) => continue,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => match this.feed(Some(data), false) {
                    Ok(Fed::Pass(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Fed::Pass(None) | Fed::Wait) => continue,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
                Err(frame) => frame,
            };
            let Ok(trailers) = frame.into_trailers() else {
                continue;
            };
            // Trailers end the body: the body callback sees its end, then the trailers
            // callback may change them.
            this.done = true;
            let data = match this.feed(None, true) {
                Ok(Fed::Pass(data)) => data,
                Ok(Fed::Wait) => None,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            let mut pairs = trailer_pairs(&trailers);
            if this.stream.on_trailers(this.direction, &mut pairs) == BodyStep::Abort {
                return Poll::Ready(Some(Err(this.aborted())));
            }
            this.trailers = Some(headers_from(&pairs, |_, _| {}));
            if let Some(data) = data {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none() && self.waiting.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The filter may change the body's length.
        SizeHint::default()
    }
}

fn trailer_pairs(trailers: &HeaderMap) -> Pairs {
    trailers
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn request_pairs(parts: &http::request::Parts) -> Pairs {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut pairs: Pairs = Vec::with_capacity(parts.headers.len() + 4);
    pairs.push((
        b":method".to_vec(),
        parts.method.as_str().as_bytes().to_vec(),
    ));
    pairs.push((b":path".to_vec(), path.as_bytes().to_vec()));
    pairs.push((b":authority".to_vec(), authority.into_bytes()));
    pairs.push((
        b":scheme".to_vec(),
        parts.uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
    ));
    pairs.extend(
        parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    pairs
}

/// Writes the filters' request pairs back into the head: regular headers, and the
/// pseudo-headers `:method`, `:path` and `:authority` (the URI's authority on HTTP/2, `Host`
/// on HTTP/1.1).
fn apply_request(parts: &mut http::request::Parts, pairs: Pairs) {
    let (mut path, mut authority, mut method) = (None, None, None);
    parts.headers = headers_from(&pairs, |name, value| match name {
        b":path" => path = http::uri::PathAndQuery::try_from(value).ok(),
        b":authority" => authority = http::uri::Authority::try_from(value).ok(),
        b":method" => method = http::Method::from_bytes(value).ok(),
        _ => {}
    });
    if let Some(method) = method {
        parts.method = method;
    }
    let original = parts.uri.clone();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(path) = path {
        uri.path_and_query = Some(path);
    }
    if let Some(authority) = authority {
        if uri.authority.is_some() {
            uri.authority = Some(authority);
        } else if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(http::header::HOST, host);
        }
    }
    parts.uri = http::Uri::from_parts(uri).unwrap_or(original);
}

/// Regular headers from pairs (repeated names kept); pseudo-headers go to `pseudo`. Pairs that
/// are not valid HTTP are dropped with a log line.
fn headers_from(pairs: &Pairs, mut pseudo: impl FnMut(&[u8], &[u8])) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if name.starts_with(b":") {
            pseudo(name, value);
            continue;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => {
                tracing::warn!(name = %String::from_utf8_lossy(name), "a filter set an invalid header; dropped")
            }
        }
    }
    headers
}

fn local_response(local: LocalResponse) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(local.body))));
    *response.status_mut() =
        StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = headers_from(&local.headers, |_, _| {});
    response
}

/// The answer to `proxy_close_stream`: the response is aborted (HTTP/1.1: the connection is
/// closed; HTTP/2: the stream is reset).
fn reset_response() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Reset);
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
