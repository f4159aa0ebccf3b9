//! pier's typed configuration.
//!
//! The binary turns flags into these types; the engine and the server only ever see them. Nothing
//! here depends on wasmtime, so every rule can be tested on its own.

mod app;
mod caches;
mod envoy;
mod filters;
mod grants;
mod limits;
mod listen;
mod manifest;
mod outbound;
mod sockets;
mod stores;
mod units;
mod variables;

pub use app::{
    App, AppSettings, CompileOptions, ComponentSpec, FilterOptions, RouteSpec, TargetSpec,
};
pub use caches::{CacheSettings, CacheSpec, CacheStore, DEFAULT_CACHE_SIZE, DEFAULT_MAX_ENTRY};
pub use envoy::{ImportError, load_filters, parse_filters};
pub use filters::{FilterFailure, FilterSpec, vm_groups};
pub use grants::{DirGrant, EnvGrant, GrantError, Grants};
pub use limits::Limits;
pub use listen::parse_listen_addr;
pub use manifest::{
    Component, ComponentLimits, MANIFEST_VERSION, Manifest, ManifestError, Route, RoutePath,
    StoreConfig, Target, Variable, load_manifest, load_runtime_config, parse_manifest,
};
pub use outbound::{Denied, OutboundPattern, OutboundPolicy, PatternError, is_special_purpose};
pub use sockets::{
    SocketDenied, SocketGrant, SocketGrantError, SocketPolicy, SocketSwitch, SocketUse, SwitchError,
};
pub use stores::{KvGrant, StoreLimits, StoreSpec, state_dir};
pub use units::{UnitError, parse_duration, parse_size};
pub use variables::{
    ConfigValues, ENV_PREFIX, env_name, expand as expand_template, load_variables_file,
    resolve as resolve_variables,
};

use std::path::PathBuf;

/// The address `pier serve` listens on when `--addr` is not given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Where compiled code is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheConfig {
    /// No cache: compile on every start.
    Disabled,
    /// Cache under this directory.
    Dir(PathBuf),
}

impl CacheConfig {
    /// The cache pier uses unless told otherwise: `$PIER_CACHE_DIR`, else the user's cache dir.
    pub fn from_env(
        no_cache: bool,
        env_dir: Option<PathBuf>,
        user_cache_dir: Option<PathBuf>,
    ) -> Self {
        if no_cache {
            return CacheConfig::Disabled;
        }
        match env_dir.or_else(|| user_cache_dir.map(|d| d.join("pier"))) {
            Some(dir) => CacheConfig::Dir(dir),
            None => CacheConfig::Disabled,
        }
    }
}

/// The outbound HTTP client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// `--allow-outbound`: URL patterns guests may reach (none by default).
    pub policy: OutboundPolicy,
    /// `--ca-cert`: extra PEM CA certificates trusted for TLS, on top of the system's and the
    /// bundled webpki roots.
    pub ca_certs: Vec<PathBuf>,
    /// `--outbound-connect-timeout`: cap on the time to connect (DNS, TCP, TLS).
    pub connect_timeout: std::time::Duration,
    /// `--outbound-first-byte-timeout`: cap on the wait for the response head.
    pub first_byte_timeout: std::time::Duration,
    /// `--outbound-between-bytes-timeout`: cap on the wait between response body chunks.
    pub between_bytes_timeout: std::time::Duration,
    /// `--outbound-idle-timeout`: how long a pooled connection may sit unused.
    pub pool_idle_timeout: std::time::Duration,
    /// `--outbound-max-idle-per-host`: pooled idle connections kept per origin.
    pub pool_max_idle_per_host: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        use std::time::Duration;
        OutboundConfig {
            policy: OutboundPolicy::default(),
            ca_certs: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

/// Everything `pier run` needs to run a program.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The command component or preview1 module to run.
    pub app: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// What the program may see of the host.
    pub grants: Grants,
    /// Compiled-code cache.
    pub cache: CacheConfig,
    /// Merge dynamically linked core modules when compiling a component (`--no-optimize`: no).
    pub optimize: bool,
    /// Where the program may send HTTP requests (`wasi:http/outgoing-handler`), and how.
    pub outbound: OutboundConfig,
    /// `--max-sockets`: sockets the program may have open (`None`: the OS's limit alone).
    pub max_sockets: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        let env = Some(PathBuf::from("/env"));
        let user = Some(PathBuf::from("/home/u/.cache"));
        assert_eq!(
            CacheConfig::from_env(true, env.clone(), user.clone()),
            CacheConfig::Disabled
        );
        assert_eq!(
            CacheConfig::from_env(false, env, user.clone()),
            CacheConfig::Dir("/env".into())
        );
        assert_eq!(
            CacheConfig::from_env(false, None, user),
            CacheConfig::Dir("/home/u/.cache/pier".into())
        );
        assert_eq!(
            CacheConfig::from_env(false, None, None),
            CacheConfig::Disabled
        );
    }
}
