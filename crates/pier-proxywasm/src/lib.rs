//! pier's Proxy-Wasm host: runs Envoy-style filters (core wasm modules exporting `proxy_on_*`)
//! in pier's request path, in front of any handler.
//!
//! Laid out one concern per file, like proxy-wasm-cpp-host: ABI detection (`abi`), the header
//! map wire format (`pairs`), status codes (`status`), bounds-checked guest memory (`memory`),
//! host functions (`hostcalls`) and the VM with its root context (`vm`). This module is the
//! filter as the server sees it: request and response header phases, a failure policy, and VM
//! recycling with back-off.
//!
//! Implemented so far: ABI 0.1.0/0.2.0/0.2.1 detection and start-up (`_initialize`/`main`/
//! `_start`, `on_vm_start`, `on_configure` with buffers 6 and 7), request and response header
//! callbacks with every header-map hostcall, `proxy_send_local_response`, logging, time,
//! properties, the WASI preview1 subset, and fail-closed/fail-open with recycling. Not yet:
//! body and trailer callbacks, pausing, timers, shared data and queues, metrics, HTTP callouts
//! (their imports are linked as traps, so a filter using them fails by its policy).

mod abi;
mod hostcalls;
mod memory;
mod pairs;
mod status;
mod vm;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Engine, Module};

pub use abi::AbiVersion;
pub use pairs::{deserialize as deserialize_pairs, serialize as serialize_pairs};
pub use status::Status;
use vm::{ROOT_CONTEXT, StreamState, Vm, VmState};

/// Header pairs in order, names lower-case, repeated names repeated.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A response a filter sends itself (`proxy_send_local_response`), or pier sends for a failed
/// filter under the fail-closed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Pairs,
    /// Body.
    pub body: Vec<u8>,
}

/// What happens to requests when a filter fails (traps, or cannot start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer 503 (the default: a failed security filter must not let traffic through).
    FailClosed,
    /// Skip the filter.
    FailOpen,
}

/// How a filter is configured.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// Buffer 6, read in `proxy_on_vm_start`.
    pub vm_config: Vec<u8>,
    /// Buffer 7, read in `proxy_on_configure`.
    pub plugin_config: Vec<u8>,
    /// What failures do to requests.
    pub failure: FailurePolicy,
}

/// A filter that cannot be loaded, named by its file.
#[derive(Debug, thiserror::Error)]
#[error("--filter {path}: {message}")]
pub struct FilterError {
    path: String,
    message: String,
}

/// What the request goes on to do after a filter phase.
#[derive(Debug)]
pub enum Outcome {
    /// Continue to the next filter or the handler.
    Continue,
    /// Answer with this response instead.
    Respond(LocalResponse),
}

/// A stream context carried from the request phase to the response phase.
pub struct Stream {
    context: i32,
    state: StreamState,
    /// The VM generation that created it: a recycled VM does not know the context.
    generation: u64,
}

