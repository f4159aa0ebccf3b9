//! The component handler: one request, one fresh instance (of a WASI 0.2 or 0.3 component).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pier_engine::{FailureKind, Guest, HttpApp, Outbound, Ready};
use pier_kv::Unsynced;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use crate::body::{GuestOutcome, ResponseBody, busy_response, error_response};
use crate::limits::BodyLimit;

/// How a guest call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestEnd {
    Returned,
    Failed(FailureKind),
}

/// A response head a guest handed over, or the error code it answered with instead (as text).
type GuestHead = Result<Response<HyperOutgoingBody>, String>;

/// What the guest had done when the request path stopped running it.
enum First {
    /// Its future ended. Not on the request path as it is (a guest that returned hands over and
    /// yields before its reset, [`Handover`]); kept so that a future that has ended is answered
    /// here and never spawned, and polled, again.
    Ended((GuestEnd, Unsynced)),
    /// It returned and handed over how it ended ([`Handover`]); its store is not reset yet.
    Returned((GuestEnd, Unsynced)),
    Head(Result<GuestHead, oneshot::error::RecvError>),
}

/// The response head the guest handed over (and how the guest ended, with the writes the
/// answer waits for, if it had by then), or how it ended without one.
enum Head {
    Set(GuestHead, Option<(GuestEnd, Unsynced)>),
    Unset(GuestEnd),
}

/// The request as the guest's handler takes it: a 0.2 request and response outparam in the
/// store's table, or a 0.3 request given to the call itself.
#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved once into the guest's future"
)]
enum Call<B> {
    P2 {
        request: wasmtime::component::Resource<HostIncomingRequest>,
        outparam: wasmtime::component::Resource<HostResponseOutparam>,
    },
    P3 {
        request: Request<B>,
        head: oneshot::Sender<pier_engine::p3::Head>,
    },
}

/// Where the guest's response head arrives.
enum HeadReceiver {
    P2(oneshot::Receiver<Result<Response<HyperOutgoingBody>, ErrorCode>>),
    P3(oneshot::Receiver<pier_engine::p3::Head>),
}

impl HeadReceiver {
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<First> {
        let head = match self {
            HeadReceiver::P2(r) => Pin::new(r).poll(cx).map(|h| h.map(|h| h.map_err(text))),
            HeadReceiver::P3(r) => Pin::new(r).poll(cx).map(|h| h.map(|h| h.map_err(text))),
        };
        head.map(First::Head)
    }

    fn try_recv(&mut self) -> Option<GuestHead> {
        match self {
            HeadReceiver::P2(r) => r.try_recv().ok().map(|h| h.map_err(text)),
            HeadReceiver::P3(r) => r.try_recv().ok().map(|h| h.map_err(text)),
        }
    }
}

fn text(code: impl std::fmt::Debug) -> String {
    format!("{code:?}")
}

