//! The load-time optimiser end to end: dynamically linked components are merged, serve the
//! same answers as before, and still give every request a pristine instance.

use pier_testkit::{PROTOS, PierServer, Proto, get, guest};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

const MERGED: &str = "dynamically linked core modules into one";

#[tokio::test]
async fn a_linked_component_is_merged_and_every_request_finds_it_pristine() {
    // The isolation probe split into two shared libraries and linked like componentize-py:
    // its counters live in a library's mutable global, its data and its table entries.
    let probe = guest("linked-counter");
    let probe = probe.to_str().unwrap();
    // The start-up log follows the serving line.
    let wait = std::time::Duration::from_secs(5);
    let merged = PierServer::start(pier(), &[probe]).expect("pier starts");
    assert!(merged.wait_for_log(MERGED, wait), "{}", merged.log());
    let plain = PierServer::start(pier(), &["--no-optimize", probe]).expect("pier starts");
    plain.wait_for_log("memories are reset", wait);
    assert!(!plain.log().contains(MERGED), "{}", plain.log());
    // Worker processes load what the supervisor compiled into the cache: merged.
    let cache = tempfile::tempdir().unwrap();
    let workers = PierServer::start_with_env(
        pier(),
        &["--workers", "2", probe],
        &[
            ("PIER_CACHE_DIR", cache.path().to_str().unwrap()),
            ("PIER_LOG", "info,pier_engine=debug"),
        ],
    )
    .expect("pier starts");
    assert!(
        workers.wait_for_log("loaded compiled code from cache", wait),
        "{}",
        workers.log()
    );

    let first = get(&merged.addr, Proto::H1, "/").await.unwrap().text();
    assert!(
        first.starts_with("global=1 memory=1 table=8 indirect=7 handle="),
        "{first}"
    );
    let unmerged = get(&plain.addr, Proto::H1, "/").await.unwrap().text();
    assert_eq!(first, unmerged, "merged and unmerged components disagree");
    for server in [&merged, &plain, &workers] {
        for proto in PROTOS {
            for _ in 0..20 {
                let answer = get(&server.addr, proto, "/").await.unwrap().text();
                assert_eq!(answer, first, "{proto:?}: state leaked between requests");
            }
        }
        let concurrent: Vec<_> = (0..64)
            .map(|i| {
                let addr = server.addr.clone();
                tokio::spawn(async move { get(&addr, PROTOS[i % 2], "/").await.unwrap().text() })
            })
            .collect();
        for task in concurrent {
            assert_eq!(task.await.unwrap(), first, "concurrent requests");
        }
    }
}

#[tokio::test]
async fn python_answers_the_same_merged_or_not() {
    let Some(app) = pier_testkit::toolchain_guest("python-hello.wasm") else {
        return;
    };
    let app = app.to_str().unwrap();
    let merged = PierServer::start(pier(), &[app]).expect("pier starts");
    assert!(merged.log().contains(MERGED), "{}", merged.log());
    let plain = PierServer::start(pier(), &["--no-optimize", app]).expect("pier starts");
    assert!(!plain.log().contains(MERGED), "{}", plain.log());
    for path in ["/", "/hi?x=1", "/a/b/c", "/%E2%9C%93", "/?q=1&r=2"] {
        for proto in PROTOS {
            let a = get(&merged.addr, proto, path).await.unwrap();
            let b = get(&plain.addr, proto, path).await.unwrap();
            assert_eq!(a.status, b.status, "{proto:?} {path}");
            assert_eq!(a.text(), b.text(), "{proto:?} {path}");
            assert_eq!(
                a.text(),
                format!("hello from python at {path}\n"),
                "{proto:?}"
            );
        }
    }
}
