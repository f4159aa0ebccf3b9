//! Guest failures as text a user can act on.

use std::fmt::Write;

use wasmtime::Trap;

/// Describes a guest failure: the cause first (`wasm trap: ...`), then what wasmtime attached to
/// it, such as the wasm backtrace. Never the host's Rust backtrace, whatever `RUST_BACKTRACE` says.
pub fn describe_guest_error(e: &wasmtime::Error) -> String {
    let mut chain: Vec<String> = e.chain().map(|cause| cause.to_string()).collect();
    let mut out = chain.pop().unwrap_or_default();
    for context in chain.iter().rev() {
        let context = context
            .strip_prefix("error while executing at ")
            .unwrap_or(context);
        let _ = write!(out, "\n{context}");
    }
    out
}

/// What kind of failure ended a guest call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A trap: `unreachable`, an out-of-bounds access, a host function error, ...
    Trap,
    /// The guest ran past its time limit.
    Timeout,
    /// The guest tried to grow its memory past its limit.
    OutOfMemory,
    /// The instance could not be made: every slot of the pool was taken (the server is busy,
    /// not the guest at fault).
    PoolFull,
}

impl FailureKind {
    /// Classifies a guest error.
    pub fn of(e: &wasmtime::Error) -> FailureKind {
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return FailureKind::Timeout;
        }
        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return FailureKind::PoolFull;
        }
        if e.chain().any(|cause| {
            cause
                .to_string()
                .starts_with("forcing trap when growing memory")
        }) {
            return FailureKind::OutOfMemory;
        }
        FailureKind::Trap
    }

    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::PoolFull => "pool_full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EngineKind, MemoryReset, PoolSizes, new_engine};
    use wasmtime::Store;
    use wasmtime::component::{Component, Linker};

    #[test]
    fn an_instance_the_pool_has_no_slot_for_is_pool_full_not_a_trap() {
        let engine = new_engine(
            EngineKind::Serve {
                pool: PoolSizes::guessed(1, 0),
                reset: MemoryReset::Whole,
            },
            false,
        )
        .unwrap();
        let component = Component::new(
            &engine,
            "(component (core module $m (memory 1)) (core instance (instantiate $m)))",
        )
        .unwrap();
        let pre = Linker::<()>::new(&engine)
            .instantiate_pre(&component)
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut first = Store::new(&engine, ());
            pre.instantiate_async(&mut first).await.unwrap();
            let mut second = Store::new(&engine, ());
            let e = pre.instantiate_async(&mut second).await.unwrap_err();
            assert_eq!(FailureKind::of(&e), FailureKind::PoolFull, "{e:?}");
            // Once the first is gone, its slot serves again.
            drop(first);
            pre.instantiate_async(&mut second).await.unwrap();
        });
        // A trap is still a trap.
        let plain = new_engine(EngineKind::Run, false).unwrap();
        let trapping = Component::new(
            &plain,
            "(component (core module $m (start $f) (func $f unreachable)) \
             (core instance (instantiate $m)))",
        )
        .unwrap();
        let pre = Linker::<()>::new(&plain)
            .instantiate_pre(&trapping)
            .unwrap();
        let mut store = Store::new(&plain, ());
        store.set_epoch_deadline(u64::MAX);
        let e = runtime
            .block_on(pre.instantiate_async(&mut store))
            .unwrap_err();
        assert_eq!(FailureKind::of(&e), FailureKind::Trap, "{e:?}");
    }
}
