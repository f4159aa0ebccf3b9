//! One client connection: its activity (for the idle, header and send timeouts) and the I/O
//! wrapper recording it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h2_guard::H2Guard;
use crate::refusals::{self, H2_PREFACE};

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
    /// Since when pier's writes have been waiting on the client (its milliseconds + 1; 0: they
    /// are not): a client that does not read.
    blocked_since_ms: AtomicU64,
    /// HTTP/2: how many responses wait for the client's window to take data they handed over,
    /// and since when one has (see [`Waiting`]). The socket may be writable all along: a
    /// zero-window client is not a slow reader to the socket.
    waiting: AtomicU64,
    /// When pier last wrote to the client (milliseconds + 1; 0: never).
    wrote_ms: AtomicU64,
}

/// The watchdog's timeouts (zero: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `--idle-timeout`: no traffic and no request in progress.
    pub idle: Duration,
    /// `--header-timeout`: HTTP/1's wait for a request head.
    pub header: Duration,
    /// `--send-timeout`: pier's writes waiting on a client that does not read.
    pub send: Duration,
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No traffic and no request in progress for `--idle-timeout`.
    Idle,
    /// HTTP/1: no complete request head within `--header-timeout` of the connection opening or
    /// of the last response (a slow or stalled client).
    Header,
    /// pier's writes have waited on the client for `--send-timeout`, request in progress or
    /// not: it does not read what it asked for (a slow-read or zero-window client).
    Send,
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
            blocked_since_ms: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            wrote_ms: AtomicU64::new(0),
        })
    }

    /// pier's write waits on the client.
    fn blocked(&self) {
        if self.blocked_since_ms.load(Ordering::Relaxed) == 0 {
            self.blocked_since_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// pier's write went out.
    fn wrote(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        self.wrote_ms.store(now + 1, Ordering::Relaxed);
        self.unblocked();
    }

    /// Nothing of pier's waits on the client any more.
    fn unblocked(&self) {
        if self.blocked_since_ms.load(Ordering::Relaxed) != 0 {
            self.blocked_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Until when the client may leave pier's writes, or one of its HTTP/2 responses, waiting,
    /// if they are.
    fn send_deadline(&self, send: Duration) -> Option<Instant> {
        if send.is_zero() {
            return None;
        }
        let blocked = self.blocked_since_ms.load(Ordering::Relaxed);
        // A response waiting on its window counts only while nothing at all goes out: a client
        // taking other streams' data (or this one's, slowly) is reading.
        let window = match self.window_closed_since() {
            0 => 0,
            since => since.max(self.wrote_ms.load(Ordering::Relaxed)),
        };
        let since = [blocked, window].into_iter().filter(|&ms| ms != 0).min()?;
        Some(self.opened + Duration::from_millis(since - 1) + send)
    }

    /// When a connection told to go away may be closed, if it is still taking pier's writes:
    /// `send` after the last one, if that is still to come.
    pub fn still_taking(&self, send: Duration) -> Option<Instant> {
        let wrote = self.wrote_ms.load(Ordering::Relaxed);
        let until = self.opened + Duration::from_millis(wrote.saturating_sub(1)) + send;
        (wrote != 0 && until > Instant::now()).then_some(until)
    }

    /// Since when HTTP/2 responses have waited for the client's window without a break
    /// (milliseconds + 1; 0: none waits).
    fn window_closed_since(&self) -> u64 {
        Waiting(self.waiting.load(Ordering::Relaxed)).since()
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

    /// The earliest moment the connection may have to be closed for one of `timeouts`, whatever
    /// happens until then.
    pub fn next_check(&self, timeouts: Timeouts) -> Option<Instant> {
        let Timeouts { idle, header, send } = timeouts;
        let header = self.header_applies(header).then_some(header);
        // A client that stops reading may do so at any time: look again within `send`.
        let send = self
            .send_deadline(send)
            .or_else(|| (!send.is_zero()).then(|| Instant::now() + send));
        if self.busy() {
            // A request in progress: neither idle nor header can expire before it has ended.
            let shortest = [Some(idle).filter(|d| !d.is_zero()), header]
                .into_iter()
                .flatten()
                .min();
            return [shortest.map(|d| Instant::now() + d), send]
                .into_iter()
                .flatten()
                .min();
        }
        let idle = (!idle.is_zero()).then(|| self.at(self.idle_since()) + idle);
        let header = header.map(|d| self.at(&self.free_since_ms) + d);
        [idle, header, send].into_iter().flatten().min()
    }

    /// Where the idle clock starts: HTTP/1's last traffic; HTTP/2's last request, whatever
    /// frames came since (PINGs, SETTINGS or a header block trickled a byte at a time open no
    /// request and must not keep a connection forever).
    fn idle_since(&self) -> &AtomicU64 {
        if self.h2.load(Ordering::Relaxed) {
            &self.free_since_ms
        } else {
            &self.last_ms
        }
    }

    /// Whether the connection is to be closed now, and why.
    pub fn expired(&self, timeouts: Timeouts) -> Option<Expired> {
        let Timeouts { idle, header, send } = timeouts;
        let now = Instant::now();
        if self.send_deadline(send).is_some_and(|at| now >= at) {
            return Some(Expired::Send);
        }
        if self.busy() {
            return None;
        }
        if self.header_applies(header) && now >= self.at(&self.free_since_ms) + header {
            return Some(Expired::Header);
        }
        (!idle.is_zero() && now >= self.at(self.idle_since()) + idle).then_some(Expired::Idle)
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
        InFlight {
            activity: self.clone(),
            h2: self.h2.load(Ordering::Relaxed),
            waiting: AtomicBool::new(false),
        }
    }

    /// One more response waits on the window (`more`), or one less.
    fn count_waiting(&self, more: bool) {
        let now = self.now_ms() + 1;
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                let state = Waiting(state);
                Some(if more { state.more(now) } else { state.less() }.0)
            });
    }
}

/// The count of responses waiting on an HTTP/2 window and since when one has, in one word so
/// that both change together: the count in the top 20 bits, the milliseconds (+ 1) since the
/// connection opened when the count last left zero in the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting(u64);

impl Waiting {
    const SHIFT: u32 = 44;
    const SINCE: u64 = (1 << Self::SHIFT) - 1;

    fn count(self) -> u64 {
        self.0 >> Self::SHIFT
    }

    fn since(self) -> u64 {
        if self.count() == 0 {
            0
        } else {
            self.0 & Self::SINCE
        }
    }

    fn more(self, now: u64) -> Waiting {
        let since = if self.count() == 0 { now } else { self.since() };
        Waiting(((self.count() + 1) << Self::SHIFT) | (since & Self::SINCE))
    }

    fn less(self) -> Waiting {
        match self.count() {
            0 | 1 => Waiting(0),
            n => Waiting(((n - 1) << Self::SHIFT) | self.since()),
        }
    }
}

/// A request being answered on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    /// Whether it came over HTTP/2.
    h2: bool,
    /// HTTP/2: whether its response waits for the client's window (counted in
    /// [`Activity::waiting`]).
    waiting: AtomicBool,
}

impl InFlight {
    /// The client's address.
    pub fn peer(&self) -> std::net::SocketAddr {
        self.activity.peer
    }

    /// The response has handed the HTTP/2 layer data, which it sends (and then asks for more,
    /// or drops the body after the last) once the client's window has room: waiting on the
    /// client from now, unless already.
    pub fn waiting_on_client(&self) {
        if self.h2 && !self.waiting.swap(true, Ordering::Relaxed) {
            self.activity.count_waiting(true);
        }
    }

    /// Whether the request came over HTTP/2 (whose layer holds each data frame until the
    /// client's window takes it).
    pub fn is_http2(&self) -> bool {
        self.h2
    }

    /// The HTTP/2 layer asks for more of the response: it waits on the client no more.
    pub fn taken(&self) {
        if self.waiting.swap(false, Ordering::Relaxed) {
            self.activity.count_waiting(false);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.taken();
        let activity = &self.activity;
        let now = activity.now_ms();
        activity.last_ms.store(now, Ordering::Relaxed);
        activity.free_since_ms.store(now, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream that records every transfer in an [`Activity`], tells HTTP/2 from HTTP/1 by
/// the first bytes the client sends, and answers what hyper would answer badly (see
/// [`refusals`]).
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// The first bytes read, until there are enough to tell the protocol and check an HTTP/2
    /// preface.
    first: [u8; 24],
    seen: usize,
    /// pier's response being written in place of hyper's automatic one: (bytes, written,
    /// the length hyper asked to write).
    replacing: Option<(Vec<u8>, usize, usize)>,
    /// The connection is refused (a bad HTTP/2 preface): these bytes go out, then hyper reads
    /// the end of the stream and its own writes are dropped.
    refusing: Option<(Vec<u8>, usize)>,
    /// On HTTP/2: the frame checks the client's bytes pass before hyper reads them, and what
    /// they let through that hyper has not read yet (from `ready_at` on).
    guard: Option<H2Guard>,
    ready: Vec<u8>,
    ready_at: usize,
    /// Closing an HTTP/1 connection: what the client still sends is read and dropped for a
    /// while (see [`Tracked::linger`]).
    lingering: Option<Lingering>,
}

/// How long a closing HTTP/1 connection reads what its client still sends: at most
/// `LINGER_TIME` in all, and no longer than `LINGER_QUIET` after the last bytes (a client that
/// sends nothing more, an idle keep-alive one, is let go at once).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_QUIET: Duration = Duration::from_millis(500);

/// The lingering close of one connection.
struct Lingering {
    /// When it ends whatever comes.
    end: tokio::time::Instant,
    /// When it ends if nothing more comes.
    quiet: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked {
            inner,
            activity,
            first: [0; 24],
            seen: 0,
            replacing: None,
            refusing: None,
            guard: None,
            ready: Vec::new(),
            ready_at: 0,
            lingering: None,
        }
    }

    /// Hands hyper what the guard let through, as much as `buf` takes.
    fn deliver(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.ready.len() - self.ready_at).min(buf.remaining());
        buf.put_slice(&self.ready[self.ready_at..self.ready_at + n]);
        self.ready_at += n;
    }

    /// Looks at the first bytes read; false when the connection is to be refused.
    fn sniff(&mut self, read: &[u8]) -> bool {
        let n = read.len().min(self.first.len() - self.seen);
        self.first[self.seen..self.seen + n].copy_from_slice(&read[..n]);
        self.seen += n;
        let seen = &self.first[..self.seen];
        if seen.len() >= 4 && seen.starts_with(&H2_PREFACE[..4]) {
            self.activity.h2.store(true, Ordering::Relaxed);
        }
        if refusals::bad_h2_preface(seen) {
            tracing::debug!(peer = %self.activity.peer, "invalid HTTP/2 connection preface: GOAWAY");
            self.refusing = Some((refusals::GOAWAY_PROTOCOL_ERROR.to_vec(), 0));
            return false;
        }
        true
    }
}

impl<S: AsyncWrite + Unpin> Tracked<S> {
    /// Writes what remains of `bytes` from `written` on; ready once all of it is out.
    fn drive(
        inner: &mut S,
        cx: &mut Context<'_>,
        bytes: &[u8],
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        while *written < bytes.len() {
            match Pin::new(&mut *inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `buf` for hyper, or pier's response in place of one of hyper's own.
    fn write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some((bytes, written)) = &mut self.refusing {
            // A refused connection: hyper's writes go nowhere.
            let _ = Self::drive(&mut self.inner, cx, bytes, written);
            return Poll::Ready(Ok(buf.len()));
        }
        if self.replacing.is_none()
            && !self.activity.busy()
            && !self.activity.h2.load(Ordering::Relaxed)
            && let Some(status) = refusals::automatic_error(buf)
        {
            let ours = refusals::replace(status, buf, self.activity.peer);
            self.replacing = Some((ours, 0, buf.len()));
        }
        if let Some((bytes, written, theirs)) = &mut self.replacing {
            let theirs = *theirs;
            return match Self::drive(&mut self.inner, cx, bytes, written) {
                Poll::Ready(Ok(())) => {
                    self.replacing = None;
                    self.activity.wrote();
                    Poll::Ready(Ok(theirs))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.activity.blocked();
                    Poll::Pending
                }
            };
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.record(&poll);
        poll
    }

    /// Records how a write went: out, or waiting on the client.
    fn record(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(),
            Poll::Pending => self.activity.blocked(),
            _ => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((bytes, written)) = &mut this.refusing {
            // Our answer goes out whole, then the write side closes, and hyper reads the end.
            ready!(Self::drive(&mut this.inner, cx, bytes, written))?;
            let _ = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
            return Poll::Ready(Ok(()));
        }
        if this.ready_at < this.ready.len() {
            this.deliver(buf);
            return Poll::Ready(Ok(()));
        }
        loop {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Ok(())); // the end of the stream
            }
            this.activity.touch();
            let seen_before = this.seen;
            if this.seen < this.first.len() && !this.sniff(&buf.filled()[before..]) {
                // hyper never sees the bytes that gave the connection away.
                buf.set_filled(before);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.guard.is_none() && this.activity.h2.load(Ordering::Relaxed) {
                this.guard = Some(H2Guard::new(seen_before));
            }
            let Some(guard) = &mut this.guard else {
                return Poll::Ready(Ok(()));
            };
            // HTTP/2: the new bytes go through the guard; hyper reads what it lets through.
            this.ready.clear();
            this.ready_at = 0;
            guard.feed(&buf.filled()[before..], &mut this.ready);
            buf.set_filled(before);
            if this.ready.is_empty() {
                // Only part of a frame head so far: read on.
                continue;
            }
            this.deliver(buf);
            return Poll::Ready(Ok(()));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's own error responses are small and written whole: look at a write that could
        // be one as a single buffer.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let maybe_error = |b: &[u8]| b.starts_with(b"HTTP/1.") && b.get(9) == Some(&b'4');
        if self.refusing.is_some()
            || self.replacing.is_some()
            || (total <= 512 && bufs.first().is_some_and(|b| maybe_error(b)))
        {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            return self.write(cx, &joined);
        }
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.record(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        match poll {
            Poll::Pending => self.activity.blocked(),
            Poll::Ready(Ok(())) => self.activity.unblocked(),
            Poll::Ready(Err(_)) => {}
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        if self.activity.h2.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        self.linger(cx)
    }
}

impl<S: AsyncRead + Unpin> Tracked<S> {
    /// An HTTP/1 connection closing, its answer sent and its write side shut: what the client
    /// still sends (a request body pier answered without reading, a 413's upload) is read and
    /// dropped until it stops (see [`LINGER_TIME`]). Closed at once, unread data would make the
    /// kernel reset the connection, and a client still sending would lose the answer (clients
    /// report the failed write, not the response that came meanwhile; RFC 9112 §9.6).
    fn linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let lingering = self.lingering.get_or_insert_with(|| {
            let now = tokio::time::Instant::now();
            Lingering {
                end: now + LINGER_TIME,
                quiet: Box::pin(tokio::time::sleep_until(now + LINGER_QUIET)),
            }
        });
        let mut buf = [0u8; 16 << 10];
        loop {
            if lingering.quiet.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    let next = (tokio::time::Instant::now() + LINGER_QUIET).min(lingering.end);
                    lingering.quiet.as_mut().reset(next);
                }
                // The end, or an error: nothing more to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
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
                let mut io =
                    Tracked::new(tokio::io::join(bytes, tokio::io::sink()), activity.clone());
                let mut buf = vec![0u8; chunk];
                while io.read(&mut buf).await.unwrap() > 0 {}
                let text = String::from_utf8_lossy(bytes);
                assert_eq!(
                    activity.h2.load(Ordering::Relaxed),
                    h2,
                    "{text:?} by {chunk}"
                );
                // The header timeout is HTTP/1's alone.
                let check = activity.next_check(Timeouts {
                    idle: Duration::ZERO,
                    header,
                    send: Duration::ZERO,
                });
                assert_eq!(check.is_some(), !h2, "{text:?} by {chunk}");
            }
        }
    }

    #[tokio::test]
    async fn a_bad_http2_preface_is_answered_with_goaway_and_kept_from_hyper() {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(1024);
        let mut io = Tracked::new(server, Activity::new(PEER));
        let (mut from_server, mut to_server) = tokio::io::split(client);
        to_server
            .write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
            .await
            .unwrap();
        let (mut buf, mut hyper_saw) = (vec![0u8; 64], Vec::new());
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hyper_saw.extend_from_slice(&buf[..n]);
        }
        assert!(
            H2_PREFACE.starts_with(&hyper_saw),
            "hyper saw only a valid beginning: {hyper_saw:?}"
        );
        // What hyper writes after that goes nowhere.
        io.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        drop(io);
        let mut answer = Vec::new();
        from_server.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, refusals::GOAWAY_PROTOCOL_ERROR);
    }

    fn timeouts(idle: Duration, header: Duration) -> Timeouts {
        Timeouts {
            idle,
            header,
            send: Duration::ZERO,
        }
    }

    #[test]
    fn a_connection_expires_only_with_no_request_in_progress() {
        let activity = Activity::new(PEER);
        let short = Duration::from_millis(1);
        let long = Duration::from_secs(60);
        std::thread::sleep(Duration::from_millis(5));
        // No request yet, for longer than the header timeout.
        assert_eq!(
            activity.expired(timeouts(long, short)),
            Some(Expired::Header)
        );
        assert_eq!(activity.expired(timeouts(short, long)), Some(Expired::Idle));
        assert_eq!(
            activity.expired(timeouts(long, Duration::ZERO)),
            None,
            "zero: never"
        );
        assert_eq!(
            activity.expired(timeouts(Duration::ZERO, Duration::ZERO)),
            None
        );
        let request = activity.begin();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            activity.expired(timeouts(short, short)),
            None,
            "a request is in progress"
        );
        let check = activity.next_check(timeouts(long, short)).unwrap();
        assert!(
            check >= Instant::now(),
            "looks again once it may have ended"
        );
        drop(request);
        // Counted afresh from the end of the last request.
        assert_eq!(activity.expired(timeouts(long, long)), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            activity.expired(timeouts(long, short)),
            Some(Expired::Header)
        );
    }

    #[test]
    fn a_client_that_leaves_writes_waiting_expires_request_or_not() {
        let activity = Activity::new(PEER);
        let send = Duration::from_millis(20);
        let all = Timeouts {
            idle: Duration::from_secs(60),
            header: Duration::from_secs(60),
            send,
        };
        let _request = activity.begin();
        assert_eq!(activity.expired(all), None);
        assert!(activity.next_check(all).unwrap() <= Instant::now() + send);
        activity.blocked();
        std::thread::sleep(Duration::from_millis(5));
        activity.wrote();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.expired(all), None, "a write went out meanwhile");
        activity.blocked();
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(activity.expired(all), Some(Expired::Send));
        let off = Timeouts {
            send: Duration::ZERO,
            ..all
        };
        assert_eq!(activity.expired(off), None, "zero: never");
    }

    #[test]
    fn an_http2_response_left_waiting_on_the_window_expires_the_connection() {
        let activity = Activity::new(PEER);
        activity.h2.store(true, Ordering::Relaxed);
        let send = Duration::from_millis(20);
        let all = Timeouts {
            idle: Duration::from_secs(60),
            header: Duration::ZERO,
            send,
        };
        let flowing = activity.begin();
        let stalled = activity.begin();
        // One response's data is taken again and again; the other's is never taken.
        stalled.waiting_on_client();
        for _ in 0..5 {
            flowing.waiting_on_client();
            std::thread::sleep(Duration::from_millis(5));
            flowing.taken();
        }
        assert_eq!(activity.expired(all), Some(Expired::Send));
        // While anything goes out (the client takes other data, or this one's slowly), a
        // response waiting on its window is not a client that stopped reading.
        for _ in 0..5 {
            activity.wrote();
            std::thread::sleep(Duration::from_millis(10));
            assert_eq!(activity.expired(all), None);
        }
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(activity.expired(all), Some(Expired::Send));
        // Once the stalled response is gone, the flowing one alone keeps nothing waiting.
        drop(stalled);
        assert_eq!(activity.expired(all), None);
        flowing.waiting_on_client();
        flowing.taken();
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(activity.expired(all), None);
        // HTTP/1 has no windows: its writes are the socket's.
        let h1 = Activity::new(PEER);
        let request = h1.begin();
        request.waiting_on_client();
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(h1.expired(all), None);
    }

    #[test]
    fn http2_traffic_without_requests_does_not_keep_a_connection() {
        let idle = Duration::from_millis(100);
        let all = Timeouts {
            idle,
            header: Duration::ZERO,
            send: Duration::ZERO,
        };
        for h2 in [false, true] {
            let activity = Activity::new(PEER);
            activity.h2.store(h2, Ordering::Relaxed);
            // PINGs (or a header block's bytes) every 30 ms, no request.
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(30));
                activity.touch();
            }
            let expired = activity.expired(all);
            if h2 {
                assert_eq!(
                    expired,
                    Some(Expired::Idle),
                    "HTTP/2: its last request counts"
                );
            } else {
                assert_eq!(expired, None, "HTTP/1: bytes are a request's head coming");
            }
        }
    }
}
