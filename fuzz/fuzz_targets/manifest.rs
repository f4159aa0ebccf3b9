//! Any text is a manifest or an error naming where it went wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = pier_config::parse_manifest(text, std::path::Path::new("/nonexistent/pier.toml"));
});
