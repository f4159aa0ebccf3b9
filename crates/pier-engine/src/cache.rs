//! The on-disk cache of compiled code.
//!
//! An entry is keyed by the wasm's content hash, the engine's compilation settings and pier's
//! version, so a stale entry is never used: a changed file, flag or pier release is simply a miss.
//! Entries are written to a temporary file and renamed into place, so a reader never sees half of
//! one, and an entry wasmtime refuses to load is recompiled and replaced.

use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pier_config::CacheConfig;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::load::{WasmFile, WasmKind};

/// Compiles wasm, or loads it from the cache when it was compiled before.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    optimize: bool,
}

/// Whether an artifact came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded compiled code from disk.
    Hit,
    /// Compiled now (and stored, if the cache is on).
    Miss,
    /// Compiled now; the cache is off.
    Disabled,
}

impl CompileCache {
    /// A cache as configured by `--no-cache` / `PIER_CACHE_DIR`.
    pub fn new(config: &CacheConfig) -> Self {
        let dir = match config {
            CacheConfig::Disabled => None,
            CacheConfig::Dir(dir) => Some(dir.clone()),
        };
        CompileCache {
            dir,
            optimize: true,
        }
    }

    /// Whether components are rewritten by [`crate::optimize`] before they are compiled (on by
    /// default). The choice is part of the cache key.
    pub fn optimize(mut self, on: bool) -> Self {
        self.optimize = on;
        self
    }

    /// The compiled component for `wasm`.
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &WasmFile,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        self.get(
            engine,
            wasm,
            |bytes| {
                let (rewritten, left_alone) = if self.optimize {
                    optimized(wasm, bytes)
                } else {
                    (None, None)
                };
                let compiled = engine.precompile_component(rewritten.as_deref().unwrap_or(bytes));
                // Why the optimiser left it alone matters only for a component that compiles.
                if let (Ok(_), Some(why)) = (&compiled, left_alone) {
                    tracing::info!(file = %wasm.display(), "compiling the component as it is: {why}");
                }
                compiled
            },
            // SAFETY: the file was written by `precompile_component` for a compatible engine (the
            // key includes the engine's compatibility hash), is only ever replaced by rename and
            // never modified in place, so the mapping stays valid.
            |path| unsafe { Component::deserialize_file(engine, path) },
        )
    }

    /// The compiled core module for `wasm`.
    pub fn module(
        &self,
        engine: &Engine,
        wasm: &WasmFile,
    ) -> wasmtime::Result<(Module, CacheOutcome)> {
        self.get(
            engine,
            wasm,
            |bytes| engine.precompile_module(bytes),
            // SAFETY: as for components above.
            |path| unsafe { Module::deserialize_file(engine, path) },
        )
    }

    fn get<T>(
        &self,
        engine: &Engine,
        wasm: &WasmFile,
        precompile: impl FnOnce(&[u8]) -> wasmtime::Result<Vec<u8>>,
        deserialize: impl Fn(&Path) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<(T, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            let compiled = with_spinner(wasm, || precompile(&wasm.bytes))?;
            let artifact = deserialize_bytes(&compiled, &deserialize)?;
            return Ok((artifact, CacheOutcome::Disabled));
        };
        let path = dir.join(format!("{}.cwasm", cache_key(engine, wasm, self.optimize)));
        if path.exists() {
            match deserialize(&path) {
                Ok(artifact) => {
                    tracing::debug!(file = %wasm.display(), cache = %path.display(), "loaded compiled code from cache");
                    return Ok((artifact, CacheOutcome::Hit));
                }
                Err(e) => {
                    tracing::warn!(cache = %path.display(), "ignoring unusable cache entry: {e}")
                }
            }
        }
        let compiled = with_spinner(wasm, || precompile(&wasm.bytes))?;
        if let Err(e) = store(dir, &path, &compiled) {
            tracing::warn!(cache = %dir.display(), "cannot write the compile cache: {e}");
            let artifact = deserialize_bytes(&compiled, &deserialize)?;
            return Ok((artifact, CacheOutcome::Miss));
        }
        Ok((deserialize(&path)?, CacheOutcome::Miss))
    }
}

/// Loads freshly compiled bytes that could not be stored (or with the cache off) through a
/// private temporary file, so both paths share one deserialisation routine.
fn deserialize_bytes<T>(
    compiled: &[u8],
    deserialize: &impl Fn(&Path) -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), compiled)?;
    deserialize(tmp.path())
}

fn store(dir: &Path, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, compiled)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `wasm` rewritten by the load-time optimiser, or `None` to compile it as it is: nothing to
/// merge, or a structure the optimiser leaves alone, and then why (for the log, once the
/// component has compiled).
fn optimized(wasm: &WasmFile, bytes: &[u8]) -> (Option<Vec<u8>>, Option<String>) {
    let start = Instant::now();
    match crate::optimize::optimize_component(bytes) {
        Ok(Some(done)) => {
            if done.merged_modules > 0 {
                tracing::info!(
                    file = %wasm.display(),
                    "merged {} dynamically linked core modules into one in {:.2?}: {} \
                     function-table entries are now initialised when first used instead of at \
                     every instantiation",
                    done.merged_modules,
                    start.elapsed(),
                    done.lazy_elements
                );
            }
            if let Some(e) = &done.not_merged {
                // A linked component the optimiser does not know how to merge.
                tracing::info!(file = %wasm.display(), "linked modules left as they are: {e}");
            }
            if let Some(e) = &done.not_hinted {
                tracing::warn!(file = %wasm.display(), "compiled without the reset hint: {e}");
            }
            if done.reset_hint {
                tracing::debug!(file = %wasm.display(), "added the reset hint");
            }
            (Some(done.bytes), None)
        }
        Ok(None) => (None, None),
        Err(e @ crate::optimize::OptimizeError::Invalid(_)) => {
            tracing::warn!(file = %wasm.display(), "compiling the component as it is: {e}");
            (None, None)
        }
        // A linked component the optimiser does not know how to merge (or one that does not
        // parse, which compiling then says).
        Err(e) => (None, Some(e.to_string())),
    }
}

/// `<sha256 of the wasm>-<hash of engine settings, pier version, kind and optimiser>`.
fn cache_key(engine: &Engine, wasm: &WasmFile, optimize: bool) -> String {
    let content = hex::encode(Sha256::digest(&wasm.bytes));
    let mut settings = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    env!("CARGO_PKG_VERSION").hash(&mut settings);
    matches!(wasm.kind, WasmKind::Component).hash(&mut settings);
    optimize
        .then_some(crate::optimize::VERSION)
        .hash(&mut settings);
    format!("{content}-{:016x}", settings.finish())
}

/// Runs `compile`, showing a spinner with the elapsed time if it takes more than a second and
/// stderr is a terminal; logs the time only when it compiled.
fn with_spinner<T>(
    wasm: &WasmFile,
    compile: impl FnOnce() -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let start = Instant::now();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let spinner = std::io::stderr().is_terminal().then(|| {
        let label = format!("compiling {}", wasm.display());
        std::thread::spawn(move || {
            if done_rx.recv_timeout(Duration::from_secs(1)).is_ok() {
                return;
            }
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("static template"),
            );
            bar.set_message(label);
            bar.enable_steady_tick(Duration::from_millis(100));
            let _ = done_rx.recv();
            bar.finish_and_clear();
        })
    });
    let result = compile();
    drop(done_tx);
    if let Some(thread) = spinner {
        let _ = thread.join();
    }
    if result.is_ok() {
        tracing::info!(file = %wasm.display(), "compiled in {:.2?}", start.elapsed());
    }
    result
}
