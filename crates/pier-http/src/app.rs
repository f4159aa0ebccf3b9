//! The builder: an application's description ([`pier_config::App`]) into the parts of a running
//! server: the engine its guests and filters run on, the handler, and the filter chain. What
//! the command line (or a manifest) says is decided here, not in `main.rs`: pool sizes from the
//! concurrency limit and the filters, the store settings from the limits, the outbound client,
//! the filters' VMs and the upstreams they may call.

use std::collections::BTreeMap;
use std::sync::Arc;

use pier_config::{App, OutboundConfig, RouteSpec, RunConfig, StoreSpec, TargetSpec};
use pier_engine::{
    CompileCache, EngineKind, HttpApp, KeyValueLimits, KeyValueState, MemoryReset, PoolSizes,
    StoreSettings, WasmFile,
};
use tokio::sync::Semaphore;

use crate::cache::SharedCache;
use crate::{
    Chain, FilterChain, FilterSettings, Handler, NamedUpstreams, OutboundClient, Routed, Upstream,
};

/// A built application, ready for a [`crate::Server`].
pub struct Built {
    /// The engines its guests and filters run on, one per component (start each one's epoch
    /// ticker); the first also runs the filters.
    pub engines: Vec<pier_engine::Engine>,
    /// Its routes.
    pub routes: Vec<Routed>,
    /// What `http://self` reaches: connect it to the server's routes.
    pub self_routes: crate::SelfRoutes,
    /// Its shared HTTP caches, by name (for the admin listener's purge).
    pub caches: BTreeMap<String, Arc<SharedCache>>,
}

/// Builds `app`: compiles (or loads from the cache) each component on an engine fitted to it,
/// with its grants, outbound policy and limits; starts the filters' VMs; and gives each route
/// its handler and filter chain.
pub fn build(app: &App) -> anyhow::Result<Built> {
    build_keeping(app, &BTreeMap::new())
}

