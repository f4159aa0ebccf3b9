//! The WASI test suite (`../shared/wasi-testsuite`, WebAssembly/wasi-testsuite's prebuilt tests
//! and its official runner) against pier: the 72 preview1 tests through `pier run`, the 55 WASI
//! 0.3 tests through `pier run` and, for `wasi:http/service` ones, `pier serve` (with the test
//! servers the client tests call). `conformance/run.py` drives the runner with pier's adapter;
//! the tests pier does not pass are listed, with their reasons, in
//! `conformance/expectations.toml` and the README's conformance table.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// Tests of each suite, and how many pass (the rest are expected failures).
const SUITES: &[(&str, usize, usize)] = &[
    ("WASI AssemblyScript tests [wasm32-wasip1]", 12, 12),
    ("WASI C tests [wasm32-wasip1]", 14, 14),
    ("WASI Rust tests [wasm32-wasip1]", 46, 46),
    ("WASI Rust tests [wasm32-wasip3]", 55, 52),
];

#[test]
fn the_wasi_test_suite_passes_but_for_its_listed_failures() {
    let root = pier_testkit::repo_root();
    let _suite = pier_testkit::wasi_testsuite();
    let json = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("python3")
        .arg(root.join("conformance/run.py"))
        .arg("--pier")
        .arg(env!("CARGO_BIN_EXE_pier"))
        .arg("--json")
        .arg(json.path())
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap())
        .unwrap_or_else(|e| panic!("no JSON results ({e}):\n{stdout}\n{stderr}"));
    let mut outcomes = BTreeMap::new();
    for suite in report["results"].as_array().unwrap() {
        let name = suite["name"].as_str().unwrap().to_string();
        for test in suite["tests"].as_array().unwrap() {
            let outcome = test["outcome"].as_str().unwrap();
            if !matches!(outcome, "pass" | "xfail") {
                eprintln!("{name} {}: {outcome} {}", test["name"], test["failures"]);
            }
            *outcomes
                .entry((name.clone(), outcome.to_string()))
                .or_insert(0usize) += 1;
        }
    }
    assert!(
        out.status.success(),
        "the runner failed:\n{stdout}\n{stderr}"
    );
    for (suite, total, passed) in SUITES {
        let count = |outcome: &str| {
            outcomes
                .get(&(suite.to_string(), outcome.to_string()))
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(count("pass"), *passed, "{suite} passed\n{stdout}");
        assert_eq!(
            count("xfail"),
            total - passed,
            "{suite} expected failures\n{stdout}"
        );
    }
    let all: usize = outcomes.values().sum();
    assert_eq!(all, 127, "every test ran, none skipped: {outcomes:?}");
}
