//! pier's engine layer: the wasmtime engine, loading and caching compiled code, the per-store
//! host state, and the two kinds of app pier runs (`wasi:http` components for serving, WASI 0.2
//! or 0.3, on fresh or reused instances; `wasi:cli` programs for `pier run`).

mod cache;
mod denials;
mod dirty;
mod engine;
mod host;
mod http_app;
mod load;
pub mod optimize;
pub mod p3;
mod report;
mod reuse;
mod run;

pub use cache::{CacheOutcome, CompileCache};
pub use denials::warn_denied;
pub use dirty::Joined;
pub use engine::{
    EPOCH_TICK, EngineKind, MemoryReset, PoolSizes, new_engine, start_epoch_ticker, swap_is_on,
};
pub use host::{
    ConfigState, DenyAll, Granted, GuestLog, HostState, KeyValueLimits, KeyValueState, LogBudget,
    Outbound,
};
pub use http_app::{AppError, Guest, HttpApp, Ready, StoreSettings};
pub use load::{LoadError, WasmFile, WasmKind, kind_of};
pub use report::{FailureKind, describe_guest_error};
pub use run::{RunOutcome, TRAP_EXIT_CODE, run};
pub use wasmtime::Engine;