/// Builds `app` as [`build`] does, keeping the caches of `previous` (a reload's serving
/// generation) that `app` declares again with the same settings: their entries stay.
pub fn build_keeping(
    app: &App,
    previous: &BTreeMap<String, Arc<SharedCache>>,
) -> anyhow::Result<Built> {
    // One pool slot per request in a guest, plus the instances made ahead, plus slack for
    // instances still being torn down.
    let instances = u32::try_from(app.settings.limits.max_concurrency)
        .unwrap_or(u32::MAX)
        .saturating_add(app.settings.prewarm)
        .saturating_add(16);
    let pool = PoolSizes::guessed(instances, app.max_live_filter_vms());
    let cache =
        CompileCache::new(&app.settings.compile.cache).optimize(app.settings.compile.optimize);
    let mut engines = Vec::new();
    let mut components = BTreeMap::new();
    let self_routes = crate::SelfRoutes::default();
    let stores = open_stores(app)?;
    let store_limits = KeyValueLimits {
        max_key: app.settings.store_limits.max_key,
        max_value: app.settings.store_limits.max_value,
        ..KeyValueLimits::default()
    };
    let caches: BTreeMap<String, Arc<SharedCache>> = app
        .caches
        .iter()
        .map(|(name, spec)| {
            let cache = match previous.get(name) {
                Some(kept) if kept.spec() == spec => kept.clone(),
                _ => SharedCache::new(name, spec)?,
            };
            Ok((name.clone(), cache))
        })
        .collect::<anyhow::Result<_>>()?;
    for (name, component) in &app.components {
        let mut wasm = WasmFile::read(&component.source)?;
        // A manifest's components are logged by their names there (one file may serve as
        // several, with different grants and limits); a command line's by its file's.
        if !app.described_by.is_empty() {
            wasm.name = name.clone();
        }
        let settings = StoreSettings {
            max_memory: component
                .max_memory
                .unwrap_or(app.settings.limits.max_memory),
            timeout: component.timeout.unwrap_or(app.settings.limits.timeout),
            prewarm: app.settings.prewarm as usize,
            reuse: component
                .instance_reuse
                .unwrap_or(app.settings.instance_reuse)
                .max(1) as usize,
            max_outbound_requests: app.settings.limits.max_outbound_requests,
            max_log: app.settings.limits.max_log_size,
            max_sockets: app.settings.limits.max_sockets,
            max_handles: app.settings.limits.max_handles,
        };
        // An answer waits for the key-value writes its request made; a reused instance's
        // writes are not told apart by request yet.
        if settings.reuse > 1 && app.routes.iter().any(|r| r.middleware.contains(name)) {
            anyhow::bail!(
                "component {name}: instance reuse is not supported for middleware (its next \
                 link is given per request: serve it with a fresh instance per request)"
            );
        }
        if settings.reuse > 1 && !component.key_value_stores.is_empty() {
            anyhow::bail!(
                "component {name}: instance reuse with key-value stores is not supported yet \
                 (serve it with a fresh instance per request)"
            );
        }
        let (engine, mut http) =
            HttpApp::load_for_serving(&wasm, &component.grants, &cache, settings, pool)?;
        let outbound = match &component.outbound {
            Some(policy) => OutboundConfig {
                policy: policy.clone(),
                ..app.settings.outbound.clone()
            },
            None => app.settings.outbound.clone(),
        };
        let client: Arc<dyn pier_engine::Outbound> = Arc::new(OutboundClient::new(&outbound)?);
        let client: Arc<dyn pier_engine::Outbound> = if component.allow_self {
            Arc::new(crate::SelfCalls::new(self_routes.clone(), client))
        } else {
            client
        };
        http.set_outbound(match &component.outbound_cache {
            Some(cache) => {
                let shared = caches.get(cache).ok_or_else(|| {
                    anyhow::anyhow!("component {name}: outbound_cache {cache} is not declared")
                })?;
                Arc::new(crate::cache::CachedOutbound::new(
                    shared.clone(),
                    outbound.policy.clone(),
                    client,
                ))
            }
            None => client,
        });
        let granted = component
            .key_value_stores
            .iter()
            .filter_map(|n| Some((n.clone(), stores.get(n)?.clone())))
            .collect();
        http.set_key_value(KeyValueState::new(name, granted, store_limits.clone()));
        let limit = component.concurrency.map(|n| Arc::new(Semaphore::new(n)));
        components.insert(name.clone(), (Arc::new(http), limit));
        engines.push(engine);
    }
    if engines.is_empty() {
        // Upstreams only: an engine for the filters.
        let reset = MemoryReset::large(pier_engine::swap_is_on());
        engines.push(pier_engine::new_engine(
            EngineKind::Serve { pool, reset },
            false,
        )?);
    }
    let filters = filters(&engines[0], app)?;
    let is_middleware = |name: &str| components.get(name).map(|(http, _)| http.is_middleware());
    let mut routes = Vec::new();
    for route in &app.routes {
        check_chain(route, is_middleware)?;
        let (handler, component_limit) = match &route.target {
            TargetSpec::Component(name) => {
                let (http, limit) = components
                    .get(name)
                    .ok_or_else(|| anyhow::anyhow!("route to an unknown component {name}"))?;
                (Handler::Component(http.clone()), limit.clone())
            }
            TargetSpec::Upstream(origin) => {
                let uri = origin
                    .parse()
                    .map_err(|e| anyhow::anyhow!("upstream {origin}: {e}"))?;
                let upstream = Upstream::new(uri, &app.settings.outbound)?;
                (Handler::Upstream(Arc::new(upstream)), None)
            }
            TargetSpec::Files(dir) => {
                let files = crate::Files::new(dir, route.path.clone()).map_err(|e| {
                    anyhow::anyhow!(
                        "route {}: files {}: {e}",
                        route.path.pattern(),
                        dir.display()
                    )
                })?;
                (Handler::Files(Arc::new(files)), None)
            }
        };
        let handler = if route.middleware.is_empty() {
            handler
        } else {
            let links = route
                .middleware
                .iter()
                .map(|name| components[name].0.clone())
                .collect();
            Handler::Chain(Arc::new(Chain::new(links, handler)))
        };
        // The cache is outermost: a hit runs no middleware either.
        let handler = match &route.cache {
            Some(name) => {
                let cache = caches
                    .get(name)
                    .ok_or_else(|| anyhow::anyhow!("route to an unknown cache {name}"))?;
                Handler::Cached(cache.clone(), Box::new(handler))
            }
            None => handler,
        };
        routes.push(Routed {
            host: route.host.clone(),
            path: route.path.clone(),
            handler,
            filters: FilterChain(route.filters.iter().map(|&i| filters[i].clone()).collect()),
            component_limit,
            announce: route.announce,
            component: match &route.target {
                TargetSpec::Component(name) => Some(name.clone()),
                _ => None,
            },
        });
    }
    Ok(Built {
        engines,
        routes,
        self_routes,
        caches,
    })
}

