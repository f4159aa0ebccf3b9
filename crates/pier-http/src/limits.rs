//! Request limits checked before (and while) a guest runs: header count and size, body size.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Why a request head is refused with 431.
pub fn header_problem(headers: &HeaderMap, max_headers: usize, max_size: usize) -> Option<String> {
    if headers.len() > max_headers {
        return Some(format!(
            "too many request header fields ({} > {max_headers})",
            headers.len()
        ));
    }
    // name + ": " + value + CRLF, as on the wire in HTTP/1.1.
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (size > max_size)
        .then(|| format!("request header section too large ({size} > {max_size} bytes)"))
}

/// The declared body length, when the request has a valid `content-length`.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A body size limit shared between the counting body and the handler that reports it.
#[derive(Debug, Clone)]
pub struct BodyLimit {
    max: u64,
    exceeded: Arc<AtomicBool>,
}

impl BodyLimit {
    /// A limit of `max` bytes.
    pub fn new(max: u64) -> Self {
        BodyLimit {
            max,
            exceeded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The limit in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether the body went past the limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

/// A request body that fails (as a guest-visible stream error) once it passes its limit, so a
/// chunked body cannot sneak past a limit that `content-length` would have caught up front.
pub struct LimitedBody<B> {
    inner: B,
    seen: u64,
    limit: BodyLimit,
}

impl<B> LimitedBody<B> {
    /// Counts `inner` against `limit`.
    pub fn new(inner: B, limit: BodyLimit) -> Self {
        LimitedBody {
            inner,
            seen: 0,
            limit,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.limit.exceeded() {
            return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                Some(self.seen),
            ))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    metrics::counter!(crate::metrics::BYTES_IN).increment(data.len() as u64);
                    if self.seen > self.limit.max {
                        self.limit.exceeded.store(true, Ordering::Relaxed);
                        metrics::counter!(crate::metrics::REJECTED, "reason" => "body_too_large")
                            .increment(1);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(self.seen)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_limits() {
        let mut headers = HeaderMap::new();
        for i in 0..3 {
            headers.append("x-a", format!("{i}").parse().unwrap());
        }
        assert_eq!(header_problem(&headers, 3, 1000), None);
        assert!(
            header_problem(&headers, 2, 1000)
                .unwrap()
                .contains("too many request header fields (3 > 2)")
        );
        // 3 x ("x-a" 3 + value 1 + 4) = 24 bytes
        assert_eq!(header_problem(&headers, 3, 24), None);
        assert!(
            header_problem(&headers, 3, 23)
                .unwrap()
                .contains("(24 > 23 bytes)")
        );
    }

    #[test]
    fn content_length_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_length(&headers), None);
        headers.insert("content-length", "42".parse().unwrap());
        assert_eq!(content_length(&headers), Some(42));
        headers.insert("content-length", "x".parse().unwrap());
        assert_eq!(content_length(&headers), None);
    }
}
