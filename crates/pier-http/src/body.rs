//! Response bodies: pier's own short answers, and a guest's streamed body that is aborted if the
//! guest fails before finishing it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// An error that ends a response body early: the client sees the response aborted (HTTP/1.1:
/// the connection is closed; HTTP/2: the stream is reset), never a truncated body passed off as
/// complete.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How the guest's call ended, published before its store (and so its body sender) is dropped.
/// Starts as "still running" (0).
#[derive(Debug, Default)]
pub struct GuestOutcome {
    state: AtomicU8,
    micros: AtomicU64,
}

const SUCCEEDED: u8 = 1;
const FAILED: u8 = 2;

impl GuestOutcome {
    /// Records how the guest call ended and how long it ran.
    pub fn set(&self, ok: bool, elapsed: Duration) {
        self.micros
            .store(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.state
            .store(if ok { SUCCEEDED } else { FAILED }, Ordering::Release);
    }

    fn failed(&self) -> bool {
        self.state.load(Ordering::Acquire) == FAILED
    }

    /// Time the guest ran, once it has finished.
    pub fn elapsed(&self) -> Option<Duration> {
        (self.state.load(Ordering::Acquire) != 0)
            .then(|| Duration::from_micros(self.micros.load(Ordering::Relaxed)))
    }
}

/// The body of every response pier sends.
pub enum ResponseBody {
    /// A complete body held in memory (pier's own responses).
    Full(Option<Bytes>),
    /// A guest's body, streamed as the guest writes it.
    Guest {
        inner: HyperOutgoingBody,
        outcome: Arc<GuestOutcome>,
    },
    /// A body passing through a filter's body callbacks.
    Filtered(Box<crate::filters::FilteredBody<ResponseBody>>),
    /// A response that is aborted at once (a filter closed the stream).
    Reset,
}

impl ResponseBody {
    /// A guest's streaming body whose end is checked against how the guest call ended.
    pub fn guest(inner: HyperOutgoingBody, outcome: Arc<GuestOutcome>) -> Self {
        ResponseBody::Guest { inner, outcome }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Guest { inner, outcome } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    Poll::Ready(Some(Err(format!("guest body: {e:?}").into())))
                }
                // The body's sender is dropped both when the guest finishes the body and when its
                // store is torn down after a trap; the outcome tells the two apart.
                Poll::Ready(None) if outcome.failed() => Poll::Ready(Some(Err(
                    "the component failed before finishing the body".into(),
                ))),
                other => other.map_err(|e| format!("{e:?}").into()),
            },
            ResponseBody::Filtered(inner) => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::Reset => Poll::Ready(Some(Err("a filter closed the stream".into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Guest { .. } | ResponseBody::Reset => false,
            ResponseBody::Filtered(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Guest { inner, .. } => inner.size_hint(),
            ResponseBody::Filtered(inner) => inner.size_hint(),
            ResponseBody::Reset => SizeHint::default(),
        }
    }
}

/// A response body that, when hyper is done with it (sent whole or aborted), writes the access
/// log line and the request metrics, and marks the request finished on its connection.
pub struct Observed {
    inner: ResponseBody,
    record: AccessRecord,
}

/// What the access log says about one request.
pub struct AccessRecord {
    /// Request method.
    pub method: http::Method,
    /// Request URI.
    pub uri: http::Uri,
    /// Response status.
    pub status: StatusCode,
    /// When the request head arrived.
    pub started: Instant,
    /// The guest's outcome, when a guest ran.
    pub guest: Option<Arc<GuestOutcome>>,
    /// The filter streams of the request: they end (`proxy_on_log`) after this record.
    pub streams: crate::filters::Streams,
    /// Keeps the connection busy (for its idle timeout) while the response is sent.
    _in_flight: Option<crate::conn::InFlight>,
    bytes: u64,
    failed: bool,
    done: bool,
}

impl AccessRecord {
    /// A record for a request that started at `started`.
    pub fn new(
        method: http::Method,
        uri: http::Uri,
        started: Instant,
        in_flight: Option<crate::conn::InFlight>,
    ) -> Self {
        metrics::gauge!(crate::metrics::IN_FLIGHT).increment(1.0);
        AccessRecord {
            method,
            uri,
            status: StatusCode::OK,
            started,
            guest: None,
            streams: Vec::new(),
            _in_flight: in_flight,
            bytes: 0,
            failed: false,
            done: false,
        }
    }

    /// Wraps `response` so that this record is logged when its body is finished.
    pub fn attach(mut self, response: Response<ResponseBody>) -> Response<Observed> {
        self.status = response.status();
        response.map(|inner| {
            // hyper never polls a body that is already at its end.
            self.done = inner.is_end_stream();
            Observed {
                inner,
                record: self,
            }
        })
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let guest_us = self
            .guest
            .as_ref()
            .and_then(|g| g.elapsed())
            .map(|d| d.as_micros() as u64);
        let complete = self.done && !self.failed;
        tracing::info!(
            target: "pier::access",
            method = %self.method,
            path = self.uri.path(),
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration_us = elapsed.as_micros() as u64,
            guest_us,
            complete,
        );
        metrics::gauge!(crate::metrics::IN_FLIGHT).decrement(1.0);
        metrics::counter!(crate::metrics::REQUESTS, "status" => crate::metrics::status_class(self.status)).increment(1);
        metrics::histogram!(crate::metrics::REQUEST_SECONDS).record(elapsed.as_secs_f64());
        metrics::counter!(crate::metrics::BYTES_OUT).increment(self.bytes);
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.record.failed = true,
            Poll::Ready(None) => this.record.done = true,
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response pier makes itself: a status and a one-line plain-text explanation.
pub fn error_response(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(format!(
        "{message}\n"
    )))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::SERVER, HeaderValue::from_static("pier"));
    response
}

/// `503 Service Unavailable` with `Retry-After: 1`: the server is busy for now, not failing.
pub fn busy_response(message: &str) -> Response<ResponseBody> {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
