//! `http://self`: a component granted it calls the app's own routes in process, through the
//! router, filters and limits, counted in the metrics; one not granted it is denied; a
//! component that calls itself without end is stopped by the concurrency limit, not hung.

use std::path::Path;

use http::{Request, StatusCode};
use pier_testkit::{PROTOS, PierServer, get, guest, send};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

const MANIFEST: &str = r#"manifest_version = 1
[[route]]
path = "/api/..."
component = "api"
[[route]]
host = "front.example"
path = "/..."
component = "front"
[[route]]
host = "nope.example"
path = "/..."
component = "nope"
[[route]]
path = "/loop/..."
component = "front"

[component.api]
source = "echo.wasm"
[component.front]
source = "forward.wasm"
allowed_outbound = ["http://self"]
[component.nope]
source = "forward.wasm"
"#;

fn request(host: &str, path: &str) -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::post(path)
        .header("host", host)
        .header("x-forward-to", "self")
        .body("ping".into())
        .unwrap()
}

#[tokio::test]
async fn a_component_calls_the_apps_routes_in_process() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("echo"), dir.path().join("echo.wasm")).unwrap();
    std::fs::copy(guest("forward"), dir.path().join("forward.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), MANIFEST).unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(
        pier(),
        &[
            "--admin-addr",
            "127.0.0.1:0",
            "--max-concurrency",
            "8",
            manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    for proto in PROTOS {
        let answer = send(
            &server.addr,
            proto,
            request("front.example", "/api/users?id=7"),
        )
        .await
        .unwrap();
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{proto:?}: {}",
            answer.text()
        );
        assert_eq!(
            answer.text(),
            "ping",
            "the echo component answered, through front"
        );

        let denied = send(&server.addr, proto, request("nope.example", "/api/users"))
            .await
            .unwrap();
        assert_eq!(denied.status, StatusCode::BAD_GATEWAY, "{}", denied.text());
        assert_eq!(denied.text(), "error-code 15\n", "HTTP-request-denied");
    }

    // Calling itself without end: each call holds a slot of --max-concurrency 8, and the
    // ninth is refused, which ends every call above it.
    let looped = send(&server.addr, PROTOS[0], request("localhost", "/loop/x"))
        .await
        .unwrap();
    assert_eq!(
        looped.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        looped.text()
    );
    // The server is none the worse for it.
    let after = send(&server.addr, PROTOS[1], request("front.example", "/api/ok"))
        .await
        .unwrap();
    assert_eq!(after.status, StatusCode::OK);

    let admin = server.admin_addr.clone().unwrap();
    let metrics = get(&admin, PROTOS[0], "/metrics").await.unwrap().text();
    for line in [
        "pier_requests_total{status=\"2xx\",route=\"/api/...\",component=\"api\"} 3",
        "pier_outbound_requests_total{result=\"self\"} 11",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(
        server.wait_for_log(
            "route=\"front.example/...\"",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
}
