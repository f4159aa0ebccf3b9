//! `wasi:http`: a guest's incoming request and response (wasmtime-wasi-http's types) and its
//! outgoing requests, which go to the app's [`Outbound`] (pier's pooled client under the
//! component's policy, or [`DenyAll`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::HostState;

/// A store's `wasi:http` state: wasmtime-wasi-http's context and where outgoing requests go.
pub(crate) struct HttpState {
    ctx: WasiHttpCtx,
    hooks: OutboundHooks,
}

impl HttpState {
    /// Outgoing requests sent through `outbound`.
    pub(crate) fn new(outbound: Arc<dyn Outbound>) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHooks::new(outbound),
        }
    }

    /// At most `max` of the guest's outgoing requests in flight at once (each from its sending
    /// until its response body ends or is dropped); one more fails at once with
    /// `connection-limit-reached`.
    pub(crate) fn limit_in_flight(&mut self, max: usize) {
        self.hooks.max_in_flight = max;
    }

    /// The same view with `hooks` in place of the store's outbound client (a middleware's
    /// next link: [`super::downstream`]).
    pub(crate) fn view_with<'a>(
        &'a mut self,
        table: &'a mut ResourceTable,
        hooks: &'a mut OutboundHooks,
    ) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            table,
            hooks,
        }
    }

    /// The view wasmtime-wasi-http's host functions take, over the store's `table`.
    pub(crate) fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let (http, table) = self.http_and_table();
        http.view(table)
    }
}

/// Links `wasi:http/types` and `wasi:http/outgoing-handler` (0.2).
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// Sends a guest's outgoing HTTP requests. pier's pooled, policy-checking client implements it
/// (in pier-http); one instance is shared by every store of an app.
pub trait Outbound: Send + Sync + 'static {
    /// Sends `request` (absolute URI, body streaming from the guest), honouring the guest's
    /// `options` within the host's limits.
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<WasiBody>, wasmtime_wasi_http::Error>> + Send,
        >,
    >;
}

/// Refuses every outgoing request: what a guest gets when nothing was granted.
pub struct DenyAll;

impl Outbound for DenyAll {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<WasiBody>, wasmtime_wasi_http::Error>> + Send,
        >,
    > {
        crate::warn_denied(&format!(
            "outgoing request to {} denied: no --allow-outbound pattern was given",
            request.uri()
        ));
        Box::pin(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Header names a guest may not set on an outgoing request (RFC 9110 connection-specific
/// fields, proxy fields, and `host`, which pier derives from the URL).
const FORBIDDEN: [http::HeaderName; 10] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::TE,
    http::header::HOST,
    http::HeaderName::from_static("http2-settings"),
];

/// wasmtime-wasi-http's hooks, routed to an [`Outbound`], with the store's requests in flight
/// counted.
pub(crate) struct OutboundHooks {
    outbound: Arc<dyn Outbound>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// Whether the log has said a request was refused for the cap (once per instance: a guest
    /// looping on refused requests must not flood the log).
    told: bool,
}

impl OutboundHooks {
    pub(crate) fn new(outbound: Arc<dyn Outbound>) -> Self {
        OutboundHooks {
            outbound,
            in_flight: Arc::default(),
            max_in_flight: usize::MAX,
            told: false,
        }
    }
}

/// One of a store's outgoing requests in flight; counted out when dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// A place among `max`, if one is free.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<InFlight> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(count.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's place in flight until it ends or is dropped.
struct Holding {
    body: WasiBody,
    place: Option<InFlight>,
}

impl Body for Holding {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if !matches!(frame, Some(Ok(ref f)) if f.is_data()) {
            self.place = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(|name| FORBIDDEN.contains(name))
    }

    /// The client sets `Host` from the URL's authority, without a default port.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        let max = self.max_in_flight;
        let Some(place) = InFlight::take(&self.in_flight, max) else {
            if !std::mem::replace(&mut self.told, true) {
                tracing::warn!(
                    uri = %request.uri(),
                    "outgoing request refused: {max} already in flight from this instance \
                     (--max-outbound-requests; said once per instance)"
                );
            }
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        };
        let sent = self.outbound.send(request, options);
        Box::new(async move {
            let response = sent.await?.map(|body| {
                use http_body_util::BodyExt;
                Holding {
                    body,
                    place: Some(place),
                }
                .boxed_unsync()
            });
            // The pooled client drives its connections itself: no per-request I/O future.
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    /// Places are taken up to the cap, and given back when a response body ends (its last
    /// frame read) or is dropped unread.
    #[tokio::test]
    async fn a_place_in_flight_is_held_until_the_response_body_is_done() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = InFlight::take(&count, 2).unwrap();
        let second = InFlight::take(&count, 2).unwrap();
        assert!(InFlight::take(&count, 2).is_none(), "the cap");
        let body = |place| Holding {
            body: Full::new(Bytes::from_static(b"x"))
                .map_err(|never| match never {})
                .boxed_unsync(),
            place: Some(place),
        };
        let read = body(first).collect().await.unwrap();
        assert_eq!(read.to_bytes(), "x");
        assert_eq!(count.load(Ordering::Acquire), 1, "ended: given back");
        drop(body(second));
        assert_eq!(count.load(Ordering::Acquire), 0, "dropped: given back");
        assert!(InFlight::take(&count, 2).is_some());
    }
}
