//! The `pier` command line: flags -> a config -> a library entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pier_config::{
    App, AppSettings, CacheConfig, CompileOptions, ComponentSpec, DEFAULT_ADDR, DirGrant, EnvGrant,
    FilterFailure, FilterOptions, FilterSpec, Grants, Limits, OutboundConfig, OutboundPattern,
    OutboundPolicy, RunConfig, parse_duration, parse_listen_addr, parse_size,
};
use pier_config::{KvGrant, SocketGrant, SocketPolicy, SocketSwitch, StoreLimits};
use pier_engine::{CacheOutcome, CompileCache, EngineKind, RunOutcome, WasmFile, WasmKind};
use pier_http::Listen;

mod logs;
mod workers;

/// Per-request allocations (stores, resource tables, HTTP buffers) are many and short-lived;
/// mimalloc serves them with less contention and fragmentation than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// pier: a server and runner for WebAssembly components that speak WASI.
#[derive(Parser)]
#[command(version, about, max_term_width = 100)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a wasi:http/proxy component over HTTP/1.1 and HTTP/2.
    Serve(Box<ServeArgs>),
    /// Run a wasi:cli command component or a preview1 (wasm32-wasi) module.
    Run(RunArgs),
    /// Compile a component or module into the cache, so the next start is fast.
    Compile(CompileArgs),
    /// Check a pier.toml manifest (or a component) and everything it names, without serving it.
    Check(Box<CheckArgs>),
    /// Read and write a key-value store, with the backend and configuration `serve` uses.
    Kv(KvArgs),
}

#[derive(Args)]
struct KvArgs {
    /// The manifest declaring the store (default: ./pier.toml, if there is one).
    #[arg(long, value_name = "PIER.toml")]
    manifest: Option<PathBuf>,
    /// Where SQLite stores without a path live (as `serve --state-dir`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Where the manifest's stores live in this deployment (as `serve --runtime-config`).
    #[arg(long, value_name = "FILE")]
    runtime_config: Option<PathBuf>,
    /// A store the manifest names (or `default`); without a manifest, NAME[=FILE|URL] as serve --kv.
    #[arg(value_name = "STORE")]
    store: String,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Subcommand)]
enum KvOp {
    /// Print the value of KEY (exactly its bytes).
    Get { key: String },
    /// Set KEY to VALUE (`@FILE` for a file's contents).
    Set { key: String, value: String },
    /// Remove KEY.
    Delete { key: String },
    /// Print every key, one per line.
    List,
}

#[derive(Args)]
struct CheckArgs {
    /// What `pier serve` would be given: the manifest (default ./pier.toml) or component, and
    /// the flags.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (an IP address or a host name); port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADDR, value_parser = parse_listen_addr)]
    addr: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key); ALPN offers h2 and http/1.1.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) and /healthz on this address.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    admin_addr: Option<SocketAddr>,
    /// Fresh instances made ahead of their requests (each still serves one request).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    prewarm: u32,
    /// Requests one instance serves (0.2: one at a time, 0.3: 16 at once); 1 = fresh per request
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    instance_reuse: u32,
    /// Threads serving in one process, each running the connections it accepts; default: one per core
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256), conflicts_with = "workers")]
    threads: Option<u32>,
    /// Worker processes serving together on one port; one per core serves most.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,
    /// Run as one of the workers of `--workers`, serving on the listening socket the supervisor
    /// gave at this file descriptor.
    #[arg(long, value_name = "FD", hide = true)]
    worker_fd: Option<i32>,
    /// As a worker, serve metrics for the supervisor on the listening socket at this file
    /// descriptor (instead of --admin-addr).
    #[arg(long, value_name = "FD", hide = true, requires = "worker_fd")]
    worker_admin_fd: Option<i32>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    stores: StoreArgs,
    #[command(flatten)]
    outbound: OutboundArgs,
    #[command(flatten)]
    filters: FilterArgs,
    #[command(flatten)]
    grants: GrantArgs,
    #[command(flatten)]
    cache: CompileCacheArgs,
    #[command(flatten)]
    http_cache: HttpCacheArgs,
    /// Proxy every request to this origin (http://HOST:PORT or https://...), not a component.
    #[arg(long, value_name = "URL", conflicts_with = "app", value_parser = parse_origin)]
    upstream: Option<http::Uri>,
    /// Reload when the manifest or a file it names changes (as on SIGHUP).
    #[arg(long)]
    watch: bool,
    /// Values of the manifest's variables: dotenv NAME=VALUE lines, or TOML if it ends in .toml.
    #[arg(long, value_name = "FILE")]
    variables_file: Option<PathBuf>,
    /// The component to serve, or a pier.toml manifest (default: ./pier.toml, if there is one).
    #[arg(value_name = "APP.wasm|PIER.toml")]
    app: Option<PathBuf>,
}

