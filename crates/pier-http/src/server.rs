//! The listener and connection loop: HTTP/1.1 and HTTP/2 (h2c with prior knowledge, or ALPN over
//! TLS) on one port, with connection limits, timeouts and a graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pier_config::Limits;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::WasiBody;

use crate::conn::{Activity, Expired, Timeouts, Tracked};
use crate::router::{Entry, Router};
use crate::service::{Admission, Pipeline};
use crate::woken::{IfWoken, WakeFlag};

/// One route as the server takes it: where, what answers, the filters in front.
pub struct Routed {
    /// Only requests for this host.
    pub host: Option<String>,
    /// The path it matches.
    pub path: pier_config::RoutePath,
    /// What answers it.
    pub handler: crate::Handler,
    /// The filters in front of it.
    pub filters: crate::FilterChain,
    /// Its component's own concurrency limit (shared by the routes to that component).
    pub component_limit: Option<Arc<Semaphore>>,
    /// Whether the guest is told the route (`x-pier-route`, `x-pier-path-info`), and its
    /// requests' metrics and access log lines carry the route and component: a manifest's.
    pub announce: bool,
    /// The component's name, when a component answers.
    pub component: Option<String>,
}

/// A listening server that has not started accepting yet.
pub struct Server {
    /// One listening socket per serving thread (several: an `SO_REUSEPORT` group).
    listeners: Vec<std::net::TcpListener>,
    /// The runtimes of the serving threads past the first (none with one thread, which serves
    /// on the runtime that calls [`Server::serve`]).
    runtimes: Vec<tokio::runtime::Runtime>,
    local: SocketAddr,
    routes: Arc<Routes>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
}

/// The routes a server answers with, replaced whole while it serves (a reload): each request
/// takes the table current when it arrives and keeps it (its pipelines, components and pools)
/// until its response is sent, so requests in flight finish on the version they began on, new
/// ones go to the new version, and no request ever sees a mix of the two. A table is freed
/// when its last request is done.
pub struct Routes {
    current: ArcSwap<Router>,
    limits: Limits,
    local: Option<SocketAddr>,
    /// The server's `--max-concurrency` and pace of live instances, shared by every version's
    /// routes.
    admission: Admission,
}

impl Routes {
    fn new(
        routes: Vec<Routed>,
        limits: Limits,
        local: Option<SocketAddr>,
        threads: usize,
    ) -> Routes {
        let admission = Admission::new(&limits, threads);
        let router = Routes::router(routes, &limits, local, &admission);
        Routes {
            current: ArcSwap::from_pointee(router),
            limits,
            local,
            admission,
        }
    }

    fn router(
        routes: Vec<Routed>,
        limits: &Limits,
        local: Option<SocketAddr>,
        admission: &Admission,
    ) -> Router {
        let pipeline = |handler, filters, component_limit, labels| {
            Pipeline::new(
                handler,
                limits.clone(),
                filters,
                local,
                admission.clone(),
                component_limit,
                labels,
            )
        };
        let entries = routes
            .into_iter()
            .map(|r| {
                let labels = r.announce.then(|| {
                    let pattern = r.path.pattern();
                    crate::body::Labels::new(
                        match &r.host {
                            Some(host) => format!("{host}{pattern}"),
                            None => pattern,
                        },
                        r.component.clone().unwrap_or_default(),
                    )
                });
                Entry::new(
                    r.host,
                    r.path,
                    pipeline(r.handler, r.filters, r.component_limit, labels),
                    r.announce,
                )
            })
            .collect();
        let not_found = pipeline(
            crate::Handler::NotFound,
            crate::FilterChain::default(),
            None,
            None,
        );
        Router::new(entries, not_found)
    }

    /// Replaces the routes: requests from now on take `routes`.
    pub fn replace(&self, routes: Vec<Routed>) {
        let router = Routes::router(routes, &self.limits, self.local, &self.admission);
        self.current.store(Arc::new(router));
    }

