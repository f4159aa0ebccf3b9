//! One filter VM: a long-lived instance with its root context and live stream contexts, and the
//! state hostcalls see.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::{
    AsContextMut, Extern, Func, Instance, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder,
    TypedFunc, WasmParams, WasmResults,
};

use crate::callout::CalloutReply;
use crate::context::{Direction, StreamState};
use crate::plugin::{Code, Root};
use crate::pool::Slot;
use crate::status::Status;

/// Header maps by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapId {
    /// Map 0.
    RequestHeaders,
    /// Map 1.
    RequestTrailers,
    /// Map 2.
    ResponseHeaders,
    /// Map 3.
    ResponseTrailers,
    /// Map 6.
    CalloutHeaders,
    /// Map 7.
    CalloutTrailers,
}

impl MapId {
    /// The map with ABI id `id`; gRPC metadata (4, 5) is not offered by this host.
    pub fn from_abi(id: i32) -> Result<MapId, Status> {
        Ok(match id {
            0 => MapId::RequestHeaders,
            1 => MapId::RequestTrailers,
            2 => MapId::ResponseHeaders,
            3 => MapId::ResponseTrailers,
            6 => MapId::CalloutHeaders,
            7 => MapId::CalloutTrailers,
            _ => return Err(Status::BadArgument),
        })
    }
}

/// Where a VM lives, so work that finishes later (timers, callouts, queue notifications) can
/// find it again, and tell whether it has been replaced meanwhile.
#[derive(Clone)]
pub struct Home {
    /// The pool slot holding the VM.
    pub slot: Weak<Slot>,
    /// The slot's generation when the VM started.
    pub generation: u64,
}

/// What hostcalls can see of the host.
pub struct VmState {
    /// The filter module and its plugins.
    pub code: Arc<Code>,
    /// Where this VM lives.
    pub home: Home,
    /// Live stream contexts by id.
    pub streams: HashMap<i32, StreamState>,
    /// The context hostcalls act on: the callback's, or the one `proxy_set_effective_context`
    /// chose.
    pub effective: i32,
    /// The reply `proxy_on_http_call_response` is reading (map 6, 7, buffer 4, get_status).
    pub callout: Option<CalloutReply>,
    /// Set by `proxy_set_tick_period_milliseconds`, per root context (index `context - 1`).
    pub tick_periods: Vec<Option<Duration>>,
    /// Whether the tick task of each root context runs.
    pub ticking: Vec<bool>,
    /// Properties set outside any stream.
    pub root_properties: HashMap<Vec<u8>, Vec<u8>>,
    /// The VM's memory cap.
    pub limits: StoreLimits,
    /// Ids of the HTTP calls this VM made.
    pub next_call: u32,
    /// HTTP calls this VM is waiting for.
    pub calls_in_flight: u32,
    /// A trap inside a hostcall (the guest's allocator, called back by the host): it ends the
    /// callback as a trap once the hostcall returns.
    pub trap: Option<wasmtime::Error>,
}

impl VmState {
    /// The root context `context` belongs to: itself, or the one its stream was created for.
    pub fn root_of(&self, context: i32) -> &Arc<Root> {
        let root = match self.streams.get(&context) {
            Some(stream) => stream.root,
            None => context,
        };
        self.code.root(root).unwrap_or_else(|| &self.code.roots[0])
    }

    /// The plugin whose context hostcalls act on.
    pub fn root(&self) -> &Arc<Root> {
        self.root_of(self.effective)
    }

    /// Whether `context` is one of this VM's root contexts.
    pub fn is_root(&self, context: i32) -> bool {
        self.code.root(context).is_some()
    }

    /// The stream hostcalls act on.
    pub fn stream(&self) -> Result<&StreamState, Status> {
        self.streams.get(&self.effective).ok_or(Status::BadArgument)
    }

    /// The stream hostcalls act on, to change.
    pub fn stream_mut(&mut self) -> Result<&mut StreamState, Status> {
        self.streams
            .get_mut(&self.effective)
            .ok_or(Status::BadArgument)
    }

    /// A header map by id.
    pub fn map(&self, id: MapId) -> Result<&crate::Pairs, Status> {
        match id {
            MapId::CalloutHeaders | MapId::CalloutTrailers => {
                let reply = self.callout.as_ref().ok_or(Status::NotFound)?;
                Ok(if id == MapId::CalloutHeaders {
                    &reply.headers
                } else {
                    &reply.trailers
                })
            }
            _ => {
                let stream = self.stream()?;
                Ok(match id {
                    MapId::RequestHeaders => &stream.request_headers,
                    MapId::RequestTrailers => &stream.request_trailers,
                    MapId::ResponseHeaders => &stream.response_headers,
                    _ => &stream.response_trailers,
                })
            }
        }
    }

