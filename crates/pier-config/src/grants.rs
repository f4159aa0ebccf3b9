//! What a guest may see of the host: environment variables and directories, granted one by one.
//!
//! The flag shapes follow `wasmtime run` (`--env K=V`, `--env K`, `--dir HOST::GUEST`) so that
//! existing WASI harnesses can drive pier unchanged.

use std::path::PathBuf;
use std::str::FromStr;

/// A flag value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// `--env` with an empty name or a name containing `=` or NUL.
    #[error("invalid --env {0:?}: expected NAME=VALUE or NAME")]
    Env(String),
    /// `--dir` with an empty host or guest path.
    #[error("invalid --dir {0:?}: expected HOST_DIR or HOST_DIR::GUEST_DIR")]
    Dir(String),
}

/// One `--env` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvGrant {
    /// `--env NAME=VALUE`: set a variable.
    Set { name: String, value: String },
    /// `--env NAME`: pass the host's value through, if it has one.
    Inherit { name: String },
}

impl FromStr for EnvGrant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GrantError::Env(s.to_string());
        let (name, value) = match s.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (s, None),
        };
        if name.is_empty() || name.contains('\0') || value.is_some_and(|v| v.contains('\0')) {
            return Err(bad());
        }
        let name = name.to_string();
        Ok(match value {
            Some(value) => EnvGrant::Set {
                name,
                value: value.to_string(),
            },
            None => EnvGrant::Inherit { name },
        })
    }
}

/// One `--dir` flag: a host directory preopened for the guest under a guest path,
/// `HOST[::GUEST][:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// The name the guest sees.
    pub guest: String,
    /// `:ro`: the guest may read in it and nothing else (no file or directory made, written,
    /// renamed or removed).
    pub read_only: bool,
}

/// A directory given with `:ro` at its end (`./data:ro`): the directory, and whether it is.
pub fn read_only_suffix(s: &str) -> (&str, bool) {
    match s.strip_suffix(":ro") {
        Some(dir) => (dir, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    }
}

impl FromStr for DirGrant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (spec, read_only) = read_only_suffix(s);
        let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
        if host.is_empty() || guest.is_empty() {
            return Err(GrantError::Dir(s.to_string()));
        }
        Ok(DirGrant {
            host: host.into(),
            guest: guest.to_string(),
            read_only,
        })
    }
}

/// Everything granted to a guest. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables, in flag order (a later flag for the same name wins).
    pub env: Vec<EnvGrant>,
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// What it reads with `wasi:config/store`: its variables, resolved.
    pub config: crate::ConfigValues,
    /// What it may reach with `wasi:sockets`.
    pub sockets: crate::SocketPolicy,
}

impl Grants {
    /// The environment the guest sees, resolving inherited names with `lookup`.
    ///
    /// An inherited name the host does not have is left out, as `wasmtime run` does.
    pub fn resolve_env(&self, lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(self.env.len());
        for grant in &self.env {
            let (name, value) = match grant {
                EnvGrant::Set { name, value } => (name.clone(), value.clone()),
                EnvGrant::Inherit { name } => match lookup(name) {
                    Some(value) => (name.clone(), value),
                    None => continue,
                },
            };
            out.retain(|(n, _)| *n != name);
            out.push((name, value));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_flags() {
        let cases: &[(&str, Result<EnvGrant, ()>)] = &[
            (
                "A=1",
                Ok(EnvGrant::Set {
                    name: "A".into(),
                    value: "1".into(),
                }),
            ),
            (
                "A=",
                Ok(EnvGrant::Set {
                    name: "A".into(),
                    value: "".into(),
                }),
            ),
            (
                "A=b=c",
                Ok(EnvGrant::Set {
                    name: "A".into(),
                    value: "b=c".into(),
                }),
            ),
            (
                "HOME",
                Ok(EnvGrant::Inherit {
                    name: "HOME".into(),
                }),
            ),
            ("", Err(())),
            ("=x", Err(())),
            ("A\0=1", Err(())),
        ];
        for (input, want) in cases {
            let got = input.parse::<EnvGrant>().map_err(|_| ());
            assert_eq!(&got, want, "--env {input:?}");
        }
    }

    #[test]
    fn dir_flags() {
        let d = |h: &str, g: &str| {
            Ok(DirGrant {
                host: h.into(),
                guest: g.into(),
                read_only: false,
            })
        };
        let ro = |h: &str, g: &str| {
            Ok(DirGrant {
                host: h.into(),
                guest: g.into(),
                read_only: true,
            })
        };
        let cases: &[(&str, Result<DirGrant, ()>)] = &[
            ("/srv/data::/data", d("/srv/data", "/data")),
            ("/srv/data::/data:ro", ro("/srv/data", "/data")),
            ("/srv/data::/data:rw", d("/srv/data", "/data")),
            ("data:ro", ro("data", "data")),
            (":ro", Err(())),
            ("./x::.", d("./x", ".")),
            ("data", d("data", "data")),
            ("::/x", Err(())),
            ("/x::", Err(())),
            ("", Err(())),
        ];
        for (input, want) in cases {
            let got = input.parse::<DirGrant>().map_err(|_| ());
            assert_eq!(&got, want, "--dir {input:?}");
        }
    }

    #[test]
    fn env_resolution_grants_only_what_was_named() {
        let grants = Grants {
            env: ["A=1", "HOME", "MISSING", "A=2"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            dirs: vec![],
            ..Grants::default()
        };
        let host = |name: &str| (name == "HOME").then(|| "/home/me".to_string());
        assert_eq!(
            grants.resolve_env(host),
            vec![("HOME".into(), "/home/me".into()), ("A".into(), "2".into())]
        );
        assert!(Grants::default().resolve_env(host).is_empty());
    }
}