/// Answers `req` with a fresh instance of `app`.
///
/// The instance starts once there is room for it among the live instances ([`crate::pace`]: at
/// once, unless many are live already); the wait counts toward the app's timeout for a guest
/// that then waits (one that computes gets its whole timeout of computing from its start).
///
/// The guest runs right here, in the request's task, until it has handed over the response head.
/// If it is done by then (a guest that answers at once), its body, all written, goes out whole
/// with its length, and only then is its store reset, by a task of its own ([`Handover`]). A
/// guest that still writes its body without waiting on anything (a 0.3 guest writes it from a
/// task of its own) is let finish it here too ([`settle`]). One that waits (streaming the body,
/// or anything else) moves to a task of its own and the response goes out meanwhile.
///
/// If the guest fails before handing over the head, the client gets a 500 (504 for a timeout,
/// 413 if it failed reading a body over the limit); if it fails after, the response body is
/// aborted. `permit` (a slot of `--max-concurrency`) is held until the guest is done.
///
/// An answer is complete only once the key-value writes it depends on are on disk
/// ([`pier_kv::SyncPoint`]): a guest that returned waits for them here; a guest that streams
/// waits before its body ends. If the disk fails them, the client gets a 500, or an aborted
/// body.
///
/// A middleware component ([`HttpApp::is_middleware`]) passes requests on to `next`
/// ([`crate::middleware`]).
pub async fn handle<B>(
    app: Arc<HttpApp>,
    req: Request<B>,
    body_limit: Option<BodyLimit>,
    permit: Option<crate::service::Permits>,
    next: Option<Arc<dyn Outbound>>,
) -> (Response<ResponseBody>, Option<Arc<GuestOutcome>>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    if app.settings().reuse > 1 {
        debug_assert!(next.is_none(), "middleware is served on fresh instances");
        return reused(app, req, body_limit, permit).await;
    }
    // Room among the live instances (`crate::pace`): at once, unless many are live already.
    // The time a request waits for it counts toward its timeout (but for the guest's computing,
    // bounded from the instance's start).
    let timeout = app.settings().timeout;
    let arrived = Instant::now();
    let live = match permit.as_ref().and_then(|p| p.pace.as_ref()) {
        Some(pace) if timeout.is_zero() => Some(pace.enter().await),
        Some(pace) => match tokio::time::timeout(timeout, pace.enter()).await {
            Ok(live) => Some(live),
            Err(_) => {
                metrics::counter!(crate::metrics::GUEST_FAILURES, "kind" => "timeout").increment(1);
                tracing::warn!(
                    component = app.name(),
                    path = req.uri().path(),
                    "no room among the live instances within --timeout ({}), answered 504",
                    human(timeout)
                );
                return (failed(FailureKind::Timeout, timeout), None);
            }
        },
        None => None,
    };
    let started = Instant::now();
    // An instance made ahead of time if one is ready, else one made for this request below.
    let (mut store, made) = match app.take_ready() {
        Some(Ready {
            store,
            guest,
            instance,
        }) => (store, Some((guest, instance))),
        None => (app.new_store(), None),
    };
    if let Some(next) = next {
        store.data_mut().set_downstream(next);
    }
    let method = req.method().clone();
    let uri = req.uri().clone();
    let (call, mut receiver) = if app.is_p3() {
        let (head, receiver) = oneshot::channel();
        (Call::P3 { request: req, head }, HeadReceiver::P3(receiver))
    } else {
        let (sender, receiver) = oneshot::channel();
        let mut http = store.data_mut().http();
        let scheme = match pier_engine::p3::scheme(&req) {
            s if s == http::uri::Scheme::HTTP => Scheme::Http,
            s if s == http::uri::Scheme::HTTPS => Scheme::Https,
            s => Scheme::Other(s.to_string()),
        };
        let request = match http.new_incoming_request(scheme, req) {
            Ok(request) => request,
            Err(e) => {
                return (
                    error_response(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
                    None,
                );
            }
        };
        let outparam = match http.new_response_outparam(sender) {
            Ok(outparam) => outparam,
            Err(e) => {
                tracing::error!(
                    component = app.name(),
                    "cannot create the response outparam: {e:#}"
                );
                return (
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
                    None,
                );
            }
        };
        (Call::P2 { request, outparam }, HeadReceiver::P2(receiver))
    };

    let outcome = Arc::new(GuestOutcome::default());
    let returned = Handover::default();
    // Set once the guest streams its answer from a task of its own.
    let streaming = Arc::new(AtomicBool::new(false));
    let mut guest = {
        let app = app.clone();
        let outcome = outcome.clone();
        let limit = body_limit.clone();
        let streaming = streaming.clone();
        let returned = returned.clone();
        let guest = Box::pin(async move {
            let call = async {
                let (guest, instance) = match made {
                    Some(made) => {
                        metrics::counter!(crate::metrics::INSTANCES, "made" => "ahead")
                            .increment(1);
                        made
                    }
                    None => {
                        let made = app.instantiate(&mut store).await?;
                        metrics::counter!(crate::metrics::INSTANCES, "made" => "on_request")
                            .increment(1);
                        metrics::histogram!(crate::metrics::INSTANTIATE_SECONDS)
                            .record(started.elapsed().as_secs_f64());
                        made
                    }
                };
                match (guest, call) {
                    (Guest::P2(proxy), Call::P2 { request, outparam }) => {
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut store, request, outparam)
                            .await
                    }
                    (Guest::P3(service), Call::P3 { request, head }) => {
                        pier_engine::p3::handle(&mut store, &service, request, head).await
                    }
                    _ => unreachable!("an app's instances all speak the version it was loaded as"),
                }
                .map(|()| instance)
            };
            // The epoch deadline stops a guest that computes past its time; this also stops
            // one that waits past it (on a body, say). Dropping the call drops the instance.
            // Most guests are done in their first poll, so the timer (one entry in the
            // runtime's timer wheel, armed and disarmed) is armed only for a guest that waits,
            // with the same deadline.
            let result = {
                let mut call = std::pin::pin!(call);
                match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
                    Poll::Ready(result) => result,
                    Poll::Pending if timeout.is_zero() => call.await,
                    Poll::Pending => {
                        let deadline = tokio::time::Instant::from_std(arrived + timeout);
                        match tokio::time::timeout_at(deadline, call).await {
                            Ok(result) => result,
                            Err(_) => Err(wasmtime::Trap::Interrupt.into()),
                        }
                    }
                }
            };
            let end = match &result {
                Ok(_) => GuestEnd::Returned,
                Err(e) => {
                    let kind = FailureKind::of(e);
                    report_failure(&app, &method, uri.path(), kind, e);
                    GuestEnd::Failed(kind)
                }
            };
            let elapsed = started.elapsed();
            metrics::histogram!(crate::metrics::GUEST_SECONDS).record(elapsed.as_secs_f64());
            let mut unsynced = store.data().unsynced();
            // A guest streaming its answer ends it here: its writes must be on disk first.
            let kept = !(streaming.load(Ordering::Acquire) && end == GuestEnd::Returned)
                || saved(&app, std::mem::take(&mut unsynced), started)
                    .await
                    .is_ok();
            // Publish the outcome before the store (and with it the body sender) is dropped. A
            // guest that read a request body cut at the limit answered a request it did not
            // see whole: its response fails too.
            let cut = limit.as_ref().is_some_and(BodyLimit::exceeded);
            outcome.set(end == GuestEnd::Returned && kept && !cut, elapsed);
            // Answered on the request path: the answer goes out first, the reset after it.
            if !streaming.load(Ordering::Acquire) {
                returned.give((end, std::mem::take(&mut unsynced)));
                yield_once().await;
            }
            if let Ok(instance) = &result
                && let Some(joined) = app.before_reset(&mut store, instance).await
                && joined.gaps > 0
            {
                metrics::counter!(crate::metrics::RESET_PAGES_JOINED)
                    .increment(joined.pages as u64);
            }
            drop(store);
            drop(permit);
            (end, unsynced)
        });
        crate::pace::Paced::new(live, guest)
    };

    // Run the guest until it ends or hands over the head, whichever comes first.
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(end) = Pin::new(&mut guest).poll(cx) {
            return Poll::Ready(First::Ended(end));
        }
        if let Some(end) = returned.take() {
            return Poll::Ready(First::Returned(end));
        }
        receiver.poll(cx)
    })
    .await;
    let head = match first {
        // Done: the head, if it set one, is waiting in the channel.
        First::Ended((end, unsynced)) => match receiver.try_recv() {
            Some(head) => Head::Set(head, Some((end, unsynced))),
            None => Head::Unset(end),
        },
        // Returned: what is left (the reset, then its room and slot given back) runs as a task
        // of its own, after this one has written the response.
        First::Returned((end, unsynced)) => {
            tokio::spawn(guest);
            match receiver.try_recv() {
                Some(head) => Head::Set(head, Some((end, unsynced))),
                None => Head::Unset(end),
            }
        }
        // The guest may still finish its body without waiting on anything (a 0.3 guest that
        // writes it from a task of its own): let it, here; if it waits, it moves to a task.
        First::Head(Ok(head)) => match settle(Pin::new(&mut guest), &returned).await {
            Some(end) => Head::Set(head, Some(end)),
            None if returned.is_given() => {
                let end = returned.take();
                tokio::spawn(guest);
                Head::Set(head, end)
            }
            None => {
                streaming.store(true, Ordering::Release);
                tokio::spawn(guest);
                Head::Set(head, None)
            }
        },
        // The outparam was dropped unused: the guest is ending (or failing); see how.
        First::Head(Err(_)) => Head::Unset(guest.await.0),
    };

    let response = match head {
        // The request body went past the limit before the answer started: 413, whatever the
        // guest made of the part it read (a 0.3 guest sees a cut body end, with an error only
        // in its trailers).
        Head::Set(Ok(_), _) if body_limit.as_ref().is_some_and(BodyLimit::exceeded) => {
            too_large(body_limit.as_ref())
        }
        // Done, and its body with it: sent whole, with its length, once what it wrote is saved.
        Head::Set(Ok(response), Some((GuestEnd::Returned, unsynced))) => {
            match saved(&app, unsynced, started).await {
                Ok(()) => return (response.map(ResponseBody::returned), Some(outcome)),
                Err(response) => response,
            }
        }
        Head::Set(Ok(response), _) => {
            return (
                response.map(|body| ResponseBody::guest(body, outcome.clone())),
                Some(outcome),
            );
        }
        Head::Set(Err(code), _) => {
            tracing::warn!(
                component = app.name(),
                "guest answered with an error: {code}"
            );
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the component answered with an error",
            )
        }
        // The outparam was dropped unused: the guest returned without answering, or failed.
        Head::Unset(end) => match end {
            _ if body_limit.as_ref().is_some_and(BodyLimit::exceeded) => {
                too_large(body_limit.as_ref())
            }
            GuestEnd::Returned => {
                tracing::error!(
                    component = app.name(),
                    "guest returned without setting a response"
                );
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the component returned no response",
                )
            }
            GuestEnd::Failed(kind) => failed(kind, timeout),
        },
    };
    (response, Some(outcome))
}

