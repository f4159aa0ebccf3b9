//! WASI 0.3 middleware (`middleware = [...]` on a manifest's route): componentize-py's
//! middleware (guests/python/middleware.py) in front of a 0.3 service, a 0.2 component, an
//! upstream, and itself; what a failure or a timeout on either side of the chain gives the
//! client; and the manifest mistakes pier refuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use pier_testkit::{Answer, PierServer, Proto, guest, toolchain_guest};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// The compile cache the Python components (18 MB each) are compiled into once, kept between
/// runs and shared with the other tests of 0.3 services.
fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("p3-serve-cache")
}

/// An app directory with the middleware, the Python service, and the echo and faults
/// components, and `manifest`.
fn app(middleware: &Path, manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(middleware, dir.path().join("middleware.wasm")).unwrap();
    let service = toolchain_guest("python-p3.wasm").expect("built with the middleware");
    std::fs::copy(service, dir.path().join("service.wasm")).unwrap();
    std::fs::copy(guest("echo"), dir.path().join("echo.wasm")).unwrap();
    std::fs::copy(guest("faults"), dir.path().join("faults.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), manifest).unwrap();
    dir
}

async fn send(addr: &str, proto: Proto, method: &str, path: &str, body: &[u8]) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", "Bearer letmein")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    pier_testkit::send(addr, proto, req).await.unwrap()
}

const CHAINS: &str = r#"manifest_version = 1

[[route]]
path = "/old/..."
component = "service"
middleware = ["auth"]

[[route]]
path = "/echo/..."
component = "echo"
middleware = ["auth"]

[[route]]
path = "/twice/..."
component = "echo"
middleware = ["auth", "auth"]

[[route]]
path = "/origin/..."
upstream = "ORIGIN"
middleware = ["auth"]

[[route]]
path = "/..."
component = "faults"
middleware = ["auth"]

[[route]]
host = "impatient.test"
path = "/..."
component = "faults"
middleware = ["impatient"]

[component.auth]
source = "middleware.wasm"

[component.impatient]
source = "middleware.wasm"
limits = { timeout = "500ms" }

[component.service]
source = "service.wasm"

[component.echo]
source = "echo.wasm"

[component.faults]
source = "faults.wasm"
limits = { timeout = "1s" }
"#;

/// One chain per route, each link a fresh instance: the middleware answers by itself or passes
/// the request on changed, and changes the response; bodies stream through both ways.
#[tokio::test]
async fn middleware_passes_requests_on_and_answers_by_itself() {
    let Some(middleware) = toolchain_guest("python-middleware.wasm") else {
        return;
    };
    let origin = pier_testkit::echo_upstream().await;
    let dir = app(
        &middleware,
        &CHAINS.replace("ORIGIN", &format!("http://{origin}")),
    );
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start_with_env(
        pier(),
        &[manifest.to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache().to_str().unwrap())],
    )
    .unwrap();
    let addr = &server.addr;

    for proto in [Proto::H1, Proto::H2] {
        // Without the token the middleware answers itself; the service never runs.
        let denied = pier_testkit::get(addr, proto, "/old/x").await.unwrap();
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{proto:?}");
        assert_eq!(denied.text(), "denied by the middleware\n");

        // With it, the 0.3 service gets the rewritten path; the response gets a header.
        let answer = send(addr, proto, "GET", "/old/x", b"").await;
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.text(), "hello from python 0.3 at /new/x\n");
        assert_eq!(answer.headers["x-middleware"], "python");

        // A 0.2 component behind it sees the headers the middleware set and removed, and its
        // body and trailers come back through the middleware.
        let body = vec![b'x'; 1 << 20];
        let answer = send(addr, proto, "POST", "/echo/a", &body).await;
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.body.len(), body.len(), "{proto:?}");
        assert!(answer.body == body, "{proto:?}");
        assert_eq!(answer.headers["x-echo-x-user"], "alice");
        assert!(!answer.headers.contains_key("x-echo-authorization"));
        assert_eq!(answer.headers["x-middleware"], "python");
        if proto == Proto::H2 {
            let trailers = answer.trailers.expect("the echo's trailers come through");
            assert_eq!(trailers["x-echo-trailer"], "done");
        }

        // Twice in a chain: the inner one no longer sees the token the outer removed, and its
        // 401 passes back through the outer, which marks it too.
        let answer = send(addr, proto, "GET", "/twice/a", b"").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{proto:?}");
        assert_eq!(answer.text(), "denied by the middleware\n");
        assert_eq!(answer.headers["x-middleware"], "python");

        // An upstream behind it.
        let answer = send(addr, proto, "POST", "/origin/p", b"to the origin").await;
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.text(), "to the origin");
        assert_eq!(answer.headers["x-upstream-path"], "/origin/p");
        assert_eq!(answer.headers["x-echo-x-user"], "alice");
        assert_eq!(answer.headers["x-middleware"], "python");
    }

    // 40 at once through the chain, each with its own body.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let addr = addr.clone();
        tasks.spawn(async move {
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let body = format!("request {i}");
            let answer = send(&addr, proto, "POST", "/echo/n", body.as_bytes()).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.text(), body);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// A body streams through the chain as it is written: the Python service behind the middleware
/// echoes the first half of a request before the client has sent the second.
#[tokio::test]
async fn bodies_stream_through_the_chain_both_ways_at_once() {
    let Some(middleware) = toolchain_guest("python-middleware.wasm") else {
        return;
    };
    let manifest = r#"manifest_version = 1
[[route]]
path = "/..."
component = "service"
middleware = ["auth"]

[component.auth]
source = "middleware.wasm"

[component.service]
source = "service.wasm"
"#;
    let dir = app(&middleware, manifest);
    let server = PierServer::start_with_env(
        pier(),
        &[dir.path().join("pier.toml").to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache().to_str().unwrap())],
    )
    .unwrap();
    for proto in [Proto::H1, Proto::H2] {
        let auth = [("authorization", "Bearer letmein")];
        let head = pier_testkit::echoes_while_sending(&server.addr, proto, "/echo", &auth).await;
        assert_eq!(head.headers["x-middleware"], "python");
    }
}

