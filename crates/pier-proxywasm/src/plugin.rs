//! What the VMs running one filter module share (its compiled code, VM configuration,
//! environment, the callbacks it exports, the host services it reaches), and the plugins it runs:
//! one root context each, as Envoy configures several plugins on one `vm_id`.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Engine, Module};

use crate::callout::Callouts;
use crate::shared::Shared;
use crate::{AbiVersion, FailurePolicy, PluginConfig, VmConfig};

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

/// One plugin: a root context in every VM of its code, with its own configuration.
pub struct Root {
    /// The plugin's name: log field and `plugin_name`.
    pub name: Arc<str>,
    /// The name the filter registered its root context under: `plugin_root_id`.
    pub root_id: Arc<str>,
    /// The root context's id in every VM (1 for the first plugin, then 2, ...).
    pub context: i32,
    /// Configuration and policies from the command line.
    pub config: PluginConfig,
}

impl Root {
    /// The plugin configuration (buffer 7).
    pub fn configuration(&self) -> &[u8] {
        &self.config.configuration
    }

    /// What a failed filter does to this plugin's requests.
    pub fn failure(&self) -> FailurePolicy {
        self.config.failure
    }
}

/// One filter module as all its VMs see it.
pub struct Code {
    /// What the VMs are called in the log, and the scope of their shared data and queues: the
    /// `vm_id`, or the one plugin's name when none was given.
    pub label: Arc<str>,
    /// The ABI it was built for.
    pub abi: AbiVersion,
    /// Its stream callbacks.
    pub exports: Exports,
    /// VM configuration from the command line.
    pub config: VmConfig,
    /// The engine its VMs run on.
    pub engine: Engine,
    /// Its compiled code.
    pub module: Module,
    /// The plugins it runs, in root-context order (`roots[i].context == i + 1`).
    pub roots: Vec<Arc<Root>>,
    /// Shared data, queues and metrics (shared by every filter of the server).
    pub shared: Arc<Shared>,
    /// Where `proxy_http_call` sends requests.
    pub callouts: Option<Arc<dyn Callouts>>,
}

impl Code {
    /// Describes `module`, built for `abi`, running `plugins` (named already).
    pub fn new(
        abi: AbiVersion,
        engine: Engine,
        module: Module,
        config: VmConfig,
        plugins: Vec<PluginConfig>,
        shared: Arc<Shared>,
        callouts: Option<Arc<dyn Callouts>>,
    ) -> Code {
        let roots: Vec<Arc<Root>> = plugins
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                Arc::new(Root {
                    name: config.name.as_str().into(),
                    root_id: config.root_id.as_str().into(),
                    context: i as i32 + 1,
                    config,
                })
            })
            .collect();
        let label: Arc<str> = if config.vm_id.is_empty() {
            roots.first().map_or("filter".into(), |r| r.name.clone())
        } else {
            config.vm_id.as_str().into()
        };
        Code {
            label,
            abi,
            exports: Exports::of(&module),
            config,
            engine,
            module,
            roots,
            shared,
            callouts,
        }
    }

    /// How long one callback may run before it is interrupted.
    pub fn callback_limit(&self) -> Duration {
        self.config.callback_timeout
    }

    /// The root context `context` belongs to, when it is a root context.
    pub fn root(&self, context: i32) -> Option<&Arc<Root>> {
        usize::try_from(context)
            .ok()?
            .checked_sub(1)
            .and_then(|i| self.roots.get(i))
    }

    /// The id stream contexts count up from (past every root context).
    pub fn first_stream_context(&self) -> i32 {
        self.roots.len() as i32 + 1
    }
}