impl ServeArgs {
    /// How many threads serve (`--threads`, or one per core).
    fn serving_threads(&self) -> usize {
        self.threads
            .map_or_else(pier_threads::slots, |n| n as usize)
    }

    /// The application the flags (and the manifest, when one is given) describe.
    fn app(&self) -> anyhow::Result<App> {
        let settings = AppSettings {
            filter_options: self.filters.options(),
            limits: self.limits.limits(),
            outbound: self.outbound.config(),
            compile: self.cache.options(),
            prewarm: self.prewarm,
            instance_reuse: self.instance_reuse,
            state_dir: self.stores.state_dir.clone(),
            variables_file: self.variables_file.clone(),
            runtime_config: self.stores.runtime_config.clone(),
            store_limits: StoreLimits {
                max_key: self.stores.kv_max_key_size,
                max_value: self.stores.kv_max_value_size,
            },
            http_cache: self.http_cache.spec()?,
            outbound_http_cache: self.http_cache.outbound_spec()?,
        };
        let manifest_given = self.source().is_some_and(|s| is_manifest(&s));
        if self.variables_file.is_some() && !manifest_given {
            anyhow::bail!(
                "--variables-file without a manifest: variables are declared in pier.toml"
            );
        }
        if self.stores.runtime_config.is_some() && !manifest_given {
            anyhow::bail!(
                "--runtime-config without a manifest: with a single component, give stores with --kv NAME=FILE|URL"
            );
        }
        match (self.source(), &self.upstream) {
            (Some(source), _) if is_manifest(&source) => {
                // What the manifest grants per component is not also granted by flags.
                let per_component = [
                    (
                        self.filters.any(),
                        "--filter",
                        "declare filters as [filter.NAME] and name them on routes",
                    ),
                    (
                        !self.grants.env.is_empty(),
                        "--env",
                        "give each component its env in the manifest",
                    ),
                    (
                        !self.grants.dirs.is_empty(),
                        "--dir",
                        "give each component its dirs in the manifest",
                    ),
                    (
                        !self.grants.sockets.is_empty() || !self.grants.switches.is_empty(),
                        "--allow-socket/-S",
                        "give each component its allowed_sockets in the manifest",
                    ),
                    (
                        !self.outbound.allow.is_empty(),
                        "--allow-outbound",
                        "give each component its allowed_outbound in the manifest",
                    ),
                    (
                        !self.stores.kv.is_empty(),
                        "--kv",
                        "give each component its key_value_stores in the manifest",
                    ),
                    (
                        self.http_cache.http_cache.is_some(),
                        "--cache",
                        "declare caches as [cache.NAME] and name them on routes",
                    ),
                    (
                        self.http_cache.outbound_cache.is_some(),
                        "--outbound-cache",
                        "declare caches as [cache.NAME] and name them as a component's outbound_cache",
                    ),
                ];
                if let Some((_, flag, instead)) = per_component.iter().find(|(given, ..)| *given) {
                    anyhow::bail!("{flag} with a manifest: {instead}");
                }
                let manifest = pier_config::load_manifest(&source)?;
                App::from_manifest(&manifest, settings)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))
            }
            (Some(source), _) => Ok(App::one_component(
                ComponentSpec::new(source, self.grants.grants()),
                self.filters.specs()?,
                &self.stores.kv,
                settings,
            )),
            (None, Some(_)) if self.http_cache.outbound_cache.is_some() => anyhow::bail!(
                "--outbound-cache caches a component's outgoing requests; --upstream has no component"
            ),
            (None, Some(origin)) => Ok(App::one_upstream(
                origin.to_string(),
                self.filters.specs()?,
                settings,
            )),
            (None, None) => anyhow::bail!(
                "give a component or a manifest to serve (there is no pier.toml here), or --upstream URL"
            ),
        }
    }

    /// The component or manifest given, else `./pier.toml` if there is one (and no
    /// `--upstream`).
    fn source(&self) -> Option<PathBuf> {
        match (&self.app, &self.upstream) {
            (Some(app), _) => Some(app.clone()),
            (None, None) => Some(PathBuf::from("pier.toml")).filter(|p| p.is_file()),
            (None, Some(_)) => None,
        }
    }
}

