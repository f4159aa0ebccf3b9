//! Filters written with real Proxy-Wasm SDKs from npm, built by guests/build.sh: AssemblyScript
//! with @solo-io/proxy-runtime (ABI 0.2.0) and @gcoredev/proxy-wasm-sdk-as (ABI 0.2.1). Both
//! implement the same behaviour (guests/proxywasm-as/*/assembly/index.ts).

use std::time::Duration;

use http::StatusCode;
use pier_testkit::{PROTOS, PierServer, echo_upstream, get, guest, request, toolchain_guest};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

async fn check(sdk: &str) {
    let Some(filter) = toolchain_guest(&format!("filter-{sdk}.wasm")) else {
        return;
    };
    let upstream = echo_upstream().await;
    let backend = format!("backend=http://{upstream}");
    let app = guest("echo");
    let server = PierServer::start(
        pier(),
        &[
            "--filter",
            filter.to_str().unwrap(),
            // Both filters register their root context under the SDK's name.
            "--filter-root-id",
            sdk,
            "--filter-upstream",
            &backend,
            "--filter-config",
            "from-the-command-line",
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    for proto in PROTOS {
        let plain = get(&server.addr, proto, "/plain").await.unwrap();
        assert_eq!(plain.status, StatusCode::OK, "{sdk} {proto:?}");
        assert_eq!(plain.headers["x-echo-x-sdk"], sdk, "request header rewrite");
        assert_eq!(
            plain.headers["x-sdk-response"], sdk,
            "response header rewrite"
        );

        let local = get(&server.addr, proto, "/sdk/local").await.unwrap();
        assert_eq!(local.status, StatusCode::FORBIDDEN, "{sdk} {proto:?}");
        assert_eq!(local.text(), format!("denied by {sdk}"));
        assert_eq!(local.headers["x-local"], sdk);

        let body = request(&server.addr, proto, "POST", "/sdk/body", b"original")
            .await
            .unwrap();
        assert_eq!(
            body.text(),
            format!("{sdk}:original"),
            "{sdk} {proto:?}: body rewrite"
        );

        let callout = get(&server.addr, proto, "/sdk/callout").await.unwrap();
        assert_eq!(callout.status, StatusCode::OK, "{sdk} {proto:?}");
        assert_eq!(
            callout.headers["x-echo-x-callout"], "callout body",
            "{sdk} {proto:?}: the request waited for the HTTP call's answer"
        );
    }
    // The tick timer (50 ms) counts in shared data.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticks: u64 = get(&server.addr, PROTOS[0], "/sdk/ticks")
        .await
        .unwrap()
        .text()
        .parse()
        .unwrap();
    assert!(ticks >= 3, "{sdk}: {ticks} ticks");
    let log = server.log();
    assert!(!log.contains("ERROR"), "{sdk}: {log}");
    if sdk == "solo" {
        assert!(
            log.contains("solo configured: from-the-command-line"),
            "the plugin configuration reached on_configure: {log}"
        );
    }
}

#[tokio::test]
async fn solo_io_proxy_runtime_abi_0_2_0() {
    check("solo").await;
}

/// A filter that registers its root context under a name finds none without that name: pier
/// refuses to start, and says which flag would fix it.
#[test]
fn a_named_root_context_needs_its_root_id() {
    let Some(filter) = toolchain_guest("filter-solo.wasm") else {
        return;
    };
    let app = guest("echo");
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--filter",
            filter.to_str().unwrap(),
            app.to_str().unwrap(),
        ],
        &["creating the root context \"\" failed", "--filter-root-id"],
    );
}

#[tokio::test]
async fn gcore_proxy_wasm_sdk_as_abi_0_2_1() {
    check("gcore").await;
}
