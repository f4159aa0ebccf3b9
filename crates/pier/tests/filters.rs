//! Proxy-Wasm filters in front of a component: header phases both ways, local responses, the
//! failure policy and VM recycling, over HTTP/1.1 and HTTP/2.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use pier_testkit::{PROTOS, PierServer, Proto, get, guest, send};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

fn serve(flags: &[&str]) -> PierServer {
    let filter = guest("filter-headers");
    let app = guest("echo");
    let mut args = vec!["--filter", filter.to_str().unwrap()];
    args.extend_from_slice(flags);
    args.push(app.to_str().unwrap());
    PierServer::start(pier(), &args).expect("pier starts")
}

#[tokio::test]
async fn a_filter_changes_request_and_response_headers() {
    let server = serve(&[]);
    assert!(
        server.log().contains("filter started"),
        "on_vm_start ran at start-up: {}",
        server.log()
    );
    for proto in PROTOS {
        let req = Request::builder()
            .method("POST")
            .uri("/x")
            .header("x-rep", "a")
            .header("x-rep", "b")
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        let answer = send(&server.addr, proto, req).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(
            answer.headers["x-echo-x-filtered"], "yes",
            "{proto:?}: the component saw the filter's header"
        );
        assert_eq!(answer.headers["x-filter-response"], "1", "{proto:?}");
        let reps: Vec<_> = answer.headers.get_all("x-echo-x-rep").iter().collect();
        assert_eq!(
            reps,
            ["a", "b"],
            "{proto:?}: repeated headers survive the filter's map"
        );
        assert_eq!(answer.text(), "hi");
    }
}

#[tokio::test]
async fn a_filter_can_answer_by_itself() {
    let server = serve(&[]);
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/t/local").await.unwrap();
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{proto:?}");
        assert!(
            !answer.headers.contains_key("x-echo-x-filtered"),
            "the component never ran"
        );
    }
}

#[tokio::test]
async fn a_trapping_filter_fails_closed_then_is_replaced() {
    let server = serve(&[]);
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/t/trap").await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{proto:?}");
        assert_eq!(answer.headers["server"], "pier");
        assert_eq!(answer.text(), "filter filter-headers failed\n");
        // After the back-off, a fresh VM serves again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let answer = get(&server.addr, proto, "/ok").await.unwrap();
        assert_eq!(
            (answer.status, &answer.headers["x-echo-x-filtered"]),
            (StatusCode::OK, &"yes".parse().unwrap())
        );
    }
    let log = server.log();
    assert!(
        log.contains(
            "filter failed; its VM is discarded and replaced: wasm trap: wasm `unreachable`"
        ),
        "{log}"
    );
    assert!(
        !log.contains("Stack backtrace"),
        "no host backtrace in the log"
    );
}

#[tokio::test]
async fn a_trapping_filter_fails_open_when_asked() {
    let server = serve(&["--filter-failure", "fail-open"]);
    let answer = get(&server.addr, Proto::H1, "/t/trap").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "the filter is skipped");
    assert!(!answer.headers.contains_key("x-echo-x-filtered"));
}

#[test]
fn a_file_that_is_not_a_filter_is_one_clear_error() {
    let not_a_filter = guest("hello");
    let app = guest("echo");
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--filter",
            not_a_filter.to_str().unwrap(),
            app.to_str().unwrap(),
        ],
        &["pier: --filter ", "not a valid core WebAssembly module"],
    );
}
