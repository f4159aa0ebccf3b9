//! Shared HTTP caches: `[cache.NAME]` in a manifest (named by routes' `cache = "NAME"`), or
//! `--cache` for the single route of a command line.

use crate::units::parse_size;

/// Bytes a cache holds unless its `size` says otherwise.
pub const DEFAULT_CACHE_SIZE: u64 = 256 << 20;
/// Largest response body one entry keeps unless `max_entry` says otherwise.
pub const DEFAULT_MAX_ENTRY: u64 = 8 << 20;

/// Where a cache keeps its entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheStore {
    /// In the process's memory, bounded by the cache's `size`.
    #[default]
    Memory,
    /// On a Redis server (`redis://HOST:PORT[/DB]`, `rediss://` for TLS), shared by every pier
    /// that names it; its keys start with `prefix` (default `pier:cache:NAME:`).
    Redis {
        /// The server.
        url: String,
        /// What every key starts with, when not the default.
        prefix: Option<String>,
    },
}

/// One cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Where its entries are kept.
    pub store: CacheStore,
    /// Bytes it holds at most (bodies and headers), in memory; the least used entries go first.
    /// (A Redis server is bounded by its own `maxmemory`.)
    pub size: u64,
    /// Largest body one entry keeps; a larger response is sent, not stored.
    pub max_entry: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            store: CacheStore::Memory,
            size: DEFAULT_CACHE_SIZE,
            max_entry: DEFAULT_MAX_ENTRY,
        }
    }
}

/// A cache's settings as written (`[cache.NAME]`, or the `--cache` flags), before they are
/// checked.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheSettings<'a> {
    /// `type`: `memory` (the default) or `redis`.
    pub kind: Option<&'a str>,
    /// `size`, for memory (`"256MiB"`).
    pub size: Option<&'a str>,
    /// `max_entry` (`"8MiB"`).
    pub max_entry: Option<&'a str>,
    /// `url`, for Redis.
    pub url: Option<&'a str>,
    /// `prefix`, for Redis.
    pub prefix: Option<&'a str>,
}

impl CacheSpec {
    /// A cache from its `settings`. The error names the setting at fault (`type`, `size`,
    /// `max_entry`, `url`, `prefix`) and says what is wrong.
    pub fn parse(settings: CacheSettings<'_>) -> Result<CacheSpec, (&'static str, String)> {
        let kind = settings.kind.unwrap_or("memory");
        let not_for = |key: &'static str, value: Option<&str>| match value {
            Some(_) => Err((key, format!("{key}: not a setting of a {kind} cache"))),
            None => Ok(()),
        };
        let store = match kind {
            "memory" => {
                not_for("url", settings.url)?;
                not_for("prefix", settings.prefix)?;
                CacheStore::Memory
            }
            "redis" => {
                if settings.size.is_some() {
                    return Err((
                        "size",
                        "size: not a setting of a redis cache (the server's maxmemory bounds it)"
                            .into(),
                    ));
                }
                let Some(url) = settings.url else {
                    return Err((
                        "url",
                        "a redis cache needs its url (redis://HOST:PORT or rediss://...)".into(),
                    ));
                };
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err((
                        "url",
                        format!("url {url:?}: expected redis://HOST:PORT or rediss://HOST:PORT"),
                    ));
                }
                CacheStore::Redis {
                    url: url.to_string(),
                    prefix: settings.prefix.map(str::to_string),
                }
            }
            other => {
                return Err((
                    "type",
                    format!("type = {other:?}: expected \"memory\" or \"redis\""),
                ));
            }
        };
        let bytes = |key: &'static str, value: Option<&str>, default: u64| match value {
            None => Ok(default),
            Some(v) => match parse_size(v) {
                Ok(0) => Err((key, format!("{key} = {v:?}: must be more than 0"))),
                Ok(n) => Ok(n),
                Err(e) => Err((key, format!("{key} = {v:?}: {e}"))),
            },
        };
        let size = bytes("size", settings.size, DEFAULT_CACHE_SIZE)?;
        let max_entry = bytes("max_entry", settings.max_entry, DEFAULT_MAX_ENTRY.min(size))?;
        if max_entry > size {
            return Err((
                "max_entry",
                format!("max_entry ({max_entry} bytes) is larger than the cache's size ({size})"),
            ));
        }
        Ok(CacheSpec {
            store,
            size,
            max_entry,
        })
    }

    /// The prefix of the keys of the cache `name` in its Redis store.
    pub fn redis_prefix(name: &str, prefix: Option<&str>) -> String {
        prefix.map_or_else(|| format!("pier:cache:{name}:"), str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        kind: Option<&str>,
        size: Option<&str>,
        max_entry: Option<&str>,
    ) -> Result<CacheSpec, (&'static str, String)> {
        CacheSpec::parse(CacheSettings {
            kind,
            size,
            max_entry,
            ..CacheSettings::default()
        })
    }

    #[test]
    fn a_cache_is_memory_with_sizes_in_units() {
        assert_eq!(parse(None, None, None).unwrap(), CacheSpec::default());
        assert_eq!(
            parse(Some("memory"), Some("1MiB"), Some("64KiB")).unwrap(),
            CacheSpec {
                store: CacheStore::Memory,
                size: 1 << 20,
                max_entry: 64 << 10
            }
        );
        // A small cache keeps entries up to its size.
        assert_eq!(parse(None, Some("1MiB"), None).unwrap().max_entry, 1 << 20);
        assert_eq!(parse(Some("disk"), None, None).unwrap_err().0, "type");
        assert_eq!(parse(None, Some("0"), None).unwrap_err().0, "size");
        assert_eq!(
            parse(None, Some("1MiB"), Some("2MiB")).unwrap_err().0,
            "max_entry"
        );
    }

    #[test]
    fn a_redis_cache_needs_its_url_and_takes_no_size() {
        let redis = |url: Option<&'static str>, size: Option<&'static str>| {
            CacheSpec::parse(CacheSettings {
                kind: Some("redis"),
                url,
                size,
                prefix: Some("app:"),
                ..CacheSettings::default()
            })
        };
        assert_eq!(
            redis(Some("redis://127.0.0.1:6379"), None).unwrap().store,
            CacheStore::Redis {
                url: "redis://127.0.0.1:6379".into(),
                prefix: Some("app:".into())
            }
        );
        assert_eq!(redis(None, None).unwrap_err().0, "url");
        assert_eq!(redis(Some("http://x"), None).unwrap_err().0, "url");
        assert_eq!(
            redis(Some("redis://x"), Some("1MiB")).unwrap_err().0,
            "size"
        );
        let memory_with_url = CacheSpec::parse(CacheSettings {
            url: Some("redis://x"),
            ..CacheSettings::default()
        });
        assert_eq!(memory_with_url.unwrap_err().0, "url");
        assert_eq!(CacheSpec::redis_prefix("pages", None), "pier:cache:pages:");
    }
}
