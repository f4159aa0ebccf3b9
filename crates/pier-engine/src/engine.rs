//! The wasmtime [`Engine`] pier compiles and runs with.
//!
//! One place decides every engine setting, so that the compile cache key (which hashes them) and
//! the code that runs always agree.

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// What an engine is for: serving many short-lived instances, or running one program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// `pier serve`: a fresh instance per request from a pooling allocator with copy-on-write
    /// memory images, so instantiation is a few microseconds and nothing leaks between requests.
    Serve {
        /// What the pool holds at once.
        pool: PoolSizes,
        /// How a released instance's memories are put back to their initial contents.
        reset: MemoryReset,
    },
    /// `pier run` and `pier compile`: one instance, allocated on demand.
    Run,
}

/// What a serving engine's pool holds at once: `instances` component instances (one per request
/// in a guest, plus those made ahead), each defining up to `memories` linear memories and
/// `tables` tables, and `modules` core instances outside any component (Proxy-Wasm filter VMs,
/// each with at most one memory and [`MAX_TABLES_PER_MODULE`] tables).
///
/// Before the component is compiled, [`PoolSizes::guessed`] sizes it for a typical component;
/// [`PoolSizes::fitted`] then reads what the component really defines, so that a component
/// with more memories or tables than the guess gets every one of its `instances` too, instead
/// of the pool running dry at a fraction of `--max-concurrency` (each memory slot reserves
/// address space, so the guess cannot simply be huge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// Component instances alive at once.
    pub instances: u32,
    /// Linear memories one component instance defines.
    pub memories: u32,
    /// Tables one component instance defines.
    pub tables: u32,
    /// Core instances alive at once outside any component.
    pub modules: u32,
}

/// Memory slots at most in one pool. Each reserves ~4 GiB of address space (the whole 32-bit
/// range, so compiled code needs no bounds checks), and user space on x86-64 is 128 TiB.
pub const MAX_MEMORY_SLOTS: u32 = 8192;

impl PoolSizes {
    /// Sizes for `instances` component instances of a component not yet known (two memories
    /// and four tables each, room enough for most toolchains' output) and `modules` core
    /// instances besides.
    pub fn guessed(instances: u32, modules: u32) -> PoolSizes {
        PoolSizes {
            instances: instances.max(1),
            memories: 2,
            tables: 4,
            modules,
        }
    }

    /// The same counts of instances, each with the memories and tables `component` defines
    /// (at least one of each).
    pub fn fitted(self, component: &Component) -> PoolSizes {
        let Some(needs) = component.resources_required() else {
            // It instantiates a module it imports: nothing to read ahead of time.
            return self;
        };
        PoolSizes {
            memories: needs.num_memories.max(1),
            tables: needs.num_tables.max(1),
            ..self
        }
    }

    /// Whether every instance of a pool of these sizes has room for the memories and tables of
    /// one of `other`'s (the counts of instances and modules stay as they were guessed).
    pub fn holds(&self, other: &PoolSizes) -> bool {
        self.memories >= other.memories && self.tables >= other.tables
    }

    /// Memory slots the pool reserves: every instance's memories and the modules' own, within
    /// [`MAX_MEMORY_SLOTS`].
    pub fn memory_slots(&self) -> u32 {
        self.instances
            .saturating_mul(self.memories)
            .saturating_add(self.modules)
            .min(MAX_MEMORY_SLOTS)
    }

    /// How the log says it.
    pub fn describe(&self) -> String {
        format!(
            "{} instances with {} memories and {} tables each ({} memory slots)",
            self.instances,
            self.memories,
            self.tables,
            self.memory_slots()
        )
    }
}

/// Bytes of each linear memory kept resident (reset in place) when an instance is released.
pub(crate) const KEEP_RESIDENT: usize = 16 << 20;

/// Memories that start at this size or less are cheaper to copy back whole than to scan.
pub(crate) const SMALL_MEMORY: u64 = 128 << 10;

/// Bytes of each linear memory kept resident with [`MemoryReset::Whole`]: a small memory that
/// grew is copied back up to here, and the rest handed back to the kernel.
const SMALL_KEEP_RESIDENT: usize = 256 << 10;

/// How the pool puts a released instance's linear memories back to their initial contents, so
/// the next request finds them pristine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryReset {
    /// Ask the kernel which pages the request wrote (`PAGEMAP_SCAN`, Linux 6.7+) and restore
    /// only those: one system call per memory (3-5 us here), whatever the memory's size.
    ///
    /// The scan reports at most 32 runs of written pages (a limit of wasmtime's); memory past the
    /// 32nd run is handed back to the kernel, and the next request faults it in again (a
    /// JavaScript hello ~58 faults per request, Python ~210), which in one process running on
    /// several cores interrupts the other cores. So, for a component with the optimiser's reset
    /// hint, pier first joins the runs across their smallest gaps ([`crate::dirty`]) and the scan
    /// keeps everything resident: no faults, at the price of copying the gap pages back too.
    /// (Copying large memories back whole also removed the faults, but each pool slot then kept
    /// its whole memory resident: after a burst of 200 concurrent Python requests waiting on an
    /// upstream, 3.9 GB stayed resident against 0.5 GB; see bench/RESULTS.md.)
    DirtyPages,
    /// Copy each memory back whole, with no system call: cheaper while memories are a few
    /// pages (measured: a 64 KiB memory resets ~3 us faster; at 256 KiB the two are even).
    Whole,
    /// Copy back the first 256 KiB of each memory and hand the rest back to the kernel: the
    /// next request faults in again what it touches. For larger memories when swap is on: the
    /// scan of [`DirtyPages`](Self::DirtyPages) looks for pages that are present, so a page a
    /// request wrote that was swapped out before its instance ended would be neither restored
    /// nor handed back, and the next request in that pool slot would read it (seen with
    /// wasmtime 48: a page paged out during a request came back to a later one, unreset).
    Decommit,
}

