//! WASI 0.3 middleware: components (the `wasi:http/middleware` world) between a route's filters
//! and its target, each passing the request on to the next through its `wasi:http/handler`
//! import, the last to the target (a component of either WASI version, an upstream, or static
//! files).
//!
//! Every link of the chain is a fresh instance in a store of its own, with its own grants,
//! limits and timeout, answered exactly as if it were the route's handler: a link that fails
//! gives the link before it the same response the client would get (500, 504, ...), which it
//! may pass on or replace. A request and its response stream through the host from one link
//! to the next as they would to and from an origin. The route's `--max-concurrency` slot is
//! held by the outermost link, which holds the inner ones in turn; a link that stops waiting
//! (its own timeout, a trap) ends the links behind it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use http_body_util::BodyExt;
use pier_engine::{HttpApp, Outbound};
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::{RequestOptions, WasiBody};

use crate::body::{GuestOutcome, ResponseBody};
use crate::handler;
use crate::limits::BodyLimit;
use crate::service::{Handler, Permits};

/// A route's middleware, outermost first, in front of its handler.
pub struct Chain {
    links: Vec<Arc<HttpApp>>,
    handler: Handler,
}

impl Chain {
    /// `links` (each one [`HttpApp::is_middleware`], at least one) in front of `handler`.
    pub fn new(links: Vec<Arc<HttpApp>>, handler: Handler) -> Chain {
        assert!(!links.is_empty(), "a chain has at least one middleware");
        Chain { links, handler }
    }

    /// The components of the chain, outermost first.
    pub fn links(&self) -> &[Arc<HttpApp>] {
        &self.links
    }

    /// Answers `req` with the outermost middleware, which holds `permit` until it is done.
    pub(crate) async fn handle<B>(
        self: &Arc<Self>,
        req: Request<B>,
        peer: SocketAddr,
        limit: Option<BodyLimit>,
        permit: Option<Permits>,
    ) -> (Response<ResponseBody>, Option<Arc<GuestOutcome>>)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let next = self.next(1, peer, &limit);
        handler::handle(self.links[0].clone(), req, limit, permit, Some(next)).await
    }

    /// What the link at `depth - 1` passes requests on to: the link at `depth`, or the handler.
    fn next(
        self: &Arc<Self>,
        depth: usize,
        peer: SocketAddr,
        limit: &Option<BodyLimit>,
    ) -> Arc<dyn Outbound> {
        Arc::new(Next {
            chain: self.clone(),
            depth,
            peer,
            limit: limit.clone(),
        })
    }
}

/// The next link of a chain, as a middleware's store reaches it.
struct Next {
    chain: Arc<Chain>,
    /// Its index in the chain's links; one past the last is the handler.
    depth: usize,
    peer: SocketAddr,
    /// The client's request body limit, so that a link reading past it answers 413 as the
    /// route's handler would.
    limit: Option<BodyLimit>,
}

impl Next {
    /// The name the log gives the next link.
    fn name(&self) -> &str {
        match self.chain.links.get(self.depth) {
            Some(app) => app.name(),
            None => match &self.chain.handler {
                Handler::Component(app) => app.name(),
                Handler::Upstream(_) => "the upstream",
                _ => "the route's handler",
            },
        }
    }

    async fn answer(self: Arc<Self>, req: Request<WasiBody>) -> Response<ResponseBody> {
        let limit = self.limit.clone();
        match self.chain.links.get(self.depth) {
            Some(app) => {
                let next = self.chain.next(self.depth + 1, self.peer, &self.limit);
                handler::handle(app.clone(), req, limit, None, Some(next))
                    .await
                    .0
            }
            None => {
                crate::service::answer(&self.chain.handler, req, self.peer, limit, None)
                    .await
                    .0
            }
        }
    }
}

impl Outbound for Next {
    /// Answers `request` with the next link, in a task of its own (the link runs its own
    /// store); the request's options (the client's timeouts) do not apply, each component
    /// having its own timeout.
    fn send(
        &self,
        request: Request<WasiBody>,
        _options: Option<RequestOptions>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<WasiBody>, wasmtime_wasi_http::Error>> + Send>>
    {
        let next = Arc::new(Next {
            chain: self.chain.clone(),
            depth: self.depth,
            peer: self.peer,
            limit: self.limit.clone(),
        });
        let started = Instant::now();
        let caller = self.chain.links[self.depth - 1].name().to_string();
        let task = AbortOnDropHandle::new(tokio::spawn(next.clone().answer(request)));
        let mut waiting = Waiting {
            caller,
            next,
            started,
            done: false,
        };
        Box::pin(async move {
            let answered = task.await;
            waiting.done = true;
            let response = answered.map_err(|e| {
                wasmtime_wasi_http::Error::InternalError(Some(format!(
                    "{} failed: {e}",
                    waiting.next.name()
                )))
            })?;
            // A body that ends in an error (the link failed while writing it) reaches the
            // middleware as an incomplete response.
            Ok(response.map(|body| {
                body.map_err(|_| wasmtime_wasi_http::Error::HttpResponseIncomplete)
                    .boxed_unsync()
            }))
        })
    }
}

/// A middleware waiting for its next link's response head: if it stops waiting first (its own
/// timeout or failure dropped the call), the next link is ended with it, and the log says so,
/// naming both.
struct Waiting {
    caller: String,
    next: Arc<Next>,
    started: Instant,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(
                component = self.next.name(),
                middleware = self.caller,
                "the middleware stopped waiting for the response after {} ms: the request it \
                 passed on was ended",
                self.started.elapsed().as_millis()
            );
        }
    }
}
