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

        pier_testkit::echoes_while_sending(&server.addr, proto, "/echo", &[]).await;
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

/// `pier serve` of componentize-py's 0.3 service with `args`, its compiled code cached between
/// runs; `None` when the guest has not been built.
fn python_service(args: &[&str]) -> Option<PierServer> {
    let app = pier_testkit::toolchain_guest("python-p3.wasm")?;
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("p3-serve-cache");
    let mut all = args.to_vec();
    all.push(app.to_str().unwrap());
    Some(
        PierServer::start_with_env(pier(), &all, &[("PIER_CACHE_DIR", cache.to_str().unwrap())])
            .unwrap(),
    )
}

/// Over TLS a 0.3 guest is told the request came as `https`, over both protocols (an HTTP/1.1
/// request names no scheme: the connection's is given).
#[tokio::test]
async fn a_0_3_service_over_tls_is_told_https() {
    use http_body_util::Full;

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let Some(server) = python_service(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]) else {
        return;
    };
    for alpn in [b"h2".as_slice(), b"http/1.1"] {
        let (mut client, proto) = pier_testkit::connect_tls(&server.addr, cert.cert.der(), &[alpn])
            .await
            .unwrap();
        let req = Request::builder()
            .uri("/url")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = match &mut client {
            // An HTTP/2 request names its scheme itself (the test client's `send` says http).
            Client::H2(sender) => {
                let (mut parts, body) = req.into_parts();
                parts.uri = "https://localhost/url".parse().unwrap();
                parts.headers.remove("host");
                sender
                    .send_request(Request::from_parts(parts, body))
                    .await
                    .unwrap()
            }
            Client::H1(_) => client.send(req).await.unwrap(),
        };
        let answer = pier_testkit::read(response).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert!(
            answer.text().starts_with("https://"),
            "{proto:?}: {}",
            answer.text()
        );
        assert!(
            answer.text().ends_with("/url"),
            "{proto:?}: {}",
            answer.text()
        );
    }
    let plain = python_service(&[]).unwrap();
    let answer = pier_testkit::get(&plain.addr, Proto::H1, "/url")
        .await
        .unwrap();
    assert!(answer.text().starts_with("http://"), "{}", answer.text());
}

/// A 0.3 guest's request trailers reach it and its response trailers reach the client: the
/// echo answers with the request's own. Whether the trailers come with the data or well after
/// it (when the guest has read the data and waits), they reach the client: the guest has ended
/// by the time its response's trailers are handed over, and its store must not be dropped
/// before (the trailers were lost on CI when they arrived late).
#[tokio::test]
async fn trailers_pass_through_a_0_3_guest_both_ways() {
    use http_body_util::channel::Channel;

    let Some(server) = python_service(&[]) else {
        return;
    };
    for pause in [None, Some(Duration::from_millis(100))] {
        let (mut sender, body) = Channel::<Bytes, std::convert::Infallible>::new(2);
        let req = Request::post("/echo").body(body).unwrap();
        let mut client = Client::connect(&server.addr, Proto::H2).await.unwrap();
        let answer = tokio::spawn(async move { client.send(req).await });
        sender.send_data(Bytes::from_static(b"data")).await.unwrap();
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        sender.send_trailers(trailers).await.unwrap();
        drop(sender);
        let answer = pier_testkit::read(answer.await.unwrap().unwrap())
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{pause:?}");
        assert_eq!(answer.text(), "data", "{pause:?}");
        let trailers = answer
            .trailers
            .unwrap_or_else(|| panic!("{pause:?}: the request's trailers come back"));
        assert_eq!(trailers["x-checksum"], "abc", "{pause:?}");
    }
}

