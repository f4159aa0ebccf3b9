//! `wasi:keyvalue`: a component opens the stores granted to it, and no other; the default store
//! is SQLite on disk beside the manifest; increments from many requests at once, and from
//! several worker processes, are all counted; what was acknowledged survives `kill -9`; keys over
//! the limit are an error to the guest, not a trap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use http::{Request, StatusCode};
use pier_testkit::{PROTOS, PierServer, guest, send, signal};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

const MANIFEST: &str = r#"manifest_version = 1
[[route]]
host = "a.test"
path = "/..."
component = "a"
[[route]]
host = "b.test"
path = "/..."
component = "b"

[component.a]
source = "kv.wasm"
key_value_stores = ["default"]
[component.b]
source = "kv.wasm"
"#;

async fn ask(addr: &str, i: usize, host: &str, path: &str) -> (StatusCode, String) {
    let req = Request::get(path)
        .header("host", host)
        .body(Default::default())
        .unwrap();
    let answer = send(addr, PROTOS[i % 2], req).await.unwrap();
    (answer.status, answer.text())
}

/// `n` increments at once: each answered with a count no other got.
async fn count(addr: &str, host: &'static str, n: usize) -> BTreeSet<u64> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let addr = addr.to_string();
            tokio::spawn(async move { ask(&addr, i, host, "/count").await })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for task in tasks {
        let (status, text) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(seen.insert(text.parse::<u64>().unwrap()), "{text} twice");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_counts_in_the_store_it_was_granted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), MANIFEST).unwrap();
    let manifest = dir.path().join("pier.toml");
    let args = ["--admin-addr", "127.0.0.1:0", manifest.to_str().unwrap()];
    let server = PierServer::start(pier(), &args).unwrap();

    let seen = count(&server.addr, "a.test", 100).await;
    assert_eq!(seen, (1..=100).collect(), "every increment counted once");
    let admin = server.admin_addr.clone().unwrap();
    let metrics = pier_testkit::get(&admin, PROTOS[0], "/metrics")
        .await
        .unwrap()
        .text();
    let line = "pier_kv_operations_total{store=\"default\",backend=\"sqlite\",op=\"increment\",result=\"ok\"} 100";
    assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    assert!(metrics.contains("pier_kv_operation_duration_seconds_bucket{store=\"default\""));
    assert!(
        dir.path().join(".pier/data/default.sqlite").is_file(),
        "the default store is beside the manifest"
    );
    assert_eq!(
        ask(&server.addr, 0, "a.test", "/denied").await.1,
        "access-denied"
    );
    assert_eq!(
        ask(&server.addr, 1, "a.test", "/big").await.1,
        "other: a key of 300 bytes is longer than the limit of 256 bytes"
    );
    // b was granted nothing: its open of "default" fails, and it traps on that.
    let (status, _) = ask(&server.addr, 0, "b.test", "/count").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        server.wait_for_log(
            "key_value_stores = [\"default\"] in [component.b]",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );

    // Acknowledged is on disk: killed without a chance to flush anything, then started again.
    signal(server.pid(), "KILL").unwrap();
    drop(server);
    let server = PierServer::start(pier(), &args).unwrap();
    assert_eq!(ask(&server.addr, 1, "a.test", "/count").await.1, "101");
}

/// Two worker processes share one SQLite file: increments from both are all counted, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let wasm = guest("kv");
    let server = PierServer::start(
        pier(),
        &[
            "--workers",
            "2",
            "--kv",
            "default",
            "--state-dir",
            state.to_str().unwrap(),
            wasm.to_str().unwrap(),
        ],
    )
    .unwrap();
    let seen = count(&server.addr, "localhost", 200).await;
    assert_eq!(seen, (1..=200).collect());
    assert!(state.join("default.sqlite").is_file());
}

