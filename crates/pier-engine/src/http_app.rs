//! A `wasi:http` component (a 0.2 `proxy` or a 0.3 `service`), compiled, linked and
//! pre-instantiated once, ready to give every request a fresh store.
//!
//! Instances can be made ahead of their requests ([`StoreSettings::prewarm`]): a background task
//! keeps a few fresh, never-used instances ready, so a request does not wait for instantiation
//! (hundreds of microseconds for an interpreter-based guest). A made-ahead instance is exactly what
//! the request would have made itself, with its clock starting when the request takes it; each
//! is used by one request only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use pier_config::{DirGrant, Grants};
use tokio::sync::Notify;
use wasmtime::component::{
    Component, ComponentExportIndex, Instance, InstancePre, Linker,
    types::{ComponentExtern, ComponentItem},
};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyIndices};
use wasmtime_wasi_http::p3::bindings::{Service, ServiceIndices};

use crate::cache::{CacheOutcome, CompileCache};
use crate::dirty::Joined;
use crate::engine::{
    EPOCH_TICK, EngineKind, MemoryReset, PoolSizes, YIELD_TICKS, new_engine, swap_is_on,
};
use crate::host::{ConfigState, DenyAll, Granted, HostState, KeyValueState, Outbound, WasiRecipe};
use crate::load::{WasmFile, WasmKind};

/// The export a `wasi:http/proxy` 0.2 component answers requests through.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.";
/// The export of a `wasi:cli/command` component.
pub(crate) const CLI_RUN: &str = "wasi:cli/run@0.2.";

/// Why a file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A core module where a component was needed.
    #[error(
        "{path} is a core WebAssembly module, not a component: `pier serve` needs a wasi:http/proxy \
         component (run preview1 programs with `pier run`)"
    )]
    CoreModule { path: String },
    /// A component with no `wasi:http/incoming-handler` or `wasi:http/handler` export.
    #[error(
        "{path} exports neither wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3 \
         (it exports: {exports}){hint}"
    )]
    NoHandler {
        path: String,
        exports: String,
        hint: &'static str,
    },
    /// A component that does not export `wasi:cli/run`.
    #[error(
        "{path} exports neither wasi:cli/run@0.2 nor wasi:cli/run@0.3 (it exports: {exports}){hint}"
    )]
    NoRun {
        path: String,
        exports: String,
        hint: &'static str,
    },
    /// An import pier does not provide.
    #[error("{path} imports `{import}`, which pier does not provide")]
    MissingImport { path: String, import: String },
    /// Linking failed for another reason (a type mismatch, for example).
    #[error("{path} cannot be linked: {message}")]
    Link { path: String, message: String },
    /// Compilation failed (invalid wasm, unsupported feature).
    #[error("{path} does not compile: {message}")]
    Compile { path: String, message: String },
    /// A `--dir` that cannot be opened.
    #[error("--dir {host}: cannot open the directory: {message}")]
    Dir { host: String, message: String },
}

impl AppError {
    pub(crate) fn compile(wasm: &WasmFile, e: wasmtime::Error) -> Self {
        AppError::Compile {
            path: wasm.display().to_string(),
            message: format!("{e:#}"),
        }
    }

    /// Maps a linker error to the import it names, when it names one.
    pub(crate) fn link(wasm: &WasmFile, e: wasmtime::Error) -> Self {
        let message = format!("{e:#}");
        let path = wasm.display().to_string();
        let named = message
            .split_once("imports instance `")
            .or_else(|| message.split_once("imports `"))
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(import, _)| import.to_string());
        match named {
            Some(import) if message.contains("not found") || message.contains("not defined") => {
                AppError::MissingImport { path, import }
            }
            _ => AppError::Link { path, message },
        }
    }
}

/// The names a component exports, for messages.
pub(crate) fn export_names(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Whether `component` exports an interface instance whose name starts with `prefix`.
pub(crate) fn exports_instance(engine: &Engine, component: &Component, prefix: &str) -> bool {
    has_instance(component.component_type().exports(engine), prefix)
}

/// Whether `component` imports an interface instance whose name starts with `prefix`.
fn imports_instance(engine: &Engine, component: &Component, prefix: &str) -> bool {
    has_instance(component.component_type().imports(engine), prefix)
}

/// Whether `items` (a component's imports or exports) hold an instance named `prefix...`.
fn has_instance<'a>(
    mut items: impl Iterator<Item = (&'a str, ComponentExtern<'a>)>,
    prefix: &str,
) -> bool {
    items.any(|(name, item)| {
        name.starts_with(prefix) && matches!(item.ty, ComponentItem::ComponentInstance(_))
    })
}

