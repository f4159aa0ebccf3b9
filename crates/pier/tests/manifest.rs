//! `pier.toml` manifests: `pier check` validates one and everything it names, and says what is
//! wrong in one line with the manifest's line and column; `pier serve pier.toml` routes requests
//! to several components and upstreams, each component with its own grants and limits.

use std::path::Path;
use std::process::{Command, Stdio};

use http::{Request, StatusCode};
use pier_testkit::{
    PROTOS, PierServer, assert_one_line_error, echo_upstream, get, guest, repo_root, send,
};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// An app directory: a component, a filter, static files and a manifest.
fn app(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("hello"), dir.path().join("hello.wasm")).unwrap();
    std::fs::copy(guest("unsatisfied"), dir.path().join("unsatisfied.wasm")).unwrap();
    std::fs::copy(
        repo_root().join("guests/prebuilt/filter-hostcalls.wasm"),
        dir.path().join("auth.wasm"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), manifest).unwrap();
    dir
}

const MANIFEST: &str = r#"manifest_version = 1
[app]
name = "shop"

[[route]]
path = "/api/..."
component = "api"
filters = ["auth"]

[[route]]
path = "/"
files = "public"

[component.api]
source = "hello.wasm"
variables = { token = "{{ api_token }}" }

[filter.auth]
source = "auth.wasm"

[variables]
api_token = { required = true, secret = true, default = "do-not-show-me" }
"#;

