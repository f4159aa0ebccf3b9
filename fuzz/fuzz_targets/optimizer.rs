//! The load-time optimiser on any bytes: a component it rewrites validates, and anything else
//! is left alone or refused with a reason, never a panic. (Its differential check on generated
//! modules is `crates/pier-engine/src/optimize/differential.rs`.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Some(optimized)) = pier_engine::optimize::optimize_component(bytes) {
        let mut validator =
            wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        assert!(validator.validate_all(&optimized.bytes).is_ok());
    }
});
