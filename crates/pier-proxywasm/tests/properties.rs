//! Property tests of the Proxy-Wasm header map wire format, what guests hand the host: any map
//! within the caps comes back as it went, repeated names and all, and any bytes at all are a
//! map or refused, never a panic. `PROPTEST_CASES=100000` runs them longer.

use pier_proxywasm::{deserialize_pairs, serialize_pairs};
use proptest::prelude::*;

proptest! {
    #[test]
    fn maps_round_trip(
        pairs in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..200)),
            0..64,
        ),
    ) {
        let bytes = serialize_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        prop_assert_eq!(deserialize_pairs(&bytes), Some(pairs));
    }

    #[test]
    fn any_bytes_are_a_map_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Some(pairs) = deserialize_pairs(&bytes) {
            // What parses is what the format says: serialized again, it is a prefix of the input.
            let again = serialize_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            prop_assert!(bytes.starts_with(&again));
        }
    }

    /// Counts and lengths that claim more than there is are refused, not trusted.
    #[test]
    fn lying_lengths_are_refused(count in 1u32..5000, key_len in any::<u32>(), value_len in any::<u32>()) {
        let mut bytes = count.to_le_bytes().to_vec();
        bytes.extend(key_len.to_le_bytes());
        bytes.extend(value_len.to_le_bytes());
        bytes.extend(b"k\0v\0");
        let parsed = deserialize_pairs(&bytes);
        if count != 1 || key_len != 1 || value_len != 1 {
            prop_assert_eq!(parsed, None);
        } else {
            prop_assert_eq!(parsed, Some(vec![(b"k".to_vec(), b"v".to_vec())]));
        }
    }
}
