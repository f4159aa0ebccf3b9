//! The hostcalls test filter (guests/proxywasm/hostcalls.c, driven by request paths like Kong's)
//! against pier's Proxy-Wasm host: every host function, its bad-argument and out-of-bounds cases,
//! pausing, bodies, trailers, callouts and traps in each callback, in front of both handler kinds
//! (a component and an upstream) over HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use pier_testkit::{Answer, PROTOS, PierServer, Proto, echo_upstream, get, guest, send};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// The two kinds of handler behind the filter; both echo request headers as `x-echo-NAME` and
/// the request body as the response body.
#[derive(Debug, Clone, Copy)]
enum Behind {
    Component,
    Upstream,
}

/// pier with the hostcalls filter (plus `flags`) in front of `behind`, with the named upstream
/// `backend` (an echo upstream answering `/callout`) and `dead` (nothing listening).
async fn serve(behind: Behind, flags: &[&str]) -> PierServer {
    let upstream = echo_upstream().await;
    serve_with(behind, upstream, flags)
}

fn serve_with(behind: Behind, upstream: SocketAddr, flags: &[&str]) -> PierServer {
    let filter = guest("filter-hostcalls");
    let backend = format!("backend=http://{upstream}");
    let origin = format!("http://{upstream}");
    let app = guest("echo");
    let mut args = vec![
        "--filter",
        filter.to_str().unwrap(),
        "--filter-upstream",
        &backend,
        "--filter-upstream",
        "dead=http://127.0.0.1:1",
    ];
    args.extend_from_slice(flags);
    match behind {
        Behind::Component => args.push(app.to_str().unwrap()),
        Behind::Upstream => args.extend(["--upstream", origin.as_str()]),
    }
    PierServer::start(pier(), &args).expect("pier starts")
}

async fn call(
    server: &PierServer,
    proto: Proto,
    req: http::request::Builder,
    body: &[u8],
) -> Answer {
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    send(&server.addr, proto, req).await.unwrap()
}

async fn path(server: &PierServer, proto: Proto, path: &str) -> Answer {
    get(&server.addr, proto, path).await.unwrap()
}

fn values<'a>(answer: &'a Answer, name: &str) -> Vec<&'a str> {
    answer
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// Paths the filter answers itself, with the exact status and body expected.
const LOCAL: &[(&str, u16, &str)] = &[
    ("/t/echo/header/x-test", 200, "from-client"),
    ("/t/echo/header/x-missing", 404, "not found"),
    (
        "/t/log/property/request.path",
        200,
        "/t/log/property/request.path",
    ),
    ("/t/log/property/request.method", 200, "GET"),
    ("/t/log/property/plugin_name", 200, "filter-hostcalls"),
    ("/t/log/property/no.such.property", 404, "not found"),
    ("/t/send_local_response/418", 418, "local 418"),
    ("/t/time", 200, "ok"),
    ("/t/log_level", 200, "level=2"),
    ("/t/random", 200, "ok"),
    ("/t/property/set/my.prop/val", 200, "value=val"),
    // Bad arguments and out-of-bounds pointers get their exact status codes.
    ("/t/bad/map", 200, "status=2"),
    ("/t/bad/pointer", 200, "status=6"),
    ("/t/bad/return_pointer", 200, "status=6"),
    ("/t/bad/log_level", 200, "status=2"),
    ("/t/bad/buffer", 200, "status=2"),
    ("/t/bad/pairs", 200, "status=4"),
    ("/t/bad/effective_context", 200, "status=2"),
    ("/t/bad/local_response_status", 200, "status=2"),
    ("/t/bad/metric", 200, "status=1"),
    ("/t/bad/queue", 200, "status=1"),
    ("/t/bad/http_call_upstream", 200, "status=2"),
    ("/t/bad/http_call_headers", 200, "status=2"),
    ("/t/foreign", 200, "status=12"),
    ("/t/grpc", 200, "status=12"),
    ("/t/done", 200, "status=0"),
    ("/t/status", 200, "status=1"),
    ("/t/queue/dequeue/never-registered", 200, "status=1"),
    (
        "/t/http_call/backend/callout",
        200,
        "call status=200 body=callout body",
    ),
    ("/t/http_call/dead/x", 502, "call failed"),
];

