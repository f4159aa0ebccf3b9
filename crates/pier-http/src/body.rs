//! Response bodies: pier's own short answers, a guest's body taken whole when the guest was done
//! before its response went out, and a guest's streamed body that is aborted if the guest fails
//! before finishing it.

use std::collections::VecDeque;
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
    /// A guest's body taken whole, the guest having returned before its response was sent
    /// ([`ResponseBody::returned`]).
    Buffered {
        frames: VecDeque<Frame<Bytes>>,
        /// What follows the frames, if the body was not all there after all.
        rest: Option<HyperOutgoingBody>,
        /// How it ended, if not cleanly.
        error: Option<BodyError>,
        /// Its length, when it has one (no trailers, no error, nothing to follow).
        length: Option<u64>,
    },
    /// A body passing through a filter's body callbacks.
    Filtered(Box<crate::filters::FilteredBody<ResponseBody>>),
    /// A static file's bytes, read as they are sent.
    File(crate::files::FileBody),
    /// A response that is aborted at once (a filter closed the stream).
    Reset,
    /// A body stored in a cache as it is sent.
    Storing(Box<crate::cache::Storing>),
}

impl ResponseBody {
    /// A guest's streaming body whose end is checked against how the guest call ended.
    pub fn guest(inner: HyperOutgoingBody, outcome: Arc<GuestOutcome>) -> Self {
        ResponseBody::Guest { inner, outcome }
    }

    /// The body of a guest that has returned: everything it wrote is waiting in the body's
    /// channel, and its end (finished, with trailers, or aborted) is known, so it is taken
    /// whole. Sent with its length (`content-length` on HTTP/1.1 rather than chunks, keep-alive
    /// for HTTP/1.0 clients) unless it has trailers or was aborted, which go out as they would
    /// have streamed.
    pub fn returned(mut inner: HyperOutgoingBody) -> Self {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = VecDeque::new();
        let mut trailers = false;
        let error = loop {
            match Pin::new(&mut inner).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    trailers |= frame.is_trailers();
                    frames.push_back(frame);
                }
                Poll::Ready(Some(Err(e))) => break Some(format!("guest body: {e:?}").into()),
                Poll::Ready(None) => break None,
                // Not all there after all (never seen): the rest streams as it comes.
                Poll::Pending => {
                    return ResponseBody::Buffered {
                        frames,
                        rest: Some(inner),
                        error: None,
                        length: None,
                    };
                }
            }
        };
        let length = (!trailers && error.is_none()).then(|| {
            frames
                .iter()
                .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                .sum()
        });
        ResponseBody::Buffered {
            frames,
            rest: None,
            error,
            length,
        }
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
            ResponseBody::Buffered {
                frames,
                rest,
                error,
                ..
            } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(inner) = rest {
                    return Pin::new(inner)
                        .poll_frame(cx)
                        .map_err(|e| format!("guest body: {e:?}").into());
                }
                Poll::Ready(error.take().map(Err))
            }
            ResponseBody::Filtered(inner) => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::File(file) => Pin::new(file).poll_frame(cx),
            ResponseBody::Reset => Poll::Ready(Some(Err("a filter closed the stream".into()))),
            ResponseBody::Storing(inner) => Pin::new(&mut **inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Buffered {
                frames,
                rest,
                error,
                ..
            } => frames.is_empty() && rest.is_none() && error.is_none(),
            ResponseBody::Guest { .. } | ResponseBody::Reset => false,
            ResponseBody::Filtered(inner) => inner.is_end_stream(),
            ResponseBody::File(file) => file.is_end_stream(),
            ResponseBody::Storing(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Guest { inner, .. } => inner.size_hint(),
            ResponseBody::Buffered { length, .. } => {
                length.map_or_else(SizeHint::default, SizeHint::with_exact)
            }
            ResponseBody::Filtered(inner) => inner.size_hint(),
            ResponseBody::File(file) => file.size_hint(),
            ResponseBody::Reset => SizeHint::default(),
            ResponseBody::Storing(inner) => inner.size_hint(),
        }
    }
}