/// Whether `path` is a manifest (`pier.toml`) rather than a component.
fn is_manifest(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

fn parse_origin(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("expected http://HOST:PORT or https://HOST[:PORT]".to_string()),
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    grants: GrantArgs,
    /// Sockets the program may have open; one more is refused (default: the OS's limit alone)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_sockets: Option<u32>,
    #[command(flatten)]
    cache: CompileCacheArgs,
    #[command(flatten)]
    outbound: OutboundArgs,
    /// The program to run, then its arguments (everything after the program goes to it).
    #[arg(
        value_name = "APP.wasm [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

#[derive(Args)]
struct CompileArgs {
    #[command(flatten)]
    cache: CompileCacheArgs,
    /// The component or module to compile.
    #[arg(value_name = "APP.wasm")]
    app: PathBuf,
}

/// Key-value stores (`wasi:keyvalue`).
#[derive(Args)]
struct StoreArgs {
    /// Grant a key-value store: NAME (SQLite in the state directory), NAME=FILE or NAME=redis://HOST:PORT.
    #[arg(long, value_name = "NAME[=FILE|URL]")]
    kv: Vec<KvGrant>,
    /// Where SQLite stores without a path live (default: .pier/data beside the manifest, or here).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Where the manifest's key-value stores live in this deployment: [key_value_store.NAME] tables.
    #[arg(long, value_name = "FILE")]
    runtime_config: Option<PathBuf>,
    /// Longest key a guest may use in a store.
    #[arg(long, value_name = "SIZE", default_value = "256B", value_parser = parse_size_usize)]
    kv_max_key_size: usize,
    /// Largest value a guest may put in a store.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size_usize)]
    kv_max_value_size: usize,
}

/// Protections, all on by default (see the README's flags table).
#[derive(Args)]
struct LimitArgs {
    /// Largest linear memory a guest instance may grow to; past it the guest traps (500).
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_size)]
    max_memory: u64,
    /// Time a request may spend in its guest: 504 (or an aborted response); 0 disables.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Largest request body: 413 (checked up front and while streaming).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_body: u64,
    /// Largest request header section: 431.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size_usize)]
    max_header_size: usize,
    /// Most request header fields: 431.
    #[arg(long, value_name = "N", default_value_t = 100)]
    max_headers: usize,
    /// Time a client has to send a request head (and an HTTP/1.1 client its next one); 0 disables.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Close connections with no request (HTTP/1.1: and no traffic) for this long; 0 disables.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Close a connection whose client has not taken pier's writes for this long; 0 disables.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    send_timeout: Duration,
    /// Outgoing HTTP requests one guest instance may have in flight; more fail at once
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_outbound_requests: u32,
    /// Bytes one guest instance may write to stdout and stderr; the rest is dropped
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    max_log_size: u64,
    /// Sockets one guest instance may have open; one more is new-socket-limit
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_sockets: u32,
    /// Resources (handles) one guest instance may hold; past it the guest traps
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(100..))]
    max_handles: u32,
    /// Requests in guests at once; beyond it pier answers 503 with Retry-After at once.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrency: u32,
    /// Open client connections; beyond it pier stops accepting until one closes.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, value_name = "N", default_value_t = 100)]
    h2_max_streams: u32,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_memory: self.max_memory,
            timeout: self.timeout,
            max_body: self.max_body,
            max_header_size: self.max_header_size,
            max_headers: self.max_headers,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
            max_outbound_requests: self.max_outbound_requests as usize,
            max_log_size: self.max_log_size,
            max_sockets: self.max_sockets as usize,
            max_handles: self.max_handles as usize,
            max_concurrency: self.max_concurrency as usize,
            max_connections: self.max_connections as usize,
            h2_max_streams: self.h2_max_streams,
            drain_timeout: self.drain_timeout,
        }
    }
}

/// Proxy-Wasm filters in front of the component.
#[derive(Args)]
struct FilterArgs {
    /// A Proxy-Wasm filter to run on every request (repeatable, applied in order).
    #[arg(long = "filter", value_name = "FILE.wasm")]
    filters: Vec<PathBuf>,
    /// Plugin configuration for the filter in the same position: TEXT, or @FILE to read it.
    #[arg(long = "filter-config", value_name = "TEXT|@FILE")]
    configs: Vec<String>,
    /// VM configuration for the filter in the same position: TEXT, or @FILE to read it.
    #[arg(long = "filter-vm-config", value_name = "TEXT|@FILE")]
    vm_configs: Vec<String>,
    /// Root id (plugin_root_id) of the filter in the same position.
    #[arg(long = "filter-root-id", value_name = "ID")]
    root_ids: Vec<String>,
    /// Name (plugin_name) of the filter in the same position; default: its file name.
    #[arg(long = "filter-name", value_name = "NAME")]
    names: Vec<String>,
    /// VM id of the filter in the same position: filters on one VM id and file share VMs.
    #[arg(long = "filter-vm-id", value_name = "ID")]
    vm_ids: Vec<String>,
    /// An environment variable for the --filter before it: NAME=VALUE, or NAME for the host's.
    #[arg(long = "filter-env", value_name = "NAME[=VALUE]")]
    envs: Vec<EnvGrant>,
    /// Filters from an Envoy Wasm filter config or Istio WasmPlugins (YAML/JSON), after --filter's.
    #[arg(long = "filter-envoy-config", value_name = "FILE")]
    envoy_configs: Vec<PathBuf>,
    /// What a failing filter does: fail-closed answers 503, fail-open skips it (once, or per filter).
    #[arg(long = "filter-failure", value_name = "POLICY", value_parser = ["fail-closed", "fail-open"])]
    failures: Vec<String>,
    /// VMs per filter (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    filter_vms: Option<u16>,
    /// Linear memory one filter VM may use; a VM that grows to it is replaced.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size_usize)]
    filter_max_memory: usize,
    /// How long one filter callback may run before it traps (the VM is then replaced).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    filter_callback_timeout: Duration,
    /// Bytes all filters' shared data and queues may hold together; past it writes fail.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size_usize)]
    filter_shared_size: usize,
    /// An upstream filters may call with proxy_http_call, by NAME. Repeatable.
    #[arg(long = "filter-upstream", value_name = "NAME=URL", value_parser = parse_named_upstream)]
    upstreams: Vec<(String, http::Uri)>,
    /// Which --filter each --filter-env follows (filled from the command line's order).
    #[arg(skip)]
    env_owners: Vec<usize>,
}