#[test]
fn store_grants_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    let manifest = dir.path().join("pier.toml");
    std::fs::write(
        &manifest,
        MANIFEST.replace(
            "key_value_stores = [\"default\"]",
            "key_value_stores = [\"cache\"]",
        ),
    )
    .unwrap();
    pier_testkit::assert_one_line_error(
        pier(),
        &["serve", manifest.to_str().unwrap()],
        &["key-value store \"cache\" is not declared: add a [key_value_store.cache] table"],
    );
    pier_testkit::assert_one_line_error(
        pier(),
        &["serve", "--kv", "default", manifest.to_str().unwrap()],
        &["--kv with a manifest"],
    );
}

/// The draft2 interfaces (what the Spin SDKs import) on the same store: compare-and-swap gives
/// the first writer the value and the second `cas-failed`; a counter set through draft2 is the
/// same counter draft reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draft2_compare_and_swap_and_counters_share_the_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    std::fs::copy(guest("kv2"), dir.path().join("kv2.wasm")).unwrap();
    std::fs::write(
        dir.path().join("pier.toml"),
        r#"manifest_version = 1
[[route]]
host = "v1.test"
path = "/..."
component = "v1"
[[route]]
host = "v2.test"
path = "/..."
component = "v2"
[component.v1]
source = "kv.wasm"
key_value_stores = ["default"]
[component.v2]
source = "kv2.wasm"
key_value_stores = ["default"]
"#,
    )
    .unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    assert_eq!(
        ask(&server.addr, 0, "v2.test", "/race").await.1,
        "one-won",
        "{}",
        server.log()
    );
    assert_eq!(ask(&server.addr, 0, "v2.test", "/add").await.1, "7");
    assert_eq!(ask(&server.addr, 1, "v2.test", "/add").await.1, "14");
    // Another key through draft: the same store file.
    assert_eq!(ask(&server.addr, 0, "v1.test", "/count").await.1, "1");
}

