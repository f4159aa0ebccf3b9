//! The WASI 0.2 core a guest may import: cli, clocks, random, io, filesystem and sockets (the
//! last two usable only through explicit grants). A served guest's context is built only when
//! it first calls an interface that needs one ([`WasiState::Deferred`]).

use std::sync::Arc;

use pier_config::DirGrant;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::{GuestLog, HostState, LogBudget};

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (wasi, table) = self.wasi_and_table();
        wasi.view(table)
    }
}

/// A store's WASI context, or what it is built from.
#[expect(
    clippy::large_enum_variant,
    reason = "it lives in the store's host state, allocated once either way; boxing the context would add an allocation"
)]
pub(crate) enum WasiState {
    /// Built: the guest has used it.
    Built(WasiCtx),
    /// Not built yet. Many guests never call the interfaces that need it (a WAT or wit-bindgen
    /// handler that only speaks `wasi:http`), and building one is a fair share of a small
    /// request: two random generators seeded, a dozen allocations, and an `open` per `--dir`.
    Deferred(Arc<WasiRecipe>),
}

/// What a served guest's WASI context holds: only the granted environment and directories, its
/// stdout and stderr to the log, no arguments, no stdin, no network.
#[derive(Debug)]
pub(crate) struct WasiRecipe {
    /// The component's name, tagging its output in the log.
    pub(crate) component: Arc<str>,
    /// Environment variables, already resolved.
    pub(crate) env: Vec<(String, String)>,
    /// Directories to preopen.
    pub(crate) dirs: Vec<DirGrant>,
    /// What it may reach with `wasi:sockets`.
    pub(crate) sockets: Arc<pier_config::SocketPolicy>,
    /// Bytes one instance may write to its stdout and stderr together.
    pub(crate) max_log: u64,
}

impl WasiRecipe {
    /// A fresh context. A directory that can no longer be opened (checked when the app was
    /// loaded, removed since) is left out, and the log says so: the guest sees no such
    /// preopen, as if it had not been granted.
    pub(crate) fn build(&self) -> WasiCtx {
        let mut wasi = WasiCtx::builder();
        let budget = LogBudget::new(self.max_log);
        wasi.envs(&self.env)
            .stdout(GuestLog::new(
                self.component.clone(),
                "stdout",
                budget.clone(),
            ))
            .stderr(GuestLog::new(self.component.clone(), "stderr", budget));
        super::sockets::grant(&mut wasi, &self.sockets, &self.component);
        for dir in &self.dirs {
            if let Err(e) = wasi.preopened_dir(&dir.host, &dir.guest, perms(dir)) {
                tracing::error!(
                    component = &*self.component,
                    "--dir {}: cannot open the directory, left out of this instance: {e:#}",
                    dir.host.display()
                );
            }
        }
        wasi.build()
    }
}

impl WasiState {
    /// The context (built now if it was deferred) over the store's `table`.
    fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiCtxView<'a> {
        if let WasiState::Deferred(recipe) = self {
            *self = WasiState::Built(recipe.build());
        }
        let WasiState::Built(ctx) = self else {
            unreachable!("built just above")
        };
        WasiCtxView { ctx, table }
    }
}

/// Links every WASI 0.2 core interface.
///
/// The same interfaces as `wasmtime_wasi::p2::add_to_linker_async`, with one difference:
/// `wasi:io` reaches the resource table directly instead of through [`WasiView::ctx`], so a
/// guest that only speaks `wasi:http` and `wasi:io` never has its WASI context built.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::WasiCli;
    use wasmtime_wasi::clocks::WasiClocks;
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
    use wasmtime_wasi::{cli::WasiCliView, clocks::WasiClocksView};
    use wasmtime_wasi_io::bindings::wasi::io;

    let l = linker;
    io::error::add_to_linker::<HostState, Io>(l, HostState::table)?;
    io::poll::add_to_linker::<HostState, Io>(l, HostState::table)?;
    io::streams::add_to_linker::<HostState, Io>(l, HostState::table)?;

    clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, HostState::clocks)?;
    filesystem::preopens::add_to_linker::<_, WasiFilesystem>(l, HostState::filesystem)?;
    filesystem::types::add_to_linker::<_, WasiFilesystem>(l, HostState::filesystem)?;
    random::random::add_to_linker::<_, WasiRandom>(l, HostState::random)?;
    random::insecure::add_to_linker::<_, WasiRandom>(l, HostState::random)?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(l, HostState::random)?;
    cli::exit::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::environment::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    // Creating a socket counts against `--max-sockets`.
    sockets::tcp_create_socket::add_to_linker::<_, super::sockets::CappedSockets>(
        l,
        HostState::capped_sockets,
    )?;
    sockets::instance_network::add_to_linker::<_, WasiSockets>(l, HostState::sockets)?;
    sockets::network::add_to_linker::<_, WasiSockets>(l, &Default::default(), HostState::sockets)?;
    sockets::ip_name_lookup::add_to_linker::<_, WasiSockets>(l, HostState::sockets)?;
    sockets::tcp::add_to_linker::<_, WasiSockets>(l, HostState::sockets)?;
    sockets::udp::add_to_linker::<_, WasiSockets>(l, HostState::sockets)?;
    sockets::udp_create_socket::add_to_linker::<_, super::sockets::CappedSockets>(
        l,
        HostState::capped_sockets,
    )?;
    Ok(())
}

/// `wasi:io` sees only the resource table.
struct Io;

impl wasmtime::component::HasData for Io {
    type Data<'a> = &'a mut ResourceTable;
}

/// What a guest may do in a directory granted to it.
pub(crate) fn perms(dir: &DirGrant) -> FsPerms {
    if dir.read_only {
        FsPerms::ReadOnly
    } else {
        FsPerms::ReadWrite
    }
}