/// A response body that, when hyper is done with it (sent whole or aborted), writes the access
/// log line and the request metrics, and marks the request finished on its connection.
pub struct Observed {
    inner: ResponseBody,
    record: AccessRecord,
    /// HTTP/2: what is left of a data frame larger than [`SLICE`], handed over next.
    rest: Option<Bytes>,
}

/// The most data handed to HTTP/2 at once. Its layer holds a frame until the client's window
/// has taken it and asks for the next only then; in slices, a response taken slowly is seen to
/// be taken (the send timeout), and its last bytes are not held by the layer after the body is
/// gone.
const SLICE: usize = 64 << 10;

/// A manifest route's names, on its requests' metrics and access log lines, and those metrics
/// (shared by its requests: one reference each).
#[derive(Clone, Debug)]
pub struct Labels(Arc<Named>);

#[derive(Debug)]
struct Named {
    route: String,
    component: String,
    metrics: crate::metrics::RequestMetrics,
}

impl Labels {
    /// The names of `route` (its pattern, after its host if it has one), answered by
    /// `component` (empty for an upstream or files).
    pub fn new(route: String, component: String) -> Labels {
        Labels(Arc::new(Named {
            route,
            component,
            metrics: crate::metrics::RequestMetrics::default(),
        }))
    }

    /// The route's pattern.
    pub fn route(&self) -> &str {
        &self.0.route
    }

    /// The component answering it.
    pub fn component(&self) -> &str {
        &self.0.component
    }
}

/// What the access log says about one request.
pub struct AccessRecord {
    /// The route and component, for a manifest's routes.
    pub labels: Option<Labels>,
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
    /// Keeps the connection busy (for its idle timeout) while the response is sent, and tells
    /// it when the response waits for an HTTP/2 client's window (for its send timeout).
    in_flight: Option<crate::conn::InFlight>,
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
        crate::metrics::in_flight().increment(1.0);
        AccessRecord {
            labels: None,
            method,
            uri,
            status: StatusCode::OK,
            started,
            guest: None,
            streams: Vec::new(),
            in_flight,
            bytes: 0,
            failed: false,
            done: false,
        }
    }

    /// Wraps `response` so that this record is logged when its body is finished.
    pub fn attach(mut self, response: Response<ResponseBody>) -> Response<Observed> {
        self.status = response.status();
        // A response to HEAD, or with a status that has no body, is whole once its head is
        // sent: hyper never polls its body.
        let bodiless = self.method == http::Method::HEAD
            || self.status.is_informational()
            || matches!(
                self.status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            );
        response.map(|inner| {
            // hyper never polls a body that is already at its end.
            self.done = bodiless || inner.is_end_stream();
            Observed {
                inner,
                record: self,
                rest: None,
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
        // A manifest's routes say their route and component (fields left out when `None`).
        let labels = self.labels.as_ref();
        tracing::info!(
            target: "pier::access",
            method = %self.method,
            path = self.uri.path(),
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration_us = elapsed.as_micros() as u64,
            guest_us,
            complete,
            route = labels.map(Labels::route),
            component = labels.map(Labels::component),
        );
        match labels {
            None => crate::metrics::RequestMetrics::unrouted().answered(None, self.status, elapsed),
            Some(labels) => {
                let names = (labels.route(), labels.component());
                labels.0.metrics.answered(Some(names), self.status, elapsed);
            }
        }
        crate::metrics::in_flight().decrement(1.0);
        crate::metrics::bytes_out().increment(self.bytes);
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
        let h2 = match &this.record.in_flight {
            Some(in_flight) => {
                in_flight.taken();
                in_flight.is_http2()
            }
            None => false,
        };
        let poll = match this.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        let poll = poll.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_data() {
                    Ok(mut data) if h2 && data.len() > SLICE => {
                        this.rest = Some(data.split_off(SLICE));
                        Frame::data(data)
                    }
                    Ok(data) => Frame::data(data),
                    Err(frame) => frame,
                })
            })
        });
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.bytes += data.len() as u64;
                    // HTTP/2 holds the data until the client's window has room for it, and asks
                    // for more (or drops the body, after the last) once it is sent.
                    if !data.is_empty()
                        && let Some(in_flight) = &this.record.in_flight
                    {
                        in_flight.waiting_on_client();
                    }
                }
                // hyper does not poll a body again once it says it is at its end (a body of a
                // known length, its last frame taken).
                this.record.done = this.rest.is_none() && this.inner.is_end_stream();
            }
            Poll::Ready(Some(Err(_))) => this.record.failed = true,
            Poll::Ready(None) => this.record.done = true,
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.as_ref().map_or(0, |r| r.len() as u64);
        size_hint_plus(self.inner.size_hint(), rest)
    }
}