/// How many times at most [`settle`] polls a guest that keeps waking itself.
const SETTLE_POLLS: usize = 16;

/// How long [`settle`] goes on polling a guest that keeps waking itself.
const SETTLE_FOR: Duration = Duration::from_micros(200);

/// Polls `guest`, which has handed over its response head, for as long as it makes progress on
/// its own: its output if it ends, `None` once it has returned (and said how in `returned`,
/// its store still to be reset) or waits on something outside it (a client
/// reading its body, a request body still arriving, an origin, a timer), or after
/// [`SETTLE_POLLS`] polls or [`SETTLE_FOR`]. A 0.3 guest writes its body from a task of its own,
/// after `handle` has returned: that takes one more turn of the store's event loop, which wakes
/// the request's task again. Done here, the request needs no task of its own for the guest, no
/// other thread is woken, and the body goes out whole with its length.
///
/// A guest that computes after handing over its head delays the head by one poll at most: until
/// it next yields its thread (after ~50 ms of computing).
async fn settle<F: Future>(mut guest: Pin<&mut F>, returned: &Handover) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        let woken = Arc::new(WakeFlag {
            woken: AtomicBool::new(false),
            waker: cx.waker().clone(),
        });
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let started = Instant::now();
        for _ in 0..SETTLE_POLLS {
            woken.woken.store(false, Ordering::Relaxed);
            if let Poll::Ready(output) = guest.as_mut().poll(&mut cx) {
                return Poll::Ready(Some(output));
            }
            if returned.is_given() {
                break;
            }
            if !woken.woken.load(Ordering::Acquire) || started.elapsed() >= SETTLE_FOR {
                break;
            }
        }
        Poll::Ready(None)
    })
    .await
}