#[tokio::test]
async fn every_hostcall_answers_exactly_in_front_of_both_handlers() {
    for behind in [Behind::Component, Behind::Upstream] {
        let server = serve(behind, &[]).await;
        for proto in PROTOS {
            for (p, status, body) in LOCAL {
                let req = Request::get(*p)
                    .header("x-test", "from-client")
                    .header("x-upstream", "backend");
                let answer = call(&server, proto, req, b"").await;
                assert_eq!(
                    (answer.status.as_u16(), answer.text().as_str()),
                    (*status, *body),
                    "{behind:?} {proto:?} {p}"
                );
            }
            let local = path(&server, proto, "/t/send_local_response/418").await;
            assert_eq!(local.headers["x-local"], "1", "local response headers");
            let protocol = path(&server, proto, "/t/log/property/request.protocol").await;
            let want = if proto == Proto::H2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            };
            assert_eq!(protocol.text(), want);
            let id = call(
                &server,
                proto,
                Request::get("/t/log/property/request.id").header("x-request-id", "req-7"),
                b"",
            )
            .await;
            assert_eq!(
                id.text(),
                "req-7",
                "request.id is the client's x-request-id"
            );
            let serial = path(&server, proto, "/t/log/property/request.id")
                .await
                .text();
            assert!(
                serial.len() == 16 && u64::from_str_radix(&serial, 16).is_ok(),
                "or pier's own: {serial}"
            );
            let source = path(&server, proto, "/t/log/property/source.address").await;
            assert!(source.text().starts_with("127.0.0.1:"), "{}", source.text());
        }
        assert!(
            server.wait_for_log(
                "property request.path: /t/log/property/request.path",
                Duration::from_secs(5)
            ),
            "proxy_log at info reaches pier's log"
        );
    }
}

#[tokio::test]
async fn header_maps_change_what_the_handler_and_the_client_see() {
    for behind in [Behind::Component, Behind::Upstream] {
        let server = serve(behind, &[]).await;
        for proto in PROTOS {
            let all = call(
                &server,
                proto,
                Request::get("/t/echo/headers")
                    .header("x-rep", "a")
                    .header("x-rep", "b"),
                b"",
            )
            .await;
            assert!(
                all.text()
                    .starts_with(":method: GET\n:path: /t/echo/headers\n"),
                "{}",
                all.text()
            );
            assert!(
                all.text().contains("x-rep: a\nx-rep: b\n"),
                "repeated pairs: {}",
                all.text()
            );

            let set = path(&server, proto, "/t/set_request_header/x-set/val").await;
            assert_eq!(
                values(&set, "x-echo-x-set"),
                ["val"],
                "{behind:?} {proto:?}"
            );
            assert_eq!(set.headers["x-hostcalls"], "1", "the response phase ran");

            let added = call(
                &server,
                proto,
                Request::get("/t/add_request_header/x-add/v2").header("x-add", "v1"),
                b"",
            )
            .await;
            assert_eq!(values(&added, "x-echo-x-add"), ["v1", "v2"]);

            let removed = call(
                &server,
                proto,
                Request::get("/t/remove_request_header/x-gone").header("x-gone", "1"),
                b"",
            )
            .await;
            assert!(!removed.headers.contains_key("x-echo-x-gone"));

            let replaced = call(
                &server,
                proto,
                Request::get("/t/set_request_headers").header("x-test", "dropped"),
                b"",
            )
            .await;
            assert_eq!(values(&replaced, "x-echo-x-replaced"), ["1", "2"]);
            assert!(!replaced.headers.contains_key("x-echo-x-test"));

            let response = path(&server, proto, "/t/add_response_header/x-resp/r").await;
            assert_eq!(values(&response, "x-resp"), ["r"]);
            let status = path(&server, proto, "/t/set_status/201").await;
            assert_eq!(status.status, StatusCode::CREATED);
        }
    }
}