pub(crate) fn exports_list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

/// Limits every store of an app gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Largest size any linear memory may grow to; growing past it traps.
    pub max_memory: u64,
    /// Wall-clock time the guest may spend running; zero means no limit.
    pub timeout: Duration,
    /// Instances kept made ahead of their requests; zero makes every instance on its request.
    pub prewarm: usize,
    /// Requests one instance serves ([`crate::reuse`]); 1, the default, is a fresh instance
    /// per request.
    pub reuse: usize,
    /// Outgoing HTTP requests one instance may have in flight at once.
    pub max_outbound_requests: usize,
    /// Bytes one instance may write to its stdout and stderr together; the rest is dropped.
    pub max_log: u64,
    /// Sockets one instance may have open.
    pub max_sockets: usize,
    /// Resources one instance may hold in its table.
    pub max_handles: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let limits = pier_config::Limits::default();
        StoreSettings {
            max_memory: limits.max_memory,
            timeout: limits.timeout,
            prewarm: 0,
            reuse: 1,
            max_outbound_requests: limits.max_outbound_requests,
            max_log: limits.max_log_size,
            max_sockets: limits.max_sockets,
            max_handles: limits.max_handles,
        }
    }
}

/// A fresh store and its instance, ready for one request.
pub struct Ready {
    /// The store, holding only this instance.
    pub store: Store<HostState>,
    /// Its `wasi:http` handler.
    pub guest: Guest,
    /// The instance itself (for [`HttpApp::before_reset`]).
    pub instance: Instance,
}

/// A component instance's `wasi:http` handler, of the WASI version it speaks.
pub enum Guest {
    /// `wasi:http/incoming-handler@0.2`: called with a request and a response outparam.
    P2(Proxy),
    /// `wasi:http/handler@0.3`: called with a request, returns a response
    /// ([`crate::p3::handle`]).
    P3(Service),
}

/// Where a component's `wasi:http` handler is, found once when it is loaded.
enum Handler {
    P2(ProxyIndices),
    P3(ServiceIndices),
}

/// The instances made ahead of their requests, and the task that makes them.
#[derive(Default)]
struct Warm {
    ready: Mutex<Vec<Ready>>,
    /// Wakes the task: an instance was taken, or the app is gone.
    wake: Notify,
    started: AtomicBool,
}

/// A `wasi:http/proxy` component ready to serve.
pub struct HttpApp {
    pre: InstancePre<HostState>,
    /// Where the `wasi:http` handler is, checked once.
    handler: Handler,
    /// Whether it imports `wasi:http/handler` too: a middleware, which passes requests on.
    middleware: bool,
    /// The component's reset hint ([`crate::optimize::hint`]), if the optimiser gave it one.
    hint: Option<ComponentExportIndex>,
    /// Whether the hint is called after requests: only when the pool resets memories by the
    /// dirty-page scan.
    join_runs: bool,
    /// After which requests it is called.
    hint_calls: crate::dirty::HintCalls,
    name: Arc<str>,
    /// What each store's WASI context is built from, if the guest needs one.
    wasi: Arc<WasiRecipe>,
    /// Its variables and stores.
    granted: Granted,
    cache: CacheOutcome,
    settings: StoreSettings,
    outbound: Arc<dyn Outbound>,
    warm: Arc<Warm>,
    /// With `settings.reuse` > 1: the workers holding reused instances, started on first use;
    /// one set per serving thread ([`pier_threads`]), so a thread's requests go to
    /// instances its own runtime runs.
    workers: Box<[OnceLock<wasmtime_wasi_http::handler::ProxyHandler<crate::reuse::Workers>>]>,
}