fn parse_named_upstream(s: &str) -> Result<(String, http::Uri), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or("expected NAME=URL, e.g. auth=http://127.0.0.1:9000")?;
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if name.is_empty()
        || !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.host().is_none()
    {
        return Err(format!("expected NAME=http(s)://HOST[:PORT], got {s}"));
    }
    Ok((name.to_string(), uri))
}

impl FilterArgs {
    /// Notes which `--filter` each `--filter-env` follows, from where they stand in `matches`
    /// (the `serve` subcommand's).
    fn place_envs(&mut self, matches: &clap::ArgMatches) -> anyhow::Result<()> {
        let filters: Vec<usize> = matches
            .indices_of("filters")
            .map(Iterator::collect)
            .unwrap_or_default();
        let envs: Vec<usize> = matches
            .indices_of("envs")
            .map(Iterator::collect)
            .unwrap_or_default();
        self.env_owners = envs
            .iter()
            .map(|at| {
                filters.iter().rposition(|f| f < at).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--filter-env applies to the --filter given before it; give that first"
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(())
    }

    /// VMs per filter: `--filter-vms`, or one per core.
    fn vms(&self) -> usize {
        self.filter_vms.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        )
    }

    /// Whether any filter is configured.
    fn any(&self) -> bool {
        !self.filters.is_empty() || !self.envoy_configs.is_empty()
    }

    /// Every filter, from the flags then the Envoy/Istio files, as one list of plugins.
    fn specs(&self) -> anyhow::Result<Vec<FilterSpec>> {
        // Values go to the filter in the same position: a value without its filter is a mistake.
        for (flag, given) in [
            ("--filter-config", self.configs.len()),
            ("--filter-vm-config", self.vm_configs.len()),
            ("--filter-root-id", self.root_ids.len()),
            ("--filter-name", self.names.len()),
            ("--filter-vm-id", self.vm_ids.len()),
        ] {
            if given > self.filters.len() {
                anyhow::bail!(
                    "{flag} given {given} times for {} --filter: each applies to the filter in the same position",
                    self.filters.len()
                );
            }
        }
        if self.failures.len() > 1 && self.failures.len() != self.filters.len() {
            anyhow::bail!(
                "--filter-failure: give one policy for all filters, or one per --filter ({} given for {} filters)",
                self.failures.len(),
                self.filters.len()
            );
        }
        let mut specs = Vec::new();
        for (i, path) in self.filters.iter().enumerate() {
            let failure = match self
                .failures
                .get(i)
                .or(self.failures.first())
                .map(String::as_str)
            {
                Some("fail-open") => FilterFailure::FailOpen,
                _ => FilterFailure::FailClosed,
            };
            specs.push(FilterSpec {
                path: path.clone(),
                name: self.names.get(i).cloned().filter(|n| !n.is_empty()),
                root_id: self.root_ids.get(i).cloned().unwrap_or_default(),
                vm_id: self.vm_ids.get(i).cloned().unwrap_or_default(),
                config: text_or_file(self.configs.get(i), "--filter-config")?,
                vm_config: text_or_file(self.vm_configs.get(i), "--filter-vm-config")?,
                env: self
                    .envs
                    .iter()
                    .zip(&self.env_owners)
                    .filter(|(_, owner)| **owner == i)
                    .map(|(env, _)| env.clone())
                    .collect(),
                failure,
            });
        }
        for file in &self.envoy_configs {
            specs.extend(pier_config::load_filters(file)?);
        }
        Ok(specs)
    }

    /// How filter VMs run, and the upstreams filters may call.
    fn options(&self) -> FilterOptions {
        FilterOptions {
            vms: self.vms(),
            max_memory: self.filter_max_memory,
            callback_timeout: self.filter_callback_timeout,
            shared_size: self.filter_shared_size,
            upstreams: self
                .upstreams
                .iter()
                .map(|(name, uri)| (name.clone(), uri.to_string()))
                .collect(),
        }
    }
}

/// `TEXT`, or the contents of `FILE` for `@FILE`.
fn text_or_file(value: Option<&String>, flag: &str) -> anyhow::Result<Vec<u8>> {
    match value.map(String::as_str) {
        None => Ok(Vec::new()),
        Some(v) => match v.strip_prefix('@') {
            Some(path) => std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} @{path}: {e}")),
            None => Ok(v.as_bytes().to_vec()),
        },
    }
}

