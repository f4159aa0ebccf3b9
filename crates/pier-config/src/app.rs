//! What `pier serve` serves, as one typed description: flags and `pier.toml` parse into an
//! [`App`]; the library's builder (`pier_http::build`) turns it into a running server's parts.
//! The single-wasm and `--upstream` command lines are an app with one route, `/...`. The
//! process-level settings (listening address, TLS, admin listener, workers) stay with the
//! command line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::manifest::{Manifest, RoutePath, Target};
use crate::{CacheConfig, DirGrant, FilterSpec, Grants, Limits, OutboundConfig, OutboundPolicy};

/// An application: its components, the routes to them (or to upstreams), the filters in front,
/// and its limits.
#[derive(Debug, Clone)]
pub struct App {
    /// Components by name.
    pub components: BTreeMap<String, ComponentSpec>,
    /// Routes; a request takes the most specific that matches (see `pier_http`'s router).
    pub routes: Vec<RouteSpec>,
    /// Proxy-Wasm plugins; routes name them by index, in the order they run.
    pub filters: Vec<FilterSpec>,
    /// The key-value stores its components may open, by name.
    pub stores: BTreeMap<String, crate::StoreSpec>,
    /// The shared HTTP caches its routes name.
    pub caches: BTreeMap<String, crate::CacheSpec>,
    /// Limits, outbound client, compiling, filter VMs: what the command line sets.
    pub settings: AppSettings,
    /// The files that describe it (the manifest, the variables file), if any.
    pub described_by: Vec<PathBuf>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Only requests for this host (lower-case, no port).
    pub host: Option<String>,
    /// The path it matches.
    pub path: RoutePath,
    /// What answers it.
    pub target: TargetSpec,
    /// The filters in front of it: indices into [`App::filters`], in order.
    pub filters: Vec<usize>,
    /// The WASI 0.3 middleware components between the filters and the target, by name,
    /// outermost first.
    pub middleware: Vec<String>,
    /// The shared HTTP cache in front of the target (after the filters): a key of
    /// [`App::caches`].
    pub cache: Option<String>,
    /// Whether the guest is told the route (`x-pier-route`, `x-pier-path-info`): for a
    /// manifest's routes, not for the single route of a command line.
    pub announce: bool,
}

/// What answers a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A component of the app, by name: a fresh instance per request.
    Component(String),
    /// A reverse proxy to one origin (`http://HOST:PORT` or `https://...`).
    Upstream(String),
    /// Static files under a directory.
    Files(PathBuf),
}

/// A component, what it is granted, and its own limits.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component file.
    pub source: PathBuf,
    /// What it may see of the host.
    pub grants: Grants,
    /// The URLs it may reach, when not the app's (`--allow-outbound`).
    pub outbound: Option<OutboundPolicy>,
    /// Largest linear memory, when not the app's.
    pub max_memory: Option<u64>,
    /// Time a request may spend in it, when not the app's.
    pub timeout: Option<Duration>,
    /// Requests in it at once, beside the app's limit.
    pub concurrency: Option<usize>,
    /// Whether it may call the app's own routes (`http://self`).
    pub allow_self: bool,
    /// The key-value stores it may open (names in [`App::stores`]).
    pub key_value_stores: Vec<String>,
    /// Requests one instance serves, when not the app's (`--instance-reuse`).
    pub instance_reuse: Option<u32>,
    /// The shared HTTP cache its outgoing requests go through (a key of [`App::caches`]).
    pub outbound_cache: Option<String>,
}

impl ComponentSpec {
    /// A component with `grants` and the app's policy and limits.
    pub fn new(source: PathBuf, grants: Grants) -> ComponentSpec {
        ComponentSpec {
            source,
            grants,
            outbound: None,
            max_memory: None,
            timeout: None,
            concurrency: None,
            allow_self: false,
            key_value_stores: Vec::new(),
            instance_reuse: None,
            outbound_cache: None,
        }
    }
}

