//! The `pier` command line: flags -> a config -> a library entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pier_config::{CacheConfig, DEFAULT_ADDR, DirGrant, EnvGrant, Grants, RunConfig, ServeConfig};
use pier_engine::{
    CacheOutcome, CompileCache, EngineKind, ProxyApp, RunOutcome, WasmFile, WasmKind,
};

/// pier: a server and runner for WebAssembly components that speak WASI.
#[derive(Parser)]
#[command(version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a wasi:http/proxy component over HTTP/1.1 and HTTP/2.
    Serve(ServeArgs),
    /// Run a wasi:cli command component or a preview1 (wasm32-wasi) module.
    Run(RunArgs),
    /// Compile a component or module into the cache, so the next start is fast.
    Compile(CompileArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
    #[command(flatten)]
    grants: GrantArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// The component to serve.
    #[arg(value_name = "APP.wasm")]
    app: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    grants: GrantArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// The program to run, then its arguments (everything after the program goes to it).
    #[arg(
        value_name = "APP.wasm [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

#[derive(Args)]
struct CompileArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// The component or module to compile.
    #[arg(value_name = "APP.wasm")]
    app: PathBuf,
}

/// What the guest may see of the host; nothing unless granted here.
#[derive(Args)]
struct GrantArgs {
    /// Give the guest an environment variable: NAME=VALUE, or NAME to pass the host's value.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<EnvGrant>,
    /// Preopen a host directory for the guest, as HOST_DIR or HOST_DIR::GUEST_DIR.
    #[arg(long = "dir", value_name = "HOST_DIR[::GUEST_DIR]")]
    dirs: Vec<DirGrant>,
}

#[derive(Args)]
struct CacheArgs {
    /// Do not read or write the compile cache ($PIER_CACHE_DIR, default: the user cache dir).
    #[arg(long)]
    no_cache: bool,
}

impl GrantArgs {
    fn into_grants(self) -> Grants {
        Grants {
            env: self.env,
            dirs: self.dirs,
        }
    }
}

impl CacheArgs {
    fn config(&self) -> CacheConfig {
        let env_dir = std::env::var_os("PIER_CACHE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        CacheConfig::from_env(self.no_cache, env_dir, dirs::cache_dir())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        // A program's own output is what `pier run` shows; pier speaks only of problems.
        Command::Run(_) => "warn",
        _ => "info",
    };
    init_logging(default_log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => run(args).await,
            Command::Compile(args) => compile(args).map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        addr: args.addr,
        app: args.app,
        cache: args.cache.config(),
        grants: args.grants.into_grants(),
    };
    let wasm = WasmFile::read(&config.app)?;
    let engine = pier_engine::new_engine(EngineKind::Serve)?;
    let app = ProxyApp::load(
        &engine,
        &wasm,
        &config.grants,
        &CompileCache::new(&config.cache),
    )?;
    let server = pier_http::Server::bind(config.addr, app).await?;
    eprintln!("pier: serving http://{}", server.local_addr());
    server.serve(shutdown_signal()).await;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut command = args.command.into_iter();
    let config = RunConfig {
        app: command.next().expect("clap requires the program").into(),
        args: command.collect(),
        cache: args.cache.config(),
        grants: args.grants.into_grants(),
    };
    match pier_engine::run(&config).await? {
        RunOutcome::Exit(code) => Ok(ExitCode::from(code as u8)),
        RunOutcome::Trap(e) => {
            eprintln!(
                "pier: {} trapped: {}",
                config.app.display(),
                pier_engine::describe_guest_error(&e)
            );
            Ok(ExitCode::from(pier_engine::TRAP_EXIT_CODE as u8))
        }
    }
}

fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let wasm = WasmFile::read(&args.app)?;
    let cache = CompileCache::new(&args.cache.config());
    let engine = pier_engine::new_engine(EngineKind::Serve)?;
    let outcome = match wasm.kind {
        WasmKind::Component => cache.component(&engine, &wasm).map(|(_, o)| o),
        WasmKind::Module => cache.module(&engine, &wasm).map(|(_, o)| o),
    }
    .map_err(|e| anyhow::anyhow!("{} does not compile: {e:#}", wasm.display()))?;
    let what = match outcome {
        CacheOutcome::Hit => "is already in the compile cache",
        CacheOutcome::Miss => "compiled into the compile cache",
        CacheOutcome::Disabled => "compiles (the cache is off, nothing was stored)",
    };
    eprintln!("pier: {} {what}", wasm.display());
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