/// `inner`'s size hint with `more` bytes held back in front of it.
pub(crate) fn size_hint_plus(inner: SizeHint, more: u64) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(inner.lower() + more);
    if let Some(upper) = inner.upper() {
        hint.set_upper(upper + more);
    }
    hint
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    type Item = Result<Frame<Bytes>, wasmtime_wasi_http::Error>;

    /// A guest's body as the channel would hand it over: `items`, then the end or, with
    /// `pending`, nothing yet.
    fn guest_body(items: Vec<Item>, pending: bool) -> HyperOutgoingBody {
        let items = futures_util::stream::iter(items);
        if pending {
            StreamBody::new(items.chain(futures_util::stream::pending())).boxed_unsync()
        } else {
            StreamBody::new(items).boxed_unsync()
        }
    }

    fn data(s: &'static str) -> Item {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    fn trailers() -> Item {
        let mut map = http::HeaderMap::new();
        map.insert("x-t", HeaderValue::from_static("1"));
        Ok(Frame::trailers(map))
    }

    /// Everything the body yields until it ends (or would wait), in order, as text.
    async fn drain(body: &mut ResponseBody) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(frame) => Poll::Ready(frame.map(Some)),
            })
            .await
            .flatten()
        {
            out.push(match frame {
                Ok(f) if f.is_data() => String::from_utf8(f.into_data().unwrap().to_vec()).unwrap(),
                Ok(f) => format!("trailers {:?}", f.into_trailers().unwrap()),
                Err(e) => format!("error {e}"),
            });
        }
        out
    }

    #[tokio::test]
    async fn a_returned_guests_body_is_sent_whole_with_its_length_unless_it_has_trailers_or_failed()
    {
        // Ended cleanly: the length is known.
        let mut body = ResponseBody::returned(guest_body(vec![data("ab"), data("cde")], false));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(drain(&mut body).await, ["ab", "cde"]);
        assert!(body.is_end_stream());
        // Empty.
        let body = ResponseBody::returned(guest_body(vec![], false));
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.is_end_stream());
        // Trailers: no length (HTTP/1.1 sends them only after chunks), and they still go out.
        let mut body = ResponseBody::returned(guest_body(vec![data("ab"), trailers()], false));
        assert_eq!(body.size_hint().exact(), None);
        let frames = drain(&mut body).await;
        assert_eq!(frames[0], "ab");
        assert!(frames[1].starts_with("trailers") && frames[1].contains("x-t"));
        // Aborted: the error still ends it, after what was written.
        let mut body = ResponseBody::returned(guest_body(
            vec![
                data("ab"),
                Err(wasmtime_wasi_http::Error::HttpProtocolError),
            ],
            false,
        ));
        assert_eq!(body.size_hint().exact(), None);
        let frames = drain(&mut body).await;
        assert_eq!(frames[0], "ab");
        assert!(frames[1].starts_with("error guest body"), "{frames:?}");
        // Not all there: what was taken comes first, then the rest as it comes.
        let mut body = ResponseBody::returned(guest_body(vec![data("ab")], true));
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(drain(&mut body).await, ["ab"]);
        assert!(!body.is_end_stream());
    }
}