/// Outgoing HTTP from guests: denied unless a pattern allows it.
#[derive(Args)]
struct OutboundArgs {
    /// Let guests reach URLs matching this pattern, e.g. https://*.example.com (repeatable).
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    allow: Vec<OutboundPattern>,
    /// Also trust this PEM CA certificate for outgoing TLS (repeatable).
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_certs: Vec<PathBuf>,
    /// Cap on the time to connect (DNS, TCP, TLS): connection-timeout.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    outbound_connect_timeout: Duration,
    /// Cap on the wait for a response head: connection-read-timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    outbound_first_byte_timeout: Duration,
    /// Cap on the wait between response body chunks: connection-read-timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    outbound_between_bytes_timeout: Duration,
    /// How long a pooled outgoing connection may stay idle.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    outbound_idle_timeout: Duration,
    /// Idle pooled connections kept per origin.
    #[arg(long, value_name = "N", default_value_t = 256)]
    outbound_max_idle_per_host: usize,
}

impl OutboundArgs {
    fn config(&self) -> OutboundConfig {
        OutboundConfig {
            policy: OutboundPolicy::new(self.allow.clone()),
            ca_certs: self.ca_certs.clone(),
            connect_timeout: self.outbound_connect_timeout,
            first_byte_timeout: self.outbound_first_byte_timeout,
            between_bytes_timeout: self.outbound_between_bytes_timeout,
            pool_idle_timeout: self.outbound_idle_timeout,
            pool_max_idle_per_host: self.outbound_max_idle_per_host,
        }
    }
}

fn parse_size_usize(s: &str) -> Result<usize, String> {
    let n = parse_size(s).map_err(|e| e.to_string())?;
    usize::try_from(n).map_err(|_| format!("{s} is too large"))
}

/// The shared HTTP cache of a single component or upstream (a manifest declares its own).
#[derive(Args)]
struct HttpCacheArgs {
    /// Cache responses (RFC 9111) in memory, or on a Redis server shared by every pier naming it
    #[arg(long = "cache", value_name = "memory|redis://HOST:PORT", num_args = 0..=1, default_missing_value = "memory")]
    http_cache: Option<String>,
    /// Bytes --cache holds at most [default: 256MiB]
    #[arg(long, value_name = "SIZE", requires = "http_cache")]
    cache_size: Option<String>,
    /// Largest response body --cache keeps [default: 8MiB]
    #[arg(long, value_name = "SIZE", requires = "http_cache")]
    cache_max_entry: Option<String>,
    /// Cache the component's outgoing requests (RFC 9111), in memory or on a Redis server
    #[arg(long = "outbound-cache", value_name = "memory|redis://HOST:PORT", num_args = 0..=1, default_missing_value = "memory")]
    outbound_cache: Option<String>,
}

impl HttpCacheArgs {
    /// `--cache`, with `--cache-size` and `--cache-max-entry`.
    fn spec(&self) -> anyhow::Result<Option<pier_config::CacheSpec>> {
        let Some(kind) = &self.http_cache else {
            return Ok(None);
        };
        let sized = (self.cache_size.as_deref(), self.cache_max_entry.as_deref());
        cache_spec(kind, sized, "--cache").map(Some)
    }

    /// `--outbound-cache`, with the default size.
    fn outbound_spec(&self) -> anyhow::Result<Option<pier_config::CacheSpec>> {
        let Some(kind) = &self.outbound_cache else {
            return Ok(None);
        };
        cache_spec(kind, (None, None), "--outbound-cache").map(Some)
    }
}

/// A cache from its flag: `memory`, or a Redis URL.
fn cache_spec(
    kind: &str,
    (size, max_entry): (Option<&str>, Option<&str>),
    flag: &str,
) -> anyhow::Result<pier_config::CacheSpec> {
    let redis = kind.starts_with("redis://") || kind.starts_with("rediss://");
    pier_config::CacheSpec::parse(pier_config::CacheSettings {
        kind: Some(if redis { "redis" } else { kind }),
        size,
        max_entry,
        url: redis.then_some(kind),
        prefix: None,
    })
    .map_err(|(key, message)| {
        let flag = match key {
            "size" => "--cache-size",
            "max_entry" => "--cache-max-entry",
            _ => flag,
        };
        anyhow::anyhow!("{flag}: {message}")
    })
}