impl MemoryReset {
    /// The cheaper safe reset for `component`: [`Whole`](Self::Whole) when every memory and
    /// table it defines starts at [`SMALL_MEMORY`] or less (tables are reset the same way),
    /// else [`MemoryReset::large`].
    pub fn for_component(component: &Component, swap: bool) -> MemoryReset {
        let small = component.resources_required().is_some_and(|needs| {
            let memory = needs.max_initial_memory_size.unwrap_or(0);
            let table = needs.max_initial_table_size.unwrap_or(0);
            memory.saturating_mul(WASM_PAGE) <= SMALL_MEMORY
                && table.saturating_mul(TABLE_ELEMENT) <= SMALL_MEMORY
        });
        if small {
            MemoryReset::Whole
        } else {
            MemoryReset::large(swap)
        }
    }

    /// The reset for memories too large to copy back whole: [`DirtyPages`](Self::DirtyPages),
    /// or [`Decommit`](Self::Decommit) when `swap` is on.
    pub fn large(swap: bool) -> MemoryReset {
        if swap {
            MemoryReset::Decommit
        } else {
            MemoryReset::DirtyPages
        }
    }

    /// How the log says it.
    pub fn describe(self) -> &'static str {
        match self {
            MemoryReset::DirtyPages => "only the pages each request wrote",
            MemoryReset::Whole => "whole (every memory and table starts at 128 KiB or less)",
            MemoryReset::Decommit => {
                "the first 256 KiB copied back, the rest handed back to the kernel (swap is on, \
                 and the dirty-page scan cannot see pages swapped out)"
            }
        }
    }
}

/// Whether the system swaps: any active swap area in `/proc/swaps` (devices, files, zram). Read
/// once, when an engine is made; swap turned on later is not seen.
pub fn swap_is_on() -> bool {
    std::fs::read_to_string("/proc/swaps")
        .is_ok_and(|swaps| swaps.lines().skip(1).any(|l| !l.trim().is_empty()))
}

/// A WebAssembly page.
pub(crate) const WASM_PAGE: u64 = 64 << 10;
/// Bytes of one table element in the pool (a pointer).
const TABLE_ELEMENT: u64 = 8;

/// Builds the engine for `kind`, with the component model's concurrency (what WASI 0.3's async
/// functions, streams and futures need) if `p3`. Without it, a component's calls take
/// wasmtime's direct path: no event loop around each call, which is what a 0.2 request wants.
pub fn new_engine(kind: EngineKind, p3: bool) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable)
        .parallel_compilation(true)
        .memory_init_cow(true)
        // Guest time limits: one shared ticker advances the epoch (see `start_epoch_ticker`)
        // and each store decides what a tick means for it. Enabled for both kinds so compiled
        // code (and so the compile cache entry) is the same for `serve`, `run` and `compile`.
        .epoch_interruption(true)
        .concurrency_support(p3);
    if let EngineKind::Serve { pool, reset } = kind {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
            pool, reset,
        )));
    }
    Engine::new(&config)
}

/// Tables one core module may define in the pool (the optimiser keeps merged modules within it).
pub(crate) const MAX_TABLES_PER_MODULE: u32 = 4;
/// Linear memories one core module may define in the pool.
pub(crate) const MAX_MEMORIES_PER_MODULE: u32 = 1;

/// Core instances one component may instantiate (componentize-py's hello: 14; a composition of
/// several components: the sum of theirs).
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 200;

