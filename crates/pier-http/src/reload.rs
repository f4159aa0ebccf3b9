//! Replacing the app a server serves, without dropping a request.
//!
//! On `SIGHUP`, or with `--watch` when the manifest or a file it names changes (debounced), the
//! app is described again (the manifest read and checked, variables resolved) and built off the
//! request path (what did not change comes from the compile cache), then its routes replace
//! the old ones at once ([`crate::Routes::replace`]): requests in flight finish on the old
//! version, new ones go to the new. The old version's pools, engines and filter VMs are freed
//! when its last request is done. A manifest that does not check, or a component that does not
//! build, leaves the old version serving, with one error line. Each version is a generation,
//! counted from 1: `pier_app_generation` and `/healthz` on the admin listener say which one
//! serves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_config::App;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::cache::SharedCache;
use crate::server::Routes;

/// The gauge of the generation serving.
pub const GENERATION: &str = "pier_app_generation";

/// How long changes to watched files settle before a reload (an editor's save is often several
/// writes and a rename).
const SETTLE: Duration = Duration::from_millis(250);

/// An app being served, and how to replace it.
pub struct Live {
    routes: Arc<Routes>,
    engines: Mutex<Vec<wasmtime::Engine>>,
    /// The serving generation's HTTP caches, by name.
    caches: Mutex<BTreeMap<String, Arc<SharedCache>>>,
    generation: AtomicU64,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Live {
    /// The app serving on `routes` (generation 1), its guests on `engines`, with `caches`.
    pub fn new(
        routes: Arc<Routes>,
        engines: Vec<wasmtime::Engine>,
        caches: BTreeMap<String, Arc<SharedCache>>,
    ) -> Arc<Live> {
        metrics::gauge!(GENERATION).set(1.0);
        Arc::new(Live {
            routes,
            engines: Mutex::new(engines),
            caches: Mutex::new(caches),
            generation: AtomicU64::new(1),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The generation serving new requests.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The engines of the generation serving (for the pool gauges).
    pub fn engines(&self) -> Vec<wasmtime::Engine> {
        self.engines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The serving generation's HTTP cache `name`, if it has one.
    pub fn cache(&self, name: &str) -> Option<Arc<SharedCache>> {
        self.caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Builds `app` off the request path and serves it from now on; returns its generation.
    /// On error the serving generation stays.
    pub async fn replace(&self, app: App) -> anyhow::Result<u64> {
        let _one = self.reloading.lock().await;
        let caches = self
            .caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let built = tokio::task::spawn_blocking(move || crate::build_keeping(&app, &caches))
            .await
            .map_err(|e| anyhow::anyhow!("building the app panicked: {e}"))??;
        for engine in &built.engines {
            pier_engine::start_epoch_ticker(engine);
        }
        built.self_routes.connect(&self.routes);
        self.routes.replace(built.routes);
        // Caches declared again with the same settings were kept, entries and all.
        *self.caches.lock().unwrap_or_else(|e| e.into_inner()) = built.caches;
        let old = std::mem::replace(
            &mut *self.engines.lock().unwrap_or_else(|e| e.into_inner()),
            built.engines,
        );
        // Requests still in the old generation hold what they need of it.
        drop(old);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(GENERATION).set(generation as f64);
        Ok(generation)
    }
}

/// What starts reloads: `SIGHUP`, and with `--watch` a change to a file the app is made of.
pub struct Triggers {
    hangup: Signal,
    watched: Option<Watched>,
}

/// The files watched, and the watcher on their directories.
struct Watched {
    watcher: notify::RecommendedWatcher,
    /// The files, by their directory's real path and their name (as events name them).
    files: Arc<Mutex<BTreeSet<PathBuf>>>,
    dirs: BTreeSet<PathBuf>,
    changed: mpsc::UnboundedReceiver<()>,
}

impl Triggers {
    /// Installs the `SIGHUP` handler now (a `SIGHUP` before it would end the process), and with
    /// `watch`, watches `files`.
    pub fn install(watch: bool, files: &[PathBuf]) -> anyhow::Result<Triggers> {
        let mut triggers = Triggers {
            hangup: signal(SignalKind::hangup())?,
            watched: watch.then(Watched::new).transpose()?,
        };
        triggers.watch(files)?;
        Ok(triggers)
    }

    /// Watches `files` (with `--watch`) instead of those watched so far.
    pub fn watch(&mut self, files: &[PathBuf]) -> notify::Result<()> {
        use notify::{RecursiveMode, Watcher};
        let Some(watched) = &mut self.watched else {
            return Ok(());
        };
        let mut wanted = BTreeSet::new();
        for file in files {
            let dir = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let (Ok(dir), Some(name)) = (std::fs::canonicalize(dir), file.file_name()) else {
                continue;
            };
            wanted.insert(dir.join(name));
            if watched.dirs.insert(dir.clone()) {
                watched.watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            }
        }
        *watched.files.lock().unwrap_or_else(|e| e.into_inner()) = wanted;
        Ok(())
    }

    /// Waits for the next trigger, and says what it was.
    pub async fn next(&mut self) -> &'static str {
        let changed = async {
            match &mut self.watched {
                Some(watched) => {
                    watched.changed.recv().await;
                    // Let the rest of the change land, then take one reload for all of it.
                    tokio::time::sleep(SETTLE).await;
                    while watched.changed.try_recv().is_ok() {}
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.hangup.recv() => "SIGHUP",
            () = changed => "a change to the app's files",
        }
    }
}

impl Watched {
    /// A watcher that notifies `changed` when a watched file is written, created, renamed or
    /// removed (a change made while a reload builds is kept for the next).
    fn new() -> notify::Result<Watched> {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};

        let files: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let (tell, changed) = mpsc::unbounded_channel();
        let watcher = {
            let files = files.clone();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let relevant = match event.kind {
                    EventKind::Create(_) | EventKind::Remove(_) => true,
                    EventKind::Modify(ModifyKind::Metadata(_)) => false,
                    EventKind::Modify(_) => true,
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    _ => false,
                };
                let files = files.lock().unwrap_or_else(|e| e.into_inner());
                if relevant && event.paths.iter().any(|p| files.contains(p)) {
                    let _ = tell.send(());
                }
            })?
        };
        Ok(Watched {
            watcher,
            files,
            dirs: BTreeSet::new(),
            changed,
        })
    }
}

/// Serves reloads of `live` until the process ends: at each trigger, the listener's
/// `certificate` (if it serves TLS) is read again, `describe` says the app again and
/// [`Live::replace`] serves it. Logs one line per reload, success or failure.
pub async fn run(
    live: Arc<Live>,
    mut triggers: Triggers,
    certificate: Option<Arc<crate::Certificate>>,
    describe: impl Fn() -> anyhow::Result<App>,
) {
    loop {
        let why = triggers.next().await;
        let started = Instant::now();
        if let Some(certificate) = &certificate {
            match certificate.reload() {
                Ok(()) => tracing::info!("reloaded ({why}): the TLS certificate"),
                Err(e) => {
                    tracing::error!("reload ({why}): the TLS certificate in service is kept: {e}")
                }
            }
        }
        let app = match describe() {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(
                    "reload ({why}) failed, generation {} still serving: {e:#}",
                    live.generation()
                );
                continue;
            }
        };
        let (routes, components) = (app.routes.len(), app.components.len());
        let new_files = app.files();
        match live.replace(app).await {
            Ok(generation) => {
                if let Err(e) = triggers.watch(&new_files) {
                    tracing::error!("--watch: cannot watch the app's new files: {e}");
                }
                tracing::info!(
                    "reloaded ({why}): generation {generation} serving, {}, {}, built in {} ms",
                    count(routes, "route"),
                    count(components, "component"),
                    started.elapsed().as_millis()
                );
            }
            Err(e) => tracing::error!(
                "reload ({why}) failed, generation {} still serving: {e:#}",
                live.generation()
            ),
        }
    }
}

/// `1 route`, `2 routes`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change to a watched file triggers one reload however many writes it took; a change
    /// to a file beside it that the app is not made of triggers none.
    #[tokio::test]
    async fn watched_files_trigger_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("pier.toml");
        let other = dir.path().join("notes.txt");
        std::fs::write(&manifest, "a").unwrap();
        let mut triggers = Triggers::install(true, std::slice::from_ref(&manifest)).unwrap();
        let quiet = |triggers: &mut Triggers| {
            let watched = triggers.watched.as_mut().unwrap();
            watched.changed.try_recv().is_err()
        };

        std::fs::write(&other, "x").unwrap();
        tokio::time::sleep(SETTLE * 2).await;
        assert!(quiet(&mut triggers), "a file the app is not made of");

        for text in ["b", "bc", "bcd"] {
            std::fs::write(&manifest, text).unwrap();
        }
        let why = tokio::time::timeout(Duration::from_secs(10), triggers.next())
            .await
            .expect("a change to the manifest triggers a reload");
        assert_eq!(why, "a change to the app's files");
        tokio::time::sleep(SETTLE * 2).await;
        assert!(quiet(&mut triggers), "three writes, one reload");

        // Renamed over (as editors and deploys save): still watched, by name.
        let next = dir.path().join("pier.toml.new");
        std::fs::write(&next, "new").unwrap();
        std::fs::rename(&next, &manifest).unwrap();
        tokio::time::timeout(Duration::from_secs(10), triggers.next())
            .await
            .expect("a rename over the manifest triggers a reload");
    }
}
