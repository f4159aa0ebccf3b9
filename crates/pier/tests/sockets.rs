//! `wasi:sockets` grants, with the WASI test suite's socket tests (WASI 0.3 commands that open
//! listeners and connect to them on loopback): nothing without a grant, wasmtime's `-S`
//! switches, and `--allow-socket` grants checked on the addresses used.

use std::process::{Command, Output, Stdio};

/// `pier run ARGS` in the directory of the suite's WASI 0.3 tests.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pier"))
        .current_dir(
            pier_testkit::wasip3_test("sockets-tcp-connect")
                .parent()
                .unwrap(),
        )
        .arg("run")
        .args(args)
        .env_remove("PIER_LOG")
        .env(
            "PIER_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sockets-cache"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("pier runs")
}

fn passes(out: &Output) -> bool {
    out.status.success()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const TCP: &[&str] = &[
    "sockets-tcp-bind.wasm",
    "sockets-tcp-connect.wasm",
    "sockets-tcp-listen.wasm",
    "sockets-tcp-send.wasm",
    "sockets-tcp-receive.wasm",
];
const UDP: &[&str] = &[
    "sockets-udp-bind.wasm",
    "sockets-udp-connect.wasm",
    "sockets-udp-send.wasm",
    "sockets-udp-receive.wasm",
];

#[test]
fn nothing_is_reachable_without_a_grant() {
    for test in TCP.iter().chain(UDP) {
        let out = run(&[test]);
        assert!(
            !passes(&out),
            "{test} passed with no grant: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("AccessDenied"),
            "{test}: the guest is refused with access-denied: {}",
            stderr(&out)
        );
    }
}

#[test]
fn wasmtime_switches_grant_what_they_name() {
    for test in TCP.iter().chain(UDP) {
        let out = run(&["-S", "inherit-network", test]);
        assert!(passes(&out), "{test}: {}", stderr(&out));
    }
    // A later switch wins: TCP only.
    let tcp_only = ["-S", "inherit-network", "-S", "udp=n"];
    let out = run(&[&tcp_only[..], &["sockets-tcp-connect.wasm"]].concat());
    assert!(passes(&out), "{}", stderr(&out));
    let out = run(&[&tcp_only[..], &["sockets-udp-send.wasm"]].concat());
    assert!(!passes(&out));
}

#[test]
fn fine_grained_grants_allow_their_addresses_and_log_what_they_refuse() {
    // The test listens on an ephemeral loopback port (v4 and v6) and connects to it; loopback
    // is reachable only through grants that name it.
    let listen = [
        "--allow-socket",
        "tcp-listen:127.0.0.1:*",
        "--allow-socket",
        "tcp-listen:[::1]:*",
    ];
    let out = run(&[&listen[..], &["sockets-tcp-connect.wasm"]].concat());
    assert!(!passes(&out));
    let log = stderr(&out);
    assert!(
        log.contains("tcp-connect to 127.0.0.1:")
            && log.contains("denied (grant it with --allow-socket tcp-connect:127.0.0.1:"),
        "one line naming the grant that would allow it: {log}"
    );
    // `localhost` names loopback, both families.
    let connect = ["--allow-socket", "tcp-connect:localhost:*"];
    let out = run(&[&listen[..], &connect[..], &["sockets-tcp-connect.wasm"]].concat());
    assert!(passes(&out), "{}", stderr(&out));
    // Any host is not loopback.
    let anywhere = ["--allow-socket", "tcp-connect:*:*"];
    let out = run(&[&listen[..], &anywhere[..], &["sockets-tcp-connect.wasm"]].concat());
    assert!(!passes(&out));
    // UDP to and from loopback.
    let udp = [
        "--allow-socket",
        "udp:127.0.0.0/8:*",
        "--allow-socket",
        "udp:[::1]:*",
    ];
    let out = run(&[&udp[..], &["sockets-udp-send.wasm"]].concat());
    assert!(passes(&out), "{}", stderr(&out));
}

#[test]
fn a_bad_grant_is_refused_with_the_expected_form() {
    let out = run(&["--allow-socket", "tcp:db:5432", "x.wasm"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&out).contains("invalid --allow-socket \"tcp:db:5432\": USE must be tcp-connect"),
        "{}",
        stderr(&out)
    );
    let out = run(&["-S", "keyvalue", "x.wasm"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&out).contains("invalid -S \"keyvalue\": pier takes inherit-network"),
        "{}",
        stderr(&out)
    );
}

/// `--max-sockets` counts a WASI 0.3 program's open sockets: the connect test needs two (a
/// listener and a client), so with a cap of one it is refused the second (WASI 0.3 has no
/// `new-socket-limit`: `other`, naming the flag), and with two it passes.
#[test]
fn max_sockets_caps_what_a_program_has_open() {
    let capped = run(&[
        "--max-sockets",
        "1",
        "-S",
        "tcp,inherit-network",
        "sockets-tcp-connect.wasm",
    ]);
    assert!(!passes(&capped), "passed under a cap of one");
    assert!(
        stderr(&capped).contains(
            "new-socket-limit: the instance has as many sockets open as it may (--max-sockets)"
        ),
        "{}",
        stderr(&capped)
    );
    let enough = run(&[
        "--max-sockets",
        "2",
        "-S",
        "tcp,inherit-network",
        "sockets-tcp-connect.wasm",
    ]);
    assert!(passes(&enough), "{}", stderr(&enough));
}