/// The pooling allocator for `sizes`.
///
/// The per-component limits are generous (they are checked when a component is loaded, so one
/// beyond them fails to start with a message naming the limit); the totals are what the pool
/// holds at once. Memory and table slots reserve address space (committed only when touched);
/// instance counts are only counted, so every component instance may have as many core
/// instances as one component is allowed.
fn pooling_config(sizes: PoolSizes, reset: MemoryReset) -> PoolingAllocationConfig {
    let instances = sizes.instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(
            instances
                .saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT)
                .saturating_add(sizes.modules),
        )
        .total_memories(sizes.memory_slots())
        .total_tables(
            instances
                .saturating_mul(sizes.tables)
                .saturating_add(sizes.modules.saturating_mul(MAX_TABLES_PER_MODULE)),
        )
        .total_stacks(instances)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(32)
        .max_tables_per_component(64)
        .max_tables_per_module(MAX_TABLES_PER_MODULE)
        .max_memories_per_module(MAX_MEMORIES_PER_MODULE)
        .table_elements(100_000)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        // Reset a slot's memory and tables in place on release instead of handing pages back to
        // the kernel: no page faults when the slot is reused and, above all, no TLB-shootdown
        // IPIs across cores (madvise on a multi-threaded process), which dominated the profile.
        .table_keep_resident(1 << 20);
    match reset {
        // PAGEMAP_SCAN (Linux 6.7+) limits the reset to the pages the request actually dirtied.
        MemoryReset::DirtyPages => pool
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(Enabled::Auto),
        MemoryReset::Whole | MemoryReset::Decommit => pool
            .linear_memory_keep_resident(SMALL_KEEP_RESIDENT)
            .pagemap_scan(Enabled::No),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A component instantiating one core module per item of `modules`.
    fn component(modules: &[&str]) -> String {
        let mut wat = String::from("(component\n");
        for (i, module) in modules.iter().enumerate() {
            wat +=
                &format!("  (core module $m{i} {module})\n  (core instance (instantiate $m{i}))\n");
        }
        wat + ")"
    }

    #[test]
    fn the_pool_is_fitted_to_the_memories_and_tables_a_component_defines() {
        let engine = new_engine(EngineKind::Run, false).unwrap();
        let guessed = PoolSizes::guessed(10, 3);
        let fitted = |modules: &[&str]| {
            guessed.fitted(&Component::new(&engine, component(modules)).unwrap())
        };
        // Nothing defined: still one of each (the guess holds it).
        let none = fitted(&[]);
        assert_eq!((none.memories, none.tables), (1, 1));
        assert!(guessed.holds(&none));
        let many = fitted(&[
            "(memory 1) (table 1 funcref)",
            "(memory 1)",
            "(memory 2) (table 5 funcref)",
        ]);
        assert_eq!((many.instances, many.modules), (10, 3));
        assert_eq!((many.memories, many.tables), (3, 2));
        assert!(
            !guessed.holds(&many),
            "the guess has two memories per instance"
        );
        assert!(many.holds(&many) && many.holds(&none));
        // Every instance's memories and one per module.
        assert_eq!(many.memory_slots(), 10 * 3 + 3);
        // Within the address space.
        assert_eq!(
            PoolSizes::guessed(100_000, 0).memory_slots(),
            MAX_MEMORY_SLOTS
        );
        // A pool fitted to a component holds all its instances at once (the guessed one, with
        // two memory slots per instance, runs out at the seventh).
        let three = component(&["(memory 1)", "(memory 1)", "(memory 1)"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let live = |sizes: PoolSizes| {
            let engine = new_engine(
                EngineKind::Serve {
                    pool: sizes,
                    reset: MemoryReset::Whole,
                },
                false,
            )
            .unwrap();
            let component = Component::new(&engine, &three).unwrap();
            let pre = wasmtime::component::Linker::<()>::new(&engine)
                .instantiate_pre(&component)
                .unwrap();
            let mut stores = Vec::new();
            runtime.block_on(async {
                for _ in 0..sizes.instances {
                    let mut store = wasmtime::Store::new(&engine, ());
                    if pre.instantiate_async(&mut store).await.is_err() {
                        break;
                    }
                    stores.push(store);
                }
            });
            stores.len()
        };
        let sizes = PoolSizes::guessed(10, 0);
        assert_eq!(live(sizes), 6, "2 x 10 slots, 3 per instance");
        let fitted = sizes.fitted(&Component::new(&engine, &three).unwrap());
        assert_eq!(live(fitted), 10);
    }

    #[test]
    fn small_memories_and_tables_are_copied_back_whole_and_larger_ones_by_dirty_page() {
        use MemoryReset::{DirtyPages, Whole};
        let cases: &[(&str, &[&str], MemoryReset)] = &[
            ("nothing", &[], Whole),
            ("a module without memory", &["(func)"], Whole),
            ("2 pages", &["(memory 2)"], Whole),
            ("3 pages", &["(memory 3)"], DirtyPages),
            (
                "3 pages in the second module",
                &["(memory 1)", "(memory 3)"],
                DirtyPages,
            ),
            ("a 128 KiB table", &["(table 16384 funcref)"], Whole),
            ("a larger table", &["(table 16385 funcref)"], DirtyPages),
            ("a small memory that may grow", &["(memory 1 65536)"], Whole),
        ];
        let engine = new_engine(EngineKind::Run, false).unwrap();
        for (what, modules, expected) in cases {
            let wat = component(modules);
            let component = Component::new(&engine, &wat).unwrap();
            assert_eq!(
                MemoryReset::for_component(&component, false),
                *expected,
                "{what}:\n{wat}"
            );
            // With swap on, the scan gives way; small memories are copied whole either way.
            let with_swap = if *expected == DirtyPages {
                MemoryReset::Decommit
            } else {
                *expected
            };
            assert_eq!(
                MemoryReset::for_component(&component, true),
                with_swap,
                "{what}, swap on:\n{wat}"
            );
        }
    }
}
