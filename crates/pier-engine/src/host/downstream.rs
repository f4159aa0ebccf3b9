//! `wasi:http/handler@0.3` as an import: where a middleware component (the
//! `wasi:http/middleware` world, which imports and exports `handler`) sends the request it
//! passes on. pier links it to the next link of the route's chain, given to each store with
//! [`HostState::set_downstream`]: another component, an upstream or static files, each answered
//! as the route's own handler would be, in an isolated store of its own with its own grants.
//!
//! The call is `wasi:http/client`'s `send` (WIT gives the two the same signature so that one
//! can be linked to the other), with the request handed to the next link instead of the
//! network: request and response bodies stream through as they would to and from an origin.
//! A store given no next link (a component that imports `handler` but is not served as
//! middleware) gets the error code `internal-error` from every call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::component::{Accessor, Linker, Resource};
use wasmtime_wasi_http::p3::bindings::http::client::HostWithStore;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::{Request, Response};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttp, WasiHttpCtxView};

use super::HostState;
use super::http::OutboundHooks;
use crate::host::Outbound;

/// The import a middleware component forwards requests through.
const HANDLER_IMPORT: &str = "wasi:http/handler@0.3.0";

/// A store's next link: where its `handler.handle` calls go.
pub(crate) struct DownstreamState(OutboundHooks);

impl Default for DownstreamState {
    fn default() -> Self {
        DownstreamState(OutboundHooks::new(Arc::new(NoNext)))
    }
}

impl DownstreamState {
    /// Calls go to `next`.
    pub(crate) fn new(next: Arc<dyn Outbound>) -> Self {
        DownstreamState(OutboundHooks::new(next))
    }
}

/// The `wasi:http` view of `state` with its next link in place of its outbound client: what
/// `client.send`'s implementation reads its hooks from.
fn view(state: &mut HostState) -> WasiHttpCtxView<'_> {
    let (http, table, downstream) = state.http_table_and_downstream();
    http.view_with(table, &mut downstream.0)
}

/// Links `wasi:http/handler@0.3.0`'s `handle` as an import (needs an engine with concurrency
/// support).
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(HANDLER_IMPORT)?.func_wrap_concurrent(
        "handle",
        |accessor: &Accessor<HostState>, (request,): (Resource<Request>,)| {
            Box::pin(async move {
                let http = accessor.with_getter::<WasiHttp>(view);
                let sent = <WasiHttp as HostWithStore<HostState>>::send(&http, request).await;
                let answer: Result<Resource<Response>, ErrorCode> = match sent {
                    Ok(response) => Ok(response),
                    // A guest-visible error code, or a trap.
                    Err(e) => Err(e.downcast()?),
                };
                Ok((answer,))
            })
        },
    )
}

/// What a store with no next link forwards to: nothing.
struct NoNext;

impl Outbound for NoNext {
    fn send(
        &self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<WasiBody>, wasmtime_wasi_http::Error>> + Send,
        >,
    > {
        tracing::warn!(
            "a component called wasi:http/handler.handle but is not served as middleware: \
             list it in a route's `middleware`"
        );
        Box::pin(async {
            Err(wasmtime_wasi_http::Error::InternalError(Some(
                "no next handler: the component is not served as middleware".into(),
            )))
        })
    }
}
