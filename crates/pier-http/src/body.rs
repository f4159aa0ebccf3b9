//! Response bodies: pier's own short answers, and a guest's streamed body that is aborted if the
//! guest fails before finishing it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

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
pub struct GuestOutcome(AtomicU8);

const SUCCEEDED: u8 = 1;
const FAILED: u8 = 2;

impl GuestOutcome {
    /// Records how the guest call ended.
    pub fn set(&self, ok: bool) {
        self.0
            .store(if ok { SUCCEEDED } else { FAILED }, Ordering::Release);
    }

    fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire) == FAILED
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Guest { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Guest { inner, .. } => inner.size_hint(),
        }
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
