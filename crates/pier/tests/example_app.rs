//! The README's application example, `examples/app/pier.toml`, served as it is (its upstream
//! pointed at a test server): a Python component reading its wasi:config variables, a
//! JavaScript component told its route, static files, and an upstream.

use std::path::Path;

use http::StatusCode;
use pier_testkit::{PROTOS, PierServer, echo_upstream, get, repo_root, toolchain_built};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// A copy of the example with its upstream at `upstream`.
fn example(upstream: std::net::SocketAddr) -> tempfile::TempDir {
    let from = repo_root().join("examples/app");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["build", "public"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    let manifest = std::fs::read_to_string(from.join("pier.toml")).unwrap();
    assert!(manifest.contains("http://127.0.0.1:9000"));
    let manifest = manifest.replace("http://127.0.0.1:9000", &format!("http://{upstream}"));
    std::fs::write(dir.path().join("pier.toml"), manifest).unwrap();
    dir
}

#[tokio::test]
async fn the_example_app_serves_every_kind_of_route() {
    let (Some(_), Some(_)) = (
        toolchain_built("examples/app/build/api.wasm"),
        toolchain_built("examples/app/build/web.wasm"),
    ) else {
        return;
    };
    let upstream = echo_upstream().await;
    let dir = example(upstream);
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start_with_env(
        pier(),
        &[manifest.to_str().unwrap()],
        &[("PIER_VARIABLE_GREETING", "hi from the environment")],
    )
    .unwrap();
    for proto in PROTOS {
        let api = get(&server.addr, proto, "/api/hello").await.unwrap();
        assert_eq!(
            api.text(),
            "hi from the environment (v1) at /api/hello\n",
            "{proto:?}"
        );
        let web = get(&server.addr, proto, "/js/page?x=1").await.unwrap();
        assert_eq!(
            web.text(),
            "{\"component\":\"web\",\"path\":\"/js/page?x=1\",\"route\":\"/js/...\",\"pathInfo\":\"/page\"}\n"
        );
        let index = get(&server.addr, proto, "/").await.unwrap();
        assert!(index.text().contains("<h1>pier example app</h1>"));
        assert!(index.headers.contains_key("etag"));
        let proxied = get(&server.addr, proto, "/upstream/x").await.unwrap();
        assert_eq!(proxied.status, StatusCode::OK);
        assert_eq!(proxied.headers["x-upstream-path"], "/upstream/x");
        let missing = get(&server.addr, proto, "/nothing.txt").await.unwrap();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    }
}
