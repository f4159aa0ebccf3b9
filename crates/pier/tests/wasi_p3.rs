//! WASI 0.3 components: `pier serve` answers through `wasi:http/handler@0.3.0` with everything a
//! 0.2 guest gets (both protocols, bodies streaming both ways, limits with the same status
//! codes), and `pier run` runs `wasi:cli/run@0.3.0`. Guests: `guests/wat/faults-p3.wat` and the
//! WASI test suite's components.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use pier_testkit::{Client, PierServer, Proto};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

fn serve(wasm: &std::path::Path, args: &[&str]) -> PierServer {
    let wasm = wasm.display().to_string();
    let mut all = args.to_vec();
    all.push(&wasm);
    PierServer::start(pier(), &all).expect("pier serves")
}

#[tokio::test]
async fn a_0_3_service_answers_over_both_protocols_with_a_streamed_body() {
    let server = serve(&pier_testkit::wasip3_test("http-service-echo"), &[]);
    for proto in [Proto::H1, Proto::H2] {
        let answer = pier_testkit::request(&server.addr, proto, "POST", "/echo", b"hello, echo")
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.text(), "hello, echo", "{proto:?}");
        assert_eq!(
            answer.headers["content-type"], "application/octet-stream",
            "{proto:?}"
        );
        let req = Request::builder()
            .uri("/reflect-header")
            .header("x-echo", "ping")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let answer = pier_testkit::send(&server.addr, proto, req).await.unwrap();
        assert_eq!(answer.headers["x-echoed"], "ping", "{proto:?}");
        let answer = pier_testkit::get(&server.addr, proto, "/whatever")
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{proto:?}");

        // A body that arrives in two parts, a pause between them, is read whole (the guest
        // collects it, then writes its answer from a task that outlives `handle`).
        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let (tx, body) = pier_testkit::channel_body();
        let req = Request::builder()
            .method("POST")
            .uri("/echo")
            .body(body)
            .unwrap();
        let sent = tokio::spawn(async move {
            tx.send(Bytes::from_static(b"first half, ")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Bytes::from_static(b"second half")).await.unwrap();
        });
        let answer = pier_testkit::read(client.send(req).await.unwrap())
            .await
            .unwrap();
        sent.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.text(), "first half, second half", "{proto:?}");
        assert_eq!(answer.headers["content-length"], "23", "{proto:?}");
    }
}

