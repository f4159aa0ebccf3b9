//! `pier serve --workers N`: a supervisor and N worker processes serving together on one port.
//!
//! In one multi-threaded process every page a guest touches costs every core: a copy-on-write
//! fault, or the `madvise` that resets an instance's memory, interrupts the other threads to
//! flush their TLBs. Python and JavaScript guests took hundreds of such faults per request until
//! pier kept the pages they write resident (`pier_engine::Joined`); a guest that still takes
//! them (one whose memory has no reset hint, or with swap on) gains most from workers, which run
//! their guests on one thread each, so those flushes stay on one core.
//!
//! The supervisor listens on the port with one socket per worker (`SO_REUSEPORT`: the kernel
//! spreads new connections over them), compiles the component into the cache once, starts the
//! workers, each inheriting its socket (`--worker-fd`), and waits until each is ready, starts
//! another on the same socket when one dies (trying a few times before giving up), and on
//! SIGTERM or Ctrl-C passes the stop on and waits for every worker to drain. Because the
//! supervisor holds the sockets, connections the kernel queued for a worker that died wait for
//! its replacement instead of being reset.
//!
//! With `--admin-addr`, the supervisor also holds a loopback socket per worker, on which the
//! worker serves its own metrics (`--worker-admin-fd`), and its admin listener gathers them all
//! (`pier_http::admin::Workers`).

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ServeArgs;

/// pier's own executable, as it was started: still there after a package upgrade replaced (and
/// so unlinked) the file, when `current_exe` would name a deleted path.
const SELF_EXE: &str = "/proc/self/exe";

/// What a worker prints on its stdout once it listens.
const READY: &str = "pier: worker ready";

/// The environment variable that tells a worker its supervisor's pid.
const SUPERVISOR_PID: &str = "PIER_SUPERVISOR_PID";

/// The environment variable that tells a worker its number (0..N), for logs and for guests that
/// are granted it (`--env PIER_WORKER`).
const WORKER_INDEX: &str = "PIER_WORKER";