/// A waker that notes that it was woken, and wakes the task it stands for.
struct WakeFlag {
    woken: AtomicBool,
    waker: std::task::Waker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake_by_ref();
    }
}

/// How a guest that returned on the request path ended, handed over before its store is reset,
/// so that the response is written first and the reset (the reset hint's scan, the pool's copy:
/// ~100 us of an interpreter's request) runs after it, in a task of its own. That task holds the
/// instance's room among the live ones and its `--max-concurrency` slot until the store is
/// gone. It runs as soon as the connection's task waits (tokio's current-thread scheduler runs
/// queued tasks before it polls for I/O again), so a next request on the connection finds the
/// slot given back unless it had arrived by the time the response was written (pipelined
/// behind this one): at the limit, that one may get the 503 of a full server.
#[derive(Clone, Default)]
struct Handover(Arc<std::sync::Mutex<Option<(GuestEnd, Unsynced)>>>);

impl Handover {
    fn give(&self, end: (GuestEnd, Unsynced)) {
        *self.0.lock().unwrap() = Some(end);
    }

    fn take(&self) -> Option<(GuestEnd, Unsynced)> {
        self.0.lock().unwrap().take()
    }

    fn is_given(&self) -> bool {
        self.0.lock().unwrap().is_some()
    }
}

