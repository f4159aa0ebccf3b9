//! One client connection: its activity (for the idle and header timeouts) and the I/O wrapper
//! recording it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first bytes an HTTP/2 client sends (RFC 9113, 3.4); no HTTP/1 request starts so.
const H2_PREFACE: &[u8; 4] = b"PRI ";

/// When a connection last moved bytes, when it last had no request in progress, and how many of
/// its requests are still being answered.
#[derive(Debug)]
pub struct Activity {
    peer: std::net::SocketAddr,
    opened: Instant,
    last_ms: AtomicU64,
    /// When the last request finished (0: the connection has had none yet): from then on an
    /// HTTP/1 client is sending, or about to send, the next request's head.
    free_since_ms: AtomicU64,
    in_flight: AtomicUsize,
    h2: AtomicBool,
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No traffic and no request in progress for `--idle-timeout`.
    Idle,
    /// HTTP/1: no complete request head within `--header-timeout` of the connection opening or
    /// of the last response (a slow or stalled client).
    Header,
}

impl Activity {
    /// A connection from `peer` opened now.
    pub fn new(peer: std::net::SocketAddr) -> Arc<Activity> {
        Arc::new(Activity {
            peer,
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            free_since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        // Relaxed and coarse on purpose: this is read by a watchdog that only needs to know
        // whether the connection has been quiet for seconds.
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.opened + Duration::from_millis(ms.load(Ordering::Relaxed))
    }

    /// The earliest moment the connection may have to be closed for `idle` (zero: never) or,
    /// on HTTP/1, for `header` (zero: never), whatever happens until then.
    pub fn next_check(&self, idle: Duration, header: Duration) -> Option<Instant> {
        let header = self.header_applies(header).then_some(header);
        if self.busy() {
            // A request in progress: neither can expire before it has ended.
            let shortest = [Some(idle).filter(|d| !d.is_zero()), header]
                .into_iter()
                .flatten()
                .min();
            return shortest.map(|d| Instant::now() + d);
        }
        let idle = (!idle.is_zero()).then(|| self.at(&self.last_ms) + idle);
        let header = header.map(|d| self.at(&self.free_since_ms) + d);
        [idle, header].into_iter().flatten().min()
    }

    /// Whether the connection is to be closed now, and why.
    pub fn expired(&self, idle: Duration, header: Duration) -> Option<Expired> {
        if self.busy() {
            return None;
        }
        let now = Instant::now();
        if self.header_applies(header) && now >= self.at(&self.free_since_ms) + header {
            return Some(Expired::Header);
        }
        (!idle.is_zero() && now >= self.at(&self.last_ms) + idle).then_some(Expired::Idle)
    }

    /// The header timeout is for HTTP/1, where a client sends a whole request head at a time;
    /// HTTP/2 keeps a connection open between requests and is bounded by the idle timeout.
    fn header_applies(&self, header: Duration) -> bool {
        !header.is_zero() && !self.h2.load(Ordering::Relaxed)
    }

    /// Whether a request on this connection is still being answered.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request being answered on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// The client's address.
    pub fn peer(&self) -> std::net::SocketAddr {
        self.0.peer
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_ms.store(now, Ordering::Relaxed);
        self.0.free_since_ms.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream that records every transfer in an [`Activity`], and tells HTTP/2 from HTTP/1 by
/// the first bytes the client sends.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// The first bytes read, until there are enough to tell the protocol.
    first: [u8; 4],
    seen: usize,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked {
            inner,
            activity,
            first: [0; 4],
            seen: 0,
        }
    }

    fn sniff(&mut self, read: &[u8]) {
        let n = read.len().min(self.first.len() - self.seen);
        self.first[self.seen..self.seen + n].copy_from_slice(&read[..n]);
        self.seen += n;
        if self.seen == self.first.len() && &self.first == H2_PREFACE {
            self.activity.h2.store(true, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            if self.seen < self.first.len() {
                self.sniff(&buf.filled()[before..]);
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PEER: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1,
    ));

    #[tokio::test]
    async fn http2_is_told_from_its_preface_however_the_bytes_arrive() {
        let header = Duration::from_secs(10);
        for (bytes, h2) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\n", false),
            (b"POST /x HTTP/1.1\r\n", false),
            (b"PR", false),
        ] {
            for chunk in [1, 3, 64] {
                let activity = Activity::new(PEER);
                let mut io = Tracked::new(bytes, activity.clone());
                let mut buf = vec![0u8; chunk];
                while io.read(&mut buf).await.unwrap() > 0 {}
                let text = String::from_utf8_lossy(bytes);
                assert_eq!(
                    activity.h2.load(Ordering::Relaxed),
                    h2,
                    "{text:?} by {chunk}"
                );
                // The header timeout is HTTP/1's alone.
                let check = activity.next_check(Duration::ZERO, header);
                assert_eq!(check.is_some(), !h2, "{text:?} by {chunk}");
            }
        }
    }

    #[test]
    fn a_connection_expires_only_with_no_request_in_progress() {
        let activity = Activity::new(PEER);
        let short = Duration::from_millis(1);
        let long = Duration::from_secs(60);
        std::thread::sleep(Duration::from_millis(5));
        // No request yet, for longer than the header timeout.
        assert_eq!(activity.expired(long, short), Some(Expired::Header));
        assert_eq!(activity.expired(short, long), Some(Expired::Idle));
        assert_eq!(activity.expired(long, Duration::ZERO), None, "zero: never");
        assert_eq!(activity.expired(Duration::ZERO, Duration::ZERO), None);
        let request = activity.begin();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            activity.expired(short, short),
            None,
            "a request is in progress"
        );
        let check = activity.next_check(long, short).unwrap();
        assert!(
            check >= Instant::now(),
            "looks again once it may have ended"
        );
        drop(request);
        // Counted afresh from the end of the last request.
        assert_eq!(activity.expired(long, long), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(activity.expired(long, short), Some(Expired::Header));
    }
}