#[tokio::test]
async fn shared_data_compare_and_swap_across_vms() {
    let server = serve(Behind::Component, &["--filter-vms", "2"]).await;
    let h1 = Proto::H1;
    // Requests alternate between the two VMs: the data is shared, not per VM.
    assert_eq!(
        path(&server, h1, "/t/shared_data/get/k").await.text(),
        "status=1"
    );
    assert_eq!(
        path(&server, h1, "/t/shared_data/set/k/v1").await.text(),
        "status=0"
    );
    assert_eq!(
        path(&server, h1, "/t/shared_data/get/k").await.text(),
        "v1 cas=1"
    );
    assert_eq!(
        path(&server, h1, "/t/shared_data/set/k/v2/1").await.text(),
        "status=0"
    );
    assert_eq!(
        path(&server, h1, "/t/shared_data/set/k/v3/1").await.text(),
        "status=8",
        "a stale CAS token is refused"
    );
    assert_eq!(
        path(&server, h1, "/t/shared_data/get/k").await.text(),
        "v2 cas=2"
    );
}

#[tokio::test]
async fn queues_notify_the_registering_vm() {
    let server = serve(Behind::Component, &["--filter-vms", "2"]).await;
    let h1 = Proto::H1;
    assert_eq!(
        path(&server, h1, "/t/queue/register/q").await.text(),
        "id=1"
    );
    assert_eq!(
        path(&server, h1, "/t/queue/register/q").await.text(),
        "id=1"
    );
    assert_eq!(
        path(&server, h1, "/t/queue/enqueue/q/first").await.text(),
        "status=0"
    );
    assert_eq!(
        path(&server, h1, "/t/queue/enqueue/q/second").await.text(),
        "status=0"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = path(&server, h1, "/t/queue/seen").await.text();
        if seen == "first,second" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy_on_queue_ready drained: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.wait_for_log("queue ready: first", Duration::from_secs(5)));
    assert_eq!(
        path(&server, h1, "/t/queue/dequeue/q").await.text(),
        "status=7",
        "drained: EMPTY"
    );
}

