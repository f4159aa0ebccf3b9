//! Hot reload: on SIGHUP (and with `--watch`, on a change to the app's files) the new version
//! replaces the old without dropping a request; each response comes whole from one version, a
//! client never goes back to an older one, and a broken manifest changes nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use pier_testkit::{Client, PROTOS, PierServer, Proto, get, guest, read, signal};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// Version `v` of the app: `/v` answers `VERSION=v`, from the env guest (even versions) or the
/// wasi:config guest (odd ones: a different component, so each reload swaps the code too);
/// `/extra` exists only in odd versions.
fn manifest(v: u64) -> String {
    let mut m = String::from("manifest_version = 1\n[[route]]\npath = \"/v\"\ncomponent = \"c\"\n");
    if v % 2 == 1 {
        m += "[[route]]\npath = \"/extra\"\ncomponent = \"c\"\n";
        m += &format!(
            "[component.c]\nsource = \"config.wasm\"\nvariables = {{ VERSION = \"{{{{ version }}}}\" }}\n[variables]\nversion = {{ default = \"{v}\" }}\n"
        );
    } else {
        m += &format!("[component.c]\nsource = \"env.wasm\"\nenv = {{ VERSION = \"{v}\" }}\n");
    }
    m
}

fn app_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("env"), dir.path().join("env.wasm")).unwrap();
    std::fs::copy(guest("config"), dir.path().join("config.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), manifest(0)).unwrap();
    dir
}

/// Writes version `v` whole, as a deploy would (a new file renamed over the old).
fn deploy(dir: &Path, text: &str) {
    let next = dir.join("pier.toml.next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(next, dir.join("pier.toml")).unwrap();
}

/// The version a response came from, if it is a whole answer of some version.
fn version_of(status: StatusCode, body: &str) -> Option<u64> {
    if status != StatusCode::OK {
        return None;
    }
    body.strip_prefix("VERSION=")?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    newest: AtomicU64,
}

/// One client: its own connection, requests one after another until `stop`.
async fn client(addr: String, proto: Proto, id: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let fail = |why: String| {
        eprintln!("client {id} ({proto:?}): {why}");
        tally.failed.fetch_add(1, Ordering::Relaxed);
    };
    let mut conn = match Client::<Full<Bytes>>::connect(&addr, proto).await {
        Ok(conn) => conn,
        Err(e) => return fail(format!("connect: {e}")),
    };
    let mut last = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let path = if n.is_multiple_of(3) { "/extra" } else { "/v" };
        let req = Request::get(path).body(Full::default()).unwrap();
        let answer = match conn.send(req).await {
            Ok(response) => match read(response).await {
                Ok(answer) => answer,
                Err(e) => return fail(format!("reading {path}: {e}")),
            },
            Err(e) => return fail(format!("sending {path}: {e}")),
        };
        let text = answer.text();
        if path == "/extra" && answer.status == StatusCode::NOT_FOUND {
            // An even version: no such route. Nothing older than what this client saw.
            if text != "no route for /extra\n" {
                fail(format!("/extra: 404 {text:?}"));
            }
            continue;
        }
        match version_of(answer.status, &text) {
            Some(v) if v >= last => {
                if path == "/extra" && v % 2 == 0 {
                    fail(format!(
                        "/extra answered by version {v}, which has no such route"
                    ));
                }
                last = v;
                tally.ok.fetch_add(1, Ordering::Relaxed);
                tally.newest.fetch_max(v, Ordering::Relaxed);
            }
            Some(v) => fail(format!("{path}: version {v} after {last}")),
            None => fail(format!("{path}: {} {text:?}", answer.status)),
        }
    }
}

/// Twenty reloads under a load of 50 clients (half HTTP/1.1, half HTTP/2), with a broken
/// manifest in the middle: no request fails, none is answered by a mix of versions or by an
/// older version than its client had seen, and the generation counts every good reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing() {
    let dir = app_dir();
    let manifest_path = dir.path().join("pier.toml");
    let server = Arc::new(
        PierServer::start(
            pier(),
            &[
                "--admin-addr",
                "127.0.0.1:0",
                manifest_path.to_str().unwrap(),
            ],
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..50)
        .map(|id| {
            tokio::spawn(client(
                server.addr.clone(),
                PROTOS[id % 2],
                id,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();

    let driver = {
        let server = server.clone();
        let dir = dir.path().to_path_buf();
        let tally = tally.clone();
        tokio::task::spawn_blocking(move || {
            let pid = server.pid();
            for v in 1..=20u64 {
                if v == 10 {
                    deploy(
                        &dir,
                        "manifest_version = 1\n[[route]]\npath = \"/v\"\ncomponent = \"missing\"\n",
                    );
                    signal(pid, "HUP").unwrap();
                    assert!(
                        server.wait_for_log(
                            "failed, generation 10 still serving",
                            Duration::from_secs(20)
                        ),
                        "{}",
                        server.log()
                    );
                }
                deploy(&dir, &manifest(v));
                signal(pid, "HUP").unwrap();
                let line = format!("generation {} serving", v + 1);
                assert!(
                    server.wait_for_log(&line, Duration::from_secs(20)),
                    "no {line:?}: {}",
                    server.log()
                );
                // Let the load run on this version a while (20 reloads: about 10 s in all).
                let since = std::time::Instant::now();
                while (tally.newest.load(Ordering::Relaxed) < v
                    || since.elapsed() < Duration::from_millis(400))
                    && since.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let driven = driver.await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    driven.unwrap();
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{ok} answered, {failed} failed; log:\n{}",
        server.log()
    );
    assert_eq!(tally.newest.load(Ordering::Relaxed), 20);
    assert!(ok > 500, "only {ok} requests under load");
    eprintln!("{ok} requests answered across 20 reloads");
    let reloads = server.log().matches("reloaded (SIGHUP)").count();
    assert_eq!(reloads, 20, "{}", server.log());

    let admin = server.admin_addr.clone().unwrap();
    let health = get(&admin, Proto::H1, "/healthz").await.unwrap();
    assert_eq!(health.text(), "ok: generation 21\n");
    let metrics = get(&admin, Proto::H1, "/metrics").await.unwrap().text();
    assert!(
        metrics.lines().any(|l| l == "pier_app_generation 21"),
        "{metrics}"
    );
}

/// `--watch`: writing the manifest, or replacing a component's file, reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_when_the_app_changes() {
    let dir = app_dir();
    let manifest_path = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &["--watch", manifest_path.to_str().unwrap()]).unwrap();
    let body = |addr: String| async move { get(&addr, PROTOS[0], "/v").await.unwrap().text() };
    assert_eq!(body(server.addr.clone()).await, "VERSION=0\n");

    deploy(dir.path(), &manifest(2));
    let waited = tokio::task::block_in_place(|| {
        server.wait_for_log("generation 2 serving", Duration::from_secs(20))
    });
    assert!(waited, "{}", server.log());
    assert_eq!(body(server.addr.clone()).await, "VERSION=2\n");

    // The component's file replaced by another component: reloaded too.
    std::fs::copy(guest("hello"), dir.path().join("env.next")).unwrap();
    std::fs::rename(dir.path().join("env.next"), dir.path().join("env.wasm")).unwrap();
    let waited = tokio::task::block_in_place(|| {
        server.wait_for_log("generation 3 serving", Duration::from_secs(20))
    });
    assert!(waited, "{}", server.log());
    assert_eq!(body(server.addr.clone()).await, "hello from pier\n");
    assert_eq!(
        server
            .log()
            .matches("reloaded (a change to the app's files)")
            .count(),
        2,
        "one reload per change: {}",
        server.log()
    );
}

/// With `--workers`, the supervisor checks the new manifest once and every worker reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_reloads() {
    let dir = app_dir();
    let manifest_path = dir.path().join("pier.toml");
    let server =
        PierServer::start(pier(), &["--workers", "2", manifest_path.to_str().unwrap()]).unwrap();
    deploy(dir.path(), &manifest(4));
    signal(server.pid(), "HUP").unwrap();
    let waited = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while server.log().matches("generation 2 serving").count() < 2 {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    });
    assert!(waited, "{}", server.log());
    // New connections go to either worker: all answer the new version.
    for _ in 0..10 {
        let text = get(&server.addr, PROTOS[1], "/v").await.unwrap().text();
        assert_eq!(text, "VERSION=4\n");
    }
    deploy(dir.path(), "manifest_version = 1\nnonsense = 1\n");
    signal(server.pid(), "HUP").unwrap();
    let said = tokio::task::block_in_place(|| {
        server.wait_for_log("failed, the workers keep serving", Duration::from_secs(20))
    });
    assert!(said, "{}", server.log());
    let text = get(&server.addr, PROTOS[0], "/v").await.unwrap().text();
    assert_eq!(text, "VERSION=4\n");
    assert_eq!(
        server.log().matches("unknown field `nonsense`").count(),
        1,
        "said once: {}",
        server.log()
    );
}