struct Running {
    vm: Option<Vm>,
    generation: u64,
    /// After a failure, no new VM is started before this instant (crash-loop back-off).
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// A loaded filter: its compiled module and its running VM.
pub struct Filter {
    name: Arc<str>,
    engine: Engine,
    module: Module,
    abi: AbiVersion,
    config: FilterConfig,
    running: Mutex<Running>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Filter {
    /// Compiles the filter at `path` and starts its VM; a filter whose start-up fails is an
    /// error here, not a surprise at the first request.
    pub fn load(engine: &Engine, path: &Path, config: FilterConfig) -> Result<Filter, FilterError> {
        let err = |message: String| FilterError {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let module = Module::new(engine, &bytes)
            .map_err(|e| err(format!("not a valid core WebAssembly module: {e:#}")))?;
        let abi = abi::detect(&module).map_err(err)?;
        let name: Arc<str> = path
            .file_stem()
            .map_or("filter".into(), |s| s.to_string_lossy().into());
        let filter = Filter {
            name,
            engine: engine.clone(),
            module,
            abi,
            config,
            running: Mutex::new(Running {
                vm: None,
                generation: 0,
                retry_at: None,
                backoff: MIN_BACKOFF,
            }),
        };
        let vm = filter.start_vm().map_err(|e| {
            err(format!(
                "start-up failed: {}",
                pier_engine::describe_guest_error(&e).replace('\n', " ")
            ))
        })?;
        filter.lock().vm = Some(vm);
        Ok(filter)
    }

    /// The ABI the filter was built for.
    pub fn abi(&self) -> AbiVersion {
        self.abi
    }

    /// The filter's name in the log.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn start_vm(&self) -> wasmtime::Result<Vm> {
        let state = VmState {
            name: self.name.clone(),
            vm_config: self.config.vm_config.clone().into(),
            plugin_config: self.config.plugin_config.clone().into(),
            stream: None,
        };
        Vm::start(&self.engine, &self.module, state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the VM, starting one if needed; on failure the VM is discarded (the next
    /// request gets a fresh one, after a back-off if starting keeps failing).
    fn with_vm<T>(&self, f: impl FnOnce(&mut Vm, u64) -> wasmtime::Result<T>) -> Option<T> {
        let mut running = self.lock();
        if running.vm.is_none() {
            if running.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            match self.start_vm() {
                Ok(vm) => {
                    running.vm = Some(vm);
                    running.generation += 1;
                    running.retry_at = None;
                    running.backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    let report = pier_engine::describe_guest_error(&e);
                    tracing::error!(
                        filter = &*self.name,
                        "cannot restart the filter VM (next try in {:?}): {report}",
                        running.backoff
                    );
                    running.retry_at = Some(Instant::now() + running.backoff);
                    running.backoff = (running.backoff * 2).min(MAX_BACKOFF);
                    return None;
                }
            }
        }
        let generation = running.generation;
        let vm = running.vm.as_mut().expect("started above");
        match f(vm, generation) {
            Ok(value) => Some(value),
            Err(e) => {
                let report = pier_engine::describe_guest_error(&e);
                tracing::error!(
                    filter = &*self.name,
                    "filter failed; its VM is discarded and replaced: {report}"
                );
                running.vm = None;
                running.generation += 1;
                running.retry_at = Some(Instant::now() + running.backoff);
                running.backoff = (running.backoff * 2).min(MAX_BACKOFF);
                None
            }
        }
    }

    fn failed(&self) -> Outcome {
        match self.config.failure {
            FailurePolicy::FailOpen => Outcome::Continue,
            FailurePolicy::FailClosed => Outcome::Respond(LocalResponse {
                status: 503,
                headers: vec![
                    (
                        b"content-type".to_vec(),
                        b"text/plain; charset=utf-8".to_vec(),
                    ),
                    (b"server".to_vec(), b"pier".to_vec()),
                ],
                body: format!("filter {} failed\n", self.name).into_bytes(),
            }),
        }
    }

    /// The request-headers phase: `headers` (pseudo-headers first) may be changed in place.
    /// Returns the stream to continue with in the response phase, when the filter ran.
    pub fn on_request_headers(
        &self,
        headers: &mut Pairs,
        end_of_stream: bool,
    ) -> (Outcome, Option<Stream>) {
        let abi = self.abi;
        let ran = self.with_vm(|vm, generation| {
            let context = vm.next_context();
            // A copy: if the filter fails open, the request goes on with its headers untouched.
            vm.state().stream = Some(StreamState {
                request_headers: headers.clone(),
                ..Default::default()
            });
            vm.call::<(i32, i32), ()>("proxy_on_context_create", (context, ROOT_CONTEXT))?;
            if vm.has("proxy_on_request_headers") {
                let count = vm
                    .state()
                    .stream
                    .as_ref()
                    .map_or(0, |s| s.request_headers.len()) as i32;
                let action = match abi {
                    AbiVersion::V0_1_0 => {
                        vm.call::<(i32, i32), i32>("proxy_on_request_headers", (context, count))?
                    }
                    _ => vm.call::<(i32, i32, i32), i32>(
                        "proxy_on_request_headers",
                        (context, count, end_of_stream as i32),
                    )?,
                };
                if action == 1 {
                    tracing::debug!(
                        filter = &*self.name,
                        "pause on request headers is not supported yet; continuing"
                    );
                }
            }
            let state = vm.state().stream.take().unwrap_or_default();
            Ok(Stream {
                context,
                state,
                generation,
            })
        });
        match ran {
            None => (self.failed(), None),
            Some(mut stream) => match stream.state.local_response.take() {
                Some(local) => {
                    self.on_stream_end(stream);
                    (Outcome::Respond(local), None)
                }
                None => {
                    headers.clone_from(&stream.state.request_headers);
                    (Outcome::Continue, Some(stream))
                }
            },
        }
    }

    /// The response-headers phase (`:status` first), then the stream's end (`on_done`,
    /// `on_log`, `on_delete`).
    pub fn on_response_headers(
        &self,
        mut stream: Stream,
        headers: &mut Pairs,
        end_of_stream: bool,
    ) -> Outcome {
        let abi = self.abi;
        let ran = self.with_vm(|vm, generation| {
            if generation != stream.generation {
                return Ok(None);
            }
            stream.state.response_headers = headers.clone();
            vm.state().stream = Some(std::mem::take(&mut stream.state));
            if vm.has("proxy_on_response_headers") {
                let count = vm
                    .state()
                    .stream
                    .as_ref()
                    .map_or(0, |s| s.response_headers.len()) as i32;
                match abi {
                    AbiVersion::V0_1_0 => vm.call::<(i32, i32), i32>(
                        "proxy_on_response_headers",
                        (stream.context, count),
                    )?,
                    _ => vm.call::<(i32, i32, i32), i32>(
                        "proxy_on_response_headers",
                        (stream.context, count, end_of_stream as i32),
                    )?,
                };
            }
            let mut state = vm.state().stream.take().unwrap_or_default();
            end_stream(vm, stream.context)?;
            Ok(Some((state.local_response.take(), state.response_headers)))
        });
        match ran {
            None => self.failed(),
            // The VM was recycled since the request phase: it no longer knows the stream.
            Some(None) => Outcome::Continue,
            Some(Some((Some(local), _))) => Outcome::Respond(local),
            Some(Some((None, changed))) => {
                *headers = changed;
                Outcome::Continue
            }
        }
    }

    /// Ends a stream that never reached the response phase.
    pub fn on_stream_end(&self, stream: Stream) {
        self.with_vm(|vm, generation| {
            if generation == stream.generation {
                end_stream(vm, stream.context)
            } else {
                Ok(())
            }
        });
    }
}

fn end_stream(vm: &mut Vm, context: i32) -> wasmtime::Result<()> {
    if vm.has("proxy_on_done") {
        vm.call::<i32, i32>("proxy_on_done", context)?;
    }
    if vm.has("proxy_on_log") {
        vm.call::<i32, ()>("proxy_on_log", context)?;
    }
    if vm.has("proxy_on_delete") {
        vm.call::<i32, ()>("proxy_on_delete", context)?;
    }
    Ok(())
}
