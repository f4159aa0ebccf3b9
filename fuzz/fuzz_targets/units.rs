//! Sizes and durations: any text is a value or an error, and a value printed back in bytes or
//! milliseconds parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(bytes) = pier_config::parse_size(text) {
        assert_eq!(pier_config::parse_size(&bytes.to_string()), Ok(bytes));
    }
    if let Ok(duration) = pier_config::parse_duration(text) {
        let millis = duration.as_millis();
        if millis == duration.as_nanos() / 1_000_000 && millis < u128::from(u64::MAX) {
            assert_eq!(
                pier_config::parse_duration(&format!("{millis}ms")),
                Ok(duration)
            );
        }
    }
});
