//! `wasi:config`: each component reads its own variables, templates over the app's
//! `[variables]`, whose values come from defaults, `PIER_VARIABLE_<NAME>` and
//! `--variables-file`. A required variable without a value stops the start, naming it; a
//! secret never reaches the log.

use std::path::Path;

use pier_testkit::{PROTOS, PierServer, assert_one_line_error, get, guest};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

const MANIFEST: &str = r#"manifest_version = 1
[[route]]
path = "/a"
component = "a"
[[route]]
path = "/b"
component = "b"

[component.a]
source = "config.wasm"
variables = { db = "pg://{{ db_host }}/app", token = "{{ api_token }}", maybe = "{{ optional }}" }
[component.b]
source = "config.wasm"
variables = { greeting = "hello {{ db_host }}" }

[variables]
db_host = { default = "localhost" }
api_token = { required = true, secret = true }
optional = {}
"#;

fn app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("config"), dir.path().join("config.wasm")).unwrap();
    std::fs::write(dir.path().join("pier.toml"), MANIFEST).unwrap();
    dir
}

fn lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn each_component_reads_its_own_variables() {
    let dir = app();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start_with_env(
        pier(),
        &[manifest.to_str().unwrap()],
        &[("PIER_VARIABLE_API_TOKEN", "s3cret-from-env")],
    )
    .unwrap();
    for proto in PROTOS {
        let a = get(&server.addr, proto, "/a").await.unwrap().text();
        assert_eq!(
            lines(&a),
            ["db=pg://localhost/app", "token=s3cret-from-env"],
            "{proto:?}: a variable over one with no value is absent"
        );
        let b = get(&server.addr, proto, "/b").await.unwrap().text();
        assert_eq!(lines(&b), ["greeting=hello localhost"], "{proto:?}");
    }
}

#[tokio::test]
async fn a_variables_file_overrides_the_environment() {
    let dir = app();
    let manifest = dir.path().join("pier.toml");
    let file = dir.path().join("prod.env");
    std::fs::write(&file, "API_TOKEN=from-file\ndb_host=db.internal\n").unwrap();
    let server = PierServer::start_with_env(
        pier(),
        &[
            "--variables-file",
            file.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
        &[
            ("PIER_VARIABLE_API_TOKEN", "from-env"),
            ("PIER_VARIABLE_OPTIONAL", "now-set"),
        ],
    )
    .unwrap();
    let a = get(&server.addr, PROTOS[0], "/a").await.unwrap().text();
    assert_eq!(
        lines(&a),
        [
            "db=pg://db.internal/app",
            "maybe=now-set",
            "token=from-file"
        ]
    );
    let toml = dir.path().join("prod.toml");
    std::fs::write(&toml, "api_token = \"from-toml\"\n").unwrap();
    let server = PierServer::start(
        pier(),
        &[
            "--variables-file",
            toml.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    let a = get(&server.addr, PROTOS[1], "/a").await.unwrap().text();
    assert!(a.contains("token=from-toml"), "{a}");
}

#[test]
fn missing_and_unknown_variables_stop_the_start() {
    let dir = app();
    let manifest = dir.path().join("pier.toml");
    let manifest = manifest.to_str().unwrap();
    // Nothing gives api_token a value.
    let line = assert_one_line_error(
        pier(),
        &["serve", manifest],
        &[
            "variable \"api_token\" is required and has no value",
            "PIER_VARIABLE_API_TOKEN",
        ],
    );
    assert!(line.contains("pier.toml"), "{line}");
    assert_one_line_error(
        pier(),
        &["check", manifest],
        &["variable \"api_token\" is required"],
    );
    let file = dir.path().join("bad.env");
    std::fs::write(&file, "API_TOKEN=s3cret\nDB_HOTS=typo\n").unwrap();
    let line = assert_one_line_error(
        pier(),
        &[
            "serve",
            "--variables-file",
            file.to_str().unwrap(),
            manifest,
        ],
        &["\"DB_HOTS\"", "does not declare"],
    );
    assert!(!line.contains("s3cret"), "{line}");
    std::fs::write(&file, "API_TOKEN='s3cret\n").unwrap();
    let line = assert_one_line_error(
        pier(),
        &[
            "serve",
            "--variables-file",
            file.to_str().unwrap(),
            manifest,
        ],
        &["bad.env", "not NAME=VALUE"],
    );
    assert!(!line.contains("s3cret"), "a secret is never shown: {line}");
}

/// Secrets given to a component never reach the log, even at debug level.
#[tokio::test]
async fn secrets_are_never_logged() {
    let dir = app();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start_with_env(
        pier(),
        &[manifest.to_str().unwrap()],
        &[
            ("PIER_VARIABLE_API_TOKEN", "s3cret-value"),
            ("PIER_LOG", "debug"),
        ],
    )
    .unwrap();
    let a = get(&server.addr, PROTOS[0], "/a").await.unwrap().text();
    assert!(a.contains("s3cret-value"));
    let log = server.log();
    assert!(!log.contains("s3cret-value"), "{log}");
}