/// Runs `pier serve --workers N` until SIGTERM or Ctrl-C.
pub async fn supervise(args: &ServeArgs) -> anyhow::Result<()> {
    let n = args.workers;
    let manifest_filters = match &args.app {
        Some(app) if crate::is_manifest(app) => {
            !pier_config::load_manifest(app)?.filters.is_empty()
        }
        _ => false,
    };
    if args.filters.any() || manifest_filters {
        bail!(
            "--workers {n} with --filter is not supported yet: filter VMs share data and queues within one process only; give one of them"
        );
    }
    // From here on a stop is graceful, even while the workers are still starting.
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    let port = pier_http::SharedPort::bind(args.addr, n as usize, "--addr")?;
    // The supervisor's admin listener shows every worker's metrics; each worker serves its own
    // on a loopback socket made here, which its replacements inherit too.
    let mut admin_addr = None;
    let admin = match args.admin_addr {
        Some(addr) => {
            let listener = pier_http::admin::bind(addr).await?;
            let workers = Arc::new(
                pier_http::admin::Workers::bind(n as usize)
                    .context("cannot listen on loopback for the workers' metrics")?,
            );
            admin_addr = Some(listener.local_addr()?);
            let admin = pier_http::admin::Admin::Workers(workers.clone());
            tokio::spawn(pier_http::admin::serve(listener, admin));
            Some(workers)
        }
        None => None,
    };
    let sockets = Sockets {
        port: &port,
        admin: admin.as_deref(),
    };
    let (stop, stopping) = watch::channel(false);
    // Reloads: the supervisor checks the app, then each worker reloads it (SIGHUP).
    let watched = if args.watch {
        args.app()?.files()
    } else {
        Vec::new()
    };
    let mut reloads = pier_http::Triggers::install(args.watch, &watched)?;
    let (reload, reloading) = watch::channel(0u64);
    let signals = || Signals {
        stop: stopping.clone(),
        reload: reloading.clone(),
    };
    let mut running = JoinSet::new();
    // Each worker's start-up log waits until the serving line is out: closing its stdin lets
    // it go.
    let mut held_logs = Vec::new();
    let startup = async {
        // Compile once, rather than in every worker at the same time; in a process of its own,
        // so the supervisor never holds a component's memory. Its errors are worker 0's to
        // report.
        let component = args
            .app
            .as_ref()
            .filter(|app| !args.cache.no_cache && !crate::is_manifest(app));
        if let Some(app) = component {
            let mut compile = pier_command();
            compile.arg("compile");
            if args.cache.no_optimize {
                compile.arg("--no-optimize");
            }
            let _ = compile
                .arg(app)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await;
        }
        for index in 0..n {
            let (child, stdout, log) = start(index, &sockets).await?;
            held_logs.push(log);
            running.spawn(watch(index, child, stdout, signals(), admin.clone()));
        }
        anyhow::Ok(())
    };
    let stopped_while_starting = tokio::select! {
        biased;
        () = &mut shutdown => true,
        started = startup => {
            started?;
            false
        }
    };

    // A replacement that cannot start (after `REPLACEMENT_ATTEMPTS`) stops the others
    // gracefully, then pier fails.
    let mut replacement_failed = None;
    if !stopped_while_starting {
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        // Held, then written with the serving line.
        tracing::info!(workers = n, "every worker listens");
        let mut first = format!("pier: serving {scheme}://{}\n", port.addr());
        if let Some(addr) = &admin_addr {
            first.push_str(&format!("pier: admin on http://{addr}\n"));
        }
        crate::logs::release_after(&first);
        drop(held_logs);
        loop {
            let ended = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(ended) = running.join_next() => ended?,
                why = reloads.next() => {
                    // Checked here first: a manifest that does not parse is said once, not
                    // by every worker.
                    match args.app() {
                        Ok(app) => {
                            if let Err(e) = reloads.watch(&app.files()) {
                                tracing::error!("--watch: cannot watch the app's new files: {e}");
                            }
                            tracing::info!("reload ({why}): every worker reloads");
                            reload.send_modify(|n| *n += 1);
                        }
                        Err(e) => tracing::error!("reload ({why}) failed, the workers keep serving: {e:#}"),
                    }
                    continue;
                }
            };
            let Ended {
                index,
                status,
                lived,
            } = ended;
            let clean = matches!(&status, Ok(s) if s.success());
            tracing::error!(
                worker = index,
                "worker exited unexpectedly ({}); starting another",
                describe(&status)
            );
            // One that dies at once is not restarted in a tight loop; one that stopped cleanly was
            // told to by someone, perhaps stopping pier too (Ctrl-C reaches every process).
            let pause = if clean || lived < Duration::from_secs(1) {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            let restart = async {
                tokio::time::sleep(pause).await;
                replace(index, &sockets).await
            };
            let started = tokio::select! {
                biased;
                () = &mut shutdown => break,
                started = restart => started,
            };
            match started {
                Ok((child, stdout)) => {
                    running.spawn(watch(index, child, stdout, signals(), admin.clone()));
                }
                Err(e) => {
                    replacement_failed = Some(e);
                    break;
                }
            }
        }
    }

    tracing::info!("stopping the workers");
    // Closing the supervisor's copies first: once the workers have closed theirs, new
    // connections are refused rather than queued where no one will accept them.
    drop(port);
    let _ = stop.send(true);
    let mut failed = 0;
    while let Some(ended) = running.join_next().await {
        let Ended { index, status, .. } = ended?;
        if !matches!(status, Ok(s) if s.success()) {
            tracing::error!(
                worker = index,
                "worker did not stop cleanly ({})",
                describe(&status)
            );
            failed += 1;
        }
    }
    if let Some(e) = replacement_failed {
        return Err(e);
    }
    if failed > 0 {
        bail!("{failed} workers did not stop cleanly");
    }
    Ok(())
}