impl HttpApp {
    /// Compiles (or loads from the cache), checks and pre-instantiates `wasm`.
    pub fn load(
        engine: &Engine,
        wasm: &WasmFile,
        grants: &Grants,
        cache: &CompileCache,
        settings: StoreSettings,
    ) -> Result<HttpApp, AppError> {
        let path = wasm.display().to_string();
        if wasm.kind == WasmKind::Module {
            return Err(AppError::CoreModule { path });
        }
        let (component, outcome) = cache
            .component(engine, wasm)
            .map_err(|e| AppError::compile(wasm, e))?;

        // A component may export both (the WASI 0.3 test components do): 0.3 is preferred.
        let p3 = exports_instance(engine, &component, crate::p3::HANDLER);
        if !p3 && !exports_instance(engine, &component, INCOMING_HANDLER) {
            let exports = export_names(engine, &component);
            let command = |e: &String| e.starts_with(CLI_RUN) || e.starts_with(crate::p3::CLI_RUN);
            let hint = if exports.iter().any(command) {
                "; it is a command: run it with `pier run`"
            } else {
                ""
            };
            return Err(AppError::NoHandler {
                path,
                exports: exports_list(&exports),
                hint,
            });
        }

        let mut linker = Linker::<HostState>::new(engine);
        crate::host::link(&mut linker, wasm.p3).map_err(|e| AppError::link(wasm, e))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| AppError::link(wasm, e))?;
        let handler = if p3 {
            ServiceIndices::new(&pre).map(Handler::P3)
        } else {
            ProxyIndices::new(&pre).map(Handler::P2)
        }
        .map_err(|e| AppError::link(wasm, e))?;
        let hint = component.get_export_index(None, crate::optimize::hint::EXPORT);
        let middleware = p3 && imports_instance(engine, &component, crate::p3::HANDLER);

