//! A filter's VMs: one slot per VM, each behind its own lock so requests run on all cores.
//! A slot whose VM traps discards it and starts a fresh one for the next request, after a
//! back-off that doubles while start-up keeps failing (a crash loop cannot burn the CPU).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::plugin::Plugin;
use crate::vm::{Home, Vm};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One VM's place in the pool.
pub struct Slot {
    /// The filter.
    pub plugin: Arc<Plugin>,
    state: Mutex<SlotState>,
}

/// A slot's VM and its history.
pub struct SlotState {
    /// The running VM, if any.
    pub vm: Option<Vm>,
    /// Counts VMs started in this slot: a stream or timer from an older VM is stale.
    pub generation: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
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
    /// An empty slot for `plugin`.
    pub fn new(plugin: Arc<Plugin>) -> Arc<Slot> {
        Arc::new(Slot {
            plugin,
            state: Mutex::new(SlotState {
                vm: None,
                generation: 0,
                retry_at: None,
                backoff: MIN_BACKOFF,
            }),
        })
    }

    /// Locks the slot (a panic elsewhere does not poison the filter).
    pub fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the slot's VM now, for start-up: an error is the filter's start-up error.
    pub fn start(self: &Arc<Self>) -> wasmtime::Result<()> {
        let mut state = self.lock();
        let vm = Vm::start(self.plugin.clone(), self.home(state.generation + 1))?;
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
    /// `pinned`, only on the VM of that generation: a stream's context lives in one VM.
    pub fn enter<T>(
        self: &Arc<Self>,
        pinned: Option<u64>,
        f: impl FnOnce(&mut Vm, u64) -> wasmtime::Result<T>,
    ) -> Entered<T> {
        let mut state = self.lock();
        match pinned {
            Some(generation) if generation != state.generation || state.vm.is_none() => {
                return Entered::Gone;
            }
            Some(_) => {}
            None if state.vm.is_none() => {
                if state.retry_at.is_some_and(|at| Instant::now() < at) {
                    return Entered::Failed;
                }
                match Vm::start(self.plugin.clone(), self.home(state.generation + 1)) {
                    Ok(vm) => {
                        state.vm = Some(vm);
                        state.generation += 1;
                        state.retry_at = None;
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

    fn failed(&self, state: &mut SlotState, what: &str, error: &wasmtime::Error) {
        let report = pier_engine::describe_guest_error(error);
        tracing::error!(
            filter = &*self.plugin.name,
            "{what} (next start in {:?} at the earliest): {report}",
            state.backoff
        );
        state.retry_at = Some(Instant::now() + state.backoff);
        state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
    }

    /// Work after every successful entry: start the tick timer a callback asked for, and retire
    /// a VM that reached its memory cap once no stream needs it.
    fn after(self: &Arc<Self>, state: &mut SlotState) {
        let generation = state.generation;
        let Some(vm) = state.vm.as_mut() else { return };
        if vm.state().tick_period.is_some() && !vm.state().ticking {
            vm.state().ticking = crate::timer::spawn(self.home(generation));
        }
        let cap = self.plugin.config.max_memory;
        let size = vm.memory_size();
        if vm.state().streams.is_empty() && size > vm.initial_memory && size + (64 << 10) > cap {
            tracing::info!(
                filter = &*self.plugin.name,
                "filter VM reached its memory cap ({cap} bytes); starting a fresh one"
            );
            state.vm = None;
            state.generation += 1;
        }
    }
}