/// What the command line sets for any app: everything but its components, routes and filters.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// How filter VMs run, and the upstreams filters may call.
    pub filter_options: FilterOptions,
    /// Protections.
    pub limits: Limits,
    /// Outgoing HTTP: the policy of components that have none of their own, the client's
    /// settings for all.
    pub outbound: OutboundConfig,
    /// How components are compiled.
    pub compile: CompileOptions,
    /// Instances made ahead of their requests.
    pub prewarm: u32,
    /// `--instance-reuse`: requests one instance serves (1: a fresh instance per request).
    pub instance_reuse: u32,
    /// `--state-dir`: where stores without a path of their own live.
    pub state_dir: Option<PathBuf>,
    /// `--variables-file`: values of a manifest's variables.
    pub variables_file: Option<PathBuf>,
    /// `--runtime-config`: where a manifest's stores live in this deployment.
    pub runtime_config: Option<PathBuf>,
    /// Limits on keys and values in stores.
    pub store_limits: crate::StoreLimits,
    /// `--cache`: the shared HTTP cache in front of a command line's single route (a
    /// manifest's routes name theirs).
    pub http_cache: Option<crate::CacheSpec>,
    /// `--outbound-cache`: the shared HTTP cache a command line's single component sends its
    /// outgoing requests through (a manifest's components name theirs).
    pub outbound_http_cache: Option<crate::CacheSpec>,
}

/// The name of the cache of a command line's single route (`--cache`), on its metrics.
pub const ONE_CACHE: &str = "default";

/// The name of the cache of a command line's single component's outgoing requests
/// (`--outbound-cache`), on its metrics.
pub const ONE_OUTBOUND_CACHE: &str = "outbound";

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
    /// Bytes all filters' shared data and queues may hold together.
    pub shared_size: usize,
    /// Upstreams filters may call by name (`proxy_http_call`): (name, origin URL).
    pub upstreams: Vec<(String, String)>,
}

