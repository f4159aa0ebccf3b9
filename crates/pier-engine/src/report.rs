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
}

impl FailureKind {
    /// Classifies a guest error.
    pub fn of(e: &wasmtime::Error) -> FailureKind {
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return FailureKind::Timeout;
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
        }
    }
}
