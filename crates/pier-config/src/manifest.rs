//! `pier.toml`: an application as a file (schema version 1). Every key is checked; any mistake
//! is one error naming the manifest, the line and column, and what is wrong there: an unknown
//! key, a value of the wrong type, a route to a component or filter that is not declared, two
//! routes that collide, a file that does not exist, a template naming an undeclared variable.
//! Paths are relative to the manifest's directory.
//!
//! ```toml
//! manifest_version = 1
//! [app]
//! name = "shop"
//!
//! [[route]]
//! path = "/api/..."            # "/..." suffix: a prefix; otherwise exact
//! component = "api"
//! filters = ["auth"]
//! middleware = ["session"]    # WASI 0.3 middleware components, outermost first
//! cache = "pages"              # the shared HTTP cache in front of it
//!
//! [component.api]
//! source = "api.wasm"
//! env = { MODE = "prod" }
//! dirs = { "/data" = "./data", "/assets" = "./assets:ro" }   # :ro: read-only
//! allowed_outbound = ["https://payments.example.com"]
//! allowed_sockets = ["tcp-connect:db.example.com:5432"]
//! outbound_cache = "pages"     # its outgoing requests through a shared HTTP cache
//! variables = { db_url = "{{ database_url }}" }
//! limits = { memory = "64MiB", timeout = "5s", concurrency = 100 }
//!
//! [filter.auth]
//! source = "auth.wasm"
//! config = '{"realm":"api"}'
//!
//! [cache.pages]
//! size = "256MiB"              # in memory, bounded in bytes
//! max_entry = "8MiB"           # larger responses are sent, not stored
//!
//! [cache.shared]
//! type = "redis"               # one cache for every pier naming the server
//! url = "redis://cache.internal:6379"
//!
//! [variables]
//! database_url = { default = "sqlite://x" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::filters::{FilterFailure, FilterSpec};
use crate::grants::EnvGrant;
use crate::outbound::OutboundPattern;

/// The schema version this pier reads.
pub const MANIFEST_VERSION: i64 = 1;

/// A manifest that cannot be taken, with where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ManifestError {
    /// The manifest.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// An application described by a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest file.
    pub file: PathBuf,
    /// `[app] name` (the manifest's directory name by default).
    pub name: String,
    /// `[app] description`.
    pub description: Option<String>,
    /// The routes, in the manifest's order (matching picks the most specific).
    pub routes: Vec<Route>,
    /// `[component.NAME]`.
    pub components: BTreeMap<String, Component>,
    /// `[filter.NAME]`.
    pub filters: BTreeMap<String, FilterSpec>,
    /// `[variables]`.
    pub variables: BTreeMap<String, Variable>,
    /// `[key_value_store.NAME]`; `default` is there even when not declared (SQLite).
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    /// `[cache.NAME]`: the shared HTTP caches routes name.
    pub caches: BTreeMap<String, crate::CacheSpec>,
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Only requests for this host (its `Host` or `:authority`, without the port).
    pub host: Option<String>,
    /// The path it matches.
    pub path: RoutePath,
    /// What answers it.
    pub target: Target,
    /// Filters in front of it, by name, in order.
    pub filters: Vec<String>,
    /// WASI 0.3 middleware components between the filters and the target, by name, the first
    /// one outermost: each passes the request on to the next (the last to the target).
    pub middleware: Vec<String>,
    /// The shared HTTP cache in front of its target (after its filters), by name.
    pub cache: Option<String>,
}

/// A route's path pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoutePath {
    /// This path only.
    Exact(String),
    /// This prefix (without its trailing `/...`), on a segment boundary.
    Prefix(String),
}

impl RoutePath {
    /// The pattern as written: `/api/...` for a prefix, the path for an exact route.
    pub fn pattern(&self) -> String {
        match self {
            RoutePath::Exact(path) => path.clone(),
            RoutePath::Prefix(prefix) => format!("{prefix}/..."),
        }
    }

    fn parse(pattern: &str) -> Result<RoutePath, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path {pattern:?} must start with /"));
        }
        match pattern.strip_suffix("/...") {
            Some(prefix) if !prefix.contains("...") => Ok(RoutePath::Prefix(prefix.to_string())),
            _ if pattern.contains("...") => Err(format!(
                "path {pattern:?}: \"...\" may only end a path, as \"/...\""
            )),
            _ => Ok(RoutePath::Exact(pattern.to_string())),
        }
    }
}

