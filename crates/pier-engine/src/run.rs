//! `pier run`: a `wasi:cli/command` component (WASI 0.2 or 0.3) or a preview1 core module, with
//! the terminal's stdio and exactly the granted env and dirs. The guest's exit code becomes
//! pier's.

use std::sync::Arc;

use pier_config::RunConfig;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::cache::CompileCache;
use crate::engine::{EngineKind, new_engine};
use crate::host::{HostState, Outbound};
use crate::http_app::{AppError, check_dir, export_names, exports_instance, exports_list};
use crate::load::{WasmFile, WasmKind};

/// Exit code for a guest that trapped, as a process killed by SIGABRT (what `wasmtime run` does).
pub const TRAP_EXIT_CODE: i32 = 128 + 6;

/// `pier run` has no time limit: an epoch deadline that is never reached.
const NO_DEADLINE: u64 = u64::MAX / 2;

/// How a program ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// The guest exited with this code (0 for a normal return).
    Exit(i32),
    /// The guest trapped; the error carries the trap and its wasm backtrace.
    Trap(wasmtime::Error),
}

/// Loads and runs the program `config` names; a component's outgoing HTTP requests go to
/// `outbound`.
pub async fn run(config: &RunConfig, outbound: Arc<dyn Outbound>) -> anyhow::Result<RunOutcome> {
    let wasm = WasmFile::read(&config.app)?;
    let engine = new_engine(EngineKind::Run, wasm.p3)?;
    let cache = CompileCache::new(&config.cache).optimize(config.optimize);
    for dir in &config.grants.dirs {
        check_dir(dir)?;
    }
    let wasi = wasi_builder(config, &wasm)?;
    let result = match wasm.kind {
        WasmKind::Component => {
            run_component(&engine, &cache, &wasm, wasi, outbound, config.max_sockets).await?
        }
        WasmKind::Module => run_module(&engine, &cache, &wasm, wasi).await?,
    };
    Ok(match result {
        Ok(code) => RunOutcome::Exit(code),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => RunOutcome::Exit(exit.0),
            None => RunOutcome::Trap(e),
        },
    })
}

fn wasi_builder(config: &RunConfig, wasm: &WasmFile) -> anyhow::Result<WasiCtxBuilder> {
    // The program's name is its file name only, as `wasmtime run` gives it: where the file is
    // on the host is not the guest's to know.
    let argv0 = wasm.path.file_name().map_or_else(
        || wasm.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio()
        .arg(argv0)
        .args(&config.args)
        .envs(&config.grants.resolve_env(|name| std::env::var(name).ok()));
    for dir in &config.grants.dirs {
        wasi.preopened_dir(&dir.host, &dir.guest, crate::host::dir_perms(dir))?;
    }
    crate::host::grant_sockets(
        &mut wasi,
        &Arc::new(config.grants.sockets.clone()),
        &wasm.name.as_str().into(),
    );
    Ok(wasi)
}

/// Runs `wasi:cli/run` (0.3 if the component exports both). The outer error is a load problem;
/// the inner one is how the guest ended.
async fn run_component(
    engine: &Engine,
    cache: &CompileCache,
    wasm: &WasmFile,
    mut wasi: WasiCtxBuilder,
    outbound: Arc<dyn Outbound>,
    max_sockets: Option<usize>,
) -> anyhow::Result<wasmtime::Result<i32>> {
    let (component, _) = cache
        .component(engine, wasm)
        .map_err(|e| AppError::compile(wasm, e))?;
    let p3 = exports_instance(engine, &component, crate::p3::CLI_RUN);
    if !p3 && !exports_instance(engine, &component, crate::http_app::CLI_RUN) {
        let exports = export_names(engine, &component);
        let http = |e: &String| {
            e.starts_with("wasi:http/incoming-handler@") || e.starts_with("wasi:http/handler@")
        };
        let hint = if exports.iter().any(http) {
            "; it is an HTTP component: serve it with `pier serve`"
        } else {
            ""
        };
        let path = wasm.display().to_string();
        return Err(AppError::NoRun {
            path,
            exports: exports_list(&exports),
            hint,
        }
        .into());
    }
    let mut linker = Linker::<HostState>::new(engine);
    crate::host::link(&mut linker, wasm.p3).map_err(|e| AppError::link(wasm, e))?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| AppError::link(wasm, e))?;
    let mut state = HostState::new(wasi.build(), outbound);
    if let Some(max) = max_sockets {
        state.limit_sockets(max);
    }
    let mut store = Store::new(engine, state);
    store.set_epoch_deadline(NO_DEADLINE);
    if p3 {
        let outcome = crate::p3::run(&mut store, pre).await;
        return Ok(outcome.map(|status| if status.is_ok() { 0 } else { 1 }));
    }
    let command = match CommandPre::new(pre) {
        Ok(pre) => pre,
        Err(e) => return Err(AppError::link(wasm, e).into()),
    };
    let outcome = async {
        let command = command.instantiate_async(&mut store).await?;
        command.wasi_cli_run().call_run(&mut store).await
    }
    .await;
    Ok(outcome.map(|status| if status.is_ok() { 0 } else { 1 }))
}

/// Runs a preview1 module's `_start` natively (so `proc_exit(n)` gives exactly `n`).
async fn run_module(
    engine: &Engine,
    cache: &CompileCache,
    wasm: &WasmFile,
    mut wasi: WasiCtxBuilder,
) -> anyhow::Result<wasmtime::Result<i32>> {
    let (module, _) = cache
        .module(engine, wasm)
        .map_err(|e| AppError::compile(wasm, e))?;
    let mut linker = wasmtime::Linker::<WasiP1Ctx>::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |cx| cx)?;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| AppError::link(wasm, e))?;
    if module.get_export("_start").is_none() {
        anyhow::bail!(
            "{} has no `_start` export: it is not a preview1 command",
            wasm.display()
        );
    }
    let mut store = Store::new(engine, wasi.build_p1());
    store.set_epoch_deadline(NO_DEADLINE);
    let outcome = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    }
    .await;
    Ok(outcome.map(|()| 0))
}
