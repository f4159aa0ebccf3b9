//! The wasmtime [`Engine`] pier compiles and runs with.
//!
//! One place decides every engine setting, so that the compile cache key (which hashes them) and
//! the code that runs always agree.

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// What an engine is for: serving many short-lived instances, or running one program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// `pier serve`: a fresh instance per request from a pooling allocator with copy-on-write
    /// memory images, so instantiation is a few microseconds and nothing leaks between requests.
    Serve,
    /// `pier run` and `pier compile`: one instance, allocated on demand.
    Run,
}

/// Instances (one per in-flight request) the pool can hold at once.
const POOL_INSTANCES: u32 = 1000;

/// Builds the engine for `kind`.
pub fn new_engine(kind: EngineKind) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable)
        .parallel_compilation(true)
        .memory_init_cow(true);
    if kind == EngineKind::Serve {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()));
    }
    Engine::new(&config)
}

/// Pool sizes for serving.
///
/// Real toolchains produce components with many core instances (componentize-py: ~75, a few
/// memories and tables), so the per-component limits are generous; totals bound what the pool
/// reserves. Address space is reserved lazily, memory is committed only when touched.
fn pooling_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 20)
        .total_memories(POOL_INSTANCES * 2)
        .total_tables(POOL_INSTANCES * 4)
        .total_stacks(POOL_INSTANCES)
        .max_core_instances_per_component(200)
        .max_memories_per_component(32)
        .max_tables_per_component(64)
        .max_tables_per_module(4)
        .max_memories_per_module(1)
        .table_elements(100_000)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20);
    pool
}