    /// A header map by id, to change; the HTTP-call maps are read-only.
    pub fn map_mut(&mut self, id: MapId) -> Result<&mut crate::Pairs, Status> {
        let stream = self.stream_mut()?;
        match id {
            MapId::RequestHeaders => {
                stream.changed[0] = true;
                Ok(&mut stream.request_headers)
            }
            MapId::RequestTrailers => Ok(&mut stream.request_trailers),
            MapId::ResponseHeaders => {
                stream.changed[1] = true;
                Ok(&mut stream.response_headers)
            }
            MapId::ResponseTrailers => Ok(&mut stream.response_trailers),
            MapId::CalloutHeaders | MapId::CalloutTrailers => Err(Status::BadArgument),
        }
    }

    /// A buffer by id: 0 request body, 1 response body, 4 HTTP-call response body, 6 VM
    /// configuration, 7 plugin configuration.
    pub fn buffer(&self, id: i32) -> Result<&[u8], Status> {
        match id {
            0 => Ok(&self.stream()?.request_body),
            1 => Ok(&self.stream()?.response_body),
            4 => Ok(&self.callout.as_ref().ok_or(Status::NotFound)?.body),
            6 => Ok(&self.code.config.configuration),
            7 => Ok(self.root().configuration()),
            2 | 3 | 5 | 8 => Err(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    /// A body buffer to change (0 or 1).
    pub fn buffer_mut(&mut self, id: i32) -> Result<&mut Vec<u8>, Status> {
        match id {
            0 => Ok(&mut self.stream_mut()?.request_body),
            1 => Ok(&mut self.stream_mut()?.response_body),
            2..=8 => Err(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    /// A property by its NUL-separated path: the filter's own, then the stream's.
    pub fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        match path {
            b"plugin_name" => return Some(self.root().name.as_bytes().to_vec()),
            b"plugin_root_id" => return Some(self.root().root_id.as_bytes().to_vec()),
            b"plugin_vm_id" => return Some(self.code.config.vm_id.as_bytes().to_vec()),
            _ => {}
        }
        if let Ok(stream) = self.stream() {
            return stream.property(path);
        }
        self.root_properties.get(path).cloned()
    }
}

/// A body callback: (context, size, end_of_stream) -> action.
type BodyFn = TypedFunc<(i32, i32, i32), i32>;

/// A header callback: with `end_of_stream` (ABI 0.2.x) or without (0.1.0).
#[derive(Clone)]
enum HeadersFn {
    WithEos(TypedFunc<(i32, i32, i32), i32>),
    NoEos(TypedFunc<(i32, i32), i32>),
}

/// The stream callbacks, looked up (and type-checked) once when the VM starts: a request calls
/// several of them, and a lookup by name costs more than a call of a no-op callback.
#[derive(Clone)]
struct Callbacks {
    context_create: TypedFunc<(i32, i32), ()>,
    headers: [Option<HeadersFn>; 2],
    body: [Option<BodyFn>; 2],
    trailers: [Option<TypedFunc<(i32, i32), i32>>; 2],
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
}

fn typed<P: WasmParams, R: WasmResults>(
    store: &Store<VmState>,
    func: Option<Func>,
    name: &str,
) -> wasmtime::Result<Option<TypedFunc<P, R>>> {
    func.map(|f| {
        f.typed::<P, R>(store)
            .map_err(|e| e.context(format!("export {name} has the wrong signature")))
    })
    .transpose()
}

impl Callbacks {
    fn new(store: &mut Store<VmState>, instance: &Instance) -> wasmtime::Result<Callbacks> {
        let mut func = |name: &str| instance.get_func(&mut *store, name);
        let found = [
            func("proxy_on_context_create"),
            func("proxy_on_request_headers"),
            func("proxy_on_response_headers"),
            func("proxy_on_request_body"),
            func("proxy_on_response_body"),
            func("proxy_on_request_trailers"),
            func("proxy_on_response_trailers"),
            func("proxy_on_done"),
            func("proxy_on_log"),
            func("proxy_on_delete"),
        ];
        let store = &*store;
        let headers = |f: Option<Func>, name: &str| -> wasmtime::Result<Option<HeadersFn>> {
            let Some(f) = f else { return Ok(None) };
            if let Ok(t) = f.typed::<(i32, i32, i32), i32>(store) {
                return Ok(Some(HeadersFn::WithEos(t)));
            }
            Ok(typed(store, Some(f), name)?.map(HeadersFn::NoEos))
        };
        Ok(Callbacks {
            context_create: typed(store, found[0], "proxy_on_context_create")?.ok_or_else(
                || wasmtime::format_err!("the filter exports no proxy_on_context_create"),
            )?,
            headers: [
                headers(found[1], "proxy_on_request_headers")?,
                headers(found[2], "proxy_on_response_headers")?,
            ],
            body: [
                typed(store, found[3], "proxy_on_request_body")?,
                typed(store, found[4], "proxy_on_response_body")?,
            ],
            trailers: [
                typed(store, found[5], "proxy_on_request_trailers")?,
                typed(store, found[6], "proxy_on_response_trailers")?,
            ],
            done: typed(store, found[7], "proxy_on_done")?,
            log: typed(store, found[8], "proxy_on_log")?,
            delete: typed(store, found[9], "proxy_on_delete")?,
        })
    }
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

/// A running filter VM.
pub struct Vm {
    store: Store<VmState>,
    instance: Instance,
    callbacks: Callbacks,
    /// The exported memory, if any (read after every entry, for the memory cap).
    memory: Option<Memory>,
    next_context: i32,
    /// The first stream context id (past the root contexts).
    first_stream: i32,
    /// The epoch deadline of one callback, in ticks.
    deadline_ticks: u64,
    /// Bytes of memory once started: a VM is only retired for memory it grew.
    pub initial_memory: usize,
}

impl Vm {
    /// Instantiates the filter, runs its start functions and starts every plugin's root
    /// context (`proxy_on_context_create`, `proxy_on_vm_start`, `proxy_on_configure`).
    pub fn start(code: Arc<Code>, home: Home) -> wasmtime::Result<Vm> {
        let engine = code.engine.clone();
        let mut linker = Linker::new(&engine);
        crate::hostcalls::link(&mut linker)?;
        crate::wasi::link(&mut linker)?;
        crate::shared::link(&mut linker)?;
        crate::metrics::link(&mut linker)?;
        crate::callout::link(&mut linker)?;
        crate::timer::link(&mut linker)?;
        // Anything else a filter imports (gRPC streams, TCP-only calls, hostcalls from a newer
        // ABI) traps with its name when called: the filter fails by its policy, visibly.
        linker.define_unknown_imports_as_traps(&code.module)?;
        let limits = StoreLimitsBuilder::new()
            .memory_size(code.config.max_memory)
            .build();
        let tick = pier_engine::EPOCH_TICK.as_nanos().max(1);
        let deadline_ticks = (code.callback_limit().as_nanos() / tick).max(1) as u64;
        let module = code.module.clone();
        let first_stream = code.first_stream_context();
        let roots = code.roots.clone();
        let state = VmState {
            tick_periods: vec![None; roots.len()],
            ticking: vec![false; roots.len()],
            code,
            home,
            streams: HashMap::new(),
            effective: 1,
            callout: None,
            root_properties: HashMap::new(),
            limits,
            next_call: 0,
            calls_in_flight: 0,
            trap: None,
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|s| &mut s.limits);
        // A callback that runs past its limit traps (the VM is then replaced): a filter must
        // not hold a server thread.
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks);
        let instance = linker.instantiate(&mut store, &module)?;
        let callbacks = Callbacks::new(&mut store, &instance)?;
        let memory = instance.get_memory(&mut store, "memory");
        let mut vm = Vm {
            store,
            instance,
            callbacks,
            memory,
            next_context: first_stream,
            first_stream,
            deadline_ticks,
            initial_memory: 0,
        };
        if vm.has("_initialize") {
            vm.call::<(), ()>(1, "_initialize", ())?;
            if vm.has("main") {
                vm.call::<(i32, i32), i32>(1, "main", (0, 0))?;
            }
        } else if vm.has("_start") {
            vm.call::<(), ()>(1, "_start", ())?;
        }
        let vm_config_len = vm.state().code.config.configuration.len() as i32;
        let several = roots.len() > 1;
        for root in roots {
            let id = root.context;
            // Who a failure belongs to, when several plugins share the VM.
            let plugin = || {
                if several {
                    format!("plugin {}: ", root.name)
                } else {
                    String::new()
                }
            };
            let create = vm.callbacks.context_create.clone();
            vm.enter(id, |store| create.call(store, (id, 0))).map_err(|e| {
                let hint = if root.root_id.is_empty() {
                    " (if the filter registers its root context under a name, give that name as \
                     the plugin's root id: --filter-root-id)"
                } else {
                    ""
                };
                e.context(format!(
                    "{}creating the root context {:?} failed{hint}",
                    plugin(),
                    &*root.root_id
                ))
            })?;
            if vm.has("proxy_on_vm_start")
                && vm.call::<(i32, i32), i32>(id, "proxy_on_vm_start", (id, vm_config_len))? == 0
            {
                wasmtime::bail!(
                    "{}proxy_on_vm_start returned false (bad VM configuration?)",
                    plugin()
                );
            }
            let config_len = root.configuration().len() as i32;
            if vm.has("proxy_on_configure")
                && vm.call::<(i32, i32), i32>(id, "proxy_on_configure", (id, config_len))? == 0
            {
                wasmtime::bail!(
                    "{}proxy_on_configure returned false (bad plugin configuration?)",
                    plugin()
                );
            }
        }
        vm.initial_memory = vm.memory_size();
        Ok(vm)
    }

    /// Opens a stream context for a new request of the plugin with root context `root`.
    pub fn open_stream(&mut self, mut stream: StreamState, root: i32) -> wasmtime::Result<i32> {
        // Ids wrap after 2^31 streams; one still in use is passed over.
        let first = self.first_stream;
        let mut id = self.next_context;
        while self.store.data().streams.contains_key(&id) {
            id = id.checked_add(1).unwrap_or(first);
        }
        self.next_context = id.checked_add(1).unwrap_or(first);
        stream.root = root;
        self.state().streams.insert(id, stream);
        let create = self.callbacks.context_create.clone();
        self.enter(id, |store| create.call(store, (id, root)))?;
        Ok(id)
    }

    /// The state hostcalls see.
    pub fn state(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    /// Bytes of linear memory the VM uses.
    pub fn memory_size(&mut self) -> usize {
        self.memory.map_or(0, |m| m.data_size(&self.store))
    }

    /// Whether the filter exports `name`.
    pub fn has(&mut self, name: &str) -> bool {
        matches!(
            self.instance.get_export(&mut self.store, name),
            Some(Extern::Func(_))
        )
    }

    /// Runs `f` (a call into the filter) for `context`: hostcalls act on that context unless
    /// the filter switches with `proxy_set_effective_context`; the callback time limit applies.
    fn enter<T>(
        &mut self,
        context: i32,
        f: impl FnOnce(&mut Store<VmState>) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        self.store.data_mut().effective = context;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = f(&mut self.store);
        let state = self.store.data_mut();
        state.effective = 1;
        match state.trap.take() {
            Some(trap) => Err(trap),
            None => result,
        }
    }

    /// Calls the exported function `name` with `args` for `context` (the rarer callbacks:
    /// start-up, timers, queues, HTTP call answers).
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        context: i32,
        name: &str,
        args: P,
    ) -> wasmtime::Result<R> {
        let instance = self.instance;
        self.enter(context, |store| {
            instance
                .get_typed_func::<P, R>(store.as_context_mut(), name)?
                .call(store, args)
        })
    }

    /// A header callback, if exported: `Some(paused)`.
    pub fn on_headers(
        &mut self,
        direction: Direction,
        context: i32,
        count: i32,
        end_of_stream: bool,
    ) -> wasmtime::Result<Option<bool>> {
        let action = match self.callbacks.headers[index(direction)].clone() {
            None => return Ok(None),
            Some(HeadersFn::WithEos(f)) => self.enter(context, |s| {
                f.call(s, (context, count, end_of_stream as i32))
            })?,
            Some(HeadersFn::NoEos(f)) => self.enter(context, |s| f.call(s, (context, count)))?,
        };
        Ok(Some(action == 1))
    }

    /// A body callback, if exported: `Some(paused)`.
    pub fn on_body(
        &mut self,
        direction: Direction,
        context: i32,
        size: i32,
        end_of_stream: bool,
    ) -> wasmtime::Result<Option<bool>> {
        let Some(f) = self.callbacks.body[index(direction)].clone() else {
            return Ok(None);
        };
        let action = self.enter(context, |s| {
            f.call(s, (context, size, end_of_stream as i32))
        })?;
        Ok(Some(action == 1))
    }

    /// A trailers callback, if exported.
    pub fn on_trailers(
        &mut self,
        direction: Direction,
        context: i32,
        count: i32,
    ) -> wasmtime::Result<()> {
        if let Some(f) = self.callbacks.trailers[index(direction)].clone() {
            self.enter(context, |s| f.call(s, (context, count)))?;
        }
        Ok(())
    }

    /// Ends a stream context (`proxy_on_done`, `proxy_on_log`, `proxy_on_delete`) and forgets
    /// it.
    pub fn end_stream(&mut self, context: i32) -> wasmtime::Result<()> {
        let (done, log, delete) = (
            self.callbacks.done.clone(),
            self.callbacks.log.clone(),
            self.callbacks.delete.clone(),
        );
        let result = self.enter(context, |s| {
            if let Some(f) = done {
                f.call(&mut *s, context)?;
            }
            if let Some(f) = log {
                f.call(&mut *s, context)?;
            }
            if let Some(f) = delete {
                f.call(&mut *s, context)?;
            }
            Ok(())
        });
        self.state().streams.remove(&context);
        result
    }

    /// Wakes every paused stream (the VM is going away: they must not wait for it).
    pub fn wake_all(&mut self) {
        for stream in self.state().streams.values() {
            stream.wake.notify_one();
        }
    }
}
