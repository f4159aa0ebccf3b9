//! What every VM of one filter shares: its compiled module, configuration, the callbacks it
//! exports, and the host services it reaches (shared data, queues, metrics, HTTP callouts).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Engine, Module};

use crate::callout::Callouts;
use crate::shared::Shared;
use crate::{AbiVersion, FilterConfig};

/// Which stream callbacks the module exports, so the host skips what a filter does not do
/// (a filter without body callbacks never sees, or slows down, a body).
#[derive(Debug, Clone, Copy, Default)]
pub struct Exports {
    /// `proxy_on_request_body`
    pub request_body: bool,
    /// `proxy_on_request_trailers`
    pub request_trailers: bool,
    /// `proxy_on_response_body`
    pub response_body: bool,
    /// `proxy_on_response_trailers`
    pub response_trailers: bool,
}

impl Exports {
    fn of(module: &Module) -> Exports {
        let has = |name: &str| module.get_export(name).is_some();
        Exports {
            request_body: has("proxy_on_request_body"),
            request_trailers: has("proxy_on_request_trailers"),
            response_body: has("proxy_on_response_body"),
            response_trailers: has("proxy_on_response_trailers"),
        }
    }
}

/// One filter as all its VMs see it.
pub struct Plugin {
    /// The filter's name (its file stem): log field, `plugin_name`, and its VM id.
    pub name: Arc<str>,
    /// The ABI it was built for.
    pub abi: AbiVersion,
    /// Its stream callbacks.
    pub exports: Exports,
    /// Configuration from the command line.
    pub config: FilterConfig,
    /// The engine its VMs run on.
    pub engine: Engine,
    /// Its compiled code.
    pub module: Module,
    /// Shared data, queues and metrics (shared by every filter of the server).
    pub shared: Arc<Shared>,
    /// Where `proxy_http_call` sends requests.
    pub callouts: Option<Arc<dyn Callouts>>,
}

impl Plugin {
    /// Describes `module`, built for `abi`.
    pub fn new(
        name: Arc<str>,
        abi: AbiVersion,
        engine: Engine,
        module: Module,
        config: FilterConfig,
        shared: Arc<Shared>,
        callouts: Option<Arc<dyn Callouts>>,
    ) -> Plugin {
        Plugin {
            name,
            abi,
            exports: Exports::of(&module),
            config,
            engine,
            module,
            shared,
            callouts,
        }
    }

    /// How long one callback may run before it is interrupted.
    pub fn callback_limit(&self) -> Duration {
        self.config.callback_timeout
    }
}
