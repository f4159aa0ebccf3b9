//! `pier run`: preview1 modules and command components, with the terminal's stdio, exact exit
//! codes and only the granted env and dirs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn pier() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pier"));
    cmd.env_remove("PIER_LOG")
        .env("PIER_CACHE_DIR", cache_dir());
    cmd
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-cache")
}

fn prebuilt(name: &str) -> String {
    pier_testkit::repo_root()
        .join("guests/prebuilt")
        .join(name)
        .display()
        .to_string()
}

const MODULE: &str = "cli.wasm";
const COMPONENT: &str = "cli.component.wasm";

fn run(args: &[&str]) -> Output {
    pier()
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("pier runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_preview1_module_exits_with_its_exact_code_and_sees_its_args() {
    let app = prebuilt(MODULE);
    let out = run(&[&app, "one", "two words", "--exit", "42"]);
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("argc=5\n"), "{text}");
    assert!(
        text.contains("argv[1]=one\nargv[2]=two words\nargv[3]=--exit\n"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("cli: exiting with 42"),
        "the guest's stderr is the terminal's"
    );

    let out = run(&[&app]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the program's default exit code"
    );
    let out = run(&[&app, "--exit", "0"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_command_component_runs_and_reports_failure() {
    let app = prebuilt(COMPONENT);
    let out = run(&[&app, "hello"]);
    // The preview1 adapter inside the component reports any non-zero exit as failure (1).
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("argv[1]=hello\n"), "{}", stdout(&out));
    let out = run(&[&app, "--exit", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn env_is_only_what_was_granted() {
    for app in [prebuilt(MODULE), prebuilt(COMPONENT)] {
        let out = pier()
            .env("PIER_TEST_SECRET", "s3cret")
            .args([
                "run",
                "--env",
                "GREETING=hi",
                &app,
                "--env",
                "GREETING",
                "--env",
                "PIER_TEST_SECRET",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(text.contains("env GREETING=hi\n"), "{text}");
        assert!(
            text.contains("env PIER_TEST_SECRET=<unset>\n"),
            "host env must not leak: {text}"
        );

        let out = pier()
            .env("PIER_TEST_SECRET", "s3cret")
            .args([
                "run",
                "--env",
                "PIER_TEST_SECRET",
                &app,
                "--env",
                "PIER_TEST_SECRET",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            stdout(&out).contains("env PIER_TEST_SECRET=s3cret\n"),
            "--env NAME inherits: {}",
            stdout(&out)
        );
    }
}

#[test]
fn directories_are_reachable_only_when_preopened() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("note.txt"), "from the host\n").unwrap();
    let host = dir.path().display().to_string();
    for app in [prebuilt(MODULE), prebuilt(COMPONENT)] {
        let granted = format!("{host}::/data");
        let out = run(&[
            "--dir",
            &granted,
            &app,
            "--read",
            "/data/note.txt",
            "--write",
            "/data/out.txt",
        ]);
        let text = stdout(&out);
        assert!(
            text.contains("read /data/note.txt: from the host\n"),
            "{text}"
        );
        assert!(text.contains("write /data/out.txt: ok\n"), "{text}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
            "written by cli\n"
        );
        std::fs::remove_file(dir.path().join("out.txt")).unwrap();

        let path = format!("{host}/note.txt");
        let out = run(&[&app, "--read", &path]);
        let text = stdout(&out);
        assert!(
            text.contains(&format!("read {path}: error:")),
            "no ambient file access: {text}"
        );
    }
}

/// A directory granted `:ro` is read and never written; nothing outside a granted directory
/// is reached through it: not by `..`, not by a symlink pointing out, not by an absolute path.
#[test]
fn a_granted_directory_keeps_its_guest_inside_and_read_only_means_read_only() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret.txt"), "outside\n").unwrap();
    let dir = outer.path().join("granted");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("note.txt"), "from the host\n").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), dir.join("link")).unwrap();
    let host = dir.display().to_string();
    for app in [prebuilt(MODULE), prebuilt(COMPONENT)] {
        let read_only = format!("{host}::/data:ro");
        let out = run(&[
            "--dir",
            &read_only,
            &app,
            "--read",
            "/data/note.txt",
            "--write",
            "/data/out.txt",
        ]);
        let text = stdout(&out);
        assert!(
            text.contains("read /data/note.txt: from the host\n"),
            "{text}"
        );
        assert!(text.contains("write /data/out.txt: error:"), "{text}");
        assert!(!dir.join("out.txt").exists());

        let granted = format!("{host}::/data");
        for escape in [
            "/data/../secret.txt",
            "/data/link",
            "/data/./../granted/../secret.txt",
        ] {
            let out = run(&["--dir", &granted, &app, "--read", escape]);
            let text = stdout(&out);
            assert!(
                text.contains(&format!("read {escape}: error:")),
                "{escape}: {text}"
            );
            assert!(!text.contains("outside"), "{escape}: {text}");
        }
    }
}

#[test]
fn stdin_is_the_terminals() {
    for app in [prebuilt(MODULE), prebuilt(COMPONENT)] {
        let mut child = pier()
            .args(["run", &app, "--stdin", "--exit", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"piped in\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("stdin: piped in\n"),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn a_trap_prints_the_trap_with_its_backtrace_and_exits_non_zero() {
    for app in [prebuilt(MODULE), prebuilt(COMPONENT)] {
        let out = run(&[&app, "--trap"]);
        assert_eq!(out.status.code(), Some(134), "{app}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("trapped"), "{err}");
        assert!(
            err.contains("wasm `unreachable` instruction executed"),
            "{err}"
        );
        assert!(err.contains("wasm backtrace:"), "{err}");
        assert!(
            stdout(&out).contains("argv[1]=--trap"),
            "output before the trap is kept"
        );
    }
}

/// A one-shot origin on a free loopback port: answers each connection's request `200 OK` and
/// sends the request line it saw down the channel.
fn origin() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            let _ = seen.send(first.trim_end().to_string());
        }
    });
    (port, lines)
}

/// A command's outgoing HTTP goes through pier's client and outbound policy: denied unless
/// `--allow-outbound` allows the URL (the guest gets HTTP-request-denied and nothing is sent),
/// then sent.
#[test]
fn a_commands_outgoing_requests_follow_the_outbound_policy() {
    let app = pier_testkit::guest("fetch-command").display().to_string();
    let (port, seen) = origin();
    let authority = format!("127.0.0.1:{port}");

    let out = run(&[&app, &authority]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "error-code 15\n", "{}", stderr(&out));
    assert!(
        seen.try_recv().is_err(),
        "a denied request reached the origin"
    );

    // Allowed for another port only: still denied.
    let out = run(&["--allow-outbound", "http://127.0.0.1:1", &app, &authority]);
    assert_eq!(stdout(&out), "error-code 15\n", "{}", stderr(&out));

    let allow = format!("http://{authority}");
    let out = run(&["--allow-outbound", &allow, &app, &authority]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "status 200\n", "{}", stderr(&out));
    assert_eq!(
        seen.recv_timeout(std::time::Duration::from_secs(5))
            .unwrap(),
        "GET / HTTP/1.1"
    );
}
