//! Shared HTTP caches: `[cache.NAME]` in a manifest (named by routes' `cache = "NAME"`), or
//! `--cache` for the single route of a command line.

use crate::units::parse_size;

/// Bytes a cache holds unless its `size` says otherwise.
pub const DEFAULT_CACHE_SIZE: u64 = 256 << 20;
/// Largest response body one entry keeps unless `max_entry` says otherwise.
pub const DEFAULT_MAX_ENTRY: u64 = 8 << 20;

/// One cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Bytes it holds at most (bodies and headers); the least used entries go first.
    pub size: u64,
    /// Largest body one entry keeps; a larger response is sent, not stored.
    pub max_entry: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            size: DEFAULT_CACHE_SIZE,
            max_entry: DEFAULT_MAX_ENTRY,
        }
    }
}

impl CacheSpec {
    /// A cache from its settings as written: the store `kind` (`memory`, the default, is the only
    /// one so far), `size` and `max_entry` (`"256MiB"`). The message names the setting at fault.
    pub fn parse(
        kind: Option<&str>,
        size: Option<&str>,
        max_entry: Option<&str>,
    ) -> Result<CacheSpec, (&'static str, String)> {
        match kind.unwrap_or("memory") {
            "memory" => {}
            "redis" => {
                return Err((
                    "type",
                    "type = \"redis\": caches are kept in memory only in this pier \
                     (type = \"memory\")"
                        .into(),
                ));
            }
            other => {
                return Err(("type", format!("type = {other:?}: expected \"memory\"")));
            }
        }
        let bytes = |key: &'static str, value: Option<&str>, default: u64| match value {
            None => Ok(default),
            Some(v) => match parse_size(v) {
                Ok(0) => Err((key, format!("{key} = {v:?}: must be more than 0"))),
                Ok(n) => Ok(n),
                Err(e) => Err((key, format!("{key} = {v:?}: {e}"))),
            },
        };
        let size = bytes("size", size, DEFAULT_CACHE_SIZE)?;
        let max_entry = bytes("max_entry", max_entry, DEFAULT_MAX_ENTRY.min(size))?;
        if max_entry > size {
            return Err((
                "max_entry",
                format!("max_entry ({max_entry} bytes) is larger than the cache's size ({size})"),
            ));
        }
        Ok(CacheSpec { size, max_entry })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_is_memory_with_sizes_in_units() {
        assert_eq!(
            CacheSpec::parse(None, None, None).unwrap(),
            CacheSpec::default()
        );
        assert_eq!(
            CacheSpec::parse(Some("memory"), Some("1MiB"), Some("64KiB")).unwrap(),
            CacheSpec {
                size: 1 << 20,
                max_entry: 64 << 10
            }
        );
        // A small cache keeps entries up to its size.
        assert_eq!(
            CacheSpec::parse(None, Some("1MiB"), None)
                .unwrap()
                .max_entry,
            1 << 20
        );
        assert_eq!(
            CacheSpec::parse(Some("disk"), None, None).unwrap_err().0,
            "type"
        );
        assert!(
            CacheSpec::parse(Some("redis"), None, None)
                .unwrap_err()
                .1
                .contains("memory only")
        );
        assert_eq!(
            CacheSpec::parse(None, Some("0"), None).unwrap_err().0,
            "size"
        );
        assert_eq!(
            CacheSpec::parse(None, Some("1MiB"), Some("2MiB"))
                .unwrap_err()
                .0,
            "max_entry"
        );
    }
}
