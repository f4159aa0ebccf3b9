//! `wasi:http`: a guest's incoming request and response (wasmtime-wasi-http's types) and its
//! outgoing requests, which go to the app's [`Outbound`] (pier's pooled client under the
//! component's policy, or [`DenyAll`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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
        tracing::warn!(uri = %request.uri(), "outgoing request denied: no --allow-outbound pattern was given");
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

/// wasmtime-wasi-http's hooks, routed to an [`Outbound`].
pub(crate) struct OutboundHooks(Arc<dyn Outbound>);

impl OutboundHooks {
    pub(crate) fn new(outbound: Arc<dyn Outbound>) -> Self {
        OutboundHooks(outbound)
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
        let sent = self.0.send(request, options);
        Box::new(async move {
            let response = sent.await?;
            // The pooled client drives its connections itself: no per-request I/O future.
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
