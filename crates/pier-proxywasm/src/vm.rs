//! One filter VM: a long-lived instance with its root context, and the state hostcalls see.

use std::sync::Arc;

use wasmtime::{
    Engine, Extern, Instance, Linker, Module, Store, UpdateDeadline, WasmParams, WasmResults,
};

use crate::status::Status;
use crate::{LocalResponse, Pairs};

/// The root context's id; stream contexts count up from it.
pub const ROOT_CONTEXT: i32 = 1;

/// Header maps this host exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapId {
    /// Map 0.
    RequestHeaders,
    /// Map 2.
    ResponseHeaders,
}

/// The HTTP stream a callback is running for.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Request headers, with `:method`, `:path`, `:authority`, `:scheme` first.
    pub request_headers: Pairs,
    /// Response headers, with `:status` first.
    pub response_headers: Pairs,
    /// Set by `proxy_send_local_response`.
    pub local_response: Option<LocalResponse>,
    /// Once true, a local response is no longer possible.
    pub response_started: bool,
}

/// What hostcalls can see of the host.
pub struct VmState {
    /// The filter's name (its file stem), for the log.
    pub name: Arc<str>,
    /// Buffer 6.
    pub vm_config: Arc<[u8]>,
    /// Buffer 7.
    pub plugin_config: Arc<[u8]>,
    /// The stream being processed, during stream callbacks.
    pub stream: Option<StreamState>,
}

impl VmState {
    /// A header map of the current stream.
    pub fn map(&self, id: MapId) -> Result<&Pairs, Status> {
        let stream = self.stream.as_ref().ok_or(Status::BadArgument)?;
        Ok(match id {
            MapId::RequestHeaders => &stream.request_headers,
            MapId::ResponseHeaders => &stream.response_headers,
        })
    }

    /// A header map of the current stream, to change.
    pub fn map_mut(&mut self, id: MapId) -> Result<&mut Pairs, Status> {
        let stream = self.stream.as_mut().ok_or(Status::BadArgument)?;
        Ok(match id {
            MapId::RequestHeaders => &mut stream.request_headers,
            MapId::ResponseHeaders => &mut stream.response_headers,
        })
    }

    /// A buffer by id: 6 (VM configuration) and 7 (plugin configuration).
    pub fn buffer(&self, id: i32) -> Result<&[u8], Status> {
        match id {
            6 => Ok(&self.vm_config),
            7 => Ok(&self.plugin_config),
            0..=8 => Err(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    /// A property by its NUL-separated path (`request\0path`).
    pub fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        let header = |name: &[u8]| -> Option<Vec<u8>> {
            let stream = self.stream.as_ref()?;
            stream
                .request_headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        match path {
            b"plugin_name" | b"plugin_vm_id" => Some(self.name.as_bytes().to_vec()),
            b"plugin_root_id" => Some(Vec::new()),
            b"request\0path" => header(b":path"),
            b"request\0method" => header(b":method"),
            b"request\0host" => header(b":authority"),
            b"request\0scheme" => header(b":scheme"),
            b"response\0code" => {
                let stream = self.stream.as_ref()?;
                stream
                    .response_headers
                    .iter()
                    .find(|(k, _)| k == b":status")
                    .map(|(_, v)| v.clone())
            }
            _ => None,
        }
    }
}

/// A running filter VM.
pub struct Vm {
    store: Store<VmState>,
    instance: Instance,
    next_context: i32,
}

impl Vm {
    /// Instantiates `module`, runs its start functions and configures the root context.
    pub fn start(engine: &Engine, module: &Module, state: VmState) -> wasmtime::Result<Vm> {
        let mut linker = Linker::new(engine);
        crate::hostcalls::link(&mut linker)?;
        // Hostcalls this host does not implement yet trap with their name when called, so a
        // filter using them fails loudly (and its failure policy applies) instead of at load.
        linker.define_unknown_imports_as_traps(module)?;
        let vm_config_len = state.vm_config.len() as i32;
        let plugin_config_len = state.plugin_config.len() as i32;
        let mut store = Store::new(engine, state);
        // Filter callbacks are short and synchronous: no deadline (the engine shares code with
        // components, which use epochs for their time limits).
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Continue(u64::MAX / 2)));
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate(&mut store, module)?;
        let mut vm = Vm {
            store,
            instance,
            next_context: ROOT_CONTEXT + 1,
        };
        if vm.has("_initialize") {
            vm.call::<(), ()>("_initialize", ())?;
            if vm.has("main") {
                vm.instance
                    .get_typed_func::<(i32, i32), i32>(&mut vm.store, "main")?
                    .call(&mut vm.store, (0, 0))?;
            }
        } else if vm.has("_start") {
            vm.call::<(), ()>("_start", ())?;
        }
        vm.call::<(i32, i32), ()>("proxy_on_context_create", (ROOT_CONTEXT, 0))?;
        if vm.has("proxy_on_vm_start")
            && vm.call::<(i32, i32), i32>("proxy_on_vm_start", (ROOT_CONTEXT, vm_config_len))? == 0
        {
            wasmtime::bail!("proxy_on_vm_start returned false");
        }
        if vm.has("proxy_on_configure")
            && vm
                .call::<(i32, i32), i32>("proxy_on_configure", (ROOT_CONTEXT, plugin_config_len))?
                == 0
        {
            wasmtime::bail!("proxy_on_configure returned false (bad --filter-config?)");
        }
        Ok(vm)
    }

    /// A new stream context id.
    pub fn next_context(&mut self) -> i32 {
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT_CONTEXT + 1);
        id
    }

    /// The state hostcalls see.
    pub fn state(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    /// Whether the filter exports `name`.
    pub fn has(&mut self, name: &str) -> bool {
        matches!(
            self.instance.get_export(&mut self.store, name),
            Some(Extern::Func(_))
        )
    }

    /// Calls the exported function `name` with `args`.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        args: P,
    ) -> wasmtime::Result<R> {
        self.instance
            .get_typed_func::<P, R>(&mut self.store, name)?
            .call(&mut self.store, args)
    }
}
