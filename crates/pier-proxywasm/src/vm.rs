//! One filter VM: a long-lived instance with its root context and live stream contexts, and the
//! state hostcalls see.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::{
    Extern, Instance, Linker, Store, StoreLimits, StoreLimitsBuilder, WasmParams, WasmResults,
};

use crate::callout::CalloutReply;
use crate::context::StreamState;
use crate::plugin::Plugin;
use crate::pool::Slot;
use crate::status::Status;

/// The root context's id; stream contexts count up from it.
pub const ROOT_CONTEXT: i32 = 1;

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
    /// The filter.
    pub plugin: Arc<Plugin>,
    /// Where this VM lives.
    pub home: Home,
    /// Live stream contexts by id.
    pub streams: HashMap<i32, StreamState>,
    /// The context hostcalls act on: the callback's, or the one `proxy_set_effective_context`
    /// chose.
    pub effective: i32,
    /// The reply `proxy_on_http_call_response` is reading (map 6, 7, buffer 4, get_status).
    pub callout: Option<CalloutReply>,
    /// Set by `proxy_set_tick_period_milliseconds`.
    pub tick_period: Option<Duration>,
    /// Whether this VM's tick task runs.
    pub ticking: bool,
    /// Properties set outside any stream.
    pub root_properties: HashMap<Vec<u8>, Vec<u8>>,
    /// The VM's memory cap.
    pub limits: StoreLimits,
    /// Ids of the HTTP calls this VM made.
    pub next_call: u32,
}

impl VmState {
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
            MapId::RequestHeaders => Ok(&mut stream.request_headers),
            MapId::RequestTrailers => Ok(&mut stream.request_trailers),
            MapId::ResponseHeaders => Ok(&mut stream.response_headers),
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
            6 => Ok(&self.plugin.config.vm_config),
            7 => Ok(&self.plugin.config.plugin_config),
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
        let name = self.plugin.name.as_bytes();
        match path {
            b"plugin_name" | b"plugin_vm_id" => return Some(name.to_vec()),
            b"plugin_root_id" => return Some(Vec::new()),
            _ => {}
        }
        if let Ok(stream) = self.stream() {
            return stream.property(path);
        }
        self.root_properties.get(path).cloned()
    }
}

/// A running filter VM.
pub struct Vm {
    store: Store<VmState>,
    instance: Instance,
    next_context: i32,
    /// The epoch deadline of one callback, in ticks.
    deadline_ticks: u64,
    /// Bytes of memory once started: a VM is only retired for memory it grew.
    pub initial_memory: usize,
}