/// How many times a replacement for a worker that died is tried, the waits between tries
/// doubling from one second (7 s in all): a passing shortage (memory, processes) is ridden out,
/// while a lasting failure (say, the component file replaced by a broken one) stops pier within
/// seconds rather than leave the connections queued on the dead worker's socket waiting for good.
const REPLACEMENT_ATTEMPTS: u32 = 4;

/// Starts a replacement for worker `index`, trying again on failure.
async fn replace(index: u32, sockets: &Sockets<'_>) -> anyhow::Result<(Child, ChildStdout)> {
    let mut wait = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        // Serving has begun: the replacement logs at once.
        match start(index, sockets)
            .await
            .map(|(child, stdout, _log)| (child, stdout))
        {
            Err(e) if attempt < REPLACEMENT_ATTEMPTS => {
                tracing::error!(
                    worker = index,
                    "replacement {attempt} of {REPLACEMENT_ATTEMPTS} failed ({e}); trying again in {}s",
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            started => return started,
        }
    }
}

/// The sockets the supervisor holds for its workers.
struct Sockets<'a> {
    /// The serving port: a listening socket per worker.
    port: &'a pier_http::SharedPort,
    /// With `--admin-addr`: a loopback socket per worker for its metrics.
    admin: Option<&'a pier_http::admin::Workers>,
}

impl Sockets<'_> {
    /// Worker `index`'s sockets: serving, and admin if any.
    fn of(&self, index: u32) -> (RawFd, Option<RawFd>) {
        let index = index as usize;
        let serving = self.port.listener(index).as_raw_fd();
        let admin = self.admin.map(|a| a.listener(index).as_raw_fd());
        (serving, admin)
    }
}

/// Starts worker `index` on its sockets and waits until it is ready.
async fn start(
    index: u32,
    sockets: &Sockets<'_>,
) -> anyhow::Result<(Child, ChildStdout, ChildStdin)> {
    let (socket, admin) = sockets.of(index);
    let mut command = pier_command();
    command
        .args(worker_args(std::env::args_os().skip(1), socket, admin))
        .env(SUPERVISOR_PID, std::process::id().to_string())
        .env(WORKER_INDEX, index.to_string())
        // Closed when the worker may write its start-up log (see `release_log`).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    // The worker inherits its sockets at the same numbers; every other descriptor stays
    // close-on-exec.
    // SAFETY: runs in the child between fork and exec, and calls only fcntl, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            for fd in std::iter::once(socket).chain(admin) {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start a worker")?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).await? == 0 {
            let status = child.wait().await;
            if matches!(&status, Ok(s) if s.code() == Some(1)) {
                // A start-up error (bad flags, a component that cannot be served), which the
                // worker has said in its one line.
                return Err(Reported.into());
            }
            bail!(
                "worker {index} exited before it listened ({}); its log is above",
                describe(&status)
            );
        }
        if line.trim_end() == READY {
            break;
        }
        print!("{line}");
    }
    // Nothing else is buffered: the worker wrote the ready line last.
    Ok((child, stdout.into_inner(), stdin))
}

/// A command running this pier executable, under the name it was started with.
fn pier_command() -> Command {
    let mut command = Command::new(SELF_EXE);
    command.arg0(std::env::args_os().next().unwrap_or_else(|| "pier".into()));
    command
}

/// A worker's command line: the supervisor's, with `--worker-fd FD` (and `--worker-admin-fd FD`)
/// right after `serve` (not at the end, where a `--` would make them the component's path).
fn worker_args(
    args: impl Iterator<Item = std::ffi::OsString>,
    fd: RawFd,
    admin: Option<RawFd>,
) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut placed = false;
    for arg in args {
        let serve = !placed && arg == "serve";
        out.push(arg);
        if serve {
            out.push("--worker-fd".into());
            out.push(fd.to_string().into());
            if let Some(admin) = admin {
                out.push("--worker-admin-fd".into());
                out.push(admin.to_string().into());
            }
            placed = true;
        }
    }
    out
}

/// A worker failed to start and said why itself: pier exits 1 without a line of its own.
#[derive(Debug, thiserror::Error)]
#[error("a worker failed to start")]
pub struct Reported;

