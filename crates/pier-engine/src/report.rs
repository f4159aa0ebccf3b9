//! Guest failures as text a user can act on.

use std::fmt::Write;

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