impl Vm {
    /// Instantiates the filter, runs its start functions and configures the root context.
    pub fn start(plugin: Arc<Plugin>, home: Home) -> wasmtime::Result<Vm> {
        let engine = plugin.engine.clone();
        let mut linker = Linker::new(&engine);
        crate::hostcalls::link(&mut linker)?;
        crate::wasi::link(&mut linker)?;
        crate::shared::link(&mut linker)?;
        crate::metrics::link(&mut linker)?;
        crate::callout::link(&mut linker)?;
        crate::timer::link(&mut linker)?;
        // Anything else a filter imports (gRPC streams, TCP-only calls, hostcalls from a newer
        // ABI) traps with its name when called: the filter fails by its policy, visibly.
        linker.define_unknown_imports_as_traps(&plugin.module)?;
        let vm_config_len = plugin.config.vm_config.len() as i32;
        let plugin_config_len = plugin.config.plugin_config.len() as i32;
        let limits = StoreLimitsBuilder::new()
            .memory_size(plugin.config.max_memory)
            .build();
        let tick = pier_engine::EPOCH_TICK.as_nanos().max(1);
        let deadline_ticks = (plugin.callback_limit().as_nanos() / tick).max(1) as u64;
        let module = plugin.module.clone();
        let state = VmState {
            plugin,
            home,
            streams: HashMap::new(),
            effective: ROOT_CONTEXT,
            callout: None,
            tick_period: None,
            ticking: false,
            root_properties: HashMap::new(),
            limits,
            next_call: 0,
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|s| &mut s.limits);
        // A callback that runs past its limit traps (the VM is then replaced): a filter must
        // not hold a server thread.
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks);
        let instance = linker.instantiate(&mut store, &module)?;
        let mut vm = Vm {
            store,
            instance,
            next_context: ROOT_CONTEXT + 1,
            deadline_ticks,
            initial_memory: 0,
        };
        if vm.has("_initialize") {
            vm.call::<(), ()>(ROOT_CONTEXT, "_initialize", ())?;
            if vm.has("main") {
                vm.call::<(i32, i32), i32>(ROOT_CONTEXT, "main", (0, 0))?;
            }
        } else if vm.has("_start") {
            vm.call::<(), ()>(ROOT_CONTEXT, "_start", ())?;
        }
        vm.call::<(i32, i32), ()>(ROOT_CONTEXT, "proxy_on_context_create", (ROOT_CONTEXT, 0))?;
        if vm.has("proxy_on_vm_start")
            && vm.call::<(i32, i32), i32>(
                ROOT_CONTEXT,
                "proxy_on_vm_start",
                (ROOT_CONTEXT, vm_config_len),
            )? == 0
        {
            wasmtime::bail!("proxy_on_vm_start returned false (bad --filter-vm-config?)");
        }
        if vm.has("proxy_on_configure")
            && vm.call::<(i32, i32), i32>(
                ROOT_CONTEXT,
                "proxy_on_configure",
                (ROOT_CONTEXT, plugin_config_len),
            )? == 0
        {
            wasmtime::bail!("proxy_on_configure returned false (bad --filter-config?)");
        }
        vm.initial_memory = vm.memory_size();
        Ok(vm)
    }

    /// Opens a stream context for a new request.
    pub fn open_stream(&mut self, stream: StreamState) -> wasmtime::Result<i32> {
        let id = self.next_context;
        self.next_context = match self.next_context.checked_add(1) {
            Some(next) => next,
            None => ROOT_CONTEXT + 1,
        };
        self.state().streams.insert(id, stream);
        self.call::<(i32, i32), ()>(id, "proxy_on_context_create", (id, ROOT_CONTEXT))?;
        Ok(id)
    }

    /// The state hostcalls see.
    pub fn state(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    /// Bytes of linear memory the VM uses.
    pub fn memory_size(&mut self) -> usize {
        match self.instance.get_export(&mut self.store, "memory") {
            Some(Extern::Memory(m)) => m.data_size(&self.store),
            _ => 0,
        }
    }

    /// Whether the filter exports `name`.
    pub fn has(&mut self, name: &str) -> bool {
        matches!(
            self.instance.get_export(&mut self.store, name),
            Some(Extern::Func(_))
        )
    }

    /// Calls the exported function `name` with `args` for `context` (hostcalls act on that
    /// context unless the filter switches with `proxy_set_effective_context`), under the
    /// callback time limit.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        context: i32,
        name: &str,
        args: P,
    ) -> wasmtime::Result<R> {
        self.store.data_mut().effective = context;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .and_then(|f| f.call(&mut self.store, args));
        self.store.data_mut().effective = ROOT_CONTEXT;
        result
    }

    /// Calls a stream callback returning an action if the filter exports it: `Some(paused)`.
    pub fn action(
        &mut self,
        context: i32,
        name: &str,
        args: (i32, i32, i32),
        with_eos: bool,
    ) -> wasmtime::Result<Option<bool>> {
        if !self.has(name) {
            return Ok(None);
        }
        let action = if with_eos {
            self.call::<(i32, i32, i32), i32>(context, name, args)?
        } else {
            self.call::<(i32, i32), i32>(context, name, (args.0, args.1))?
        };
        Ok(Some(action == 1))
    }

    /// Wakes every paused stream (the VM is going away: they must not wait for it).
    pub fn wake_all(&mut self) {
        for stream in self.state().streams.values() {
            stream.wake.notify_one();
        }
    }
}
