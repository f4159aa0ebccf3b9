//! `pier.toml` manifests: `pier check` validates one and everything it names, and says what is
//! wrong in one line with the manifest's line and column.

use std::path::Path;
use std::process::{Command, Stdio};

use pier_testkit::{assert_one_line_error, guest, repo_root};

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
        args[0] = "serve";
        assert_one_line_error(
            pier(),
            &args,
            &["does not serve manifests yet", "pier check"],
        );
    }
    assert_one_line_error(
        pier(),
        &["check", "/no/such/pier.toml"],
        &["/no/such/pier.toml", "cannot read it"],
    );
}