#[tokio::test]
async fn metrics_are_counted_and_exported_to_prometheus() {
    let upstream = echo_upstream().await;
    let server = serve_with(
        Behind::Component,
        upstream,
        &["--admin-addr", "127.0.0.1:0"],
    );
    let h2 = Proto::H2;
    assert_eq!(
        path(&server, h2, "/t/metrics/counter/hits/2").await.text(),
        "value=2"
    );
    assert_eq!(
        path(&server, h2, "/t/metrics/counter/hits/3").await.text(),
        "value=5"
    );
    assert_eq!(
        path(&server, h2, "/t/metrics/counter/hits/-1").await.text(),
        "status=2"
    );
    assert_eq!(
        path(&server, h2, "/t/metrics/gauge/level/7").await.text(),
        "value=7"
    );
    assert_eq!(
        path(&server, h2, "/t/metrics/histogram/sizes/10")
            .await
            .text(),
        "status=0"
    );
    let admin = server.admin_addr.clone().expect("admin listener");
    let metrics = get(&admin, Proto::H1, "/metrics").await.unwrap().text();
    for line in [
        "pier_filter_hits{filter=\"filter-hostcalls\"} 5",
        "pier_filter_level{filter=\"filter-hostcalls\"} 7",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn tick_timers_fire_at_their_period() {
    let server = serve(Behind::Component, &["--filter-config", "tick=20"]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ticks: u32 = path(&server, Proto::H1, "/t/ticks")
        .await
        .text()
        .parse()
        .unwrap();
    assert!(ticks >= 5, "only {ticks} ticks in 400 ms at 20 ms");
}

#[test]
fn a_filter_whose_configure_fails_is_a_start_up_error() {
    let filter = guest("filter-hostcalls");
    let app = guest("echo");
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--filter",
            filter.to_str().unwrap(),
            "--filter-config",
            "fail-configure",
            app.to_str().unwrap(),
        ],
        &["pier: --filter ", "proxy_on_configure returned false"],
    );
}

#[tokio::test]
async fn a_paused_request_resumes_from_an_http_call() {
    for behind in [Behind::Component, Behind::Upstream] {
        let server = serve(behind, &[]).await;
        for proto in PROTOS {
            let ok = path(&server, proto, "/t/http_call_continue/backend/callout").await;
            assert_eq!(ok.status, StatusCode::OK, "{behind:?} {proto:?}");
            assert_eq!(
                values(&ok, "x-echo-x-call-status"),
                ["200"],
                "{behind:?} {proto:?}"
            );
            let failed = path(&server, proto, "/t/http_call_continue/dead/x").await;
            assert_eq!(values(&failed, "x-echo-x-call-status"), ["failed"]);
        }
    }
}

#[tokio::test]
async fn a_request_paused_for_good_times_out() {
    let server = serve(Behind::Component, &["--timeout", "500ms"]).await;
    let started = Instant::now();
    let answer = path(&server, Proto::H1, "/t/pause/forever").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(server.wait_for_log(
        "paused the request and did not resume it",
        Duration::from_secs(5)
    ));
}

#[tokio::test]
async fn bodies_are_buffered_and_rewritten_both_ways() {
    for behind in [Behind::Component, Behind::Upstream] {
        let server = serve(behind, &[]).await;
        for proto in PROTOS {
            // Streamed in chunks: the filter pauses until the end, then rewrites the whole body.
            let (tx, body) = pier_testkit::channel_body();
            let req = Request::post("/t/body/request/upper").body(body).unwrap();
            let mut client = pier_testkit::Client::connect(&server.addr, proto)
                .await
                .unwrap();
            let sending = tokio::spawn(async move {
                for chunk in ["hello ", "streamed ", "body"] {
                    tx.send(Bytes::from(chunk)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let answer = pier_testkit::read(client.send(req).await.unwrap())
                .await
                .unwrap();
            sending.await.unwrap();
            assert_eq!(answer.text(), "HELLO STREAMED BODY", "{behind:?} {proto:?}");

            let big = vec![b'a'; 1 << 20];
            let answer = call(&server, proto, Request::post("/t/body/request/upper"), &big).await;
            assert!(answer.body.len() == big.len() && answer.body.iter().all(|&b| b == b'A'));

            // Paused at its end until an HTTP call answers, then changed from the answer.
            let answer = call(
                &server,
                proto,
                Request::post("/t/body/request/call"),
                b"payload",
            )
            .await;
            assert_eq!(
                answer.text(),
                "callout body|payload",
                "{behind:?} {proto:?}"
            );

            // A filter that grows the body but leaves content-length: pier drops the header
            // (the upstream's answer has one) instead of sending a truncated body.
            let answer = call(
                &server,
                proto,
                Request::post("/t/body/response/prefix_keep_length"),
                b"abc",
            )
            .await;
            assert_eq!(answer.text(), "filtered:abc", "{behind:?} {proto:?}");

            let answer = call(
                &server,
                proto,
                Request::post("/t/body/response/prefix"),
                b"abc",
            )
            .await;
            assert_eq!(answer.text(), "filtered:abc", "{behind:?} {proto:?}");
            assert!(
                !answer.headers.contains_key("content-length")
                    || answer.headers["content-length"] == "12"
            );
        }
    }
}

#[tokio::test]
async fn trailers_reach_the_filter_both_ways() {
    let server = serve(Behind::Component, &[]).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let body =
        Full::new(Bytes::from_static(b"data")).with_trailers(std::future::ready(Some(Ok::<
            _,
            std::convert::Infallible,
        >(
            trailers
        ))));
    let req = Request::post("/t/trailers").body(body).unwrap();
    let mut client = pier_testkit::Client::connect(&server.addr, Proto::H2)
        .await
        .unwrap();
    let answer = pier_testkit::read(client.send(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "data");
    let trailers = answer.trailers.expect("response trailers over HTTP/2");
    assert_eq!(
        trailers["x-echo-trailer"], "done",
        "the component's trailer"
    );
    assert_eq!(
        trailers["x-filter-trailer"], "1",
        "proxy_on_response_trailers added one"
    );
    assert!(
        server.wait_for_log("request trailers n=1", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn close_stream_resets_the_request() {
    let server = serve(Behind::Component, &[]).await;
    for proto in PROTOS {
        assert!(
            get(&server.addr, proto, "/t/close").await.is_err(),
            "{proto:?}: the response is aborted, never passed off as complete"
        );
    }
}

/// Traps in each callback, with both policies: fail-closed answers 503 (or aborts a response
/// already under way), fail-open lets the request through untouched; the VM is replaced.
#[tokio::test]
async fn traps_in_each_callback_follow_the_policy() {
    // (path, POST body, fail-closed status or None for an aborted response)
    let cases: &[(&str, &[u8], Option<u16>)] = &[
        ("/t/trap/request_headers", b"", Some(503)),
        ("/t/trap/request_body", b"some body", Some(503)),
        ("/t/trap/response_headers", b"", Some(503)),
        ("/t/trap/response_body", b"some body", None),
        ("/t/trap/http_call_response", b"", Some(503)),
    ];
    for policy in ["fail-closed", "fail-open"] {
        let server = serve(
            Behind::Component,
            &["--filter-failure", policy, "--filter-vms", "1"],
        )
        .await;
        for (p, body, closed) in cases {
            let req = Request::post(*p).header("x-upstream", "backend");
            let req = req.body(Full::new(Bytes::from_static(body))).unwrap();
            let answer = send(&server.addr, Proto::H1, req).await;
            match (policy, closed) {
                ("fail-closed", Some(status)) => {
                    let answer = answer.unwrap();
                    assert_eq!(answer.status.as_u16(), *status, "{policy} {p}");
                    assert_eq!(answer.text(), "filter filter-hostcalls failed\n");
                }
                ("fail-closed", None) => assert!(answer.is_err(), "{policy} {p}: aborted"),
                _ => {
                    let answer = answer.unwrap();
                    assert_eq!(answer.status, StatusCode::OK, "{policy} {p}");
                    assert_eq!(answer.body.as_ref(), *body, "{policy} {p}: body untouched");
                }
            }
            // The trapped VM is replaced after its back-off; then the filter serves again.
            tokio::time::sleep(Duration::from_millis(450)).await;
            let ok = path(&server, Proto::H1, "/ok").await;
            assert_eq!(
                ok.headers["x-hostcalls"], "1",
                "{policy} {p}: a fresh VM serves"
            );
            tokio::time::sleep(Duration::from_millis(450)).await;
        }
        let log = server.log();
        assert_eq!(
            log.matches("filter failed; its VM is discarded and replaced")
                .count(),
            cases.len(),
            "each trap is logged once:\n{log}"
        );
        assert!(log.contains("wasm backtrace"), "with its wasm backtrace");
    }
}

/// A filter spinning forever in any of its callbacks (request and response headers and bodies,
/// an HTTP call's response, the log) is interrupted at `--filter-callback-timeout`: the request
/// gets what a trap there gets (503 fail-closed, or an aborted response once it has begun; the
/// log callback spoils nothing), the VM is replaced, and the filter serves again.
#[tokio::test]
async fn a_loop_in_each_callback_is_interrupted() {
    let cases: &[(&str, &[u8], Option<u16>)] = &[
        ("/t/loop/request_headers", b"", Some(503)),
        ("/t/loop/request_body", b"some body", Some(503)),
        ("/t/loop/response_headers", b"", Some(503)),
        ("/t/loop/response_body", b"some body", None),
        ("/t/loop/http_call_response", b"", Some(503)),
        ("/t/loop/log", b"", Some(200)),
    ];
    let server = serve(
        Behind::Component,
        &["--filter-callback-timeout", "200ms", "--filter-vms", "1"],
    )
    .await;
    for (p, body, expected) in cases {
        let started = Instant::now();
        let req = Request::post(*p).header("x-upstream", "backend");
        let req = req.body(Full::new(Bytes::from_static(body))).unwrap();
        let answer = send(&server.addr, Proto::H1, req).await;
        match expected {
            Some(status) => {
                let answer = answer.unwrap();
                assert_eq!(answer.status.as_u16(), *status, "{p}");
            }
            None => assert!(answer.is_err(), "{p}: aborted"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{p}: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        let ok = path(&server, Proto::H1, "/ok").await;
        assert_eq!(ok.headers["x-hostcalls"], "1", "{p}: a fresh VM serves");
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    let log = server.log();
    assert_eq!(
        log.matches("filter failed; its VM is discarded and replaced")
            .count(),
        cases.len(),
        "each interruption is logged once:\n{log}"
    );
}

#[tokio::test]
async fn a_trap_in_on_log_does_not_spoil_the_response() {
    let server = serve(Behind::Component, &["--filter-vms", "1"]).await;
    let answer = path(&server, Proto::H1, "/t/trap/log").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "on_log runs after the response"
    );
    assert_eq!(answer.headers["x-hostcalls"], "1");
    assert!(server.wait_for_log("filter failed; its VM is discarded", Duration::from_secs(5)));
}

#[tokio::test]
async fn on_log_sees_the_response_code() {
    let server = serve(Behind::Component, &[]).await;
    let answer = path(&server, Proto::H1, "/t/log/on_log").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        server.wait_for_log("on_log response.code=200", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_runaway_callback_is_interrupted() {
    let server = serve(
        Behind::Component,
        &["--filter-callback-timeout", "200ms", "--filter-vms", "1"],
    )
    .await;
    let started = Instant::now();
    let answer = path(&server, Proto::H1, "/t/loop").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = path(&server, Proto::H1, "/ok").await;
    assert_eq!(
        ok.headers["x-hostcalls"], "1",
        "a fresh VM after the interrupted one"
    );
}

#[tokio::test]
async fn a_vm_cannot_grow_past_its_memory_cap() {
    let server = serve(Behind::Component, &["--filter-max-memory", "16MiB"]).await;
    let answer = path(&server, Proto::H1, "/t/memory/grow").await;
    assert_eq!(answer.text(), "grow failed", "malloc of 512 MiB is refused");
    let ok = path(&server, Proto::H1, "/ok").await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn filter_stdout_and_stderr_go_to_the_log() {
    let server = serve(Behind::Component, &[]).await;
    path(&server, Proto::H1, "/t/stdout/hi").await;
    for line in ["stdout says hi", "stderr says hi"] {
        assert!(
            server.wait_for_log(line, Duration::from_secs(5)),
            "{}",
            server.log()
        );
    }
}

#[tokio::test]
async fn a_vm_grown_to_its_memory_cap_is_replaced() {
    let server = serve(
        Behind::Component,
        &["--filter-max-memory", "1MiB", "--filter-vms", "1"],
    )
    .await;
    let pages = |text: String| -> u32 {
        text.strip_prefix("pages=")
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap()
    };
    let first = pages(path(&server, Proto::H1, "/t/memory/grow_page").await.text());
    let mut last = first;
    // Grow page by page: once the VM is past 80% of 1 MiB (16 pages) it drains and is replaced
    // after the request.
    for _ in 0..16 {
        let now = pages(path(&server, Proto::H1, "/t/memory/grow_page").await.text());
        if now < last {
            assert_eq!(now, first, "a fresh VM starts from the module's own size");
            assert!(
                server.wait_for_log("a fresh VM takes new requests", Duration::from_secs(5)),
                "{}",
                server.log()
            );
            assert!(
                (13..16).contains(&last),
                "replaced past 80% of the cap, before a failed allocation: {last} pages"
            );
            return;
        }
        last = now;
    }
    panic!(
        "the VM was never replaced (last at {last} pages):\n{}",
        server.log()
    );
}

#[tokio::test]
async fn queue_notifications_reach_a_replacement_vm() {
    let server = serve(Behind::Component, &["--filter-vms", "1"]).await;
    let h1 = Proto::H1;
    assert_eq!(
        path(&server, h1, "/t/queue/register/q").await.text(),
        "id=1"
    );
    // The VM that registered the queue traps and is replaced; the new one registers again.
    let trapped = path(&server, h1, "/t/trap/request_headers").await;
    assert_eq!(trapped.status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        path(&server, h1, "/t/queue/register/q").await.text(),
        "id=1"
    );
    assert_eq!(
        path(&server, h1, "/t/queue/enqueue/q/after").await.text(),
        "status=0"
    );
    assert!(
        server.wait_for_log("queue ready: after", Duration::from_secs(5)),
        "the new VM was told: {}",
        server.log()
    );
}
