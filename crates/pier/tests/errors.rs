//! Every start-up error is one clear line naming the file, flag or import, never a panic.

use std::process::{Command, Stdio};

fn pier(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(args)
        .env("PIER_LOG", "off")
        .env(
            "PIER_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("errors-cache"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("pier runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), stderr)
}

/// Asserts pier failed with exactly one line on stderr, containing every `needle`.
fn assert_one_line_error(args: &[&str], needles: &[&str]) {
    pier_testkit::assert_one_line_error(
        std::path::Path::new(env!("CARGO_BIN_EXE_pier")),
        args,
        needles,
    );
}

fn prebuilt(name: &str) -> String {
    pier_testkit::repo_root()
        .join("guests/prebuilt")
        .join(name)
        .display()
        .to_string()
}

fn guest(name: &str) -> String {
    pier_testkit::guest(name).display().to_string()
}

#[test]
fn a_missing_file() {
    for cmd in ["serve", "run", "compile"] {
        let line = pier_testkit::assert_one_line_error(
            std::path::Path::new(env!("CARGO_BIN_EXE_pier")),
            &[cmd, "no/such/app.wasm"],
            &["cannot read no/such/app.wasm", "No such file"],
        );
        assert_eq!(
            line.matches("No such file").count(),
            1,
            "the cause once: {line}"
        );
    }
}

/// A component that does not compile is said once, and nothing claims it compiled.
#[test]
fn a_component_that_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.wasm");
    // A component header, then a section that is not one.
    std::fs::write(&path, b"\0asm\x0d\x00\x01\x00\x7f\x05junk!").unwrap();
    let path = path.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["serve", "--no-cache", &path])
        .env("PIER_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "only what happened: {stderr}");
    assert!(
        lines[0].starts_with("pier: ") && lines[0].contains("does not compile"),
        "{stderr}"
    );
}

/// `--addr` takes host names; the serving line is the first line and gives the address.
#[test]
fn an_address_may_be_a_host_name() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args([
            "serve",
            "--no-cache",
            "--addr",
            "localhost:0",
            &guest("hello"),
        ])
        .env("PIER_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        first.starts_with("pier: serving http://127.0.0.1:"),
        "{first}"
    );
}

#[test]
fn a_file_that_is_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.html");
    std::fs::write(&path, "<html></html>").unwrap();
    let path = path.display().to_string();
    for cmd in ["serve", "run"] {
        assert_one_line_error(&[cmd, &path], &[&path, "is not a WebAssembly file"]);
    }
}

#[test]
fn a_core_module_given_to_serve() {
    let app = prebuilt("cli.wasm");
    assert_one_line_error(
        &["serve", &app],
        &[
            &app,
            "is a core WebAssembly module, not a component",
            "pier run",
        ],
    );
}

#[test]
fn a_command_given_to_serve_is_pointed_to_run() {
    let app = prebuilt("cli.component.wasm");
    assert_one_line_error(
        &["serve", &app],
        &[
            &app,
            "exports neither wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3",
            "wasi:cli/run@0.2",
            "run it with `pier run`",
        ],
    );
}

#[test]
fn an_http_component_given_to_run_is_pointed_to_serve() {
    let app = guest("hello");
    assert_one_line_error(
        &["run", &app],
        &[
            &app,
            "exports neither wasi:cli/run@0.2 nor wasi:cli/run@0.3",
            "wasi:http/incoming-handler@0.2.12",
            "serve it with `pier serve`",
        ],
    );
}

#[test]
fn an_import_pier_cannot_satisfy_is_named() {
    let app = guest("unsatisfied");
    assert_one_line_error(
        &["serve", &app],
        &[
            &app,
            "imports `pier:guests/missing`, which pier does not provide",
        ],
    );
}

#[test]
fn an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(
        &["serve", "--addr", &addr, &guest("hello")],
        &[
            &format!("cannot listen on {addr}"),
            "already in use",
            "--addr",
        ],
    );
}

#[test]
fn a_dir_grant_that_does_not_exist() {
    for cmd in ["serve", "run"] {
        let app = if cmd == "serve" {
            guest("hello")
        } else {
            prebuilt("cli.wasm")
        };
        assert_one_line_error(
            &[cmd, "--dir", "/no/such/dir::/data", &app],
            &["--dir /no/such/dir", "No such file"],
        );
    }
}

#[test]
fn malformed_flags_are_named() {
    let (code, stderr) = pier(&["serve", "--env", "=x", &guest("hello")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid --env \"=x\": expected NAME=VALUE or NAME"),
        "{stderr}"
    );
    for (addr, says) in [
        ("localhost", "expected HOST:PORT"),
        ("localhost:http", "is not a number"),
        (
            "no-such-host.invalid:80",
            "cannot resolve no-such-host.invalid",
        ),
    ] {
        let (code, stderr) = pier(&["serve", "--addr", addr, &guest("hello")]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("--addr") && stderr.contains(says),
            "{stderr}"
        );
    }
}
