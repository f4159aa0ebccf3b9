//! The Proxy-Wasm header map format, what guests hand the host: any bytes are a map or refused,
//! and a map serialised again is what was parsed (a prefix of the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_proxywasm::{deserialize_pairs, serialize_pairs};

fuzz_target!(|bytes: &[u8]| {
    if let Some(pairs) = deserialize_pairs(bytes) {
        let again = serialize_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert!(bytes.starts_with(&again));
        assert_eq!(deserialize_pairs(&again), Some(pairs));
    }
});