/// Checks what a route's components are for: each of its middleware imports
/// `wasi:http/handler` (it has a next link to pass requests to) and its target component does
/// not (it would have none). `is_middleware` tells, by component name.
fn check_chain(
    route: &RouteSpec,
    is_middleware: impl Fn(&str) -> Option<bool>,
) -> anyhow::Result<()> {
    let pattern = route.path.pattern();
    for name in &route.middleware {
        if is_middleware(name) == Some(false) {
            anyhow::bail!(
                "route {pattern}: component {name} is listed as middleware but does not import \
                 wasi:http/handler@0.3 (middleware imports and exports it: the \
                 wasi:http/middleware world)"
            );
        }
    }
    if let TargetSpec::Component(name) = &route.target
        && is_middleware(name) == Some(true)
    {
        anyhow::bail!(
            "route {pattern}: component {name} imports wasi:http/handler@0.3, so it is \
             middleware: list it in the route's `middleware`, in front of the component that \
             answers"
        );
    }
    Ok(())
}

/// Opens every store of `app`, measured.
fn open_stores(app: &App) -> anyhow::Result<BTreeMap<String, Arc<dyn pier_kv::Store>>> {
    app.stores
        .iter()
        .map(|(name, spec)| {
            let (store, backend) =
                open(spec).map_err(|e| anyhow::anyhow!("key-value store {name}: {e}"))?;
            let measured: Arc<dyn pier_kv::Store> =
                Arc::new(pier_kv::Measured::new(store, name, backend));
            Ok((name.clone(), measured))
        })
        .collect()
}

/// Opens the store `spec` describes (as `serve` would: `pier kv`).
pub fn open_store(spec: &StoreSpec) -> anyhow::Result<Arc<dyn pier_kv::Store>> {
    Ok(open(spec)?.0)
}

fn open(spec: &StoreSpec) -> anyhow::Result<(Arc<dyn pier_kv::Store>, &'static str)> {
    Ok(match spec {
        StoreSpec::Sqlite(path) => (Arc::new(pier_kv::Sqlite::open(path)?), "sqlite"),
        StoreSpec::Redis { url, prefix } => (Arc::new(pier_kv::Redis::new(url, prefix)?), "redis"),
    })
}

