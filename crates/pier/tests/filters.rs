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
        server.wait_for_log("filter started", std::time::Duration::from_secs(5)),
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
        log.contains("filter failed; its VM is discarded and replaced")
            && log.contains("wasm trap: wasm `unreachable`"),
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

#[tokio::test]
async fn a_v0_1_0_filter_runs_with_its_own_signatures() {
    let filter = guest("filter-v010");
    let app = guest("echo");
    let server = PierServer::start(
        pier(),
        &[
            "--filter",
            filter.to_str().unwrap(),
            "--filter-config",
            "cfg-text",
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.headers["x-echo-x-abi"], "0.1.0");
        assert_eq!(
            answer.headers["x-echo-x-abi-config"], "cfg-text",
            "proxy_get_configuration gives the plugin configuration"
        );
        assert_eq!(answer.headers["x-abi-response"], "0.1.0");
    }
}

#[tokio::test]
async fn filters_run_in_front_of_an_upstream() {
    let upstream = pier_testkit::echo_upstream().await;
    let filter = guest("filter-headers");
    let origin = format!("http://{upstream}");
    let server = PierServer::start(
        pier(),
        &["--filter", filter.to_str().unwrap(), "--upstream", &origin],
    )
    .unwrap();
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/via/upstream").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.headers["x-upstream-path"], "/via/upstream");
        assert_eq!(
            answer.headers["x-echo-x-filtered"], "yes",
            "{proto:?}: the upstream saw the filter's header"
        );
        assert_eq!(answer.headers["x-filter-response"], "1");
        let local = get(&server.addr, proto, "/t/local").await.unwrap();
        assert_eq!(local.status, StatusCode::NO_CONTENT);
        assert!(!local.headers.contains_key("x-upstream-path"));
    }
}

#[tokio::test]
async fn failure_policy_is_per_filter() {
    let first = guest("filter-headers");
    let second = guest("filter-v010");
    let app = guest("echo");
    let server = PierServer::start(
        pier(),
        &[
            "--filter",
            first.to_str().unwrap(),
            "--filter",
            second.to_str().unwrap(),
            "--filter-failure",
            "fail-open",
            "--filter-failure",
            "fail-closed",
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    let answer = get(&server.addr, Proto::H1, "/t/trap").await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the failing first filter is skipped"
    );
    assert!(!answer.headers.contains_key("x-echo-x-filtered"));
    assert_eq!(
        answer.headers["x-echo-x-abi"], "0.1.0",
        "the second filter still ran"
    );
}

#[tokio::test]
async fn other_vms_serve_while_a_trapped_one_backs_off() {
    let server = serve(&["--filter-vms", "2"]);
    // Requests go round-robin over the VMs: the first traps VM 0, the second runs on VM 1.
    let trapped = get(&server.addr, Proto::H1, "/t/trap").await.unwrap();
    assert_eq!(trapped.status, StatusCode::SERVICE_UNAVAILABLE);
    let served = get(&server.addr, Proto::H1, "/ok").await.unwrap();
    assert_eq!(served.status, StatusCode::OK, "VM 1 was not affected");
    assert_eq!(served.headers["x-echo-x-filtered"], "yes");
    // VM 0 is backing off: new requests pass it over for VM 1 meanwhile.
    for _ in 0..4 {
        let answer = get(&server.addr, Proto::H1, "/ok").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_crash_loop_backs_off_exponentially() {
    let server = serve(&["--filter-vms", "1"]);
    for wait in [150, 250, 450] {
        let answer = get(&server.addr, Proto::H1, "/t/trap").await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let log = server.log();
    let delays: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("next start in ").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    assert_eq!(delays, ["100ms", "200ms", "400ms"], "{log}");
    let answer = get(&server.addr, Proto::H1, "/ok").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "a fresh VM serves again");
}

#[test]
fn a_filter_config_without_its_filter_is_one_clear_error() {
    let filter = guest("filter-headers");
    let app = guest("echo");
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--filter",
            filter.to_str().unwrap(),
            "--filter-config",
            "one",
            "--filter-config",
            "two",
            app.to_str().unwrap(),
        ],
        &["pier: --filter-config given 2 times for 1 --filter"],
    );
}
