//! Key-value stores as an app uses them: where each store named by its components lives, and
//! the limits on what guests put in them. A manifest declares stores as `[key_value_store.NAME]`
//! (`default` needs no declaration: SQLite); the single-wasm command line grants them with
//! `--kv NAME[=PATH|URL]`. A SQLite store with no `path` is `NAME.sqlite` in the state
//! directory: `--state-dir`, else `.pier/data` beside the manifest (or in the current directory
//! for a single component).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::manifest::StoreConfig;

/// Where one store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A Redis server, keys under `prefix`.
    Redis {
        /// `redis://` or `rediss://` URL.
        url: String,
        /// Put before every key.
        prefix: String,
    },
}

impl StoreSpec {
    /// The store `name` as `config` says, with `state_dir` for a SQLite file without a path.
    pub fn resolve(name: &str, config: &StoreConfig, state_dir: &Path) -> StoreSpec {
        match config {
            StoreConfig::Sqlite { path: Some(path) } => StoreSpec::Sqlite(path.clone()),
            StoreConfig::Sqlite { path: None } => {
                StoreSpec::Sqlite(state_dir.join(format!("{name}.sqlite")))
            }
            StoreConfig::Redis { url, prefix } => StoreSpec::Redis {
                url: url.clone(),
                prefix: prefix.clone().unwrap_or_default(),
            },
        }
    }
}

/// The state directory of an app whose manifest (or, for a single component, the current
/// directory) is in `base`: `.pier/data` there, unless `--state-dir` says otherwise.
pub fn state_dir(given: Option<&Path>, base: &Path) -> PathBuf {
    match given {
        Some(dir) => dir.to_path_buf(),
        None => base.join(".pier").join("data"),
    }
}

/// Limits on what guests put in stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Longest key, in bytes.
    pub max_key: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_key: 256,
            max_value: 1 << 20,
        }
    }
}

/// One `--kv NAME[=PATH|URL]` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvGrant {
    /// The name the guest opens.
    pub name: String,
    /// Where it lives, if not the state directory's SQLite file.
    pub config: StoreConfig,
}

impl FromStr for KvGrant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, target) = match s.split_once('=') {
            Some((name, target)) => (name, Some(target)),
            None => (s, None),
        };
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(format!(
                "invalid --kv {s:?}: NAME (lower-case letters, digits, _ and -), NAME=FILE.sqlite or NAME=redis://HOST:PORT"
            ));
        }
        let config = match target {
            None => StoreConfig::Sqlite { path: None },
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                StoreConfig::Redis {
                    url: url.to_string(),
                    prefix: None,
                }
            }
            Some("") => return Err(format!("invalid --kv {s:?}: nothing after =")),
            Some(path) => StoreConfig::Sqlite {
                path: Some(PathBuf::from(path)),
            },
        };
        Ok(KvGrant {
            name: name.to_string(),
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_flags() {
        let sqlite = |p: Option<&str>| StoreConfig::Sqlite {
            path: p.map(PathBuf::from),
        };
        assert_eq!("default".parse::<KvGrant>().unwrap().config, sqlite(None));
        assert_eq!(
            "cache=/tmp/c.sqlite".parse::<KvGrant>().unwrap().config,
            sqlite(Some("/tmp/c.sqlite"))
        );
        assert_eq!(
            "s=redis://127.0.0.1:6379"
                .parse::<KvGrant>()
                .unwrap()
                .config,
            StoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into(),
                prefix: None
            }
        );
        for bad in ["", "Up", "a b", "x="] {
            assert!(bad.parse::<KvGrant>().is_err(), "{bad:?}");
        }
        let dir = state_dir(None, Path::new("/app"));
        assert_eq!(dir, Path::new("/app/.pier/data"));
        assert_eq!(
            StoreSpec::resolve("default", &sqlite(None), &dir),
            StoreSpec::Sqlite("/app/.pier/data/default.sqlite".into())
        );
    }
}
