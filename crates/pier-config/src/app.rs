//! What `pier serve` serves, as one typed description: flags (and, next, `pier.toml`) parse
//! into an [`App`]; the library's builder (`pier_http::build`) turns it into a running server's
//! parts. The process-level settings (listening address, TLS, admin listener, workers) stay
//! with the command line.

use std::path::PathBuf;
use std::time::Duration;

use crate::{CacheConfig, FilterSpec, Grants, Limits, OutboundConfig};

/// An application: what answers requests, the filters in front of it, and its limits.
#[derive(Debug, Clone)]
pub struct App {
    /// What answers every request (the single route `/...`).
    pub handler: HandlerSpec,
    /// Proxy-Wasm plugins in front of it, in order.
    pub filters: Vec<FilterSpec>,
    /// How filter VMs run, and the upstreams filters may call.
    pub filter_options: FilterOptions,
    /// Protections: memory, time, sizes, concurrency, connections.
    pub limits: Limits,
    /// What guests may reach through `wasi:http/outgoing-handler`, and how.
    pub outbound: OutboundConfig,
    /// How components are compiled.
    pub compile: CompileOptions,
    /// Instances made ahead of their requests.
    pub prewarm: u32,
}

/// What answers requests.
#[derive(Debug, Clone)]
pub enum HandlerSpec {
    /// A `wasi:http` component, a fresh instance per request.
    Component(ComponentSpec),
    /// A reverse proxy to one origin (`http://HOST:PORT` or `https://...`).
    Upstream(String),
}

/// A component and what it is granted.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component file.
    pub source: PathBuf,
    /// What it may see of the host.
    pub grants: Grants,
}

/// How compiled code is made and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// The compile cache.
    pub cache: CacheConfig,
    /// Run the load-time optimiser (`--no-optimize`: no).
    pub optimize: bool,
}

/// How filter VMs run (per server, not per plugin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterOptions {
    /// VMs per filter module.
    pub vms: usize,
    /// Linear memory one VM may have.
    pub max_memory: usize,
    /// How long one callback may run.
    pub callback_timeout: Duration,
    /// Upstreams filters may call by name (`proxy_http_call`): (name, origin URL).
    pub upstreams: Vec<(String, String)>,
}

impl App {
    /// Filter VMs alive at once, at most: each filter module's, and as many again for VMs
    /// replaced (after a failure, or grown past their memory cap) that still finish their
    /// streams.
    pub fn max_live_filter_vms(&self) -> u32 {
        let modules = crate::vm_groups(&self.filters).len();
        let vms = modules
            .saturating_mul(self.filter_options.vms)
            .saturating_mul(2);
        u32::try_from(vms).unwrap_or(u32::MAX)
    }

    /// How long a request a filter paused may wait: as long as a guest may run (an hour when
    /// `timeout` 0 turns that off).
    pub fn filter_pause_timeout(&self) -> Duration {
        if self.limits.timeout.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.limits.timeout
        }
    }
}