/// What answers a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A component, by name.
    Component(String),
    /// An origin to proxy to.
    Upstream(String),
    /// Static files under this directory.
    Files(PathBuf),
}

/// One `[component.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// The component file.
    pub source: PathBuf,
    /// Environment variables it is given.
    pub env: Vec<EnvGrant>,
    /// Host directories it is given: guest path to host directory (`"./data:ro"`: read-only),
    /// and whether read-only.
    pub dirs: BTreeMap<String, (PathBuf, bool)>,
    /// URL patterns it may reach (`http://self` for the app's own routes).
    pub allowed_outbound: Vec<OutboundPattern>,
    /// Whether it may call the app's own routes (`http://self`).
    pub allow_self: bool,
    /// What it may reach with `wasi:sockets` (`allowed_sockets`, as `--allow-socket`).
    pub allowed_sockets: Vec<crate::SocketGrant>,
    /// `instance_reuse`: requests one instance serves (as `--instance-reuse`).
    pub instance_reuse: Option<u32>,
    /// Its variables: name to template (`{{ app_variable }}` parts).
    pub variables: BTreeMap<String, String>,
    /// The key-value stores it may open, by name.
    pub key_value_stores: Vec<String>,
    /// `outbound_cache`: the shared HTTP cache its outgoing requests go through.
    pub outbound_cache: Option<String>,
    /// Its limits (the server's where not given).
    pub limits: ComponentLimits,
}

/// One `[key_value_store.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `type = "sqlite"`: a file (by default in the state directory, `NAME.sqlite`).
    Sqlite {
        /// `path`, relative to the manifest's directory.
        path: Option<PathBuf>,
    },
    /// `type = "redis"`: a Redis server.
    Redis {
        /// `url`: `redis://HOST:PORT[/DB]` or `rediss://` for TLS.
        url: String,
        /// `prefix`: put before every key (so several stores can share one server).
        prefix: Option<String>,
    },
}

/// A component's own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ComponentLimits {
    /// Largest linear memory.
    pub memory: Option<u64>,
    /// Time a request may spend in it.
    pub timeout: Option<Duration>,
    /// Requests in it at once.
    pub concurrency: Option<usize>,
}

/// One of the app's `[variables]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Variable {
    /// Its value unless the environment or a variables file gives one.
    pub default: Option<String>,
    /// Starting without a value is an error.
    pub required: bool,
    /// Never logged or shown.
    pub secret: bool,
}

/// Reads and checks the manifest at `file`.
pub fn load_manifest(file: &Path) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(file).map_err(|e| ManifestError {
        file: file.display().to_string(),
        line: 1,
        column: 1,
        message: format!("cannot read it: {e}"),
    })?;
    parse_manifest(&text, file)
}

/// Checks the manifest `text`, read from `file` (paths in it are relative to its directory).
pub fn parse_manifest(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
    let at = |span, message| positioned(text, file, span, message);
    let raw: raw::Manifest = toml::from_str(text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            e.message().trim_end().replace('\n', " "),
        )
    })?;
    let base = file.parent().unwrap_or(Path::new(""));
    Checker { base, at: &at }.check(raw, file)
}

/// `message` about the text of `file` at byte `span`, with its line and column.
fn positioned(
    text: &str,
    file: &Path,
    span: std::ops::Range<usize>,
    message: String,
) -> ManifestError {
    let before = &text[..span.start.min(text.len())];
    ManifestError {
        file: file.display().to_string(),
        line: before.matches('\n').count() + 1,
        column: before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
        message,
    }
}

/// Reads a runtime configuration file (`--runtime-config`): `[key_value_store.NAME]` tables, as
/// in a manifest, saying where the stores the manifest names live in this deployment (paths
/// relative to the file's directory). Checked to the line and column like a manifest.
pub fn load_runtime_config(file: &Path) -> Result<BTreeMap<String, StoreConfig>, ManifestError> {
    let text = std::fs::read_to_string(file).map_err(|e| ManifestError {
        file: file.display().to_string(),
        line: 1,
        column: 1,
        message: format!("cannot read it: {e}"),
    })?;
    let at = |span, message| positioned(&text, file, span, message);
    let raw: raw::RuntimeConfig = toml::from_str(&text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            e.message().trim_end().replace('\n', " "),
        )
    })?;
    let base = file.parent().unwrap_or(Path::new(""));
    let checker = Checker { base, at: &at };
    let mut stores = BTreeMap::new();
    for (name, store) in raw.key_value_store {
        check_name(&name, "key-value store").map_err(|e| at(name.span(), e))?;
        let config = checker.store(store, &name)?;
        stores.insert(name.into_inner(), config);
    }
    Ok(stores)
}

