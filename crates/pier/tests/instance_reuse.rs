//! `--instance-reuse N`: one instance serves up to N requests (one at a time for a 0.2 guest,
//! several at once for a 0.3 guest), with the same status codes as fresh instances; the default
//! stays a fresh instance per request (proved in `serve.rs`, `every_request_gets_a_fresh_instance`).

use std::time::Duration;

use http::StatusCode;
use pier_testkit::{PierServer, Proto};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

fn serve(args: &[&str]) -> PierServer {
    PierServer::start(pier(), args).expect("pier serves")
}

/// The isolation probe counts requests in a global: a reused instance shows the requests it
/// served before, up to N, then a fresh one starts again.
#[tokio::test]
async fn a_0_2_instance_serves_n_requests_one_after_another() {
    let counter = pier_testkit::guest("counter");
    // One serving thread: each thread keeps instances of its own, and these requests' new
    // connections would be spread over them.
    let server = serve(&[
        "--instance-reuse",
        "3",
        "--threads",
        "1",
        counter.to_str().unwrap(),
    ]);
    let mut globals = Vec::new();
    for _ in 0..7 {
        let answer = pier_testkit::get(&server.addr, Proto::H1, "/")
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let text = answer.text();
        let global = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix("global="))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string();
        globals.push(global);
    }
    assert_eq!(globals, ["1", "2", "3", "1", "2", "3", "1"]);
}

/// A 0.3 instance takes several requests at once; a trap ends it (and the requests in it) and
/// the next request gets a new one; a request past the timeout is 504.
#[tokio::test]
async fn a_0_3_instance_serves_requests_at_once_and_fails_as_fresh_ones_do() {
    let echo = pier_testkit::wasip3_test("http-service-echo");
    let server = serve(&["--instance-reuse", "1000", echo.to_str().unwrap()]);
    pier_testkit::echo_at_once(&server.addr, "/echo", 48).await;
    // The Host header gives the request its authority and nothing else: one that would
    // reach into the path is refused, not spliced into the URI.
    let req = http::Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", "localhost/admin?")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    let answer = pier_testkit::send(&server.addr, Proto::H1, req)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());

    let faults = pier_testkit::guest("faults-p3");
    let server = serve(&[
        "--instance-reuse",
        "1000",
        "--timeout",
        "1s",
        faults.to_str().unwrap(),
    ]);
    let cases = [
        ("/trap", StatusCode::INTERNAL_SERVER_ERROR),
        ("/", StatusCode::INTERNAL_SERVER_ERROR),
        ("/loop", StatusCode::GATEWAY_TIMEOUT),
        ("/trap", StatusCode::INTERNAL_SERVER_ERROR),
    ];
    for (path, status) in cases {
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            pier_testkit::get(&server.addr, Proto::H1, path),
        )
        .await
        .expect("answered")
        .unwrap();
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
    }
    let log = server.log();
    assert!(
        log.contains("a reused instance failed, and with it every request it was serving")
            && log.contains("unreachable"),
        "the trap is said once, by the instance: {log}"
    );
}

#[test]
fn reuse_with_key_value_stores_is_refused_until_supported() {
    let kv = pier_testkit::guest("kv");
    let dir = tempfile::tempdir().unwrap();
    let store = format!("default={}", dir.path().join("kv.sqlite").display());
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--no-cache",
            "--instance-reuse",
            "4",
            "--kv",
            &store,
            kv.to_str().unwrap(),
        ],
        &["instance reuse with key-value stores is not supported yet"],
    );
}

/// A reused instance writes a response body while it serves other requests: the request holds
/// its `--max-concurrency` slot until its body has ended, as with a fresh instance.
#[tokio::test]
async fn a_streaming_response_holds_its_concurrency_slot_until_it_ends() {
    use bytes::Bytes;
    use http_body_util::BodyExt;

    let Some(app) = pier_testkit::toolchain_guest("python-p3.wasm") else {
        return;
    };
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reuse-cache");
    let server = PierServer::start_with_env(
        pier(),
        &[
            "--instance-reuse",
            "100",
            "--max-concurrency",
            "1",
            app.to_str().unwrap(),
        ],
        &[("PIER_CACHE_DIR", cache.to_str().unwrap())],
    )
    .unwrap();
    let mut client = pier_testkit::Client::connect(&server.addr, Proto::H1)
        .await
        .unwrap();
    let (tx, body) = pier_testkit::channel_body();
    let req = http::Request::builder()
        .method("POST")
        .uri("/echo")
        .body(body)
        .unwrap();
    tx.send(Bytes::from_static(b"first, ")).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.send(req))
        .await
        .expect("the head comes while the body streams")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first, ");
    // The slot is taken while the body streams.
    let busy = pier_testkit::get(&server.addr, Proto::H1, "/")
        .await
        .unwrap();
    assert_eq!(
        busy.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        busy.text()
    );
    tx.send(Bytes::from_static(b"last")).await.unwrap();
    drop(tx);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "last");
    // And free once it has ended.
    let mut answered = None;
    for _ in 0..50 {
        let answer = pier_testkit::get(&server.addr, Proto::H1, "/")
            .await
            .unwrap();
        if answer.status == StatusCode::OK {
            answered = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        answered.expect("the slot came back").text(),
        "hello from python 0.3 at /\n"
    );
}