/// What the guest may see of the host; nothing unless granted here.
#[derive(Args)]
struct GrantArgs {
    /// Give the guest an environment variable: NAME=VALUE, or NAME to pass the host's value.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<EnvGrant>,
    /// Preopen a host directory for the guest, as HOST_DIR or HOST_DIR::GUEST_DIR; :ro: read-only
    #[arg(long = "dir", value_name = "HOST_DIR[::GUEST_DIR][:ro]")]
    dirs: Vec<DirGrant>,
    /// Let the guest use wasi:sockets: tcp-connect|tcp-listen|udp:HOST:PORT, e.g. udp:10.0.0.0/8:53
    #[arg(long = "allow-socket", value_name = "USE:HOST:PORT")]
    sockets: Vec<SocketGrant>,
    /// wasmtime's network switches: inherit-network, allow-ip-name-lookup, tcp, udp (each =y|n)
    #[arg(short = 'S', long = "wasi", value_name = "SWITCH[=y|n],...", value_parser = SocketSwitch::parse_list)]
    switches: Vec<Vec<SocketSwitch>>,
}

#[derive(Args)]
struct CompileCacheArgs {
    /// Neither read nor write the compile cache ($PIER_CACHE_DIR, or the user cache dir).
    #[arg(long)]
    no_cache: bool,
    /// Compile components as they are, without the load-time optimiser.
    #[arg(long)]
    no_optimize: bool,
}

impl GrantArgs {
    fn grants(&self) -> Grants {
        Grants {
            env: self.env.clone(),
            dirs: self.dirs.clone(),
            sockets: SocketPolicy::new(self.switches.concat(), self.sockets.clone()),
            ..Grants::default()
        }
    }
}

impl CompileCacheArgs {
    fn options(&self) -> CompileOptions {
        CompileOptions {
            cache: self.config(),
            optimize: !self.no_optimize,
        }
    }