        for dir in &grants.dirs {
            check_dir(dir)?;
        }
        let name: Arc<str> = wasm.name.as_str().into();
        Ok(HttpApp {
            pre,
            handler,
            middleware,
            hint,
            join_runs: false,
            hint_calls: Default::default(),
            wasi: Arc::new(WasiRecipe {
                component: name.clone(),
                env: grants.resolve_env(|name| std::env::var(name).ok()),
                dirs: grants.dirs.clone(),
                sockets: Arc::new(grants.sockets.clone()),
                max_log: settings.max_log,
            }),
            granted: Granted {
                config: ConfigState::new(&grants.config.0),
                keyvalue: KeyValueState::default(),
            },
            name,
            cache: outcome,
            settings,
            outbound: Arc::new(DenyAll),
            warm: Arc::default(),
            workers: (0..pier_threads::slots())
                .map(|_| OnceLock::new())
                .collect(),
        })
    }

    /// Loads `wasm` for serving, on a serving engine fitted to it: its pool holds `pool`'s
    /// instances with the memories and tables the component defines ([`PoolSizes::fitted`]),
    /// and memories are reset after each request the cheaper way for their size
    /// ([`MemoryReset::for_component`]). What a component needs is known once it is compiled,
    /// so one that the first engine does not fit is loaded a second time, from the compile
    /// cache, on an engine made for it.
    pub fn load_for_serving(
        wasm: &WasmFile,
        grants: &Grants,
        cache: &CompileCache,
        settings: StoreSettings,
        pool: PoolSizes,
    ) -> anyhow::Result<(Engine, HttpApp)> {
        let load = |pool, reset| -> anyhow::Result<(Engine, HttpApp)> {
            // Reused instances run on wasmtime's workers, which call every guest concurrently.
            let concurrent = wasm.p3 || settings.reuse > 1;
            let engine = new_engine(EngineKind::Serve { pool, reset }, concurrent)?;
            let app = HttpApp::load(&engine, wasm, grants, cache, settings)?;
            Ok((engine, app))
        };
        let swap = swap_is_on();
        let large = MemoryReset::large(swap);
        let (engine, app) = load(pool, large)?;
        let reset = MemoryReset::for_component(app.component(), swap);
        let fitted = pool.fitted(app.component());
        // A pool larger than needed costs only address space: load again only when this one
        // is too small (or resets the wrong way).
        let (engine, mut app, pool) = if reset == large && pool.holds(&fitted) {
            (engine, app, pool)
        } else {
            drop((app, engine));
            let (engine, app) = load(fitted, reset)?;
            (engine, app, fitted)
        };
        if fitted.instances.saturating_mul(fitted.memories) > pool.memory_slots() {
            tracing::warn!(
                component = app.name(),
                "the pool has {} memory slots and each instance takes {}: enough for {} \
                 requests in the guest at once, fewer than --max-concurrency allows",
                pool.memory_slots(),
                fitted.memories,
                pool.memory_slots() / fitted.memories
            );
        }
        tracing::debug!(component = app.name(), "pool: {}", pool.describe());
        app.join_runs = reset == MemoryReset::DirtyPages && app.hint.is_some();
        tracing::info!(
            component = app.name(),
            "memories are reset after each request: {}{}",
            reset.describe(),
            if app.join_runs {
                ", its runs joined so they all stay resident"
            } else {
                ""
            }
        );
        Ok((engine, app))
    }

    /// Whether the component is served as a WASI 0.3 service ([`Guest::P3`]).
    pub fn is_p3(&self) -> bool {
        matches!(self.handler, Handler::P3(_))
    }

    /// Whether the component is a WASI 0.3 middleware: it imports `wasi:http/handler` as well
    /// as exporting it, and passes requests on to the next link given to its stores
    /// ([`HostState::set_downstream`]).
    pub fn is_middleware(&self) -> bool {
        self.middleware
    }

    /// The compiled component.
    pub fn component(&self) -> &Component {
        self.pre.component()
    }

    /// The component's short name, as it appears in the log.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Sends the app's outgoing HTTP requests through `outbound` (by default all are denied).
    pub fn set_outbound(&mut self, outbound: Arc<dyn Outbound>) {
        self.outbound = outbound;
    }

    /// Grants the component the key-value stores of `keyvalue` (none until then).
    pub fn set_key_value(&mut self, keyvalue: KeyValueState) {
        self.granted.keyvalue = keyvalue;
    }

    /// The limits each store gets.
    pub fn settings(&self) -> StoreSettings {
        self.settings
    }

    /// Answers `req` on a reused instance ([`crate::reuse`]; only with `settings.reuse` > 1).
    /// Errors: a trap or failure of the instance (it ends every request it was serving), or
    /// [`wasmtime_wasi_http::handler::ExpirationError`] for a request past the timeout.
    pub async fn handle_reused(
        self: &Arc<Self>,
        req: http::Request<wasmtime_wasi_http::WasiBody>,
    ) -> wasmtime::Result<http::Response<wasmtime_wasi_http::WasiBody>> {
        let slot = pier_threads::slot(self.workers.len());
        let workers = self.workers[slot].get_or_init(|| {
            wasmtime_wasi_http::handler::ProxyHandler::new(crate::reuse::Workers {
                app: Arc::downgrade(self),
                uses: self.settings.reuse,
            })
        });
        workers.handle((), req).await
    }

    /// An instance made ahead of time, with its deadline now started, if one is ready; taking
    /// it has the next one made off the request path. `None`: the caller makes its own with
    /// [`new_store`](Self::new_store) and [`instantiate`](Self::instantiate).
    pub fn take_ready(self: &Arc<Self>) -> Option<Ready> {
        if self.settings.prewarm == 0 {
            return None;
        }
        if !self.warm.started.swap(true, Ordering::Relaxed) {
            self.start_warming();
        }
        let ready = self.warm.ready.lock().unwrap().pop();
        self.warm.wake.notify_one();
        let mut ready = ready?;
        self.start_deadline(&mut ready.store);
        Some(ready)
    }

    /// Keeps `settings.prewarm` instances ready, making one whenever one is taken, until the
    /// app is dropped. A failure to instantiate is left for the request path to report.
    fn start_warming(self: &Arc<Self>) {
        let app: Weak<HttpApp> = Arc::downgrade(self);
        let warm = self.warm.clone();
        tokio::spawn(async move {
            loop {
                {
                    let Some(app) = app.upgrade() else { return };
                    while warm.ready.lock().unwrap().len() < app.settings.prewarm {
                        match app.instantiate_ahead().await {
                            Ok(ready) => warm.ready.lock().unwrap().push(ready),
                            Err(e) => {
                                tracing::debug!(
                                    component = app.name(),
                                    "cannot make an instance ahead: {e:#}"
                                );
                                break;
                            }
                        }
                    }
                }
                warm.wake.notified().await;
            }
        });
    }

    /// A store and instance for a request to come. Instantiation (which may run the guest's
    /// start functions) gets its own deadline; the request's starts when it is taken.
    async fn instantiate_ahead(&self) -> wasmtime::Result<Ready> {
        let mut store = self.new_store();
        let (guest, instance) = self.instantiate(&mut store).await?;
        store.data_mut().deadline = None;
        Ok(Ready {
            store,
            guest,
            instance,
        })
    }

    /// A fresh instance in `store`: its `wasi:http` handler, and the instance itself (for
    /// [`before_reset`](Self::before_reset)).
    pub async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<(Guest, Instance)> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let guest = match &self.handler {
            Handler::P2(indices) => Guest::P2(indices.load(&mut *store, &instance)?),
            Handler::P3(indices) => Guest::P3(indices.load(&mut *store, &instance)?),
        };
        Ok((guest, instance))
    }

    /// Called when a request's guest has returned, just before its store is dropped: for a
    /// memory the pool resets by the dirty-page scan, joins the runs of pages the request wrote
    /// so the pool keeps them resident ([`crate::dirty`]). `None` when there was nothing to do
    /// (a small memory, no hint, not this request's turn ([`crate::dirty::HintCalls`]), or the
    /// kernel cannot scan). A failure leaves the reset as it would have been.
    pub async fn before_reset(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> Option<Joined> {
        if !self.join_runs || !self.hint_calls.due() {
            return None;
        }
        let hint = self.hint.as_ref()?;
        let func = instance.get_typed_func::<(), ()>(&mut *store, hint).ok()?;
        store.data_mut().reset_hint = true;
        let called = func.call_async(&mut *store, ()).await;
        store.data_mut().reset_hint = false;
        if let Err(e) = called {
            tracing::debug!(component = self.name(), "reset hint failed: {e:#}");
            return None;
        }
        let joined = store.data_mut().joined.take();
        self.hint_calls.record(joined);
        joined
    }

    /// Starts the guest's clock: `settings.timeout` from now.
    fn start_deadline(&self, store: &mut Store<HostState>) {
        let now = Instant::now();
        let deadline = (!self.settings.timeout.is_zero()).then(|| now + self.settings.timeout);
        store.data_mut().deadline = deadline;
        store.set_epoch_deadline(ticks_to_next_check(deadline, now));
    }

    /// A fresh store for one request: only the granted env and dirs (its WASI context is built
    /// when the guest first needs it), stdio to the log, memory capped, and a deadline
    /// `settings.timeout` from now.
    ///
    /// A guest that computes yields to the async runtime every [`YIELD_TICKS`], so one busy
    /// guest never holds a worker thread for long; past the deadline the next tick traps it with
    /// [`wasmtime::Trap::Interrupt`].
    pub fn new_store(&self) -> Store<HostState> {
        let mut state = HostState::deferred(
            self.wasi.clone(),
            self.outbound.clone(),
            self.granted.clone(),
        );
        state.limit_outbound_in_flight(self.settings.max_outbound_requests);
        state.limit_sockets(self.settings.max_sockets);
        state.limit_handles(self.settings.max_handles);
        state.limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(self.settings.max_memory).unwrap_or(usize::MAX))
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|store| {
            let deadline = store.data().deadline;
            let now = Instant::now();
            Ok(match deadline {
                Some(deadline) if now >= deadline => UpdateDeadline::Interrupt,
                // tokio's own yield: the guest runs again only after the runtime has looked for
                // I/O. A plain wake-up would queue it straight back, and with busy guests always
                // queued the runtime would look for I/O only every few dozen of their slices:
                // other requests would wait, unread, for seconds.
                _ => UpdateDeadline::YieldCustom(
                    ticks_to_next_check(deadline, now),
                    Box::pin(tokio::task::yield_now()),
                ),
            })
        });
        self.start_deadline(&mut store);
        store
    }
}

