//! A filter's VMs: one slot per VM, each behind its own lock so requests run on all cores.
//! A slot whose VM traps discards it and starts a fresh one for the next request, after a
//! back-off that doubles while start-up keeps failing (a crash loop cannot burn the CPU).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::plugin::Code;
use crate::vm::{Home, Vm};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One VM's place in the pool.
pub struct Slot {
    /// The filter module and its plugins.
    pub code: Arc<Code>,
    state: Mutex<SlotState>,
    /// When the slot takes new streams again (ms on `clock()`): later while it backs off after
    /// a failure.
    available_at: AtomicU64,
}

/// Milliseconds since the first call: a clock slot availability can be read from without a
/// lock.
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A slot's VM and its history.
pub struct SlotState {
    /// The running VM, if any.
    pub vm: Option<Vm>,
    /// Counts VMs started in this slot: a stream or timer from an older VM is stale.
    pub generation: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// A VM that outgrew its memory mark (with its generation): it finishes its streams while a
    /// fresh VM takes new ones, and goes when its last stream ends.
    retiring: Option<(u64, Vm)>,
}

/// The result of running something on a slot's VM.
pub enum Entered<T> {
    /// It ran.
    Ran(T),
    /// The filter failed (it trapped now, or its VM cannot be started): apply the policy.
    Failed,
    /// The VM the caller was pinned to is gone (replaced after a failure).
    Gone,
}

impl Slot {
    /// An empty slot for `code`.
    pub fn new(code: Arc<Code>) -> Arc<Slot> {
        Arc::new(Slot {
            code,
            state: Mutex::new(SlotState {
                vm: None,
                generation: 0,
                retry_at: None,
                backoff: MIN_BACKOFF,
                retiring: None,
            }),
            available_at: AtomicU64::new(0),
        })
    }

    /// Whether new streams should go to this slot.
    pub fn available(&self) -> bool {
        // 0, the usual case, needs no clock read.
        let at = self.available_at.load(Ordering::Relaxed);
        at == 0 || at <= clock()
    }

    /// Locks the slot (a panic elsewhere does not poison the filter).
    pub fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the slot's VM now, for start-up: an error is the filter's start-up error.
    pub fn start(self: &Arc<Self>) -> wasmtime::Result<()> {
        let mut state = self.lock();
        let vm = Vm::start(self.code.clone(), self.home(state.generation + 1))?;
        state.generation += 1;
        state.vm = Some(vm);
        self.after(&mut state);
        Ok(())
    }

    fn home(self: &Arc<Self>, generation: u64) -> Home {
        Home {
            slot: Arc::downgrade(self),
            generation,
        }
    }

    /// Runs `f` on the VM, starting one if the slot is empty (unless backing off). With
    /// `pinned`, only on the VM of that generation (the current one, or one retiring): a
    /// stream's context lives in one VM.
    pub fn enter<T>(
        self: &Arc<Self>,
        pinned: Option<u64>,
        f: impl FnOnce(&mut Vm, u64) -> wasmtime::Result<T>,
    ) -> Entered<T> {
        let mut state = self.lock();
        match pinned {
            Some(generation) if generation == state.generation && state.vm.is_some() => {}
            Some(generation) => {
                return match state.retiring.take() {
                    Some((g, vm)) if g == generation => self.enter_retiring(&mut state, g, vm, f),
                    other => {
                        state.retiring = other;
                        Entered::Gone
                    }
                };
            }
            None if state.vm.is_none() => {
                if state.retry_at.is_some_and(|at| Instant::now() < at) {
                    return Entered::Failed;
                }
                match Vm::start(self.code.clone(), self.home(state.generation + 1)) {
                    Ok(vm) => {
                        state.vm = Some(vm);
                        state.generation += 1;
                        state.retry_at = None;
                        self.available_at.store(0, Ordering::Relaxed);
                    }
                    Err(e) => {
                        state.generation += 1;
                        self.failed(&mut state, "cannot restart the filter VM", &e);
                        return Entered::Failed;
                    }
                }
            }
            None => {}
        }
        let generation = state.generation;
        let vm = state.vm.as_mut().expect("checked or started above");
        match f(vm, generation) {
            Ok(value) => {
                // A VM that keeps running well earns back a short back-off.
                state.backoff = MIN_BACKOFF;
                self.after(&mut state);
                Entered::Ran(value)
            }
            Err(e) => {
                if let Some(mut vm) = state.vm.take() {
                    vm.wake_all();
                }
                state.generation += 1;
                self.failed(
                    &mut state,
                    "filter failed; its VM is discarded and replaced",
                    &e,
                );
                Entered::Failed
            }
        }
    }

    /// Runs `f` on the retiring VM, which goes once its last stream has ended.
    fn enter_retiring<T>(
        &self,
        state: &mut SlotState,
        generation: u64,
        mut vm: Vm,
        f: impl FnOnce(&mut Vm, u64) -> wasmtime::Result<T>,
    ) -> Entered<T> {
        match f(&mut vm, generation) {
            Ok(value) => {
                if !vm.state().streams.is_empty() {
                    state.retiring = Some((generation, vm));
                }
                Entered::Ran(value)
            }
            Err(e) => {
                vm.wake_all();
                let report = pier_engine::describe_guest_error(&e);
                tracing::error!(
                    filter = &*self.code.label,
                    "filter failed in a retiring VM, which is discarded: {report}"
                );
                Entered::Failed
            }
        }
    }

    fn failed(&self, state: &mut SlotState, what: &str, error: &wasmtime::Error) {
        let report = pier_engine::describe_guest_error(error);
        tracing::error!(
            filter = &*self.code.label,
            "{what} (next start in {:?} at the earliest): {report}",
            state.backoff
        );
        state.retry_at = Some(Instant::now() + state.backoff);
        self.available_at.store(
            clock() + state.backoff.as_millis() as u64,
            Ordering::Relaxed,
        );
        state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
    }

    /// Work after every successful entry: start the tick timer a callback asked for, and
    /// retire a VM that grew past 80% of its memory cap, before a failed allocation could trap
    /// it mid-stream: a fresh VM takes new streams while the old one finishes its own.
    fn after(self: &Arc<Self>, state: &mut SlotState) {
        let generation = state.generation;
        let Some(vm) = state.vm.as_mut() else { return };
        for i in 0..vm.state().ticking.len() {
            if vm.state().tick_periods[i].is_some() && !vm.state().ticking[i] {
                vm.state().ticking[i] = crate::timer::spawn(self.home(generation), i as i32 + 1);
            }
        }
        let cap = self.code.config.max_memory;
        let size = vm.memory_size();
        if size <= vm.initial_memory || size <= cap / 5 * 4 {
            return;
        }
        let idle = vm.state().streams.is_empty();
        if !idle && state.retiring.is_some() {
            // Another VM is still retiring: this one waits for its turn.
            return;
        }
        tracing::info!(
            filter = &*self.code.label,
            "filter VM grew to {size} bytes (cap {cap}); a fresh VM takes new requests"
        );
        let vm = state.vm.take().expect("checked above");
        if !idle {
            state.retiring = Some((generation, vm));
        }
    }
}