    /// Answers a request a component of the app made to it (`http://self/...`), in process:
    /// the current routes, their filters and limits, as for a client's request.
    pub async fn call(&self, mut req: Request<WasiBody>) -> Response<WasiBody> {
        // Origin form, as a client would send it; the authority, `self`, matches no host route.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::from(path);
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("self"));
        let router = self.load();
        let response = router.serve(req, None).await;
        response.map(|body| {
            body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
                .boxed_unsync()
        })
    }

    /// The current table.
    fn load(&self) -> Arc<Router> {
        self.current.load_full()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is taken.
    #[error("cannot listen on {addr}: the address is already in use (pick another with {flag})")]
    AddrInUse {
        addr: SocketAddr,
        flag: &'static str,
    },
    /// Another bind failure (permission, no such address).
    #[error("cannot listen on {addr} ({flag}): {error}")]
    Bind {
        addr: SocketAddr,
        flag: &'static str,
        error: std::io::Error,
    },
    /// The listening socket given cannot be served on.
    #[error("cannot serve on the listening socket given: {error}")]
    Inherited { error: std::io::Error },
    /// A serving thread's runtime could not be made.
    #[error("cannot start a serving thread's runtime: {error}")]
    Runtime { error: std::io::Error },
}

/// Binds `addr`, naming `flag` in the error.
pub(crate) async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| bind_error(addr, flag, source))
}

/// A port that several worker processes serve together: one listening socket per worker, all
/// bound with `SO_REUSEPORT`, and the kernel spreads new connections over them. The holder (the
/// supervisor) keeps every socket for as long as it runs, and hands each worker its own. A
/// connection the kernel gave to a worker that then died is not lost: it waits in that socket's
/// queue for the worker's replacement.
#[derive(Debug)]
pub struct SharedPort {
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
}

