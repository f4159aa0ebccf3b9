//! The compile cache: a second start loads compiled code instead of compiling.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pier_testkit::{PierServer, Proto, get, guest};

fn pier_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

fn start(app: &Path, cache: &Path) -> PierServer {
    let cache = cache.to_str().unwrap();
    PierServer::start_with_env(
        pier_bin(),
        &[app.to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache), ("PIER_LOG", "pier=debug")],
    )
    .unwrap()
}

/// How long a start-up log line may take to follow the serving line.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn the_second_start_loads_compiled_code_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = start(&guest("hello"), cache.path());
    // The start-up log follows the serving line.
    assert!(first.wait_for_log("compiled in", WAIT), "{}", first.log());
    drop(first);
    assert_eq!(entries(cache.path()), 1, "one entry written");

    let second = start(&guest("hello"), cache.path());
    second.wait_for_log("loaded compiled code from cache", WAIT);
    let log = second.log();
    assert!(
        log.contains("loaded compiled code from cache") && !log.contains("compiled in"),
        "{log}"
    );
    assert_eq!(
        get(&second.addr, Proto::H1, "/").await.unwrap().text(),
        "hello from pier\n"
    );
}

#[tokio::test]
async fn pier_compile_warms_the_cache_for_serve_and_run() {
    let cache = tempfile::tempdir().unwrap();
    let cli = pier_testkit::repo_root().join("guests/prebuilt/cli.wasm");
    for app in [guest("hello"), cli.clone()] {
        let status = Command::new(pier_bin())
            .args(["compile", app.to_str().unwrap()])
            .env("PIER_CACHE_DIR", cache.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert_eq!(entries(cache.path()), 2);

    let server = start(&guest("hello"), cache.path());
    server.wait_for_log("memories are reset", WAIT);
    assert!(
        !server.log().contains("compiled in"),
        "serve used the warmed cache: {}",
        server.log()
    );
    let out = Command::new(pier_bin())
        .args(["run", cli.to_str().unwrap(), "--exit", "0"])
        .env("PIER_CACHE_DIR", cache.path())
        .env("PIER_LOG", "pier=debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("loaded compiled code from cache") && !log.contains("compiled in"),
        "{log}"
    );
    assert_eq!(entries(cache.path()), 2, "no new entry");
}

#[tokio::test]
async fn a_corrupt_entry_is_recompiled_and_replaced() {
    let cache = tempfile::tempdir().unwrap();
    drop(start(&guest("hello"), cache.path()));
    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"not compiled code").unwrap();
    let server = start(&guest("hello"), cache.path());
    assert!(
        server.wait_for_log("ignoring unusable cache entry", WAIT),
        "{}",
        server.log()
    );
    assert_eq!(get(&server.addr, Proto::H1, "/").await.unwrap().status, 200);
    drop(server);
    let again = start(&guest("hello"), cache.path());
    assert!(
        again.wait_for_log("loaded compiled code from cache", WAIT),
        "the entry was replaced: {}",
        again.log()
    );
}

#[test]
fn no_cache_writes_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let server = PierServer::start_with_env(
        pier_bin(),
        &["--no-cache", guest("hello").to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache.path().to_str().unwrap())],
    )
    .unwrap();
    drop(server);
    assert_eq!(entries(cache.path()), 0);
}

/// The user-visible promise: an 18 MB componentize-py component starts in a fraction of its cold
/// time once compiled. (The figures are printed; the ratio asserted is deliberately loose.)
#[tokio::test]
async fn a_cached_python_component_starts_in_a_fraction_of_the_cold_time() {
    let Some(app) = pier_testkit::toolchain_guest("python-hello.wasm") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let timed = || {
        let began = Instant::now();
        let server = start(&app, cache.path());
        (began.elapsed(), server)
    };
    let (cold, server) = timed();
    drop(server);
    let (warm, server) = timed();
    eprintln!("python-hello.wasm: cold start {cold:.2?}, cached start {warm:.2?}");
    assert_eq!(
        get(&server.addr, Proto::H1, "/").await.unwrap().text(),
        "hello from python at /\n"
    );
    assert!(warm * 4 < cold, "cached start {warm:?} vs cold {cold:?}");
    assert!(warm < Duration::from_secs(5));
}