    fn config(&self) -> CacheConfig {
        let env_dir = std::env::var_os("PIER_CACHE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        CacheConfig::from_env(self.no_cache, env_dir, dirs::cache_dir())
    }
}

/// Keeps `RUST_BACKTRACE=1` (common in containers and shells) from capturing a backtrace in
/// every error value pier and wasmtime make: wasmtime makes one each time it drops a WASI 0.3
/// store (`"future dropped"`, disposing the store's idle fiber), which cost a fresh 0.3 request
/// ~9% of pier's CPU (bench/RESULTS.md, 2026-12-08). Error values read `RUST_LIB_BACKTRACE`
/// before `RUST_BACKTRACE`; panics read only `RUST_BACKTRACE`, so they still print theirs. A
/// `RUST_LIB_BACKTRACE` the user set is kept. Worker processes inherit the setting.
fn backtraces_for_panics_only() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first thing `main` does, before any thread is started.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

fn main() -> ExitCode {
    backtraces_for_panics_only();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let (Command::Serve(args), Some(serve)) =
        (&mut cli.command, matches.subcommand_matches("serve"))
        && let Err(e) = args.filters.place_envs(serve)
    {
        eprintln!("pier: {e:#}");
        return ExitCode::FAILURE;
    }
    let default_log = match cli.command {
        // A program's own output is what `pier run` shows; pier speaks only of problems.
        Command::Run(_) | Command::Check(_) | Command::Kv(_) => "warn",
        _ => "info",
    };
    // A server's start-up log waits for its serving line (see `logs`).
    logs::init(
        default_log,
        cli.log_format,
        matches!(cli.command, Command::Serve(_)),
    );
    let mut runtime = match &cli.command {
        // A server's serving thread (one of `--threads`, or a worker of `--workers`) does
        // everything on its one thread: accepting, its connections, its guests and their
        // outgoing requests, so no task is handed to another thread. The main thread is the
        // first serving thread (and runs the admin listener and reloads); the others have
        // runtimes of their own (`pier_http::Server`). (On a multi-thread runtime, which hands
        // tasks between its threads, one process served ~20% fewer hellos and ~35% fewer
        // forwarded requests: bench/RESULTS.md, 2026-12-07.)
        // The supervisor only starts and watches its workers, on the main thread: a worker is
        // told to stop when the thread that started it ends (`PR_SET_PDEATHSIG`).
        Command::Serve(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => run(args).await,
            Command::Compile(args) => compile(args).map(|()| ExitCode::SUCCESS),
            Command::Check(args) => check(*args).map(|()| ExitCode::SUCCESS),
            Command::Kv(args) => kv(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) if e.is::<workers::Reported>() => {
            logs::release();
            ExitCode::FAILURE
        }
        Err(e) => {
            logs::release();
            eprintln!("pier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.workers > 1 && args.worker_fd.is_none() {
        return workers::supervise(&args).await;
    }
    let listen = match args.worker_fd {
        Some(fd) => {
            workers::stop_with_supervisor()?;
            Listen::Listener(workers::inherited_listener(fd, "--worker-fd")?)
        }
        None => Listen::Addr {
            addr: args.addr,
            threads: args.serving_threads(),
        },
    };
    let app = args.app()?;
    // A worker reloads when its supervisor says so, which watches the files for all.
    let reloads =
        pier_http::Triggers::install(args.watch && args.worker_fd.is_none(), &app.files())?;
    let certificate = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(pier_http::Certificate::load(cert, key)?),
        _ => None,
    };
    let tls = certificate.as_ref().map(|c| c.acceptor()).transpose()?;
    let admin = match (args.worker_admin_fd, args.admin_addr) {
        (Some(fd), _) => {
            let listener = workers::inherited_listener(fd, "--worker-admin-fd")?;
            listener.set_nonblocking(true)?;
            Some(tokio::net::TcpListener::from_std(listener)?)
        }
        (None, Some(addr)) => Some(pier_http::admin::bind(addr).await?),
        (None, None) => None,
    };
    // Before building: filters define their metrics as they start.
    let recorder = admin
        .as_ref()
        .map(|_| pier_http::metrics::install_recorder())
        .transpose()?;
    let pier_http::Built {
        engines,
        routes,
        self_routes,
        caches,
    } = pier_http::build(&app)?;
    for engine in &engines {
        pier_engine::start_epoch_ticker(engine);
    }
    let server = pier_http::Server::bind(listen, routes, app.settings.limits, tls).await?;
    self_routes.connect(&server.routes());
    let live = pier_http::Live::new(server.routes(), engines, caches);
    let mut admin_line = None;
    if let (Some(listener), Some(handle)) = (admin, recorder) {
        if args.worker_admin_fd.is_none() {
            admin_line = Some(format!("pier: admin on http://{}", listener.local_addr()?));
        }
        let admin = pier_http::admin::Admin::Process(handle, live.clone());
        tokio::spawn(pier_http::admin::serve(listener, admin));
    }
    let is_worker = args.worker_fd.is_some();
    tokio::spawn(pier_http::reload::run(
        live,
        reloads,
        certificate,
        move || args.app(),
    ));
    // Loading read whole files (the component, its compiled code) into memory and freed them;
    // hand those pages back now rather than carry them, resident, for the server's lifetime.
    // SAFETY: mi_collect only frees memory mimalloc itself holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) };
    // Handlers first, so a stop that follows the ready line at once is a graceful one.
    let shutdown = shutdown_signal();
    if is_worker {
        workers::ready()?;
    } else {
        // The first line: what harnesses wait for. Then the admin line and the start-up log.
        let mut first = format!("pier: serving {}\n", server.url());
        if let Some(line) = admin_line {
            first.push_str(&line);
            first.push('\n');
        }
        logs::release_after(&first);
    }
    server.serve(shutdown).await;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut command = args.command.into_iter();
    let config = RunConfig {
        app: command.next().expect("clap requires the program").into(),
        args: command.collect(),
        cache: args.cache.config(),
        optimize: !args.cache.no_optimize,
        grants: args.grants.grants(),
        outbound: args.outbound.config(),
        max_sockets: args.max_sockets.map(|n| n as usize),
    };
    match pier_http::run(&config).await? {
        RunOutcome::Exit(code) => Ok(ExitCode::from(code as u8)),
        RunOutcome::Trap(e) => {
            eprintln!(
                "pier: {} trapped: {}",
                config.app.display(),
                pier_engine::describe_guest_error(&e)
            );
            Ok(ExitCode::from(pier_engine::TRAP_EXIT_CODE as u8))
        }
    }
}

fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let wasm = WasmFile::read(&args.app)?;
    let cache = CompileCache::new(&args.cache.config()).optimize(!args.cache.no_optimize);
    // Code compiled for `run` is the same as for `serve` (only instance allocation differs),
    // except with `serve --instance-reuse`, whose engine calls a 0.2 component concurrently too:
    // that compiles on its first start.
    let engine = pier_engine::new_engine(EngineKind::Run, wasm.p3)?;
    let outcome = match wasm.kind {
        WasmKind::Component => cache.component(&engine, &wasm).map(|(_, o)| o),
        WasmKind::Module => cache.module(&engine, &wasm).map(|(_, o)| o),
    }
    .map_err(|e| anyhow::anyhow!("{} does not compile: {e:#}", wasm.display()))?;
    let what = match outcome {
        CacheOutcome::Hit => "is already in the compile cache",
        CacheOutcome::Miss => "compiled into the compile cache",
        CacheOutcome::Disabled => "compiles (the cache is off, nothing was stored)",
    };
    eprintln!("pier: {} {what}", wasm.display());
    Ok(())
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let args = args.serve;
    let app = args.app()?;
    let shown = args
        .source()
        .map_or_else(|| "the app".to_string(), |s| s.display().to_string());
    let checked = pier_http::check(&app).map_err(|e| anyhow::anyhow!("{shown}: {e:#}"))?;
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut parts = vec![
        count(checked.routes, "route"),
        count(checked.components, "component"),
        count(checked.filters, "filter"),
    ];
    if let Some(source) = args.source().filter(|s| is_manifest(s)) {
        let manifest = pier_config::load_manifest(&source)?;
        parts.push(count(manifest.variables.len(), "variable"));
    }
    eprintln!("pier: {shown} is valid: {}", parts.join(", "));
    Ok(())
}

async fn kv(args: KvArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let manifest = args
        .manifest
        .clone()
        .or_else(|| Some(PathBuf::from("pier.toml")).filter(|p| p.is_file()));
    let spec = match &manifest {
        Some(file) => {
            let manifest = pier_config::load_manifest(file)?;
            let mut stores = manifest.key_value_stores;
            if let Some(runtime) = &args.runtime_config {
                stores.extend(pier_config::load_runtime_config(runtime)?);
            }
            let config = stores.get(&args.store).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no key-value store {:?} (declare it as [key_value_store.{}])",
                    file.display(),
                    args.store,
                    args.store
                )
            })?;
            let base = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let state = pier_config::state_dir(args.state_dir.as_deref(), base);
            pier_config::StoreSpec::resolve(&args.store, config, &state)
        }
        None => {
            let grant: KvGrant = args.store.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let state =
                pier_config::state_dir(args.state_dir.as_deref(), std::path::Path::new("."));
            pier_config::StoreSpec::resolve(&grant.name, &grant.config, &state)
        }
    };
    let store = pier_http::open_store(&spec)?;
    let failed = |e: pier_kv::Error| anyhow::anyhow!("store {}: {e}", args.store);
    match args.op {
        KvOp::Get { key } => match store.get(&key).await.map_err(failed)? {
            Some(value) => std::io::stdout().write_all(&value)?,
            None => anyhow::bail!("no value for {key:?} in store {}", args.store),
        },
        KvOp::Set { key, value } => {
            let value = text_or_file(Some(&value), "VALUE")?;
            store.set(&key, value).await.map_err(failed)?;
        }
        KvOp::Delete { key } => store.delete(&key).await.map_err(failed)?,
        KvOp::List => {
            let mut out = std::io::stdout().lock();
            let mut cursor = None;
            loop {
                let page = store.list_keys(cursor, 1000).await.map_err(failed)?;
                for key in page.keys {
                    writeln!(out, "{key}")?;
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
    }
    // Done only once what was written is on disk.
    if let Some(point) = store.sync_point() {
        point.wait().await.map_err(failed)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled: a signal
/// that comes in between is not lost (nor does it kill the process).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_documented_limits() {
        let cli = Cli::try_parse_from(["pier", "serve", "app.wasm"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.limits.limits(), Limits::default());
        assert_eq!(args.outbound.config(), OutboundConfig::default());
        assert_eq!(args.addr.to_string(), DEFAULT_ADDR);
    }

    #[test]
    fn help_speaks_to_users_in_one_line_per_flag() {
        let command = <Cli as clap::CommandFactory>::command();
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let long = arg.get_long_help().map(|h| h.to_string());
                let name = arg.get_id();
                assert!(!help.is_empty(), "{name}: no help");
                assert!(long.is_none() && !help.contains('\n'), "{name}: one line");
                assert!(
                    !help.contains("RESULTS") && !help.contains("bench/"),
                    "{name}: {help}"
                );
                assert!(help.len() <= 100, "{name}: {help}");
            }
        }
    }

    #[test]
    fn limit_flags_parse_units() {
        let cli = Cli::try_parse_from([
            "pier",
            "serve",
            "--max-memory",
            "1GiB",
            "--timeout",
            "250ms",
            "--max-body",
            "10k",
            "app.wasm",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let limits = args.limits.limits();
        assert_eq!(
            (limits.max_memory, limits.timeout, limits.max_body),
            (1 << 30, Duration::from_millis(250), 10 << 10)
        );
        assert!(Cli::try_parse_from(["pier", "serve", "--timeout", "30", "app.wasm"]).is_err());
        assert!(
            Cli::try_parse_from(["pier", "serve", "--tls-cert", "c.pem", "app.wasm"]).is_err(),
            "--tls-cert needs --tls-key"
        );
    }
}