impl SharedPort {
    /// Listens on `addr` with `n` sockets, naming `flag` in the error.
    pub fn bind(addr: SocketAddr, n: usize, flag: &'static str) -> Result<SharedPort, ServeError> {
        let error = |source| bind_error(addr, flag, source);
        // First without SO_REUSEPORT: that fails if anything holds the port, even another
        // server's SO_REUSEPORT group, which would otherwise be joined and share its
        // connections. It also picks the port for `:0`.
        let probe = new_socket(addr).map_err(error)?;
        probe.bind(addr).map_err(error)?;
        let addr = probe.local_addr().map_err(error)?;
        drop(probe);
        let error = |source| bind_error(addr, flag, source);
        let listeners = (0..n)
            .map(|_| {
                let socket = new_socket(addr)?;
                socket.set_reuseport(true)?;
                socket.bind(addr)?;
                let listener = socket.listen(1024)?;
                listener.into_std()
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(error)?;
        Ok(SharedPort { listeners, addr })
    }

    /// The address listened on (the real port when `:0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket of worker `index`.
    pub fn listener(&self, index: usize) -> &std::net::TcpListener {
        &self.listeners[index]
    }
}

/// A TCP socket for `addr`'s family with `SO_REUSEADDR` (a restarted server binds at once,
/// whatever connections of the last one linger in TIME_WAIT).
fn new_socket(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

fn bind_error(addr: SocketAddr, flag: &'static str, source: std::io::Error) -> ServeError {
    match source.kind() {
        std::io::ErrorKind::AddrInUse => ServeError::AddrInUse { addr, flag },
        _ => ServeError::Bind {
            addr,
            flag,
            error: source,
        },
    }
}

/// Where the server listens.
#[derive(Debug)]
pub enum Listen {
    /// A port of its own, served by `threads` threads: each accepts on a listening socket of
    /// its own (`SO_REUSEPORT`: the kernel spreads new connections over them) and runs those
    /// connections, their requests and their guests on its own single-threaded runtime, so a
    /// request's work is never handed from one thread to another.
    Addr {
        /// The address.
        addr: SocketAddr,
        /// Serving threads (at least one).
        threads: usize,
    },
    /// A socket already listening, given by whoever started the process (a worker's, from
    /// [`SharedPort`]), served by the runtime that calls [`Server::serve`].
    Listener(std::net::TcpListener),
}

impl Server {
    /// Listens as `listen` says for `routes`, with TLS when an acceptor is given.
    pub async fn bind(
        listen: Listen,
        routes: Vec<Routed>,
        limits: Limits,
        tls: Option<TlsAcceptor>,
    ) -> Result<Server, ServeError> {
        let listeners = match listen {
            Listen::Addr { addr, threads } if threads > 1 => {
                let port = SharedPort::bind(addr, threads, "--addr")?;
                port.listeners
            }
            Listen::Addr { addr, .. } => {
                let listener = bind(addr, "--addr").await?;
                let listener = listener
                    .into_std()
                    .map_err(|source| bind_error(addr, "--addr", source))?;
                vec![listener]
            }
            Listen::Listener(listener) => vec![listener],
        };
        let inherited = |source| ServeError::Inherited { error: source };
        for listener in &listeners {
            listener.set_nonblocking(true).map_err(inherited)?;
        }
        let local = listeners[0].local_addr().map_err(inherited)?;
        let runtimes = (1..listeners.len())
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|error| ServeError::Runtime { error })?;
        let threads = listeners.len();
        Ok(Server {
            listeners,
            runtimes,
            local,
            routes: Arc::new(Routes::new(routes, limits.clone(), Some(local), threads)),
            limits,
            tls,
        })
    }

    /// Its routes, to replace them while it serves.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// The address actually bound (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The URL clients reach the server at.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` resolves; then stops accepting, asks every connection to finish
    /// (HTTP/2 GOAWAY, HTTP/1.1 close after the current response) and waits up to
    /// `--drain-timeout` for in-flight requests before returning.
    ///
    /// The first listening socket is served on the calling task's runtime; each other one on a
    /// thread of its own, whose runtime ends (and with it whatever it still runs) once the drain
    /// is over.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listeners,
            runtimes,
            local: _,
            routes,
            limits,
            tls,
        } = self;
        let (draining_tx, draining) = watch::channel(false);
        let acceptor = Arc::new(Acceptor {
            builder: http_builder(&limits),
            routes,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            tls,
            draining,
        });
        let (drained_tx, drained) = watch::channel(false);
        let mut listeners = listeners.into_iter();
        let first = listeners.next().expect("a server has a listening socket");
        let threads: Vec<_> = listeners
            .zip(runtimes)
            .enumerate()
            .map(|(i, (listener, runtime))| {
                let acceptor = acceptor.clone();
                let mut drained = drained.clone();
                std::thread::Builder::new()
                    .name(format!("pier-serve-{}", i + 1))
                    .spawn(move || {
                        pier_threads::claim(i + 1);
                        runtime.block_on(async move {
                            acceptor.accept(listener, acceptor.stopped()).await;
                            // Its connections run on this runtime until the drain is over.
                            let _ = drained.wait_for(|d| *d).await;
                        });
                    })
                    .expect("cannot start a serving thread")
            })
            .collect();
        pier_threads::claim(0);
        acceptor.accept(first, shutdown).await;
        let _ = draining_tx.send(true);
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
        let limits = &acceptor.limits;
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let drain = acceptor.connections.acquire_many(all);
        match tokio::time::timeout(limits.drain_timeout, drain).await {
            Ok(_) => tracing::info!("drained: all connections closed"),
            Err(_) => tracing::warn!(
                "drain timed out after {:?}; closing the remaining connections",
                limits.drain_timeout
            ),
        }
        // The other threads' runtimes end, dropping what they still run; a thread whose guest
        // has not come back to its runtime is not waited for long.
        let _ = drained_tx.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a serving thread panicked");
                }
            }
        });
        let _ = tokio::time::timeout(THREADS_END_WITHIN, joined).await;
    }
}