/// Pending once, waking its task at once: the task goes to the back of its runtime's queue.
/// (`tokio::task::yield_now` would wake it only after the runtime next polls for I/O.)
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Counts a guest's failure and logs it with its cause.
fn report_failure(
    app: &HttpApp,
    method: &http::Method,
    path: &str,
    kind: FailureKind,
    e: &wasmtime::Error,
) {
    metrics::counter!(crate::metrics::GUEST_FAILURES, "kind" => kind.as_str()).increment(1);
    let mut report = pier_engine::describe_guest_error(e);
    if kind == FailureKind::OutOfMemory {
        report.push_str(" (past its memory limit, --max-memory)");
    } else if e
        .chain()
        .any(|cause| cause.to_string() == "resource table has no free keys")
    {
        report.push_str(" (it holds as many resources as it may, --max-handles)");
    }
    if kind == FailureKind::PoolFull {
        tracing::warn!(component = app.name(), %method, path, "no instance for the request, answered 503: {report}");
    } else {
        tracing::error!(component = app.name(), %method, path, kind = kind.as_str(), "guest failed: {report}");
    }
}

/// What the client gets when the guest failed before answering.
fn failed(kind: FailureKind, timeout: Duration) -> Response<ResponseBody> {
    match kind {
        FailureKind::Timeout => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("the component did not answer within {}", human(timeout)),
        ),
        FailureKind::OutOfMemory => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the component ran out of memory",
        ),
        FailureKind::PoolFull => {
            busy_response("server busy: no instance free for the request, retry shortly")
        }
        FailureKind::Trap => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "the component failed")
        }
    }
}

/// Answers `req` on an instance that serves several requests (`--instance-reuse`, see
/// `pier_engine::HttpApp::handle_reused`): the same status codes as a fresh instance gives, but
/// a trap ends every request the instance was serving. `permit` is held until the response
/// body has ended (the instance writes it while it serves other requests).
async fn reused<B>(
    app: Arc<HttpApp>,
    mut req: Request<B>,
    body_limit: Option<BodyLimit>,
    permit: Option<crate::service::Permits>,
) -> (Response<ResponseBody>, Option<Arc<GuestOutcome>>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    use http_body_util::BodyExt;

    let started = Instant::now();
    // The workers take the request's scheme and authority from its URI: give an origin-form
    // HTTP/1.1 request the ones a fresh instance would see, from a `Host` header that parses
    // as an authority and nothing else (never as part of the path). Without one, a 0.2 guest
    // cannot be given the request: 400, as a fresh instance answers.
    if req.uri().authority().is_none() {
        let Some(authority) = pier_engine::p3::authority(&req) else {
            return (
                error_response(StatusCode::BAD_REQUEST, "bad request: no valid Host header"),
                None,
            );
        };
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(pier_engine::p3::scheme(&req));
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        match http::Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => {
                return (
                    error_response(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
                    None,
                );
            }
        }
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let answered = app
        .handle_reused(req.map(|body| body.map_err(Into::into).boxed_unsync()))
        .await;
    let elapsed = started.elapsed();
    metrics::histogram!(crate::metrics::GUEST_SECONDS).record(elapsed.as_secs_f64());
    let outcome = Arc::new(GuestOutcome::default());
    match answered {
        Ok(_) if body_limit.as_ref().is_some_and(BodyLimit::exceeded) => {
            outcome.set(false, elapsed);
            (too_large(body_limit.as_ref()), Some(outcome))
        }
        Ok(response) => {
            outcome.set(true, elapsed);
            let response = response.map(|inner| {
                let body = Holding { inner, permit }.boxed_unsync();
                ResponseBody::guest(body, outcome.clone())
            });
            (response, Some(outcome))
        }
        Err(e) => {
            outcome.set(false, elapsed);
            let timeout = app.settings().timeout;
            // A request past its time, or one whose instance was stopped for computing past it
            // (the worker then ends, and says only that).
            let expired = e
                .downcast_ref::<wasmtime_wasi_http::handler::ExpirationError>()
                .is_some()
                || (e
                    .downcast_ref::<wasmtime_wasi_http::handler::TrapOrPanicError>()
                    .is_some()
                    && !timeout.is_zero()
                    && elapsed >= timeout);
            // An instance that could not be made says why inside the error it is wrapped in.
            let made = e.downcast_ref::<wasmtime_wasi_http::handler::InstantiationError<()>>();
            let kind = if expired {
                FailureKind::Timeout
            } else if let Some(made) = made {
                FailureKind::of(&made.error)
            } else {
                FailureKind::of(&e)
            };
            report_failure(&app, &method, &path, kind, &e);
            let response = if body_limit.as_ref().is_some_and(BodyLimit::exceeded) {
                too_large(body_limit.as_ref())
            } else {
                failed(kind, timeout)
            };
            (response, Some(outcome))
        }
    }
}

/// A reused instance's response body, holding the request's `--max-concurrency` slot until the
/// body has ended (or is dropped).
struct Holding {
    inner: HyperOutgoingBody,
    permit: Option<crate::service::Permits>,
}

impl Body for Holding {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.permit = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Waits until the key-value writes an answer depends on are on disk, within what is left of
/// the request's timeout; the answer to send instead if they are not.
async fn saved(
    app: &HttpApp,
    unsynced: Unsynced,
    started: Instant,
) -> Result<(), Response<ResponseBody>> {
    if unsynced.is_empty() {
        return Ok(());
    }
    let timeout = app.settings().timeout;
    let waited = if timeout.is_zero() {
        Ok(unsynced.wait().await)
    } else {
        let deadline = tokio::time::Instant::from_std(started + timeout);
        tokio::time::timeout_at(deadline, unsynced.wait()).await
    };
    match waited {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(
                component = app.name(),
                "the request's key-value writes were not saved: {e}"
            );
            Err(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request's writes could not be saved",
            ))
        }
        Err(_) => {
            tracing::error!(
                component = app.name(),
                "the request's key-value writes were not on disk within {}",
                human(timeout)
            );
            Err(error_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "the request's writes were not saved within {}",
                    human(timeout)
                ),
            ))
        }
    }
}