/// The manifest as written: every table denies keys it does not know.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Manifest {
        pub manifest_version: Spanned<i64>,
        pub app: Option<App>,
        #[serde(default)]
        pub route: Vec<Route>,
        #[serde(default)]
        pub component: BTreeMap<Spanned<String>, Component>,
        #[serde(default)]
        pub filter: BTreeMap<Spanned<String>, Filter>,
        #[serde(default)]
        pub variables: BTreeMap<Spanned<String>, Variable>,
        #[serde(default)]
        pub key_value_store: BTreeMap<Spanned<String>, KeyValueStore>,
        #[serde(default)]
        pub cache: BTreeMap<Spanned<String>, Cache>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cache {
        #[serde(rename = "type")]
        pub kind: Option<Spanned<String>>,
        pub size: Option<Spanned<String>>,
        pub max_entry: Option<Spanned<String>>,
        pub url: Option<Spanned<String>>,
        pub prefix: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuntimeConfig {
        #[serde(default)]
        pub key_value_store: BTreeMap<Spanned<String>, KeyValueStore>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct KeyValueStore {
        #[serde(rename = "type")]
        pub kind: Option<Spanned<String>>,
        pub path: Option<Spanned<String>>,
        pub url: Option<Spanned<String>>,
        pub prefix: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct App {
        pub name: Option<String>,
        pub description: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub path: Spanned<String>,
        pub host: Option<Spanned<String>>,
        pub component: Option<Spanned<String>>,
        pub upstream: Option<Spanned<String>>,
        pub files: Option<Spanned<String>>,
        #[serde(default)]
        pub filters: Vec<Spanned<String>>,
        #[serde(default)]
        pub middleware: Vec<Spanned<String>>,
        pub cache: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Component {
        pub source: Spanned<String>,
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        #[serde(default)]
        pub dirs: BTreeMap<String, Spanned<String>>,
        #[serde(default)]
        pub allowed_outbound: Vec<Spanned<String>>,
        #[serde(default)]
        pub allowed_sockets: Vec<Spanned<String>>,
        pub instance_reuse: Option<Spanned<u32>>,
        pub outbound_cache: Option<Spanned<String>>,
        #[serde(default)]
        pub variables: BTreeMap<String, Spanned<String>>,
        #[serde(default)]
        pub key_value_stores: Vec<Spanned<String>>,
        #[serde(default)]
        pub limits: Limits,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub memory: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub concurrency: Option<Spanned<i64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Filter {
        pub source: Spanned<String>,
        pub config: Option<String>,
        pub vm_config: Option<String>,
        pub root_id: Option<String>,
        pub vm_id: Option<String>,
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        pub failure: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Variable {
        pub default: Option<String>,
        #[serde(default)]
        pub required: bool,
        #[serde(default)]
        pub secret: bool,
    }
}

struct Checker<'a, F: Fn(std::ops::Range<usize>, String) -> ManifestError> {
    base: &'a Path,
    at: &'a F,
}

impl<F: Fn(std::ops::Range<usize>, String) -> ManifestError> Checker<'_, F> {
    fn check(&self, raw: raw::Manifest, file: &Path) -> Result<Manifest, ManifestError> {
        let at = self.at;
        if *raw.manifest_version.get_ref() != MANIFEST_VERSION {
            return Err(at(
                raw.manifest_version.span(),
                format!(
                    "manifest_version = {}: this pier reads version {MANIFEST_VERSION}",
                    raw.manifest_version.get_ref()
                ),
            ));
        }
        let (name, description) = match raw.app {
            Some(app) => (app.name, app.description),
            None => (None, None),
        };
        let name = name
            .or_else(|| {
                file.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "app".into());

        let mut variables = BTreeMap::new();
        for (name, var) in raw.variables {
            check_name(&name, "variable").map_err(|e| at(name.span(), e))?;
            variables.insert(
                name.into_inner(),
                Variable {
                    default: var.default,
                    required: var.required,
                    secret: var.secret,
                },
            );
        }

        let mut stores = BTreeMap::new();
        stores.insert("default".to_string(), StoreConfig::Sqlite { path: None });
        for (name, raw) in raw.key_value_store {
            check_name(&name, "key-value store").map_err(|e| at(name.span(), e))?;
            let store = self.store(raw, &name)?;
            stores.insert(name.into_inner(), store);
        }

        let mut caches = BTreeMap::new();
        for (name, raw) in raw.cache {
            check_name(&name, "cache").map_err(|e| at(name.span(), e))?;
            fn text(v: &Option<Spanned<String>>) -> Option<&str> {
                v.as_ref().map(|v| v.get_ref().as_str())
            }
            let spec = crate::CacheSpec::parse(crate::CacheSettings {
                kind: text(&raw.kind),
                size: text(&raw.size),
                max_entry: text(&raw.max_entry),
                url: text(&raw.url),
                prefix: text(&raw.prefix),
            })
            .map_err(|(key, message)| {
                let span = match key {
                    "type" => raw.kind.as_ref(),
                    "size" => raw.size.as_ref(),
                    "url" => raw.url.as_ref(),
                    "prefix" => raw.prefix.as_ref(),
                    _ => raw.max_entry.as_ref(),
                }
                .map_or(name.span(), |v| v.span());
                at(span, message)
            })?;
            caches.insert(name.into_inner(), spec);
        }

        let mut components = BTreeMap::new();
        for (name, raw) in raw.component {
            check_name(&name, "component").map_err(|e| at(name.span(), e))?;
            let component = self.component(raw, &variables, &stores, &caches)?;
            components.insert(name.into_inner(), component);
        }

        let mut filters = BTreeMap::new();
        for (name, raw) in raw.filter {
            check_name(&name, "filter").map_err(|e| at(name.span(), e))?;
            let spec = self.filter(raw, name.get_ref())?;
            filters.insert(name.into_inner(), spec);
        }

        let mut routes: Vec<Route> = Vec::new();
        let mut seen: Vec<(Option<String>, RoutePath, std::ops::Range<usize>)> = Vec::new();
        for raw in raw.route {
            let path_span = raw.path.span();
            let path =
                RoutePath::parse(raw.path.get_ref()).map_err(|e| at(path_span.clone(), e))?;
            let host = match raw.host {
                Some(host) => {
                    let h = host.get_ref();
                    if h.is_empty() || h.contains(['/', ':', ' ']) {
                        return Err(at(
                            host.span(),
                            format!("host {h:?}: a host name, without scheme, port or path"),
                        ));
                    }
                    Some(h.to_ascii_lowercase())
                }
                None => None,
            };
            let targets: Vec<_> = [
                raw.component.as_ref().map(|c| ("component", c)),
                raw.upstream.as_ref().map(|u| ("upstream", u)),
                raw.files.as_ref().map(|f| ("files", f)),
            ]
            .into_iter()
            .flatten()
            .collect();
            let target = match targets.as_slice() {
                [(kind, value)] => self.target(kind, value, &components)?,
                [] => {
                    return Err(at(
                        path_span,
                        format!(
                            "route {:?} needs one of component, upstream or files",
                            raw.path.get_ref()
                        ),
                    ));
                }
                [_, (kind, value), ..] => {
                    return Err(at(
                        value.span(),
                        format!(
                            "route {:?}: {kind} as well: give one of component, upstream or files",
                            raw.path.get_ref()
                        ),
                    ));
                }
            };
            let mut names = Vec::new();
            for filter in raw.filters {
                if !filters.contains_key(filter.get_ref()) {
                    return Err(at(filter.span(), undeclared("filter", "filter", &filter)));
                }
                names.push(filter.into_inner());
            }
            let mut middleware = Vec::new();
            for name in raw.middleware {
                if !components.contains_key(name.get_ref()) {
                    return Err(at(
                        name.span(),
                        undeclared("middleware component", "component", &name),
                    ));
                }
                middleware.push(name.into_inner());
            }
            let cache = match raw.cache {
                Some(name) if !caches.contains_key(name.get_ref()) => {
                    return Err(at(name.span(), undeclared("cache", "cache", &name)));
                }
                name => name.map(Spanned::into_inner),
            };
            if let Some((_, _, first)) = seen.iter().find(|(h, p, _)| *h == host && *p == path) {
                let first = at(first.clone(), String::new());
                return Err(at(
                    path_span,
                    format!(
                        "route {:?}{} collides with the route at line {}",
                        raw.path.get_ref(),
                        host.as_deref()
                            .map(|h| format!(" on host {h}"))
                            .unwrap_or_default(),
                        first.line
                    ),
                ));
            }
            seen.push((host.clone(), path.clone(), path_span));
            routes.push(Route {
                host,
                path,
                target,
                filters: names,
                middleware,
                cache,
            });
        }
        Ok(Manifest {
            file: file.to_path_buf(),
            name,
            description,
            routes,
            components,
            filters,
            variables,
            key_value_stores: stores,
            caches,
        })
    }

    fn store(
        &self,
        raw: raw::KeyValueStore,
        name: &Spanned<String>,
    ) -> Result<StoreConfig, ManifestError> {
        let at = self.at;
        let kind = raw.kind.as_ref().map_or("sqlite", |k| k.get_ref().as_str());
        let refuse = |value: &Option<Spanned<String>>, key: &str| match value {
            Some(v) => Err(at(
                v.span(),
                format!("{key}: not a setting of a {kind} store"),
            )),
            None => Ok(()),
        };
        match kind {
            "sqlite" => {
                refuse(&raw.url, "url")?;
                if raw.prefix.is_some() {
                    return Err(at(
                        name.span(),
                        "prefix: not a setting of a sqlite store".into(),
                    ));
                }
                Ok(StoreConfig::Sqlite {
                    path: raw.path.map(|p| self.base.join(p.get_ref())),
                })
            }
            "redis" => {
                refuse(&raw.path, "path")?;
                let Some(url) = raw.url else {
                    return Err(at(
                        name.span(),
                        "a redis store needs its url (redis://HOST:PORT or rediss://...)".into(),
                    ));
                };
                let u = url.get_ref();
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(at(
                        url.span(),
                        format!("url {u:?}: expected redis://HOST:PORT or rediss://HOST:PORT"),
                    ));
                }
                Ok(StoreConfig::Redis {
                    url: url.into_inner(),
                    prefix: raw.prefix,
                })
            }
            other => Err(at(
                raw.kind.as_ref().map_or(name.span(), |k| k.span()),
                format!("type {other:?}: expected \"sqlite\" or \"redis\""),
            )),
        }
    }

    /// A file or directory named in the manifest, relative to its directory, which must exist.
    fn existing(&self, value: &Spanned<String>, what: &str) -> Result<PathBuf, ManifestError> {
        let path = self.base.join(value.get_ref());
        if path.exists() {
            Ok(path)
        } else {
            Err((self.at)(
                value.span(),
                format!(
                    "{what} {:?}: {} does not exist",
                    value.get_ref(),
                    path.display()
                ),
            ))
        }
    }

    fn target(
        &self,
        kind: &str,
        value: &Spanned<String>,
        components: &BTreeMap<String, Component>,
    ) -> Result<Target, ManifestError> {
        let v = value.get_ref();
        match kind {
            "component" if components.contains_key(v) => Ok(Target::Component(v.clone())),
            "component" => Err((self.at)(
                value.span(),
                undeclared("component", "component", value),
            )),
            "upstream" => {
                let ok = ["http://", "https://"]
                    .iter()
                    .any(|s| v.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
                if ok {
                    Ok(Target::Upstream(v.clone()))
                } else {
                    Err((self.at)(
                        value.span(),
                        format!("upstream {v:?}: expected http://HOST[:PORT] or https://..."),
                    ))
                }
            }
            _ => {
                let dir = self.existing(value, "files")?;
                if dir.is_dir() {
                    Ok(Target::Files(dir))
                } else {
                    Err((self.at)(
                        value.span(),
                        format!("files {v:?}: {} is not a directory", dir.display()),
                    ))
                }
            }
        }
    }

    fn component(
        &self,
        raw: raw::Component,
        variables: &BTreeMap<String, Variable>,
        stores: &BTreeMap<String, StoreConfig>,
        caches: &BTreeMap<String, crate::CacheSpec>,
    ) -> Result<Component, ManifestError> {
        let at = self.at;
        let source = self.existing(&raw.source, "source")?;
        let mut dirs = BTreeMap::new();
        for (guest, host) in raw.dirs {
            let (path, read_only) = crate::grants::read_only_suffix(host.get_ref());
            let path = Spanned::new(host.span(), path.to_string());
            let dir = self.existing(&path, "dir")?;
            dirs.insert(guest, (dir, read_only));
        }
        let mut allowed_outbound = Vec::new();
        let mut allow_self = false;
        for pattern in raw.allowed_outbound {
            if pattern.get_ref() == "http://self" {
                allow_self = true;
                continue;
            }
            let parsed = pattern
                .get_ref()
                .parse::<OutboundPattern>()
                .map_err(|e| at(pattern.span(), e.to_string()))?;
            allowed_outbound.push(parsed);
        }
        let allowed_sockets = raw
            .allowed_sockets
            .iter()
            .map(|grant| {
                grant
                    .get_ref()
                    .parse::<crate::SocketGrant>()
                    .map_err(|e| at(grant.span(), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let instance_reuse = match &raw.instance_reuse {
            Some(n) if *n.get_ref() < 1 => {
                return Err(at(n.span(), "instance_reuse: at least 1".into()));
            }
            n => n.as_ref().map(|n| *n.get_ref()),
        };
        let mut templates = BTreeMap::new();
        for (name, template) in raw.variables {
            for used in template_names(template.get_ref()).map_err(|e| at(template.span(), e))? {
                if !variables.contains_key(&used) {
                    return Err(at(
                        template.span(),
                        format!("variable {used:?} is not declared: add it to [variables]"),
                    ));
                }
            }
            templates.insert(name, template.into_inner());
        }
        let mut key_value_stores = Vec::new();
        for store in raw.key_value_stores {
            if !stores.contains_key(store.get_ref()) {
                return Err(at(
                    store.span(),
                    undeclared("key-value store", "key_value_store", &store),
                ));
            }
            key_value_stores.push(store.into_inner());
        }
        let outbound_cache = match raw.outbound_cache {
            Some(name) if !caches.contains_key(name.get_ref()) => {
                return Err(at(name.span(), undeclared("cache", "cache", &name)));
            }
            name => name.map(Spanned::into_inner),
        };
        let limits = &raw.limits;
        let memory = limits
            .memory
            .as_ref()
            .map(|m| crate::parse_size(m.get_ref()).map_err(|e| at(m.span(), e.to_string())))
            .transpose()?;
        let timeout = limits
            .timeout
            .as_ref()
            .map(|t| crate::parse_duration(t.get_ref()).map_err(|e| at(t.span(), e.to_string())))
            .transpose()?;
        let concurrency = match &limits.concurrency {
            Some(c) if *c.get_ref() < 1 => {
                return Err(at(c.span(), "concurrency: at least 1".into()));
            }
            Some(c) => Some(*c.get_ref() as usize),
            None => None,
        };
        Ok(Component {
            source,
            env: raw
                .env
                .into_iter()
                .map(|(name, value)| EnvGrant::Set { name, value })
                .collect(),
            dirs,
            allowed_outbound,
            allow_self,
            allowed_sockets,
            instance_reuse,
            variables: templates,
            key_value_stores,
            outbound_cache,
            limits: ComponentLimits {
                memory,
                timeout,
                concurrency,
            },
        })
    }

    fn filter(&self, raw: raw::Filter, name: &str) -> Result<FilterSpec, ManifestError> {
        let path = self.existing(&raw.source, "source")?;
        let failure = match raw.failure.as_ref().map(|f| (f.get_ref().as_str(), f)) {
            None | Some(("fail-closed", _)) => FilterFailure::FailClosed,
            Some(("fail-open", _)) => FilterFailure::FailOpen,
            Some((other, f)) => {
                return Err((self.at)(
                    f.span(),
                    format!("failure {other:?}: expected \"fail-closed\" or \"fail-open\""),
                ));
            }
        };
        Ok(FilterSpec {
            path,
            name: Some(name.to_string()),
            root_id: raw.root_id.unwrap_or_default(),
            vm_id: raw.vm_id.unwrap_or_default(),
            config: raw.config.unwrap_or_default().into_bytes(),
            vm_config: raw.vm_config.unwrap_or_default().into_bytes(),
            env: raw
                .env
                .into_iter()
                .map(|(name, value)| EnvGrant::Set { name, value })
                .collect(),
            failure,
        })
    }
}

/// `what NAME is not declared: add a [table.NAME] table`.
fn undeclared(what: &str, table: &str, name: &Spanned<String>) -> String {
    let name = name.get_ref();
    format!("{what} {name:?} is not declared: add a [{table}.{name}] table")
}

/// Names of components, filters and variables: lower-case letters, digits, `_` and `-`,
/// starting with a letter.
fn check_name(name: &Spanned<String>, what: &str) -> Result<(), String> {
    let n = name.get_ref();
    let ok = n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {n:?}: lower-case letters, digits, _ and -, starting with a letter"
        ))
    }
}

/// The variables a template refers to (`{{ name }}`).
fn template_names(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("template {template:?}: \"{{{{\" without \"}}}}\""))?;
        names.push(after[..close].trim().to_string());
        rest = &after[close + 2..];
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with the files the example manifest names.
    fn app_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in ["api.wasm", "auth.wasm"] {
            std::fs::write(dir.path().join(file), b"\0asm").unwrap();
        }
        std::fs::create_dir(dir.path().join("public")).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        dir
    }

    const EXAMPLE: &str = r#"manifest_version = 1
[app]
name = "shop"

[[route]]
path = "/api/..."
component = "api"

[[route]]
path = "/"
files = "public/"

[[route]]
host = "admin.example.com"
path = "/..."
upstream = "http://127.0.0.1:9000"
filters = ["auth"]

[component.api]
source = "api.wasm"
env = { MODE = "prod" }
dirs = { "/data" = "./data", "/ro" = "./data:ro" }
allowed_outbound = ["https://payments.example.com", "http://self"]
allowed_sockets = ["tcp-connect:db.example.com:5432"]
instance_reuse = 8
variables = { db_url = "{{ database_url }}" }
limits = { memory = "64MiB", timeout = "5s", concurrency = 100 }

[filter.auth]
source = "auth.wasm"
config = '{"realm":"api"}'
failure = "fail-closed"

[variables]
database_url = { default = "sqlite://x" }
api_token = { required = true, secret = true }

[[route]]
path = "/account/..."
component = "api"
middleware = ["session"]

[component.session]
source = "auth.wasm"
outbound_cache = "pages"

[[route]]
path = "/cached/..."
upstream = "http://127.0.0.1:9000"
cache = "pages"

[cache.pages]
size = "64MiB"

[cache.shared]
type = "redis"
url = "redis://127.0.0.1:6379/2"
prefix = "shop:"
"#;

    fn parse(dir: &Path, text: &str) -> Result<Manifest, ManifestError> {
        parse_manifest(text, &dir.join("pier.toml"))
    }

    #[test]
    fn the_example_parses_into_routes_components_filters_and_variables() {
        let dir = app_dir();
        let m = parse(dir.path(), EXAMPLE).unwrap();
        assert_eq!(m.name, "shop");
        assert_eq!(
            m.routes
                .iter()
                .map(|r| (r.host.clone(), r.path.clone()))
                .collect::<Vec<_>>(),
            vec![
                (None, RoutePath::Prefix("/api".into())),
                (None, RoutePath::Exact("/".into())),
                (
                    Some("admin.example.com".into()),
                    RoutePath::Prefix("".into())
                ),
                (None, RoutePath::Prefix("/account".into())),
                (None, RoutePath::Prefix("/cached".into())),
            ]
        );
        assert_eq!(m.routes[0].target, Target::Component("api".into()));
        assert_eq!(
            m.routes[1].target,
            Target::Files(dir.path().join("public/"))
        );
        assert_eq!(m.routes[2].filters, ["auth"]);
        assert_eq!(m.routes[3].middleware, ["session"]);
        assert_eq!(m.routes[4].cache.as_deref(), Some("pages"));
        assert_eq!(m.caches["pages"].size, 64 << 20);
        assert_eq!(
            m.caches["shared"].store,
            crate::CacheStore::Redis {
                url: "redis://127.0.0.1:6379/2".into(),
                prefix: Some("shop:".into())
            }
        );
        assert_eq!(
            m.components["session"].outbound_cache.as_deref(),
            Some("pages")
        );
        assert!(m.routes[0].middleware.is_empty());
        let api = &m.components["api"];
        assert_eq!(api.source, dir.path().join("api.wasm"));
        assert_eq!(api.dirs["/data"], (dir.path().join("./data"), false));
        assert_eq!(api.dirs["/ro"], (dir.path().join("./data"), true));
        assert!(api.allow_self);
        assert_eq!(api.allowed_outbound.len(), 1);
        assert_eq!(api.allowed_sockets.len(), 1);
        assert_eq!(
            api.allowed_sockets[0].to_string(),
            "tcp-connect:db.example.com:5432"
        );
        assert_eq!(api.instance_reuse, Some(8));
        assert_eq!(
            api.limits,
            ComponentLimits {
                memory: Some(64 << 20),
                timeout: Some(Duration::from_secs(5)),
                concurrency: Some(100)
            }
        );
        assert_eq!(m.filters["auth"].config, br#"{"realm":"api"}"#);
        assert_eq!(m.filters["auth"].name.as_deref(), Some("auth"));
        assert!(m.variables["api_token"].required && m.variables["api_token"].secret);
    }

    #[test]
    fn every_mistake_is_one_error_with_its_line_and_column() {
        let dir = app_dir();
        let cases: &[(&str, &str, &str)] = &[
            (
                "source = \"api.wasm\"",
                "sourc = \"api.wasm\"",
                ":20:1: unknown field `sourc`",
            ),
            (
                "component = \"api\"",
                "component = \"apii\"",
                ":7:13: component \"apii\" is not declared",
            ),
            (
                "filters = [\"auth\"]",
                "filters = [\"nope\"]",
                ":17:12: filter \"nope\" is not declared",
            ),
            (
                "outbound_cache = \"pages\"",
                "outbound_cache = \"nope\"",
                ":45:18: cache \"nope\" is not declared",
            ),
            (
                "9000\"\ncache = \"pages\"",
                "9000\"\ncache = \"page\"",
                ":50:9: cache \"page\" is not declared",
            ),
            (
                "size = \"64MiB\"",
                "size = \"lots\"",
                ":53:8: size = \"lots\"",
            ),
            (
                "url = \"redis://127.0.0.1:6379/2\"",
                "url = \"127.0.0.1:6379\"",
                ":57:7: url \"127.0.0.1:6379\": expected redis://",
            ),
            (
                "middleware = [\"session\"]",
                "middleware = [\"sesion\"]",
                ":41:15: middleware component \"sesion\" is not declared",
            ),
            (
                "path = \"/\"",
                "path = \"/api/...\"",
                ":10:8: route \"/api/...\" collides with the route at line 6",
            ),
            (
                "source = \"auth.wasm\"",
                "source = \"gone.wasm\"",
                ":30:10: source \"gone.wasm\":",
            ),
            (
                "files = \"public/\"",
                "files = \"nowhere/\"",
                "files \"nowhere/\"",
            ),
            (
                "{{ database_url }}",
                "{{ databse_url }}",
                "variable \"databse_url\" is not declared",
            ),
            ("memory = \"64MiB\"", "memory = \"64 lots\"", ":27:21:"),
            (
                "tcp-connect:db.example.com:5432",
                "tcp:db.internal:5432",
                ":24:20: invalid --allow-socket",
            ),
            (
                "instance_reuse = 8",
                "instance_reuse = 0",
                ":25:18: instance_reuse: at least 1",
            ),
            (
                "manifest_version = 1",
                "manifest_version = 2",
                ":1:20: manifest_version = 2",
            ),
            (
                "upstream = \"http://127.0.0.1:9000\"",
                "upstream = \"127.0.0.1:9000\"",
                "expected http://HOST",
            ),
            ("path = \"/api/...\"", "path = \"api\"", "must start with /"),
            (
                "path = \"/api/...\"",
                "path = \"/api/.../x\"",
                "may only end a path",
            ),
            (
                "failure = \"fail-closed\"",
                "failure = \"sometimes\"",
                "expected \"fail-closed\" or \"fail-open\"",
            ),
            ("concurrency = 100", "concurrency = 0", "at least 1"),
            (
                "component = \"api\"",
                "component = \"api\"\nupstream = \"http://x\"",
                "upstream as well",
            ),
            (
                "[component.api]",
                "[component.Api]",
                "component name \"Api\"",
            ),
            ("name = \"shop\"", "name = 5", ":3:8: invalid type"),
        ];
        let mut wrong = Vec::new();
        for (from, to, expected) in cases {
            assert!(EXAMPLE.contains(from), "{from}");
            let text = EXAMPLE.replacen(from, to, 1);
            let e = parse(dir.path(), &text).unwrap_err().to_string();
            let file = dir.path().join("pier.toml").display().to_string();
            if !e.contains(expected) || e.contains('\n') || !e.starts_with(&file) {
                wrong.push(format!("{to}: {expected:?} not in {e:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn templates_name_their_variables() {
        assert_eq!(
            template_names("a{{ x }}b{{y}}").unwrap(),
            vec!["x".to_string(), "y".to_string()]
        );
        assert!(template_names("{{ x").is_err());
    }
}