/// A trap, a guest that computes past its time, one that grows its memory past the limit, and
/// one that answers with an error code: the same status codes as for a 0.2 guest, and the
/// server goes on serving.
#[tokio::test]
async fn a_0_3_guest_is_held_to_the_same_limits() {
    let server = serve(
        &pier_testkit::guest("faults-p3"),
        &["--timeout", "1s", "--max-memory", "16MiB"],
    );
    let cases = [
        (
            "/trap",
            StatusCode::INTERNAL_SERVER_ERROR,
            "the component failed",
        ),
        (
            "/loop",
            StatusCode::GATEWAY_TIMEOUT,
            "the component did not answer within 1s",
        ),
        (
            "/memory",
            StatusCode::INTERNAL_SERVER_ERROR,
            "the component ran out of memory",
        ),
        (
            "/",
            StatusCode::INTERNAL_SERVER_ERROR,
            "the component answered with an error",
        ),
    ];
    for proto in [Proto::H1, Proto::H2] {
        for (path, status, text) in cases {
            let answer = pier_testkit::get(&server.addr, proto, path).await.unwrap();
            assert_eq!(answer.status, status, "{proto:?} {path}");
            assert!(
                answer.text().contains(text),
                "{proto:?} {path}: {}",
                answer.text()
            );
        }
    }
    let log = server.log();
    assert!(
        log.contains("guest answered with an error: ErrorCode::DnsTimeout"),
        "{log}"
    );
    assert!(log.contains(r#"kind="timeout""#), "{log}");
    assert!(log.contains(r#"kind="out_of_memory""#), "{log}");
}

/// Many requests at once, each in its own instance: none waits on another, none fails.
#[tokio::test]
async fn concurrent_requests_each_get_an_instance() {
    let server = serve(&pier_testkit::wasip3_test("http-service-echo"), &[]);
    pier_testkit::echo_at_once(&server.addr, "/echo", 64).await;
}

/// `pier run ARGS`.
fn run(args: &[&str]) -> std::process::Output {
    Command::new(pier())
        .arg("run")
        .args(args)
        .env_remove("PIER_LOG")
        .env(
            "PIER_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("p3-run-cache"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("pier runs")
}

#[test]
fn a_0_3_command_runs_with_its_args_and_env_and_exits_with_its_code() {
    // The guest asserts its argv is exactly `cli-env.wasm a b 42`: the program's name is its
    // file name, not where it is on the host.
    let env = &pier_testkit::wasip3_test("cli-env").display().to_string();
    let out = run(&["--env", "foo=bar", "--env", "baz=42", env, "a", "b", "42"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Not granted, not seen: the guest asserts exactly the two variables it expects.
    let out = run(&["--env", "foo=bar", env, "a", "b", "42"]);
    assert_ne!(out.status.code(), Some(0));

    // `run` returning an error exits 1, as the spec says.
    let failing = pier_testkit::wasip3_test("run-with-err")
        .display()
        .to_string();
    let out = run(&[&failing]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = pier_testkit::wasip3_test("cli-exit").display().to_string();
    assert_eq!(run(&[&exit]).status.code(), Some(1));
}

/// A 0.3 service given to `pier run` (and a 0.3 command to `pier serve`) says what to do instead.
#[test]
fn the_wrong_entry_point_says_which_command_to_use() {
    let service = pier_testkit::guest("faults-p3").display().to_string();
    pier_testkit::assert_one_line_error(
        pier(),
        &["run", &service],
        &[
            "exports neither wasi:cli/run@0.2 nor wasi:cli/run@0.3",
            "wasi:http/handler@0.3.0",
            "serve it with `pier serve`",
        ],
    );
    let command = pier_testkit::wasip3_test("cli-exit").display().to_string();
    pier_testkit::assert_one_line_error(
        pier(),
        &["serve", "--no-cache", &command],
        &[
            "exports neither wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3",
            "wasi:cli/run@0.3.0",
            "run it with `pier run`",
        ],
    );
}

/// A Proxy-Wasm filter runs in front of a 0.3 service as of a 0.2 one: on the request, and on
/// the response the guest returned.
#[tokio::test]
async fn a_proxy_wasm_filter_runs_in_front_of_a_0_3_service() {
    let filter = pier_testkit::guest("filter-headers").display().to_string();
    let server = serve(
        &pier_testkit::wasip3_test("http-service-echo"),
        &["--filter", &filter],
    );
    for proto in [Proto::H1, Proto::H2] {
        let answer = pier_testkit::request(&server.addr, proto, "POST", "/echo", b"through")
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.text(), "through", "{proto:?}");
        assert_eq!(answer.headers["x-filter-response"], "1", "{proto:?}");
    }
}

/// componentize-py's WASI 0.3 service (guests/python/service.py): it echoes a request body
/// chunk by chunk, so the first half comes back before the client has sent the second (bodies
/// stream both ways at once), and its `wasi:http/client` requests go through pier's outbound
/// policy.
#[tokio::test]
async fn a_python_0_3_service_streams_both_ways_and_its_requests_follow_the_policy() {
    use http_body_util::BodyExt;

    let Some(app) = pier_testkit::toolchain_guest("python-p3.wasm") else {
        return;
    };
    let upstream = pier_testkit::echo_upstream().await;
    let allow = format!("http://{upstream}");
    // An 18 MB component: compiled once into a cache kept between runs.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("p3-serve-cache");
    let server = PierServer::start_with_env(
        pier(),
        &["--allow-outbound", &allow, app.to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache.to_str().unwrap())],
    )
    .unwrap();
    for proto in [Proto::H1, Proto::H2] {
        let answer = pier_testkit::get(&server.addr, proto, "/hi").await.unwrap();
        assert_eq!(answer.text(), "hello from python 0.3 at /hi\n", "{proto:?}");

        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let (tx, body) = pier_testkit::channel_body();
        let req = Request::builder()
            .method("POST")
            .uri("/echo")
            .body(body)
            .unwrap();
        tx.send(Bytes::from_static(b"first half, ")).await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(20), client.send(req))
            .await
            .expect("the head comes while the request body is still open")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{proto:?}");
        let mut body = response.into_body();
        let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("the first half comes back before the second is sent")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first half, ", "{proto:?}");
        tx.send(Bytes::from_static(b"second half")).await.unwrap();
        drop(tx);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second half", "{proto:?}");
    }
    let fetch = |url: String| {
        Request::builder()
            .uri("/fetch")
            .header("x-fetch", url)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let granted = pier_testkit::send(&server.addr, Proto::H1, fetch(format!("{allow}/callout")))
        .await
        .unwrap();
    assert_eq!(granted.text(), "status 200: callout body");
    let denied = pier_testkit::send(&server.addr, Proto::H1, fetch("http://127.0.0.1:9/".into()))
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::BAD_GATEWAY);
    assert_eq!(denied.text(), "error ErrorCode_HttpRequestDenied\n");
    assert!(
        server
            .log()
            .contains("http://127.0.0.1:9 is not allowed (grant it with --allow-outbound"),
        "{}",
        server.log()
    );
}