fn too_large(limit: Option<&BodyLimit>) -> Response<ResponseBody> {
    let max = limit.map_or(0, BodyLimit::max);
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {max} bytes"),
    )
}

/// `30s`, `250ms`.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that wakes itself `wakes` times before it is done, or waits for good after
    /// `wakes` polls when `then_wait`.
    struct Steps {
        wakes: usize,
        then_wait: bool,
        polls: usize,
    }

    impl Future for Steps {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.wakes {
                if self.then_wait {
                    return Poll::Pending;
                }
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn steps(wakes: usize, then_wait: bool) -> Pin<Box<Steps>> {
        Box::pin(Steps {
            wakes,
            then_wait,
            polls: 0,
        })
    }

    #[tokio::test]
    async fn a_guest_that_only_wakes_itself_is_run_to_its_end() {
        let mut guest = steps(3, false);
        assert_eq!(settle(guest.as_mut(), &Handover::default()).await, Some(4));
    }

    #[tokio::test]
    async fn a_guest_that_waits_is_let_go_at_once() {
        let mut guest = steps(0, true);
        assert_eq!(settle(guest.as_mut(), &Handover::default()).await, None);
        assert_eq!(guest.polls, 1);
        let mut guest = steps(2, true);
        assert_eq!(settle(guest.as_mut(), &Handover::default()).await, None);
        assert_eq!(guest.polls, 3);
    }

    #[tokio::test]
    async fn a_guest_that_has_returned_is_let_go_before_its_reset() {
        // It hands over how it ended, then wakes itself to reset its store: that part runs
        // after the response, elsewhere.
        let returned = Handover::default();
        let polls = std::cell::Cell::new(0);
        let mut guest = std::pin::pin!(std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            if polls.get() == 2 {
                returned.give((GuestEnd::Returned, Unsynced::default()));
            }
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        assert_eq!(settle(guest.as_mut(), &returned).await, None);
        assert_eq!(polls.get(), 2);
        assert!(matches!(returned.take(), Some((GuestEnd::Returned, _))));
    }

    #[tokio::test]
    async fn a_guest_that_never_ends_is_polled_a_bounded_number_of_times() {
        let mut guest = steps(usize::MAX, false);
        assert_eq!(settle(guest.as_mut(), &Handover::default()).await, None);
        assert!((1..=SETTLE_POLLS).contains(&guest.polls), "{}", guest.polls);
    }
}