/// A 0.3 guest that fails while writing its body (after its head went out) aborts the
/// response: the client never takes it for complete, and the next request is served.
#[tokio::test]
async fn a_0_3_guest_failing_mid_body_aborts_the_response() {
    use http_body_util::{BodyExt, Full};

    let Some(server) = python_service(&[]) else {
        return;
    };
    for proto in [Proto::H1, Proto::H2] {
        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let req = Request::get("/abort")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            // HTTP/1.1 may close the connection before the buffered head is flushed; HTTP/2
            // delivers the head, then resets the stream.
            let response = client.send(req).await?;
            assert_eq!(response.status(), StatusCode::OK, "{proto:?}");
            response
                .into_body()
                .collect()
                .await
                .map_err(anyhow::Error::from)
        })
        .await
        .expect("an aborted response never hangs");
        assert!(outcome.is_err(), "{proto:?}: the body ended as if complete");
        let next = pier_testkit::get(&server.addr, proto, "/ok").await.unwrap();
        assert_eq!(next.status, StatusCode::OK, "{proto:?}");
    }
}

/// A module-level counter in the guest: every request of the default finds it at zero (a fresh
/// instance each); with `--instance-reuse` one instance answers several, and it counts up
/// (what reuse trades away).
#[tokio::test]
async fn every_0_3_request_gets_a_fresh_instance_unless_reuse_is_asked() {
    let Some(fresh) = python_service(&[]) else {
        return;
    };
    // One serving thread: each thread keeps instances of its own.
    let reused = python_service(&["--instance-reuse", "8", "--threads", "1"]).unwrap();
    let mut counts = Vec::new();
    for proto in [Proto::H1, Proto::H2, Proto::H1, Proto::H2] {
        let answer = pier_testkit::get(&fresh.addr, proto, "/count")
            .await
            .unwrap();
        assert_eq!(answer.text(), "count 1", "{proto:?}");
        let answer = pier_testkit::get(&reused.addr, proto, "/count")
            .await
            .unwrap();
        counts.push(answer.text());
    }
    assert!(
        counts.iter().any(|c| c != "count 1"),
        "a reused instance counted on: {counts:?}"
    );
}

/// A 0.3 guest reading a request body past `--max-body` (sent without a length, so only the
/// reading finds it too large) gets 413, as a 0.2 guest does.
#[tokio::test]
async fn a_0_3_guest_reading_past_the_body_limit_answers_413() {
    let server = serve(
        &pier_testkit::wasip3_test("http-service-echo"),
        &["--max-body", "1KiB"],
    );
    for proto in [Proto::H1, Proto::H2] {
        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let (tx, body) = pier_testkit::channel_body();
        let req = Request::post("/echo").body(body).unwrap();
        let sent = tokio::spawn(async move {
            for _ in 0..8 {
                if tx.send(Bytes::from(vec![b'x'; 512])).await.is_err() {
                    return;
                }
            }
        });
        let answer = pier_testkit::read(client.send(req).await.unwrap())
            .await
            .unwrap();
        let _ = sent.await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{proto:?}");
        assert!(
            answer.text().contains("larger than 1024 bytes"),
            "{}",
            answer.text()
        );
    }
}

/// A guest storming the network (50 requests at once to an origin that takes its time) has at
/// most `--max-outbound-requests` of them in flight: the rest fail at once with
/// `connection-limit-reached`, never reach the origin, and the log says why.
#[tokio::test]
async fn a_guest_storming_the_network_is_held_to_its_requests_in_flight() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let seen = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let counted = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    async {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"slow")),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    let allow = format!("http://{origin}");
    let Some(server) =
        python_service(&["--allow-outbound", &allow, "--max-outbound-requests", "10"])
    else {
        return;
    };
    let req = Request::get("/storm?n=50")
        .header("x-fetch", format!("http://{origin}/slow"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let answer = pier_testkit::send(&server.addr, Proto::H1, req)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), "ErrorCode_ConnectionLimitReached=40 ok=10\n");
    assert_eq!(seen.load(Ordering::Relaxed), 10);
    assert!(
        server.wait_for_log(
            "10 already in flight from this instance",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
    assert_eq!(
        server.log().matches("already in flight").count(),
        1,
        "said once for the instance, not for each of the 40"
    );
}