fn check(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(pier())
        .arg("check")
        .current_dir(dir)
        .env("PIER_CACHE_DIR", dir.join(".cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pier_check_validates_a_manifest_and_what_it_names() {
    let dir = app(MANIFEST);
    let (code, stderr) = check(dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "pier: pier.toml is valid: 2 routes, 1 component, 1 filter, 1 variable"
    );
    assert!(
        !stderr.contains("do-not-show-me"),
        "a secret is never shown"
    );
}

#[test]
fn pier_check_names_what_is_wrong() {
    let manifest = |from: &str, to: &str| {
        assert!(MANIFEST.contains(from), "{from}");
        MANIFEST.replacen(from, to, 1)
    };
    for (text, needles) in [
        (
            manifest("source = \"hello.wasm\"", "sorce = \"hello.wasm\""),
            vec!["pier.toml:15:1: unknown field `sorce`"],
        ),
        (
            manifest("component = \"api\"", "component = \"ap\""),
            vec!["pier.toml:7:13: component \"ap\" is not declared"],
        ),
        (
            manifest("source = \"hello.wasm\"", "source = \"unsatisfied.wasm\""),
            vec!["component api:", "which pier does not provide"],
        ),
        (
            manifest("{{ api_token }}", "{{ api_tokn }}"),
            vec!["pier.toml:16:23: variable \"api_tokn\" is not declared"],
        ),
    ] {
        let dir = app(&text);
        let manifest = dir.path().join("pier.toml");
        let mut args = vec!["check", manifest.to_str().unwrap()];
        let line = assert_one_line_error(pier(), &args, &needles);
        assert!(!line.contains("do-not-show-me"), "{line}");
        // Serving reads the manifest the same way.
        args[0] = "serve";
        let line = assert_one_line_error(pier(), &args, &needles[needles.len() - 1..]);
        assert!(!line.contains("do-not-show-me"), "{line}");
    }
    assert_one_line_error(
        pier(),
        &["check", "/no/such/pier.toml"],
        &["/no/such/pier.toml", "cannot read it"],
    );
}

/// The routing table end to end: exact, prefix (on a segment boundary), host, precedence, 404;
/// the guest learns its route and path info, a client cannot forge them; upstream routes.
#[tokio::test]
async fn routes_take_each_request_to_the_most_specific_match() {
    let upstream = echo_upstream().await;
    let dir = app("manifest_version = 1\n");
    std::fs::copy(guest("echo"), dir.path().join("echo.wasm")).unwrap();
    let manifest = format!(
        r#"manifest_version = 1
[[route]]
path = "/api/..."
component = "echo"
[[route]]
path = "/api/health"
component = "hello"
[[route]]
path = "/"
component = "hello"
[[route]]
path = "/proxied/..."
upstream = "http://{upstream}"
[[route]]
host = "admin.example.com"
path = "/..."
upstream = "http://{upstream}"

[component.echo]
source = "echo.wasm"
[component.hello]
source = "hello.wasm"
"#
    );
    std::fs::write(dir.path().join("pier.toml"), manifest).unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    for proto in PROTOS {
        let api = send(
            &server.addr,
            proto,
            Request::get("/api/users/7?x=1")
                .header("x-pier-route", "/forged/...")
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(api.status, StatusCode::OK, "{proto:?}");
        assert_eq!(api.headers["x-echo-x-pier-route"], "/api/...");
        assert_eq!(api.headers["x-echo-x-pier-path-info"], "/users/7");
        assert_eq!(
            api.headers.get_all("x-echo-x-pier-route").iter().count(),
            1,
            "the client's x-pier-route is replaced"
        );
        for (path, body) in [
            ("/", "hello from pier\n"),
            ("/api/health", "hello from pier\n"),
        ] {
            let answer = get(&server.addr, proto, path).await.unwrap();
            assert_eq!(answer.text(), body, "{path} {proto:?}");
        }
        let prefix_root = get(&server.addr, proto, "/api").await.unwrap();
        assert_eq!(prefix_root.headers["x-echo-x-pier-path-info"], "");
        let missing = get(&server.addr, proto, "/apix").await.unwrap();
        assert_eq!(
            missing.status,
            StatusCode::NOT_FOUND,
            "/apix is not under /api/..."
        );
        assert_eq!(missing.text(), "no route for /apix\n");
        assert_eq!(missing.headers["server"], "pier");
        let proxied = get(&server.addr, proto, "/proxied/a/b").await.unwrap();
        assert_eq!(
            proxied.headers["x-upstream-path"], "/proxied/a/b",
            "the path is kept"
        );
        assert_eq!(proxied.headers["x-echo-x-pier-path-info"], "/a/b");
        let admin = send(
            &server.addr,
            proto,
            Request::get("/api/x")
                .header("host", "admin.example.com")
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            admin
                .headers
                .get("x-upstream-path")
                .map(|v| v.to_str().unwrap()),
            Some("/api/x"),
            "{proto:?}: a host route beats a path-only one: {:?}",
            admin.headers
        );
    }
    assert!(
        server.wait_for_log("status=404", std::time::Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

/// Each component sees only its own grants: environment, and its own limits.
#[tokio::test]
async fn each_component_has_its_own_grants() {
    let dir = app("manifest_version = 1\n");
    std::fs::copy(guest("env"), dir.path().join("env.wasm")).unwrap();
    std::fs::write(
        dir.path().join("pier.toml"),
        r#"manifest_version = 1
[[route]]
path = "/a/..."
component = "a"
[[route]]
path = "/b/..."
component = "b"

[component.a]
source = "env.wasm"
env = { WHO = "a", ONLY_A = "1" }
[component.b]
source = "env.wasm"
env = { WHO = "b" }
limits = { memory = "16MiB", timeout = "5s", concurrency = 2 }
"#,
    )
    .unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    let a = get(&server.addr, PROTOS[0], "/a/").await.unwrap().text();
    let b = get(&server.addr, PROTOS[1], "/b/").await.unwrap().text();
    assert!(a.contains("WHO=a") && a.contains("ONLY_A=1"), "{a}");
    assert!(b.contains("WHO=b") && !b.contains("ONLY_A"), "{b}");
}

#[test]
fn flags_granting_per_component_are_refused_with_a_manifest() {
    // Grants are the manifest's, per component: flags granting them are refused, not ignored.
    let dir = app(MANIFEST);
    let manifest = dir.path().join("pier.toml");
    let manifest = manifest.to_str().unwrap();
    for (flag, value) in [
        ("--env", "X=1"),
        ("--dir", "/tmp"),
        ("--allow-outbound", "http://127.0.0.1:1"),
        ("--filter", "auth.wasm"),
    ] {
        assert_one_line_error(
            pier(),
            &["serve", flag, value, manifest],
            &[&format!("{flag} with a manifest")],
        );
    }
}

/// Outgoing requests follow each component's own `allowed_outbound`: one component may reach
/// the upstream, the other (the same code) may not.
#[tokio::test]
async fn each_component_has_its_own_outbound_policy() {
    let upstream = echo_upstream().await;
    let dir = app("manifest_version = 1\n");
    std::fs::copy(guest("forward"), dir.path().join("forward.wasm")).unwrap();
    std::fs::write(
        dir.path().join("pier.toml"),
        format!(
            r#"manifest_version = 1
[[route]]
path = "/allowed/..."
component = "allowed"
[[route]]
path = "/denied/..."
component = "denied"

[component.allowed]
source = "forward.wasm"
allowed_outbound = ["http://{upstream}"]
[component.denied]
source = "forward.wasm"
"#
        ),
    )
    .unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    let to = upstream.to_string();
    for (path, status) in [
        ("/allowed/x", StatusCode::OK),
        ("/denied/x", StatusCode::BAD_GATEWAY),
    ] {
        let answer = send(
            &server.addr,
            PROTOS[0],
            Request::get(path)
                .header("x-forward-to", to.as_str())
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
    }
    assert!(
        server.wait_for_log("denied", std::time::Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

/// A component's own concurrency limit answers 503 beyond it, without holding up the app's
/// other components.
#[tokio::test]
async fn a_components_concurrency_limit_is_its_own() {
    let dir = app("manifest_version = 1\n");
    std::fs::copy(guest("faults"), dir.path().join("faults.wasm")).unwrap();
    std::fs::write(
        dir.path().join("pier.toml"),
        r#"manifest_version = 1
[[route]]
path = "/..."
component = "slow"
[[route]]
path = "/hello"
component = "hello"

[component.slow]
source = "faults.wasm"
limits = { concurrency = 1, timeout = "2s" }
[component.hello]
source = "hello.wasm"
"#,
    )
    .unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    // /loop runs until the component's 2 s timeout (504): of two at once, one takes the
    // component's one slot, the other is refused at once.
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let addr = server.addr.clone();
            tokio::spawn(async move { get(&addr, PROTOS[0], "/loop").await.unwrap() })
        })
        .collect();
    // Meanwhile, another component answers.
    assert_eq!(
        get(&server.addr, PROTOS[1], "/hello").await.unwrap().status,
        StatusCode::OK
    );
    let mut statuses = Vec::new();
    let mut busy = None;
    for answer in loops {
        let answer = answer.await.unwrap();
        statuses.push(answer.status);
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            busy = Some(answer);
        }
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT]
    );
    assert_eq!(busy.unwrap().headers["retry-after"], "1");
}
