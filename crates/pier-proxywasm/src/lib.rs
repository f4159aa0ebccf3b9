//! pier's Proxy-Wasm host: runs Envoy-style filters (core wasm modules exporting `proxy_on_*`)
//! in pier's request path, in front of any handler.
//!
//! Laid out one concern per file, like proxy-wasm-cpp-host: ABI detection (`abi`), the header
//! map wire format (`pairs`), status codes (`status`), bounds-checked guest memory (`memory`),
//! the filter as its VMs share it (`plugin`), a VM with its root context (`vm`), the pool of VMs
//! with recycling and back-off (`pool`), stream contexts (`context`), and the host functions by
//! theme (`hostcalls`, `shared`, `metrics`, `callout`, `timer`, `wasi`). This file is the filter
//! as the server sees it: a stream per request, its phases, pausing, and the failure policy.

mod abi;
mod callout;
mod context;
mod hostcalls;
mod memory;
mod metrics;
mod pairs;
mod plugin;
mod pool;
mod shared;
mod status;
mod timer;
mod vm;
mod wasi;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use wasmtime::{Engine, Module};

pub use abi::AbiVersion;
pub use callout::{CalloutReply, CalloutRequest, Callouts};
pub use context::{Direction, StreamInfo};
pub use pairs::{deserialize as deserialize_pairs, serialize as serialize_pairs};
pub use shared::Shared;
pub use status::Status;

use context::StreamState;
use plugin::{Code, Root};
use pool::{Entered, Slot};
use vm::Vm;

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

/// How the VMs running a filter module are set up (Envoy's `vm_config`).
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Plugins that name the same non-empty `vm_id` (and the same code) share their VMs; it
    /// scopes shared data and queues, and is `plugin_vm_id`. Empty: the plugin's own VMs.
    pub vm_id: String,
    /// Buffer 6, read in `proxy_on_vm_start`.
    pub configuration: Arc<[u8]>,
    /// The environment the filter sees through WASI (`environ_get`).
    pub env: Vec<(String, String)>,
    /// VMs running the filter side by side (requests are spread over them).
    pub vms: usize,
    /// Linear memory one VM may have; a VM that grew to it is replaced.
    pub max_memory: usize,
    /// How long one callback may run before it traps.
    pub callback_timeout: Duration,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vm_id: String::new(),
            configuration: Arc::from(&b""[..]),
            env: Vec::new(),
            vms: 1,
            max_memory: 64 << 20,
            callback_timeout: Duration::from_secs(1),
        }
    }
}

/// One plugin: a root context in the filter's VMs, and its place in the chain (Envoy's
/// `PluginConfig`).
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `plugin_name`, and the filter's name in the log and on metrics (empty: the file stem).
    pub name: String,
    /// `plugin_root_id`: which of the module's root contexts this plugin is.
    pub root_id: String,
    /// Buffer 7, read in `proxy_on_configure`.
    pub configuration: Arc<[u8]>,
    /// What failures do to requests.
    pub failure: FailurePolicy,
    /// How long a paused stream may wait to be resumed.
    pub pause_timeout: Duration,
    /// The most body a filter may make the host buffer.
    pub max_buffered: usize,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            name: String::new(),
            root_id: String::new(),
            configuration: Arc::from(&b""[..]),
            failure: FailurePolicy::FailClosed,
            pause_timeout: Duration::from_secs(30),
            max_buffered: 64 << 20,
        }
    }
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
    /// Continue to the next filter or the handler; `changed` when the filter may have changed
    /// the headers (they were written back).
    Continue {
        /// Whether the headers were written back.
        changed: bool,
    },
    /// Answer with this response instead.
    Respond(LocalResponse),
    /// Reset the stream (`proxy_close_stream`).
    Close,
}

/// What a body callback decided.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyStep {
    /// Pass the (possibly changed) data on.
    Continue,
    /// Keep buffering: the filter wants more of the body before it lets any through.
    Buffer,
    /// The filter paused at the end of the body (waiting for an HTTP call, say): wait for it
    /// with `Stream::resume_body`.
    Wait,
    /// The filter failed, closed the stream or answered itself: end this body with an error.
    Abort,
}

/// A loaded plugin: its root context in the VMs of its filter module, which several plugins
/// may share.
pub struct Filter {
    root: Arc<Root>,
    code: Arc<Code>,
    slots: Arc<[Arc<Slot>]>,
    next: AtomicUsize,
}