/// Every filter of `app`, started on `engine`, in the app's order.
fn filters(
    engine: &pier_engine::Engine,
    app: &App,
) -> anyhow::Result<Vec<Arc<pier_proxywasm::Filter>>> {
    if app.filters.is_empty() {
        return Ok(Vec::new());
    }
    let options = &app.settings.filter_options;
    let callouts: Option<Arc<dyn pier_proxywasm::Callouts>> = if options.upstreams.is_empty() {
        None
    } else {
        let upstreams = options
            .upstreams
            .iter()
            .map(|(name, url)| {
                url.parse()
                    .map(|uri| (name.clone(), uri))
                    .map_err(|e| anyhow::anyhow!("--filter-upstream {name}={url}: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Some(Arc::new(NamedUpstreams::new(
            upstreams,
            &app.settings.outbound,
        )?))
    };
    let settings = FilterSettings {
        vms: options.vms,
        max_memory: options.max_memory,
        callback_timeout: options.callback_timeout,
        pause_timeout: app.filter_pause_timeout(),
        max_buffered: usize::try_from(app.settings.limits.max_body).unwrap_or(usize::MAX),
        shared_size: options.shared_size,
    };
    Ok(FilterChain::load(engine, &app.filters, &settings, callouts)?.0)
}

/// What `pier check` found in an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Routes.
    pub routes: usize,
    /// Components, each compiled and linked.
    pub components: usize,
    /// Filters, each started.
    pub filters: usize,
}

/// Checks everything an app names as serving it would, without serving (or sizing pools):
/// every component compiles, is a `wasi:http` handler, and imports nothing pier cannot
/// provide, with its directories granted; every filter starts (`proxy_on_vm_start`,
/// `proxy_on_configure`); every static files directory is there.
pub fn check(app: &App) -> anyhow::Result<Checked> {
    let compile = &app.settings.compile;
    let cache = CompileCache::new(&compile.cache).optimize(compile.optimize);
    let mut middleware = BTreeMap::new();
    for (name, component) in &app.components {
        let wasm = WasmFile::read(&component.source)?;
        let engine = pier_engine::new_engine(EngineKind::Run, wasm.p3)?;
        let http = HttpApp::load(
            &engine,
            &wasm,
            &component.grants,
            &cache,
            StoreSettings::default(),
        )
        .map_err(|e| anyhow::anyhow!("component {name}: {e}"))?;
        middleware.insert(name.as_str(), http.is_middleware());
    }
    for route in &app.routes {
        check_chain(route, |name| middleware.get(name).copied())?;
        if let TargetSpec::Files(dir) = &route.target {
            crate::Files::new(dir, route.path.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "route {}: files {}: {e}",
                    route.path.pattern(),
                    dir.display()
                )
            })?;
        }
    }
    if !app.filters.is_empty() {
        filters(&pier_engine::new_engine(EngineKind::Run, false)?, app)?;
    }
    Ok(Checked {
        routes: app.routes.len(),
        components: app.components.len(),
        filters: app.filters.len(),
    })
}

/// Runs the program `config` names (`pier run`), its outgoing HTTP requests sent through pier's
/// client under `config.outbound` (denied unless a pattern allows them).
pub async fn run(config: &RunConfig) -> anyhow::Result<pier_engine::RunOutcome> {
    let outbound = Arc::new(OutboundClient::new(&config.outbound)?);
    pier_engine::run(config, outbound).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(target: &str, middleware: &[&str]) -> RouteSpec {
        RouteSpec {
            host: None,
            path: pier_config::RoutePath::Prefix("/api".into()),
            target: TargetSpec::Component(target.into()),
            filters: Vec::new(),
            middleware: middleware.iter().map(|m| m.to_string()).collect(),
            cache: None,
            announce: true,
        }
    }

    #[test]
    fn a_chain_has_middleware_in_front_and_a_handler_behind() {
        let is_middleware = |name: &str| match name {
            "auth" => Some(true),
            "api" => Some(false),
            _ => None,
        };
        check_chain(&route("api", &[]), is_middleware).unwrap();
        check_chain(&route("api", &["auth", "auth"]), is_middleware).unwrap();
        let wrong = check_chain(&route("api", &["api"]), is_middleware).unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "route /api/...: component api is listed as middleware but does not import \
             wasi:http/handler@0.3 (middleware imports and exports it: the \
             wasi:http/middleware world)"
        );
        let wrong = check_chain(&route("auth", &[]), is_middleware).unwrap_err();
        assert!(
            wrong
                .to_string()
                .starts_with("route /api/...: component auth imports wasi:http/handler@0.3"),
            "{wrong}"
        );
    }
}
