//! The per-store host state: what one guest instance can reach. Each interface family a guest
//! can import is one module here, with its own state and its own `link()`:
//!
//! - [`wasi`]: the WASI 0.2 core (cli, clocks, random, io, filesystem, sockets);
//! - [`http`]: `wasi:http`, outgoing requests through the app's [`Outbound`];
//! - [`downstream`]: `wasi:http/handler@0.3` imported, a middleware's next link;
//! - [`config`]: `wasi:config/store`, the component's variables;
//! - [`keyvalue`]: `wasi:keyvalue` (two versions), the stores granted to the component;
//! - [`sockets`]: `wasi:sockets` (linked with the WASI core), what the grants let it reach;
//!
//! and [`guest_log`] carries a guest's stdout and stderr to pier's log. The resource table is
//! the store's, shared by all of them.

mod config;
mod downstream;
mod guest_log;
mod http;
mod keyvalue;
mod sockets;
mod wasi;

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::WasiCtx;

pub use config::ConfigState;
pub use guest_log::{GuestLog, LogBudget};
pub use http::{DenyAll, Outbound};
pub use keyvalue::{KeyValueLimits, KeyValueState};
pub(crate) use sockets::cap_p3 as cap_p3_sockets;
pub(crate) use sockets::grant as grant_sockets;
pub(crate) use wasi::WasiRecipe;
pub(crate) use wasi::perms as dir_perms;

/// State of one store: each capability's, the resource table they share, and the store's
/// resource limits.
pub struct HostState {
    wasi: wasi::WasiState,
    http: http::HttpState,
    downstream: downstream::DownstreamState,
    config: ConfigState,
    keyvalue: KeyValueState,
    table: ResourceTable,
    /// Sockets the guest may have open (`--max-sockets`; no cap unless set).
    max_sockets: usize,
    pub(crate) limits: StoreLimits,
    /// When the guest must stop: set when a request is given to the store (`None` while the
    /// instance waits, made ahead of its request).
    pub(crate) deadline: Option<std::time::Instant>,
    /// Set only for the reset hint's call after a request; taken by the hint's host function
    /// (`crate::dirty`).
    pub(crate) reset_hint: bool,
    /// What that call joined.
    pub(crate) joined: Option<crate::dirty::Joined>,
}

impl HostState {
    /// A state around a built WASI context, with no limits of its own, sending its outgoing
    /// HTTP requests through `outbound`.
    pub fn new(wasi: WasiCtx, outbound: Arc<dyn Outbound>) -> Self {
        Self::with(wasi::WasiState::Built(wasi), outbound, Granted::default())
    }

    /// A state whose WASI context is built from `recipe` when the guest first calls a WASI
    /// function that needs it (`wasi:io` and `wasi:http` do not), with what `granted` gives.
    pub(crate) fn deferred(
        recipe: Arc<WasiRecipe>,
        outbound: Arc<dyn Outbound>,
        granted: Granted,
    ) -> Self {
        Self::with(wasi::WasiState::Deferred(recipe), outbound, granted)
    }

    fn with(wasi: wasi::WasiState, outbound: Arc<dyn Outbound>, granted: Granted) -> Self {
        HostState {
            wasi,
            http: http::HttpState::new(outbound),
            downstream: downstream::DownstreamState::default(),
            config: granted.config,
            keyvalue: granted.keyvalue,
            table: ResourceTable::new(),
            max_sockets: usize::MAX,
            limits: StoreLimits::default(),
            deadline: None,
            reset_hint: false,
            joined: None,
        }
    }

    /// At most `max` outgoing HTTP requests of the guest in flight at once
    /// (`--max-outbound-requests`).
    pub(crate) fn limit_outbound_in_flight(&mut self, max: usize) {
        self.http.limit_in_flight(max);
    }

    /// At most `max` sockets open at once (`--max-sockets`).
    pub(crate) fn limit_sockets(&mut self, max: usize) {
        self.max_sockets = max;
    }

    /// At most `max` resources in the table at once (`--max-handles`): a guest cannot make the
    /// host hold more for it than that, whatever its own memory.
    pub(crate) fn limit_handles(&mut self, max: usize) {
        self.table.set_max_capacity(max);
    }

    /// `wasi:sockets` 0.2's socket constructors, counting what is open.
    fn capped_sockets(&mut self) -> sockets::Capped<'_> {
        let max = self.max_sockets;
        sockets::Capped::new(wasmtime_wasi::sockets::WasiSocketsView::sockets(self), max)
    }

    /// The resource table, without building the WASI context (what `wasi:io` needs).
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn wasi_and_table(&mut self) -> (&mut wasi::WasiState, &mut ResourceTable) {
        (&mut self.wasi, &mut self.table)
    }

    fn http_and_table(&mut self) -> (&mut http::HttpState, &mut ResourceTable) {
        (&mut self.http, &mut self.table)
    }

    fn http_table_and_downstream(
        &mut self,
    ) -> (
        &mut http::HttpState,
        &mut ResourceTable,
        &mut downstream::DownstreamState,
    ) {
        (&mut self.http, &mut self.table, &mut self.downstream)
    }

    /// Sends the requests a middleware component passes on (`wasi:http/handler.handle`) to
    /// `next`, the next link of its route's chain.
    pub fn set_downstream(&mut self, next: Arc<dyn Outbound>) {
        self.downstream = downstream::DownstreamState::new(next);
    }

    fn keyvalue(&mut self) -> keyvalue::View<'_> {
        self.keyvalue.view(&mut self.table)
    }

    /// The key-value writes the request's answer must wait for: see
    /// [`KeyValueState::unsynced`].
    pub fn unsynced(&self) -> pier_kv::Unsynced {
        self.keyvalue.unsynced()
    }

    /// Whether the WASI context has been built.
    #[cfg(test)]
    pub(crate) fn wasi_is_built(&self) -> bool {
        matches!(self.wasi, wasi::WasiState::Built(_))
    }
}

/// What a component's stores are given beside WASI and HTTP, shared by all of them.
#[derive(Clone, Default, Debug)]
pub struct Granted {
    /// Its `wasi:config` variables.
    pub config: ConfigState,
    /// The key-value stores it may open.
    pub keyvalue: KeyValueState,
}

/// Links every capability pier offers a component: the WASI core, `wasi:http`, `wasi:config`,
/// `wasi:keyvalue`, and the reset hint of pier's optimiser; with `p3` (an engine with
/// concurrency support), the WASI 0.3 interfaces too ([`crate::p3::link`]) and a middleware's
/// `wasi:http/handler` import.
pub(crate) fn link(linker: &mut Linker<HostState>, p3: bool) -> wasmtime::Result<()> {
    if p3 {
        crate::p3::link(linker)?;
        downstream::link(linker)?;
    }
    wasi::link(linker)?;
    http::link(linker)?;
    config::link(linker)?;
    keyvalue::link(linker)?;
    crate::dirty::link(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every capability links into one linker, none defining what another does.
    #[test]
    fn every_capability_links_once() {
        let engine = crate::new_engine(crate::EngineKind::Run, true).unwrap();
        let mut linker = Linker::<HostState>::new(&engine);
        link(&mut linker, true).unwrap();
        let values: std::collections::BTreeMap<String, String> =
            [("token".to_string(), "s3cret".to_string())].into();
        let config = ConfigState::new(&values);
        assert_eq!(
            format!("{config:?}"),
            "ConfigState(..)",
            "values are never shown"
        );
    }
}
