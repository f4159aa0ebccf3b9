//! The wasmtime [`Engine`] pier compiles and runs with.
//!
//! One place decides every engine setting, so that the compile cache key (which hashes them) and
//! the code that runs always agree.

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// What an engine is for: serving many short-lived instances, or running one program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// `pier serve`: a fresh instance per request from a pooling allocator with copy-on-write
    /// memory images, so instantiation is a few microseconds and nothing leaks between requests.
    /// The pool holds `instances` live instances (one per request in a guest).
    Serve {
        /// Live instances the pool can hold at once.
        instances: u32,
    },
    /// `pier run` and `pier compile`: one instance, allocated on demand.
    Run,
}

/// Bytes of each linear memory kept resident (reset in place) when an instance is released.
const KEEP_RESIDENT: usize = 16 << 20;

/// Builds the engine for `kind`.
pub fn new_engine(kind: EngineKind) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable)
        .parallel_compilation(true)
        .memory_init_cow(true)
        // Guest time limits: one shared ticker advances the epoch (see `start_epoch_ticker`)
        // and each store decides what a tick means for it. Enabled for both kinds so compiled
        // code (and so the compile cache entry) is the same for `serve`, `run` and `compile`.
        .epoch_interruption(true);
    if let EngineKind::Serve { instances } = kind {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
            instances,
        )));
    }
    Engine::new(&config)
}

/// Pool sizes for serving.
///
/// Real toolchains produce components with many core instances (componentize-py: ~75, a few
/// memories and tables), so the per-component limits are generous; totals bound what the pool
/// reserves. Address space is reserved lazily, memory is committed only when touched.
fn pooling_config(instances: u32) -> PoolingAllocationConfig {
    let instances = instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(20))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_core_instances_per_component(200)
        .max_memories_per_component(32)
        .max_tables_per_component(64)
        .max_tables_per_module(4)
        .max_memories_per_module(1)
        .table_elements(100_000)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        // Reset a slot's memory and tables in place on release instead of handing pages back to
        // the kernel: no page faults when the slot is reused and, above all, no TLB-shootdown
        // IPIs across cores (madvise on a multi-threaded process), which dominated the profile.
        // PAGEMAP_SCAN (Linux 6.7+) limits the reset to the pages the request actually dirtied.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);
    pool
}

/// How often the shared epoch ticker advances the engine's epoch: the granularity of guest time
/// limits and of cooperative yields from long-running guests.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Epoch ticks a guest may compute before it yields its worker thread to other tasks (and its
/// deadline is checked): ~50 ms. Often enough to keep other requests moving behind a busy guest;
/// rarely enough that a typical request runs to completion in one go. Yielding every tick sent
/// most requests that were mid-computation to the back of the run queue, so under load dozens of
/// half-run instances (each with its dirtied memory) were alive at once: 3-4x the peak memory.
pub const YIELD_TICKS: u64 = 5;

/// Advances `engine`'s epoch every [`EPOCH_TICK`] on one background thread, for every store of
/// that engine (one ticker per server, not one timer per request), for as long as the engine
/// exists.
///
/// It outlives the server on purpose. A guest still computing when the server shuts down (past
/// its drain timeout) must go on reaching its yield points, where the runtime drops it; were the
/// ticker stopped first, that guest would never yield again and the process would never exit.
/// Its store holds the engine, so the ticker stops only once the last guest is gone.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("pier-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("cannot start the epoch ticker thread");
}
