//! `http://self`: a component granted it (`allowed_outbound = ["http://self"]` in the manifest)
//! calls the app's own routes in process: no socket, and the same routes, filters, limits and
//! metrics as a client's request. Each call holds a slot of `--max-concurrency` (and of the
//! called component's limit) like any request, so a component that calls itself without end is
//! answered 503 once the slots are taken, never hung.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};

use pier_engine::Outbound;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::server::Routes;

/// The routes `http://self` reaches: those of the server the app is built for, known once it
/// listens ([`SelfRoutes::connect`]).
#[derive(Clone, Default)]
pub struct SelfRoutes(Arc<OnceLock<Weak<Routes>>>);

impl SelfRoutes {
    /// From now on, `http://self` reaches `routes` (whatever version they serve).
    pub fn connect(&self, routes: &Arc<Routes>) {
        let _ = self.0.set(Arc::downgrade(routes));
    }

    fn get(&self) -> Option<Arc<Routes>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

/// A component's outgoing requests: to `http://self` in process, the rest to `inner` (its
/// policy and the pooled client).
pub struct SelfCalls {
    routes: SelfRoutes,
    inner: Arc<dyn Outbound>,
}

impl SelfCalls {
    /// `inner`, with `http://self` going to `routes`.
    pub fn new(routes: SelfRoutes, inner: Arc<dyn Outbound>) -> SelfCalls {
        SelfCalls { routes, inner }
    }
}

/// Whether `uri` names the app itself: `http://self` (any port is refused as not self).
fn is_self(uri: &http::Uri) -> bool {
    uri.scheme() == Some(&http::uri::Scheme::HTTP)
        && uri.host() == Some("self")
        && uri.port().is_none()
}

impl Outbound for SelfCalls {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, Error>> + Send>> {
        if !is_self(request.uri()) {
            return self.inner.send(request, options);
        }
        let Some(routes) = self.routes.get() else {
            return Box::pin(async { Err(Error::DestinationUnavailable) });
        };
        metrics::counter!(crate::metrics::OUTBOUND_REQUESTS, "result" => "self").increment(1);
        Box::pin(async move { Ok(routes.call(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_self_is_self() {
        for (uri, want) in [
            ("http://self/a?b", true),
            ("http://self", true),
            ("https://self/a", false),
            ("http://self:8080/a", false),
            ("http://self.example.com/a", false),
            ("http://example.com/self", false),
        ] {
            assert_eq!(is_self(&uri.parse().unwrap()), want, "{uri}");
        }
    }
}