/// A Redis store: counted exactly under two workers; Redis down is an error answered at once
/// (the guest's own answer, not a trap or a hang), and it serves again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_store_counts_and_survives_redis_going_away() {
    let Some(mut redis) = pier_testkit::RedisServer::start() else {
        return;
    };
    let (dir, manifest) = redis_app(&redis, "prefix = \"test:\"\n");
    let server =
        PierServer::start(pier(), &["--workers", "2", manifest.to_str().unwrap()]).unwrap();
    let seen = count(&server.addr, "a.test", 200).await;
    assert_eq!(seen, (1..=200).collect());
    assert!(
        !dir.path().join(".pier").exists(),
        "no SQLite file for a Redis store"
    );

    redis.kill();
    let started = std::time::Instant::now();
    let (status, text) = ask(&server.addr, 0, "a.test", "/count").await;
    assert_eq!(status, StatusCode::OK, "the guest answers the error itself");
    assert!(text.starts_with("other: redis 127.0.0.1:"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let _redis = pier_testkit::RedisServer::start_on(redis.port).unwrap();
    // A fresh Redis holds nothing: counting starts again. Each worker's first increment after
    // the restart may fail (an increment is never sent twice); then every one succeeds.
    let mut in_a_row = 0;
    for i in 0..100 {
        let answer = ask(&server.addr, i, "a.test", "/count").await.1;
        if answer.parse::<u64>().is_ok() {
            in_a_row += 1;
            if in_a_row == 10 {
                break;
            }
        } else {
            assert!(answer.starts_with("other: redis"), "{answer}");
            in_a_row = 0;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(in_a_row, 10, "Redis is back: requests count again");
    let more = count(&server.addr, "a.test", 20).await;
    assert_eq!(more.len(), 20);
}

/// The kv guest's app in a new directory, its `default` store on `redis` (`extra`: more keys of
/// that table); the directory and its manifest's path.
fn redis_app(redis: &pier_testkit::RedisServer, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    let manifest = dir.path().join("pier.toml");
    std::fs::write(
        &manifest,
        format!(
            "{MANIFEST}\n[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n{extra}",
            redis.url()
        ),
    )
    .unwrap();
    (dir, manifest)
}

fn kv(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(pier())
        .arg("kv")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pier kv` seeds and reads the stores `serve` uses, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_kv_reads_and_writes_the_stores_serve_uses() {
    let redis = pier_testkit::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    let mut manifests = vec![MANIFEST.to_string()];
    if let Some(redis) = &redis {
        manifests.push(format!(
            "{MANIFEST}\n[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ));
    }
    for manifest in manifests {
        std::fs::write(dir.path().join("pier.toml"), &manifest).unwrap();
        assert_eq!(kv(dir.path(), &["default", "set", "hits", "41"]).0, Some(0));
        let server =
            PierServer::start(pier(), &[dir.path().join("pier.toml").to_str().unwrap()]).unwrap();
        assert_eq!(ask(&server.addr, 0, "a.test", "/count").await.1, "42");
        drop(server);
        assert_eq!(
            kv(dir.path(), &["default", "get", "hits"]),
            (Some(0), "42".into(), String::new())
        );
        assert_eq!(kv(dir.path(), &["default", "list"]).1, "hits\n");
        assert_eq!(kv(dir.path(), &["default", "delete", "hits"]).0, Some(0));
        let (code, _, stderr) = kv(dir.path(), &["default", "get", "hits"]);
        assert_eq!(code, Some(1));
        assert_eq!(stderr, "pier: no value for \"hits\" in store default\n");
    }
    let (code, _, stderr) = kv(dir.path(), &["nope", "list"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no key-value store \"nope\""), "{stderr}");
}

/// One manifest, deployed against SQLite on a laptop and Redis in production: the runtime
/// configuration says where the stores it names live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_config_places_the_manifests_stores() {
    let Some(redis) = pier_testkit::RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), MANIFEST).unwrap();
    let runtime = dir.path().join("production.toml");
    std::fs::write(
        &runtime,
        format!(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\nprefix = \"prod:\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(
        pier(),
        &[
            "--runtime-config",
            runtime.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(ask(&server.addr, 0, "a.test", "/count").await.1, "1");
    assert!(!dir.path().join(".pier").exists(), "not the SQLite default");
    let runtime_arg = runtime.to_str().unwrap();
    assert_eq!(
        kv(
            dir.path(),
            &["--runtime-config", runtime_arg, "default", "get", "hits"]
        )
        .1,
        "1"
    );

    std::fs::write(&runtime, "[key_value_store.other]\n").unwrap();
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--runtime-config",
            runtime_arg,
            manifest.to_str().unwrap(),
        ],
        &["key-value store \"other\" is not one the manifest names"],
    );
    std::fs::write(
        &runtime,
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"http://x\"\n",
    )
    .unwrap();
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--runtime-config",
            runtime_arg,
            manifest.to_str().unwrap(),
        ],
        &["production.toml:3:7: url \"http://x\": expected redis://HOST:PORT"],
    );
}

/// Writes under load, pier killed (`kill -9`) in the middle: every key whose request was
/// answered is in the store afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_pier_is_killed_mid_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), MANIFEST).unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    let clients = write_keys(&server.addr, 20, 1000);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    signal(server.pid(), "KILL").unwrap();
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    drop(server);
    assert!(
        acknowledged.len() > 100,
        "only {} writes",
        acknowledged.len()
    );
    assert_kept(dir.path(), &acknowledged);
    eprintln!("{} acknowledged writes, all kept", acknowledged.len());
}

/// Apps from real toolchains: a componentize-py app through draft2 (counter, batch, key
/// listing, an ungranted store) and a componentize-js app through draft, on one store, on
/// SQLite and on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_apps_use_the_store() {
    let (Some(py), Some(js)) = (
        pier_testkit::toolchain_guest("python-kv.wasm"),
        pier_testkit::toolchain_guest("js-kv.wasm"),
    ) else {
        return;
    };
    let redis = pier_testkit::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(py, dir.path().join("py.wasm")).unwrap();
    std::fs::copy(js, dir.path().join("js.wasm")).unwrap();
    let base = r#"manifest_version = 1
[[route]]
host = "py.test"
path = "/..."
component = "py"
[[route]]
host = "js.test"
path = "/..."
component = "js"
[component.py]
source = "py.wasm"
key_value_stores = ["default"]
[component.js]
source = "js.wasm"
key_value_stores = ["default"]
"#;
    let mut manifests = vec![base.to_string()];
    if let Some(redis) = &redis {
        manifests.push(format!(
            "{base}[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ));
    }
    let cache = dir.path().join("cache");
    for manifest in manifests {
        std::fs::write(dir.path().join("pier.toml"), &manifest).unwrap();
        let server = PierServer::start_with_env(
            pier(),
            &[dir.path().join("pier.toml").to_str().unwrap()],
            &[("PIER_CACHE_DIR", cache.to_str().unwrap())],
        )
        .unwrap();
        for n in 1..=3 {
            let text = ask(&server.addr, n, "py.test", "/count").await.1;
            assert_eq!(text, format!("count {n}\n"), "{}", server.log());
        }
        assert_eq!(ask(&server.addr, 0, "js.test", "/").await.1, "count 1\n");
        assert_eq!(ask(&server.addr, 1, "js.test", "/").await.1, "count 2\n");
        assert_eq!(
            ask(&server.addr, 0, "py.test", "/batch").await.1,
            "a=1 b=2 zz=-\n"
        );
        assert_eq!(
            ask(&server.addr, 1, "py.test", "/keys").await.1,
            "a\nb\njs-hits\npy-hits\n"
        );
        assert_eq!(
            ask(&server.addr, 0, "py.test", "/denied").await.1,
            "Error_AccessDenied\n"
        );
        drop(server);
        std::fs::remove_dir_all(dir.path().join(".pier")).ok();
    }
}

/// Redis killed and brought back while 20 clients count: while it is down, requests get the
/// guest's error answer quickly (no 5xx, no hang); once it is back, every request counts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_under_load_never_hangs_or_traps() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let Some(mut redis) = pier_testkit::RedisServer::start() else {
        return;
    };
    let (_dir, manifest) = redis_app(&redis, "");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    let back = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..20)
        .map(|c| {
            let addr = server.addr.clone();
            let (back, stop) = (back.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut counted, mut refused, mut counted_after) = (0, 0, 0);
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let is_back = back.load(Ordering::Relaxed);
                    let started = Instant::now();
                    let (status, text) = ask(&addr, c, "a.test", "/count").await;
                    slowest = slowest.max(started.elapsed());
                    assert_eq!(status, StatusCode::OK, "{text}");
                    if text.parse::<u64>().is_ok() {
                        counted += 1;
                        counted_after += usize::from(is_back);
                    } else {
                        assert!(text.starts_with("other: redis 127.0.0.1:"), "{text}");
                        assert!(!is_back, "refused after Redis was back: {text}");
                        refused += 1;
                    }
                }
                (counted, refused, counted_after, slowest)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _redis = pier_testkit::RedisServer::start_on(redis.port).unwrap();
    // Reconnected by the next operation; then a while of counting again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    back.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut counted, mut refused, mut after) = (0, 0, 0);
    for client in clients {
        let (c, r, a, slowest) = client.await.unwrap();
        assert!(
            slowest < Duration::from_secs(4),
            "a request took {slowest:?}"
        );
        counted += c;
        refused += r;
        after += a;
    }
    assert!(refused > 0, "Redis was down for a second");
    assert!(counted > refused, "{counted} counted, {refused} refused");
    assert!(
        after > 20,
        "every client counts again once Redis is back: {after}"
    );
}

/// A worker killed (`kill -9`) in the middle of writes: what it acknowledged is kept, and its
/// replacement serves the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_a_worker_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), MANIFEST).unwrap();
    let manifest = dir.path().join("pier.toml");
    let server =
        PierServer::start(pier(), &["--workers", "2", manifest.to_str().unwrap()]).unwrap();
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.pid())).unwrap();
    let worker: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let clients = write_keys(&server.addr, 10, 300);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    signal(worker, "KILL").unwrap();
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    drop(server);
    assert_kept(dir.path(), &acknowledged);
    assert!(acknowledged.len() > 1000, "{}", acknowledged.len());
}

/// `clients` clients, each writing `per_client` distinct keys (`/key/NNNNN`, one request per
/// connection, on to the next key when a request fails); each gives the keys whose writes were
/// answered.
fn write_keys(
    addr: &str,
    clients: usize,
    per_client: usize,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|c| {
            let addr = addr.to_string();
            tokio::spawn(async move {
                let mut stored = Vec::new();
                for i in 0..per_client {
                    let key = format!("/key/{:05}", c * 1000 + i);
                    let req = Request::get(key.as_str())
                        .header("host", "a.test")
                        .body(Default::default())
                        .unwrap();
                    // Killed: this request may or may not have been written.
                    if let Ok(a) = send(&addr, PROTOS[c % 2], req).await {
                        assert_eq!(
                            (a.status, a.text().as_str()),
                            (StatusCode::OK, "stored"),
                            "{key}"
                        );
                        stored.push(key);
                    }
                }
                stored
            })
        })
        .collect()
}

/// Every key of `acknowledged` is in the default store of the app in `dir`.
fn assert_kept(dir: &Path, acknowledged: &[String]) {
    let (code, listed, stderr) = kv(dir, &["default", "list"]);
    assert_eq!(code, Some(0), "{stderr}");
    let listed: BTreeSet<&str> = listed.lines().collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|k| !listed.contains(k.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

/// A wrapper running pier with a tmpfs mounted at `$PIER_STATE` with `options` (holding a
/// filler file of `filler` bytes), or `None` where no namespace can be made.
fn in_small_tmpfs(dir: &Path, options: &str, filler: usize) -> Option<PathBuf> {
    pier_testkit::namespaced_pier(
        dir,
        &format!(
            "mount -t tmpfs -o {options} tmpfs \"$PIER_STATE\" \
             && {{ [ {filler} -eq 0 ] || head -c {filler} /dev/zero > \"$PIER_STATE/filler\"; }}"
        ),
    )
}

/// pier serving the kv app of `dir` with its state directory on a tmpfs of `options` (see
/// [`in_small_tmpfs`]): the start's outcome, the state directory and the manifest; `None` where no
/// namespace can be made.
fn serve_on_tmpfs(
    dir: &Path,
    options: &str,
    filler: usize,
) -> Option<(anyhow::Result<PierServer>, PathBuf, PathBuf)> {
    let wrapper = in_small_tmpfs(dir, options, filler)?;
    std::fs::copy(guest("kv"), dir.join("kv.wasm")).unwrap();
    std::fs::write(dir.join("pier.toml"), MANIFEST).unwrap();
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    let manifest = dir.join("pier.toml");
    let started = PierServer::start_with_env(
        &wrapper,
        &[
            "--state-dir",
            state.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
        &[
            ("PIER", pier().to_str().unwrap()),
            ("PIER_STATE", state.to_str().unwrap()),
        ],
    );
    Some((started, state, manifest))
}

/// The state directory's disk fills up under writes: each write that does not fit is an error
/// to the guest (SQLite's "database or disk is full", as `other`), never a trap, a hang or a
/// crash; pier goes on serving; once there is room again writes succeed; and every write that
/// was acknowledged is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_an_error_to_the_guest_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let Some((started, state, manifest)) = serve_on_tmpfs(dir.path(), "size=1m", 700 << 10) else {
        return;
    };
    let server = started.unwrap();
    // 1 KB keys' worth of writes: the free 300 KB is gone long before 2,000.
    let write = |i: usize| {
        let addr = server.addr.clone();
        async move {
            let key = format!("/key/{i:05}");
            let (status, text) = ask(&addr, i, "a.test", &key).await;
            (key, status, text)
        }
    };
    let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
    for i in 0..2000 {
        let (key, status, text) = write(i).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        if text == "stored" {
            acknowledged.push(key);
        } else {
            refused.push(text);
            if refused.len() >= 20 {
                break;
            }
        }
    }
    assert!(!refused.is_empty(), "the disk never filled");
    assert!(
        refused.iter().all(|t| t.contains("full")),
        "refusals say why: {refused:?}"
    );
    assert!(acknowledged.len() > 10, "{} writes", acknowledged.len());
    // Still serving, other routes too.
    assert_eq!(ask(&server.addr, 0, "b.test", "/").await.0, StatusCode::OK);
    // Room again (the filler removed through pier's own view of its mounts): writes succeed.
    let root = PathBuf::from(format!("/proc/{}/root", server.pid()));
    let filler = root.join(state.strip_prefix("/").unwrap()).join("filler");
    std::fs::remove_file(filler).unwrap();
    let (key, _, text) = write(5000).await;
    assert_eq!(text, "stored", "a write once there is room");
    acknowledged.push(key);
    // Everything acknowledged is there: `pier kv` run in pier's namespaces, while it runs.
    let pid = server.pid().to_string();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-U", "-m", "--preserve-credentials", "--"])
        .arg(pier())
        .args(["kv", "--state-dir", state.to_str().unwrap()])
        .args(["--manifest", manifest.to_str().unwrap(), "default", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    let listed: BTreeSet<&str> = listed.lines().collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|k| !listed.contains(k.as_str()))
        .collect();
    assert!(lost.is_empty(), "lost {lost:?}");
    eprintln!(
        "{} writes acknowledged, {} refused as the disk was full, none lost",
        acknowledged.len(),
        refused.len()
    );
}

/// A read-only state directory: the default store cannot be made, and pier says so at once
/// (one line naming the directory), rather than failing every request later.
#[test]
fn a_read_only_state_directory_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some((started, state, _)) = serve_on_tmpfs(dir.path(), "ro", 0) else {
        return;
    };
    let Err(e) = started else {
        panic!("pier started on a read-only state directory");
    };
    let message = e.to_string();
    assert!(message.contains(state.to_str().unwrap()), "{message}");
}

/// A guest abusing the store, from a real toolchain (componentize-py): batches of 10,000 keys
/// are refused whole (`other`, naming the limit); 20 MiB written in one call (the guest held it
/// already) cannot be asked back in one (the host would hold it all); a 1 MiB key is refused;
/// and a store of a million keys is listed a page at a time, pier's memory staying flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_make_the_store_hold_or_hand_over_too_much() {
    let Some(py) = pier_testkit::toolchain_guest("python-kv.wasm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(py, dir.path().join("py.wasm")).unwrap();
    let manifest = dir.path().join("pier.toml");
    std::fs::write(
        &manifest,
        "manifest_version = 1\n[[route]]\npath = \"/...\"\ncomponent = \"py\"\n\
         [component.py]\nsource = \"py.wasm\"\nkey_value_stores = [\"default\"]\n",
    )
    .unwrap();
    let server =
        PierServer::start(pier(), &["--timeout", "120s", manifest.to_str().unwrap()]).unwrap();
    let get = |path: &'static str| {
        let addr = server.addr.clone();
        async move {
            let answer = pier_testkit::get(&addr, pier_testkit::Proto::H1, path)
                .await
                .unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
            answer.text()
        }
    };
    let batch = get("/abuse/batch").await;
    for call in ["set-many", "get-many", "delete-many"] {
        assert!(
            batch.contains(&format!(
                "{call} Error_Other: a batch of 10000 keys is more than the limit of 1000"
            )),
            "{batch}"
        );
    }
    let fat = get("/abuse/fat").await;
    assert!(
        fat.starts_with("set-many done; get-many Error_Other: the values asked for come to more than 16777216 bytes")
            && fat.ends_with("delete-many done\n"),
        "{fat}"
    );
    let key = get("/abuse/key").await;
    assert!(
        key.starts_with("set Error_Other:") && key.contains("key"),
        "{key}"
    );
    // Nothing of the refused batches was written.
    assert_eq!(get("/count-keys").await, "keys 0 pages 1\n");

    let started = std::time::Instant::now();
    for start in (0..1_000_000).step_by(100_000) {
        let path: &'static str = format!("/fill/{start}/100000").leak();
        assert_eq!(get(path).await, "filled 100000\n");
    }
    let filled = started.elapsed();
    let before = pier_testkit::rss_bytes(server.pid()).unwrap();
    assert_eq!(get("/count-keys").await, "keys 1000000 pages 1000\n");
    let grown = pier_testkit::rss_bytes(server.pid())
        .unwrap()
        .saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "listing a million keys grew pier by {grown} bytes"
    );
    eprintln!("a million keys written in {filled:?}, listed with {grown} bytes of growth");
}