/// Ticks until a computing guest is next stopped: [`YIELD_TICKS`], or fewer when the deadline
/// comes first, so a deadline is kept to within one tick.
fn ticks_to_next_check(deadline: Option<Instant>, now: Instant) -> u64 {
    let Some(left) = deadline.map(|d| d.saturating_duration_since(now)) else {
        return YIELD_TICKS;
    };
    let ticks = left.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
    u64::try_from(ticks)
        .unwrap_or(u64::MAX)
        .clamp(1, YIELD_TICKS)
}

impl Drop for HttpApp {
    /// Ends the task that makes instances ahead (it holds no reference to the app).
    fn drop(&mut self) {
        self.warm.wake.notify_one();
    }
}

pub(crate) fn check_dir(dir: &DirGrant) -> Result<(), AppError> {
    let host = dir.host.display().to_string();
    match std::fs::metadata(&dir.host) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(AppError::Dir {
            host,
            message: "not a directory".into(),
        }),
        Err(e) => Err(AppError::Dir {
            host,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one GET with a fresh instance of `guest`, granted `grants`: the body, and
    /// whether the guest's WASI context was built.
    async fn answer(guest: &str, grants: &Grants) -> (String, bool) {
        use http_body_util::{BodyExt, Empty};
        use wasmtime_wasi_http::WasiHttpView;
        use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

        let wasm = WasmFile::read(&pier_testkit::guest(guest)).unwrap();
        let engine = new_engine(EngineKind::Run, wasm.p3).unwrap();
        let cache = CompileCache::new(&pier_config::CacheConfig::Disabled);
        let app = HttpApp::load(&engine, &wasm, grants, &cache, StoreSettings::default()).unwrap();
        let mut store = app.new_store();
        let (Guest::P2(proxy), _) = app.instantiate(&mut store).await.unwrap() else {
            panic!("{guest} is a 0.2 guest");
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let mut http = store.data_mut().http();
        let body = Empty::<bytes::Bytes>::new()
            .map_err(|never| -> wasmtime_wasi_http::Error { match never {} });
        let request = http::Request::builder()
            .uri("http://localhost/")
            .body(body)
            .unwrap();
        let request = http.new_incoming_request(Scheme::Http, request).unwrap();
        let outparam = http.new_response_outparam(sender).unwrap();
        // The body is read while the guest writes it: its stream holds one write at a time.
        let call = async {
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, outparam)
                .await
                .unwrap();
            store.data().wasi_is_built()
        };
        let read = async {
            let response = receiver.await.unwrap().unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        };
        let (built, body) = tokio::join!(call, read);
        (String::from_utf8(body.to_vec()).unwrap(), built)
    }

    #[tokio::test]
    async fn the_wasi_context_is_built_only_for_a_guest_that_uses_it() {
        // hello speaks only wasi:http and wasi:io (its body stream).
        let (body, built) = answer("hello", &Grants::default()).await;
        assert_eq!(body, "hello from pier\n");
        assert!(!built, "a wasi:http guest had a WASI context built");
        // env reads its environment: the context is built then, with what was granted.
        let grants = Grants {
            env: vec!["GREETING=hi".parse().unwrap()],
            ..Grants::default()
        };
        let (body, built) = answer("env", &grants).await;
        assert_eq!(body, "GREETING=hi\n");
        assert!(built);
    }

    #[tokio::test]
    async fn a_component_reads_its_variables_through_wasi_config() {
        let grants = Grants {
            config: pier_config::ConfigValues([("db".to_string(), "pg://x".to_string())].into()),
            ..Grants::default()
        };
        let (body, built) = answer("config", &grants).await;
        assert_eq!(body, "db=pg://x\n");
        assert!(!built, "wasi:config needs no WASI context");
        let (body, _) = answer("config", &Grants::default()).await;
        assert_eq!(body, "", "nothing granted, nothing read");
    }

    #[test]
    fn a_computing_guest_is_stopped_every_few_ticks_and_at_its_deadline() {
        let now = Instant::now();
        assert_eq!(ticks_to_next_check(None, now), YIELD_TICKS);
        assert_eq!(
            ticks_to_next_check(Some(now + Duration::from_secs(30)), now),
            YIELD_TICKS
        );
        // A deadline closer than the yield interval is checked at the tick that passes it.
        assert_eq!(ticks_to_next_check(Some(now + EPOCH_TICK * 2), now), 2);
        assert_eq!(
            ticks_to_next_check(Some(now + EPOCH_TICK * 2 + Duration::from_micros(1)), now),
            3
        );
        assert_eq!(ticks_to_next_check(Some(now), now), 1);
        assert_eq!(
            ticks_to_next_check(Some(now), now + Duration::from_secs(1)),
            1
        );
    }
}