/// How long a server that drained waits for its other serving threads to end.
const THREADS_END_WITHIN: Duration = Duration::from_secs(1);

/// What every serving thread accepts connections with.
struct Acceptor {
    builder: auto::Builder<TokioExecutor>,
    routes: Arc<Routes>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    /// `--max-connections`, for all threads together.
    connections: Arc<Semaphore>,
    draining: watch::Receiver<bool>,
}

impl Acceptor {
    /// Resolves once the server drains.
    fn stopped(&self) -> impl Future<Output = ()> + 'static {
        let mut draining = self.draining.clone();
        async move {
            let _ = draining.wait_for(|d| *d).await;
        }
    }

    /// Accepts connections on `listener` until `stop` resolves, running each on a task of the
    /// current runtime.
    async fn accept(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        stop: impl Future<Output = ()>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("cannot serve a listening socket: {e}");
                return;
            }
        };
        let limits = &self.limits;
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends are transient: back off instead of dying.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            // At the connection limit, stop accepting: this connection waits for a slot, the
            // next clients in the kernel's backlog. (The slot is taken after the accept, not
            // before: a thread waiting for a connection holds none another thread could use.)
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => permit.expect("never closed"),
                () = &mut stop => break,
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                acceptor: self.clone(),
                timeouts: Timeouts {
                    idle: limits.idle_timeout,
                    header: limits.header_timeout,
                    send: limits.send_timeout,
                },
                draining: self.draining.clone(),
                peer,
                secure: self.tls.is_some(),
            };
            let tls = self.tls.clone();
            // `--header-timeout 0` turns the slow-client limits off, this one too.
            let handshake_timeout = Some(limits.header_timeout)
                .filter(|t| !t.is_zero())
                .unwrap_or(Duration::MAX);
            tokio::spawn(async move {
                match tls {
                    None => conn.run(stream).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => conn.run(stream).await,
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
    }
}

/// hyper's connection settings from the limits. hyper's own header limits sit above pier's so
/// that pier's checks (which answer 431 with an explanation) normally speak first.
///
/// The header timeout is kept by each connection's watchdog ([`Connection::run`]), not by
/// hyper's own `header_read_timeout`, which arms and drops a timer for every request.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size.saturating_mul(2).max(8192))
        .keep_alive(true);
    // hyper parses a head into room for its default of 100 fields kept on the stack; a limit
    // of its own makes it allocate and fill room for that many fields for every request (~10
    // KiB for 200). Up to 100 fields pier's check speaks first; past them hyper's 431 is made
    // pier's (see `refusals`). Only a limit above the default needs hyper's raised.
    if limits.max_headers > HYPER_MAX_HEADERS {
        builder
            .http1()
            .max_headers(limits.max_headers.saturating_mul(2));
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        // Room for pier's own check to answer 431 with its body for header sections up to
        // 4x the limit: past SETTINGS_MAX_HEADER_LIST_SIZE the HTTP/2 layer cannot skip a
        // block safely and ends the connection.
        .max_header_list_size(
            u32::try_from(limits.max_header_size.saturating_mul(4)).unwrap_or(u32::MAX),
        );
    builder
}

/// The header fields hyper's HTTP/1 parser takes when no limit is set.
const HYPER_MAX_HEADERS: usize = 100;

/// One accepted connection.
struct Connection {
    /// Its server's settings and routes.
    acceptor: Arc<Acceptor>,
    timeouts: Timeouts,
    draining: watch::Receiver<bool>,
    peer: SocketAddr,
    /// Whether it came over TLS: its requests' scheme is `https`.
    secure: bool,
}

impl Connection {
    /// Serves the connection until the client closes it, it sits idle past `--idle-timeout`, an
    /// HTTP/1 client takes longer than `--header-timeout` to send a request head (counted from
    /// the connection's start or the last response: a slow client, or one trickling bytes, is
    /// cut off), pier's writes wait on a client that does not read for `--send-timeout`, or
    /// the server drains.
    ///
    /// One watchdog timer per connection keeps the timeouts, re-armed only when it fires, so a
    /// request costs no timer of its own.
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut self, stream: S) {
        let activity = Activity::new(self.peer);
        let io = TokioIo::new(Tracked::new(stream, activity.clone()));
        let routes = self.acceptor.routes.clone();
        let requests = activity.clone();
        let secure = self.secure;
        let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            // An HTTP/1.1 request names no scheme: its connection's goes with it (what a guest
            // is told it was sent with).
            if secure && req.uri().scheme().is_none() {
                req.extensions_mut().insert(http::uri::Scheme::HTTPS);
            }
            // Marked as begun here, as soon as hyper has the head, not when the response
            // future first runs: the watchdog must never see a request that has arrived as a
            // slow client's missing head.
            let in_flight = requests.begin();
            // The routes as of this request's arrival, for all of it.
            let router = routes.load();
            async move { Ok::<_, Infallible>(router.serve(req, Some(in_flight)).await) }
        });
        let conn = self.acceptor.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut closing = *self.draining.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        // An idle connection told to go away (HTTP/2 GOAWAY) that has not gone within the send
        // timeout: its client holds a response it does not take (a window never opened).
        let mut leaving_by: Option<std::time::Instant> = None;
        let drain = WakeFlag::new();
        loop {
            // Once closing, only a slow client is still cut off: the rest is the drain's.
            let timeouts = Timeouts {
                idle: if closing {
                    Duration::ZERO
                } else {
                    self.timeouts.idle
                },
                ..self.timeouts
            };
            let check = activity.next_check(timeouts);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        log_connection_error(self.peer, &*e);
                    }
                    return;
                }
                // Polled only once the drain has woken the task, not with every request.
                _ = IfWoken::new(&drain, self.draining.changed()), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = sleep_until(leaving_by), if leaving_by.is_some() => {
                    // Still sending what was asked (a last chunk the HTTP/2 layer holds, taken
                    // slowly): wait on.
                    leaving_by = activity.still_taking(self.timeouts.send);
                    if leaving_by.is_none() && !activity.busy() {
                        tracing::debug!(peer = %self.peer, "an idle connection did not close within the send timeout: closing it");
                        return;
                    }
                    leaving_by = leaving_by.or(Some(std::time::Instant::now() + self.timeouts.send));
                }
                () = sleep_until(check), if check.is_some() => match activity.expired(timeouts) {
                    None => {}
                    Some(Expired::Idle) => {
                        tracing::debug!(peer = %self.peer, "closing an idle connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                        if !self.timeouts.send.is_zero() {
                            leaving_by = Some(std::time::Instant::now() + self.timeouts.send);
                        }
                    }
                    // Nothing is in progress: close at once, as for a client that went away.
                    Some(Expired::Header) => {
                        tracing::debug!(peer = %self.peer, "no request head within the header timeout: closing the connection");
                        return;
                    }
                    // The client does not read what it asked for: whatever is in progress ends.
                    Some(Expired::Send) => {
                        tracing::info!(peer = %self.peer, "the client has not read for {}: closing the connection", crate::handler::human(self.timeouts.send));
                        return;
                    }
                },
            }
        }
    }
}

/// Logs how a connection ended in error: an HTTP/2 connection error pier answered with GOAWAY
/// is said at info (a client breaking the protocol, or an attack), anything else at debug.
fn log_connection_error(peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && h2.is_go_away()
            && h2.is_library()
            && let Some(reason) = h2.reason()
        {
            tracing::info!(%peer, "HTTP/2 connection error {reason:?}: sent GOAWAY and closed the connection");
            return;
        }
        source = err.source();
    }
    tracing::debug!(%peer, "connection ended with an error: {e}");
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
