//! Reading a `.wasm` (or `.wat`) file and telling what it is.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// What a WebAssembly file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A component (WASI 0.2 and later).
    Component,
    /// A core module (for example a preview1 `wasm32-wasi` program).
    Module,
}

/// A file that cannot be loaded, with the reason a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file does not exist or cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The bytes are neither wasm binary nor WAT text.
    #[error("{} is not a WebAssembly file (expected a binary starting with \\0asm, or WAT text)", path.display())]
    NotWasm { path: PathBuf },
    /// WAT text that does not parse.
    #[error("{} is not valid WebAssembly text: {message}", path.display())]
    BadWat { path: PathBuf, message: String },
}

/// A WebAssembly file read into memory.
#[derive(Debug, Clone)]
pub struct WasmFile {
    /// Where it came from (for messages and the log).
    pub path: PathBuf,
    /// A short name for the log: the file name without extension.
    pub name: String,
    /// Binary wasm (WAT is translated on load).
    pub bytes: Vec<u8>,
    /// Component or core module.
    pub kind: WasmKind,
    /// Whether it is a component that speaks WASI 0.3 ([`crate::p3::speaks_p3`]): it compiles
    /// and runs on an engine with concurrency support.
    pub p3: bool,
}

const MAGIC: &[u8; 4] = b"\0asm";

impl WasmFile {
    /// Reads `path` and detects its kind from the header.
    pub fn read(path: &Path) -> Result<WasmFile, LoadError> {
        let raw = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let bytes = if raw.starts_with(MAGIC) {
            raw
        } else {
            from_wat(path, &raw)?
        };
        let kind = kind_of(&bytes).ok_or_else(|| LoadError::NotWasm {
            path: path.to_path_buf(),
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".to_string());
        let p3 = kind == WasmKind::Component && crate::p3::speaks_p3(&bytes);
        Ok(WasmFile {
            path: path.to_path_buf(),
            name,
            bytes,
            kind,
            p3,
        })
    }

    /// The file name as the user gave it, for messages.
    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }
}

/// Detects component vs core module from the 8-byte preamble (magic, version, layer).
pub fn kind_of(bytes: &[u8]) -> Option<WasmKind> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return None;
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Some(WasmKind::Module),
        [_, _, 1, 0] => Some(WasmKind::Component),
        _ => None,
    }
}

fn from_wat(path: &Path, raw: &[u8]) -> Result<Vec<u8>, LoadError> {
    let text = match std::str::from_utf8(raw) {
        Ok(text) if text.trim_start().starts_with('(') || text.trim_start().starts_with(";;") => {
            text
        }
        _ => {
            return Err(LoadError::NotWasm {
                path: path.to_path_buf(),
            });
        }
    };
    let bytes: Cow<'_, [u8]> =
        wat::parse_str(text)
            .map(Cow::Owned)
            .map_err(|e| LoadError::BadWat {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    Ok(bytes.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds() {
        assert_eq!(kind_of(b"\0asm\x01\0\0\0"), Some(WasmKind::Module));
        assert_eq!(kind_of(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(kind_of(b"\0asm\x01\0"), None);
        assert_eq!(kind_of(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn reads_wat_and_rejects_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let wat = dir.path().join("m.wat");
        std::fs::write(&wat, "(module)").unwrap();
        let f = WasmFile::read(&wat).unwrap();
        assert_eq!((f.kind, f.name.as_str()), (WasmKind::Module, "m"));

        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, "hello").unwrap();
        let err = WasmFile::read(&txt).unwrap_err().to_string();
        assert!(err.contains("notes.txt is not a WebAssembly file"), "{err}");

        let err = WasmFile::read(&dir.path().join("missing.wasm"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read ") && err.contains("missing.wasm"),
            "{err}"
        );
    }
}