/// Each link fails on its own: the client gets what it would get from the link that failed
/// (passed back through the links in front, which may change it), and the log names it.
#[tokio::test]
async fn a_failure_anywhere_in_the_chain_answers_as_that_link_would() {
    let Some(middleware) = toolchain_guest("python-middleware.wasm") else {
        return;
    };
    let origin = "http://127.0.0.1:9";
    let dir = app(&middleware, &CHAINS.replace("ORIGIN", origin));
    let server = PierServer::start_with_env(
        pier(),
        &[dir.path().join("pier.toml").to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache().to_str().unwrap())],
    )
    .unwrap();
    let addr = &server.addr;

    // The middleware traps: 500.
    let answer = send(addr, Proto::H1, "GET", "/mw/trap", b"").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!answer.headers.contains_key("x-middleware"));

    // The handler behind it traps: its 500 reaches the middleware, which passes it on.
    let answer = send(addr, Proto::H1, "GET", "/trap", b"").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.text(), "the component failed\n");
    assert_eq!(answer.headers["x-middleware"], "python");
    // (The failure's line, after its backtrace, ends with where it happened.)
    let log = server.log();
    assert!(
        log.contains(r#"component="faults" method=GET path="/trap" kind="trap""#),
        "{log}"
    );
    assert!(!log.contains(r#"component="auth" method=GET path="/trap""#));

    // The handler loops past its own 1 s: 504, through the middleware.
    let answer = send(addr, Proto::H1, "GET", "/loop", b"").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.headers["x-middleware"], "python");

    // The handler sends its head, then traps: the response is cut short, through the chain.
    for proto in [Proto::H1, Proto::H2] {
        let req = Request::builder()
            .uri("/abort")
            .header("authorization", "Bearer letmein")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut client = pier_testkit::Client::connect(addr, proto).await.unwrap();
        // (HTTP/1.1 may close the connection before the head is out: the client sees no
        // response at all then, which is as incomplete as a cut body.)
        if let Ok(response) = client.send(req).await {
            assert_eq!(response.status(), StatusCode::OK, "{proto:?}");
            let read = http_body_util::BodyExt::collect(response.into_body()).await;
            assert!(read.is_err(), "{proto:?}: an aborted body ended cleanly");
        }
    }

    // The upstream is down: pier's 502 for it, through the middleware.
    let answer = send(addr, Proto::H1, "GET", "/origin/x", b"").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers["x-middleware"], "python");

    // The middleware's own timeout (500 ms) passes first: 504 from it, and the request it
    // passed on is ended with it, which the log says. (The two on one thread: the middleware's
    // timer fires once the computing handler yields, within one slice, 50 ms.)
    let req = Request::builder()
        .uri("/loop")
        .header("host", "impatient.test")
        .header("authorization", "Bearer letmein")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = pier_testkit::send(addr, Proto::H1, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(!answer.headers.contains_key("x-middleware"));
    assert!(
        server.wait_for_log(
            "the middleware stopped waiting for the response",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
}

/// `pier check` (and `serve`) refuse a chain whose components are not what their places need.
#[test]
fn a_component_in_the_wrong_place_of_a_chain_is_refused() {
    let Some(middleware) = toolchain_guest("python-middleware.wasm") else {
        return;
    };
    let check = |manifest: &str| {
        let dir = app(&middleware, manifest);
        let out = std::process::Command::new(pier())
            .arg("check")
            .current_dir(dir.path())
            .env("PIER_CACHE_DIR", cache())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(
        r#"manifest_version = 1
[[route]]
path = "/..."
component = "echo"
middleware = ["service"]
[component.service]
source = "service.wasm"
[component.echo]
source = "echo.wasm"
"#,
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("component service is listed as middleware but does not import"),
        "{stderr}"
    );
    let (code, stderr) = check(
        r#"manifest_version = 1
[[route]]
path = "/..."
component = "auth"
[component.auth]
source = "middleware.wasm"
"#,
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("component auth imports wasi:http/handler@0.3, so it is middleware"));
    let (code, stderr) = check(
        r#"manifest_version = 1
[[route]]
path = "/..."
component = "echo"
middleware = ["auth"]
[component.auth]
source = "middleware.wasm"
[component.echo]
source = "echo.wasm"
"#,
    );
    assert_eq!(code, Some(0), "{stderr}");
}