impl Filter {
    /// Compiles the filter at `path` and starts its VMs, each running every plugin of
    /// `plugins` (one root context each, in order); a filter whose start-up fails is an error
    /// here, not a surprise at the first request. Gives one `Filter` per plugin.
    pub fn load(
        engine: &Engine,
        path: &Path,
        vm: VmConfig,
        mut plugins: Vec<PluginConfig>,
        shared: Arc<Shared>,
        callouts: Option<Arc<dyn Callouts>>,
    ) -> Result<Vec<Filter>, FilterError> {
        let err = |message: String| FilterError {
            path: path.display().to_string(),
            message,
        };
        let stem: String = path
            .file_stem()
            .map_or("filter".into(), |s| s.to_string_lossy().into());
        for plugin in &mut plugins {
            if plugin.name.is_empty() {
                plugin.name.clone_from(&stem);
            }
        }
        for (i, a) in plugins.iter().enumerate() {
            if let Some(b) = plugins[..i].iter().find(|b| b.root_id == a.root_id) {
                return Err(err(format!(
                    "plugins {} and {} share VM {:?} with the same root id {:?}: give each its own root id",
                    b.name, a.name, vm.vm_id, a.root_id
                )));
            }
        }
        if plugins.is_empty() {
            return Err(err("no plugin to run".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let module = Module::new(engine, &bytes)
            .map_err(|e| err(format!("not a valid core WebAssembly module: {e:#}")))?;
        let abi = abi::detect(&module).map_err(err)?;
        let vms = vm.vms.max(1);
        let code = Arc::new(Code::new(
            abi,
            engine.clone(),
            module,
            vm,
            plugins,
            shared,
            callouts,
        ));
        let slots: Arc<[Arc<Slot>]> = (0..vms).map(|_| Slot::new(code.clone())).collect();
        for slot in slots.iter() {
            slot.start().map_err(|e| {
                err(format!(
                    "start-up failed: {}",
                    pier_engine::describe_guest_error(&e).replace('\n', " ")
                ))
            })?;
        }
        Ok(code
            .roots
            .iter()
            .map(|root| Filter {
                root: root.clone(),
                code: code.clone(),
                slots: slots.clone(),
                next: AtomicUsize::new(0),
            })
            .collect())
    }

    /// The ABI the filter was built for.
    pub fn abi(&self) -> AbiVersion {
        self.code.abi
    }

    /// The plugin's name in the log.
    pub fn name(&self) -> &str {
        &self.root.name
    }

    /// The request-headers phase of a new stream: `headers` (pseudo-headers first) may be
    /// changed in place. A paused request waits here until the filter resumes it. Returns the
    /// stream for the later phases when the filter took part.
    pub async fn on_request_headers(
        &self,
        info: Arc<StreamInfo>,
        headers: &mut Pairs,
        end_of_stream: bool,
    ) -> (Outcome, Option<Arc<Stream>>) {
        // Round-robin over the VMs, passing over one that backs off after a failure (unless
        // all of them do).
        let n = self.slots.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = (0..n)
            .map(|i| &self.slots[(first + i) % n])
            .find(|slot| slot.available())
            .unwrap_or(&self.slots[first % n]);
        let wake = Arc::new(Notify::new());
        let mut state = StreamState::new(info);
        state.wake = wake.clone();
        state.request_headers = headers.clone();
        let root = self.root.context;
        let entered = slot.enter(None, |vm, generation| {
            let context = vm.open_stream(state, root)?;
            let count = stream_of(vm, context).request_headers.len() as i32;
            let paused = vm.on_headers(Direction::Request, context, count, end_of_stream)?;
            pause(vm, context, Direction::Request, paused);
            Ok((context, generation, settle(vm, context, Direction::Request)))
        });
        let (context, generation, settled) = match entered {
            Entered::Ran(ran) => ran,
            Entered::Failed | Entered::Gone => return (self.root.failed(), None),
        };
        let stream = Arc::new(Stream {
            root: self.root.clone(),
            slot: slot.clone(),
            generation,
            context,
            wake,
        });
        let outcome = stream.finish(settled, Direction::Request, headers).await;
        (outcome, Some(stream))
    }
}

/// The stream context `context` of `vm` (present for as long as its `Stream` lives).
fn stream_of(vm: &mut Vm, context: i32) -> &mut StreamState {
    vm.state()
        .streams
        .get_mut(&context)
        .expect("a stream's context lives as long as its Stream")
}

/// Records a callback's PAUSE, unless the filter already continued during the callback.
fn pause(vm: &mut Vm, context: i32, direction: Direction, paused: Option<bool>) {
    let stream = stream_of(vm, context);
    if paused == Some(true) && stream.continued.take() != Some(direction) {
        stream.paused = Some(direction);
    }
}

/// Where a header phase stands after a callback.
enum Settled {
    /// Go on, with the headers if the filter may have changed them.
    Continue(Option<Pairs>),
    Respond(LocalResponse),
    Close,
    /// Paused: wait for the filter.
    Waiting,
}

fn settle(vm: &mut Vm, context: i32, direction: Direction) -> Settled {
    let stream = stream_of(vm, context);
    if let Some(local) = stream.local_response.take() {
        // What `on_log` (and `response.code`) will see.
        stream.response_headers = vec![(b":status".to_vec(), local.status.to_string().into())];
        stream
            .response_headers
            .extend(local.headers.iter().cloned());
        stream.response_started = true;
        return Settled::Respond(local);
    }
    if stream.closed {
        return Settled::Close;
    }
    if stream.paused == Some(direction) {
        return Settled::Waiting;
    }
    if direction == Direction::Response {
        stream.response_started = true;
    }
    let changed = std::mem::take(&mut stream.changed[direction as usize]);
    Settled::Continue(changed.then(|| match direction {
        Direction::Request => stream.request_headers.clone(),
        Direction::Response => stream.response_headers.clone(),
    }))
}

impl Root {
    /// The outcome of a failed filter under this plugin's policy.
    fn failed(&self) -> Outcome {
        match self.failure() {
            FailurePolicy::FailOpen => Outcome::Continue { changed: false },
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
}

/// One request's context in one filter: pinned to the VM that created it, ended (`on_done`,
/// `on_log`, `on_delete`) when the last phase lets go of it, after the response.
pub struct Stream {
    root: Arc<Root>,
    slot: Arc<Slot>,
    generation: u64,
    context: i32,
    wake: Arc<Notify>,
}

impl Stream {
    fn plugin(&self) -> &Root {
        &self.root
    }

    /// Waits out a pause, then turns where the phase stands into its outcome; `headers` get
    /// the filter's changes when it continues.
    async fn finish(
        &self,
        mut settled: Settled,
        direction: Direction,
        headers: &mut Pairs,
    ) -> Outcome {
        let deadline = tokio::time::Instant::now() + self.plugin().config.pause_timeout;
        loop {
            match settled {
                Settled::Continue(changed) => {
                    let written = changed.is_some();
                    if let Some(changed) = changed {
                        *headers = changed;
                    }
                    return Outcome::Continue { changed: written };
                }
                Settled::Respond(local) => return Outcome::Respond(local),
                Settled::Close => return Outcome::Close,
                Settled::Waiting => {}
            }
            if tokio::time::timeout_at(deadline, self.wake.notified())
                .await
                .is_err()
            {
                let plugin = self.plugin();
                tracing::warn!(
                    filter = &*plugin.name,
                    "the filter paused the {} and did not resume it within {:?}",
                    if direction == Direction::Request {
                        "request"
                    } else {
                        "response"
                    },
                    plugin.config.pause_timeout
                );
                return Outcome::Respond(LocalResponse {
                    status: 504,
                    headers: vec![(b"server".to_vec(), b"pier".to_vec())],
                    body: format!(
                        "filter {} did not resume the request in time\n",
                        plugin.name
                    )
                    .into_bytes(),
                });
            }
            settled = match self.slot.enter(Some(self.generation), |vm, _| {
                Ok(settle(vm, self.context, direction))
            }) {
                Entered::Ran(settled) => settled,
                Entered::Failed | Entered::Gone => return self.plugin().failed(),
            };
        }
    }

    /// The response-headers phase (`:status` first). A local response set by an earlier
    /// request-side callback (a body callback, say) answers instead.
    pub async fn on_response_headers(&self, headers: &mut Pairs, end_of_stream: bool) -> Outcome {
        let context = self.context;
        let entered = self.slot.enter(Some(self.generation), |vm, _| {
            let stream = stream_of(vm, context);
            if stream.local_response.is_none() {
                stream.response_headers = headers.clone();
                stream.continued = None;
                let count = stream.response_headers.len() as i32;
                let paused = vm.on_headers(Direction::Response, context, count, end_of_stream)?;
                pause(vm, context, Direction::Response, paused);
            }
            Ok(settle(vm, context, Direction::Response))
        });
        match entered {
            Entered::Ran(settled) => self.finish(settled, Direction::Response, headers).await,
            Entered::Failed | Entered::Gone => self.plugin().failed(),
        }
    }

    /// A body callback on `data` (the data so far when the filter asked to buffer); the filter
    /// may change it in place.
    pub fn on_body(
        &self,
        direction: Direction,
        data: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> BodyStep {
        let context = self.context;
        let entered = self.slot.enter(Some(self.generation), |vm, _| {
            let stream = stream_of(vm, context);
            let buffer = match direction {
                Direction::Request => &mut stream.request_body,
                Direction::Response => &mut stream.response_body,
            };
            *buffer = std::mem::take(data);
            let size = buffer.len() as i32;
            let paused = vm.on_body(direction, context, size, end_of_stream);
            let stream = stream_of(vm, context);
            let buffer = match direction {
                Direction::Request => &mut stream.request_body,
                Direction::Response => &mut stream.response_body,
            };
            let paused = match paused {
                Ok(paused) => paused == Some(true),
                Err(e) => {
                    *data = std::mem::take(buffer);
                    return Err(e);
                }
            };
            if stream.local_response.is_some() || stream.closed {
                return Ok(BodyStep::Abort);
            }
            if paused && end_of_stream {
                // The whole body stays with the stream until the filter resumes it (it may
                // still change it, from an HTTP call's answer say); `data` keeps a copy for
                // failing open.
                data.clone_from(buffer);
                if stream.continued.take() != Some(direction) {
                    stream.paused = Some(direction);
                    return Ok(BodyStep::Wait);
                }
            }
            *data = std::mem::take(buffer);
            Ok(if paused && !end_of_stream {
                BodyStep::Buffer
            } else {
                BodyStep::Continue
            })
        });
        match entered {
            Entered::Ran(step) => step,
            Entered::Failed | Entered::Gone => self.lost(),
        }
    }

    /// Waits until the filter resumes a body it paused at its end (`BodyStep::Wait`), at most
    /// the pause timeout. Gives the body to pass on (as the filter left it), or `None` when it
    /// must be aborted. `held` is the body as it was paused, for failing open.
    pub async fn resume_body(
        self: Arc<Self>,
        direction: Direction,
        held: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.plugin().config.pause_timeout;
        let context = self.context;
        loop {
            let now = self.slot.enter(Some(self.generation), |vm, _| {
                let stream = stream_of(vm, context);
                if stream.local_response.is_some() || stream.closed {
                    return Ok(Some(None));
                }
                if stream.paused == Some(direction) {
                    return Ok(None);
                }
                Ok(Some(Some(std::mem::take(match direction {
                    Direction::Request => &mut stream.request_body,
                    Direction::Response => &mut stream.response_body,
                }))))
            });
            match now {
                Entered::Ran(Some(body)) => return body,
                Entered::Ran(None) => {}
                Entered::Failed | Entered::Gone => {
                    return (self.lost() == BodyStep::Continue).then_some(held);
                }
            }
            if tokio::time::timeout_at(deadline, self.wake.notified())
                .await
                .is_err()
            {
                tracing::warn!(
                    filter = &*self.plugin().name,
                    "the filter paused a body and did not resume it within {:?}",
                    self.plugin().config.pause_timeout
                );
                return None;
            }
        }
    }

    /// A trailers callback; the filter may change `trailers` in place.
    pub fn on_trailers(&self, direction: Direction, trailers: &mut Pairs) -> BodyStep {
        let context = self.context;
        let entered = self.slot.enter(Some(self.generation), |vm, _| {
            let stream = stream_of(vm, context);
            let map = match direction {
                Direction::Request => &mut stream.request_trailers,
                Direction::Response => &mut stream.response_trailers,
            };
            *map = trailers.clone();
            let count = map.len() as i32;
            vm.on_trailers(direction, context, count)?;
            let stream = stream_of(vm, context);
            *trailers = match direction {
                Direction::Request => stream.request_trailers.clone(),
                Direction::Response => stream.response_trailers.clone(),
            };
            Ok(if stream.local_response.is_some() || stream.closed {
                BodyStep::Abort
            } else {
                BodyStep::Continue
            })
        });
        match entered {
            Entered::Ran(step) => step,
            Entered::Failed | Entered::Gone => self.lost(),
        }
    }

    /// A body phase of a stream whose filter failed: pass through when failing open.
    fn lost(&self) -> BodyStep {
        match self.plugin().failure() {
            FailurePolicy::FailOpen => BodyStep::Continue,
            FailurePolicy::FailClosed => BodyStep::Abort,
        }
    }

    /// Whether the filter looks at request bodies or trailers.
    pub fn filters_request_body(&self) -> bool {
        let e = self.slot.code.exports;
        e.request_body || e.request_trailers
    }

    /// Whether the filter looks at response bodies or trailers.
    pub fn filters_response_body(&self) -> bool {
        let e = self.slot.code.exports;
        e.response_body || e.response_trailers
    }

    /// The most body the filter may make the host buffer.
    pub fn max_buffered(&self) -> usize {
        self.plugin().config.max_buffered
    }

    /// The filter's name.
    pub fn filter_name(&self) -> &str {
        &self.plugin().name
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let context = self.context;
        let _: Entered<()> = self
            .slot
            .enter(Some(self.generation), |vm, _| vm.end_stream(context));
    }
}