/// How a worker ended, and how long it had run.
struct Ended {
    index: u32,
    status: std::io::Result<ExitStatus>,
    lived: Duration,
}

/// What the supervisor tells its workers.
struct Signals {
    /// Stop (SIGTERM).
    stop: watch::Receiver<bool>,
    /// Reload the app (SIGHUP), each time it changes.
    reload: watch::Receiver<u64>,
}

/// Waits for worker `index` to exit, passing its stdout on; on `stop`, sends it SIGTERM first,
/// and SIGHUP on each `reload`. Meanwhile `admin` (with `--admin-addr`) counts it as running.
async fn watch(
    index: u32,
    mut child: Child,
    mut stdout: ChildStdout,
    signals: Signals,
    admin: Option<Arc<pier_http::admin::Workers>>,
) -> Ended {
    let Signals {
        mut stop,
        mut reload,
    } = signals;
    // A worker started after a reload reads the app as it is now.
    reload.mark_unchanged();
    let started = Instant::now();
    let set_running = |running| {
        if let Some(admin) = &admin {
            admin.set_running(index as usize, running);
        }
    };
    set_running(true);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut stdout, &mut tokio::io::stdout()).await;
    });
    // `id` is None once the child has been reaped, so this never signals a reused pid.
    let send = |child: &Child, signal| {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                send(&child, libc::SIGTERM);
                break child.wait().await;
            }
            Ok(()) = reload.changed() => send(&child, libc::SIGHUP),
        }
    };
    set_running(false);
    Ended {
        index,
        status,
        lived: started.elapsed(),
    }
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// In a worker: stop (gracefully, as on SIGTERM) when the supervisor goes away, even if it was
/// killed.
pub fn stop_with_supervisor() -> anyhow::Result<()> {
    let supervisor: Option<libc::pid_t> = std::env::var(SUPERVISOR_PID)
        .ok()
        .and_then(|p| p.parse().ok());
    let Some(supervisor) = supervisor else {
        bail!("--worker-fd is for the workers pier serve --workers starts itself");
    };
    // SAFETY: sets this process's parent-death signal; no memory is involved.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    if rc != 0 {
        bail!(
            "cannot ask to be stopped with the supervisor: {}",
            std::io::Error::last_os_error()
        );
    }
    // The supervisor may have gone before the call above, and then no signal would come.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != supervisor {
        bail!("the supervisor is gone");
    }
    Ok(())
}

/// In a worker: the listening socket the supervisor gave at `fd` (with `flag`).
pub fn inherited_listener(fd: RawFd, flag: &str) -> anyhow::Result<std::net::TcpListener> {
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`; a bad fd only fails.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut listening).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        bail!(
            "{flag} {fd} is not a listening socket ({flag} is for the workers pier serve --workers starts itself)"
        );
    }
    // SAFETY: the fd is open and a listening socket (checked above), and nothing else in this
    // process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .with_context(|| format!("{flag} {fd} is not a TCP socket"))?;
    // Not passed on to anything this worker starts.
    // SAFETY: fcntl on an fd this function now owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(listener)
}

/// In a worker: tells the supervisor it listens, and writes the start-up log once the
/// supervisor closes the worker's stdin (after its serving line).
pub fn ready() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY}")?;
    stdout.flush()?;
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        crate::logs::release();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_socket_goes_right_after_serve() {
        fn args(line: &str) -> Vec<std::ffi::OsString> {
            line.split(' ').map(Into::into).collect()
        }
        let line = args("--log-format json serve --workers 2 -- app.wasm");
        let given = worker_args(line.clone().into_iter(), 7, None);
        let want = args("--log-format json serve --worker-fd 7 --workers 2 -- app.wasm");
        assert_eq!(given, want);
        let given = worker_args(line.into_iter(), 7, Some(9));
        let want = args(
            "--log-format json serve --worker-fd 7 --worker-admin-fd 9 --workers 2 -- app.wasm",
        );
        assert_eq!(given, want);
    }
}