impl App {
    /// The app of the single-wasm command line: `component` on every path, behind every filter,
    /// granted the stores of `kv` (`--kv`; SQLite files without a path in the state directory,
    /// by default `.pier/data` in the current directory).
    pub fn one_component(
        mut component: ComponentSpec,
        filters: Vec<FilterSpec>,
        kv: &[crate::KvGrant],
        rest: AppSettings,
    ) -> App {
        let state = crate::state_dir(rest.state_dir.as_deref(), std::path::Path::new("."));
        let stores = kv
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    crate::StoreSpec::resolve(&g.name, &g.config, &state),
                )
            })
            .collect();
        component.key_value_stores = kv.iter().map(|g| g.name.clone()).collect();
        if rest.outbound_http_cache.is_some() {
            component.outbound_cache = Some(ONE_OUTBOUND_CACHE.to_string());
        }
        let mut components = BTreeMap::new();
        components.insert("app".to_string(), component);
        let mut app = App::one_route(
            components,
            TargetSpec::Component("app".into()),
            filters,
            rest,
        );
        app.stores = stores;
        app
    }

    /// The app of `--upstream URL`: a proxy to `origin` on every path, behind every filter.
    pub fn one_upstream(origin: String, filters: Vec<FilterSpec>, rest: AppSettings) -> App {
        App::one_route(BTreeMap::new(), TargetSpec::Upstream(origin), filters, rest)
    }

    fn one_route(
        components: BTreeMap<String, ComponentSpec>,
        target: TargetSpec,
        filters: Vec<FilterSpec>,
        rest: AppSettings,
    ) -> App {
        let route = RouteSpec {
            host: None,
            path: RoutePath::Prefix(String::new()),
            target,
            filters: (0..filters.len()).collect(),
            middleware: Vec::new(),
            cache: rest.http_cache.as_ref().map(|_| ONE_CACHE.to_string()),
            announce: false,
        };
        let caches = [
            (ONE_CACHE, rest.http_cache.clone()),
            (ONE_OUTBOUND_CACHE, rest.outbound_http_cache.clone()),
        ]
        .into_iter()
        .filter_map(|(name, spec)| Some((name.to_string(), spec?)))
        .collect();
        App {
            components,
            routes: vec![route],
            filters,
            stores: BTreeMap::new(),
            caches,
            settings: rest,
            described_by: Vec::new(),
        }
    }

    /// The app a manifest describes, with `rest` (the command line's) for what the manifest
    /// leaves to the server: its variables given values from the environment and the
    /// variables file (see [`crate::resolve_variables`]), its stores placed as the runtime
    /// configuration says, where it says anything (a store it names must be one the manifest
    /// names).
    pub fn from_manifest(manifest: &Manifest, rest: AppSettings) -> Result<App, String> {
        let variables_file = rest.variables_file.as_deref();
        let mut store_configs = manifest.key_value_stores.clone();
        if let Some(runtime) = &rest.runtime_config {
            for (name, config) in crate::load_runtime_config(runtime).map_err(|e| e.to_string())? {
                if !store_configs.contains_key(&name) {
                    return Err(format!(
                        "{}: key-value store {name:?} is not one the manifest names (declare [key_value_store.{name}] there)",
                        runtime.display()
                    ));
                }
                store_configs.insert(name, config);
            }
        }
        let file = match variables_file {
            Some(path) => crate::load_variables_file(path)?,
            None => BTreeMap::new(),
        };
        let values =
            crate::resolve_variables(&manifest.variables, |n| std::env::var(n).ok(), &file)?;
        let mut components = BTreeMap::new();
        for (name, c) in &manifest.components {
            let config = c
                .variables
                .iter()
                .filter_map(|(key, template)| {
                    crate::expand_template(template, &values).map(|v| (key.clone(), v))
                })
                .collect();
            let grants = Grants {
                config: crate::ConfigValues(config),
                env: c.env.clone(),
                dirs: c
                    .dirs
                    .iter()
                    .map(|(guest, (host, read_only))| DirGrant {
                        host: host.clone(),
                        guest: guest.clone(),
                        read_only: *read_only,
                    })
                    .collect(),
                sockets: crate::SocketPolicy::new(Vec::new(), c.allowed_sockets.clone()),
            };
            let spec = ComponentSpec {
                source: c.source.clone(),
                grants,
                outbound: Some(OutboundPolicy::new(c.allowed_outbound.clone())),
                max_memory: c.limits.memory,
                timeout: c.limits.timeout,
                concurrency: c.limits.concurrency,
                allow_self: c.allow_self,
                key_value_stores: c.key_value_stores.clone(),
                instance_reuse: c.instance_reuse,
                outbound_cache: c.outbound_cache.clone(),
            };
            components.insert(name.clone(), spec);
        }
        let names: Vec<&String> = manifest.filters.keys().collect();
        let filters: Vec<FilterSpec> = manifest.filters.values().cloned().collect();
        let mut routes = Vec::new();
        for route in &manifest.routes {
            let target = match &route.target {
                Target::Component(name) => TargetSpec::Component(name.clone()),
                Target::Upstream(url) => TargetSpec::Upstream(url.clone()),
                Target::Files(dir) => TargetSpec::Files(dir.clone()),
            };
            let filters = route
                .filters
                .iter()
                .map(|f| {
                    names
                        .iter()
                        .position(|n| *n == f)
                        .expect("checked by the manifest")
                })
                .collect();
            routes.push(RouteSpec {
                host: route.host.clone(),
                path: route.path.clone(),
                target,
                filters,
                middleware: route.middleware.clone(),
                cache: route.cache.clone(),
                announce: true,
            });
        }
        // Only the stores some component is granted are opened.
        let base = manifest
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let state = crate::state_dir(rest.state_dir.as_deref(), base);
        let stores = store_configs
            .iter()
            .filter(|(name, _)| {
                components
                    .values()
                    .any(|c: &ComponentSpec| c.key_value_stores.contains(name))
            })
            .map(|(name, config)| {
                (
                    name.clone(),
                    crate::StoreSpec::resolve(name, config, &state),
                )
            })
            .collect();
        let mut described_by = vec![manifest.file.clone()];
        described_by.extend(variables_file.map(std::path::Path::to_path_buf));
        described_by.extend(rest.runtime_config.clone());
        Ok(App {
            components,
            routes,
            filters,
            stores,
            caches: manifest.caches.clone(),
            settings: rest,
            described_by,
        })
    }

    /// Every file the app is made of: what describes it, each component and each filter (what
    /// `--watch` watches). Static files are not among them: they are read as they are served.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = self.described_by.clone();
        files.extend(self.components.values().map(|c| c.source.clone()));
        files.extend(self.filters.iter().map(|f| f.path.clone()));
        files.sort();
        files.dedup();
        files
    }

    /// Filter VMs alive at once, at most: each filter module's, and as many again for VMs
    /// replaced (after a failure, or grown past their memory cap) that still finish their
    /// streams.
    pub fn max_live_filter_vms(&self) -> u32 {
        let modules = crate::vm_groups(&self.filters).len();
        let vms = modules
            .saturating_mul(self.settings.filter_options.vms)
            .saturating_mul(2);
        u32::try_from(vms).unwrap_or(u32::MAX)
    }

    /// How long a request a filter paused may wait: as long as a guest may run (an hour when
    /// `timeout` 0 turns that off).
    pub fn filter_pause_timeout(&self) -> Duration {
        if self.settings.limits.timeout.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.settings.limits.timeout
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AppSettings {
        AppSettings {
            filter_options: FilterOptions {
                vms: 1,
                max_memory: 1 << 20,
                callback_timeout: Duration::from_secs(1),
                shared_size: 1 << 20,
                upstreams: Vec::new(),
            },
            limits: Limits::default(),
            outbound: OutboundConfig::default(),
            compile: CompileOptions {
                cache: CacheConfig::Disabled,
                optimize: true,
            },
            prewarm: 0,
            instance_reuse: 1,
            state_dir: None,
            variables_file: None,
            runtime_config: None,
            store_limits: crate::StoreLimits::default(),
            http_cache: None,
            outbound_http_cache: None,
        }
    }

    fn manifest(dir: &std::path::Path, text: &str) -> Manifest {
        for file in ["a.wasm", "f.wasm", "g.wasm"] {
            std::fs::write(dir.join(file), b"").unwrap();
        }
        crate::parse_manifest(text, &dir.join("pier.toml")).unwrap()
    }

    #[test]
    fn a_manifest_becomes_routes_components_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(
            dir.path(),
            r#"manifest_version = 1
[[route]]
path = "/a/..."
component = "a"
filters = ["g", "f"]
[[route]]
path = "/up"
upstream = "http://127.0.0.1:9"
[component.a]
source = "a.wasm"
env = { X = "1" }
limits = { timeout = "2s", concurrency = 3 }
[filter.f]
source = "f.wasm"
[filter.g]
source = "g.wasm"
"#,
        );
        let app = App::from_manifest(&m, settings()).unwrap();
        assert_eq!(app.routes.len(), 2);
        let names: Vec<_> = app
            .filters
            .iter()
            .map(|f| f.name.clone().unwrap())
            .collect();
        let chain: Vec<_> = app.routes[0]
            .filters
            .iter()
            .map(|&i| names[i].as_str())
            .collect();
        assert_eq!(chain, ["g", "f"], "the route's order");
        assert!(app.routes.iter().all(|r| r.announce));
        assert_eq!(
            app.routes[1].target,
            TargetSpec::Upstream("http://127.0.0.1:9".into())
        );
        let a = &app.components["a"];
        assert_eq!(
            (a.timeout, a.concurrency),
            (Some(Duration::from_secs(2)), Some(3))
        );
        assert_eq!(
            a.outbound,
            Some(OutboundPolicy::new(Vec::new())),
            "nothing outbound unless the manifest allows it"
        );

        let one = App::one_component(
            ComponentSpec::new("a.wasm".into(), Grants::default()),
            Vec::new(),
            &[],
            settings(),
        );
        assert_eq!(one.routes.len(), 1);
        assert_eq!(one.routes[0].path.pattern(), "/...");
        assert!(
            !one.routes[0].announce,
            "a command line's route announces nothing"
        );
    }
}
