//! Instance reuse (`--instance-reuse N`), an explicit choice: one instance serves up to N
//! requests instead of one, one at a time for a WASI 0.2 guest and up to [`P3_AT_ONCE`] at once
//! for a 0.3 guest (what `wasmtime serve` does for 0.3 by default).
//!
//! The workers are wasmtime's own (`wasmtime_wasi_http::handler::ProxyHandler`, which
//! `wasmtime serve` runs): each holds one store and instance, takes requests while
//! [`Uses`] allows, and ends once it has served N, has been idle for [`IDLE`], or a request
//! in it has run past the timeout (a guest computing past it is stopped with its instance, and
//! with the other requests it was serving).
//!
//! The trade-off: what a request leaves in the instance (globals, memory, the guest's caches)
//! is seen by the next requests it serves, and a trap ends every request in the instance.
//! pier's default, a fresh instance per request, shares nothing.

use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};

use crate::host::HostState;
use crate::http_app::{Guest, HttpApp};

/// Requests one instance of a WASI 0.3 guest serves at once (`wasmtime serve`'s default).
pub const P3_AT_ONCE: usize = 16;

/// An instance with no request for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(1);

/// What makes the workers' instances: the app's own stores and instances.
pub(crate) struct Workers {
    pub(crate) app: Weak<HttpApp>,
    /// Requests per instance.
    pub(crate) uses: usize,
}

impl HandlerState for Workers {
    type StoreData = HostState;
    type WorkerExpiration = Expiry;
    type WorkerState = Uses;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, Expiry, Uses>> {
        let app = self
            .app
            .upgrade()
            .ok_or_else(|| wasmtime::format_err!("the app is being replaced"))?;
        let mut store = app.new_store();
        let (guest, _) = app.instantiate(&mut store).await?;
        // The requests' timeouts are the worker's (`Uses::on_request_start`, `Expiry`): the
        // store's own deadline would count from its first request.
        store.data_mut().deadline = None;
        let (proxy, at_once) = match guest {
            Guest::P2(proxy) => (Proxy::P2(proxy), 1),
            Guest::P3(service) => (Proxy::P3(service), P3_AT_ONCE),
        };
        let timeout = app.settings().timeout;
        Ok(Instance {
            store,
            proxy,
            view: <HostState as WasiHttpView>::http,
            expiration: Expiry {
                timeout,
                sleep: None,
            },
            state: Uses {
                uses: self.uses,
                at_once,
                timeout,
                component: app.name().into(),
            },
        })
    }
}

/// How many requests a worker takes, and how long each may take.
pub struct Uses {
    uses: usize,
    at_once: usize,
    timeout: Duration,
    component: Box<str>,
}

impl WorkerState for Uses {
    type StoreData = HostState;
    type RequestData = ();

    fn should_accept_request(&self, at_once: usize, served: usize) -> ShouldAccept {
        if served >= self.uses {
            ShouldAccept::Never
        } else if at_once >= self.at_once {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _: StoreContextMut<'_, HostState>,
        _: (),
        _: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        if self.timeout.is_zero() {
            Box::pin(std::future::pending())
        } else {
            Box::pin(tokio::time::sleep(self.timeout))
        }
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        // Its requests learn only that it ended: the cause is said here, once.
        if let Err(e) = result {
            tracing::error!(
                component = &*self.component,
                "a reused instance failed, and with it every request it was serving: {}",
                crate::describe_guest_error(&e)
            );
        }
        drop(store);
    }
}

/// When a worker's instance is dropped: idle for [`IDLE`], or a request in it past the
/// timeout (checked from outside the store, so a guest computing in a loop is stopped too).
pub struct Expiry {
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match status {
            WorkerStatus::Idle => IDLE,
            _ if self.timeout.is_zero() => return Poll::Pending,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.timeout,
        };
        let deadline = tokio::time::Instant::from_std(start + limit);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}
