//! `pier serve --threads N`: one process serving on N threads, each accepting its own
//! connections (`SO_REUSEPORT`) and running their guests on its own runtime.

use http::StatusCode;
use pier_testkit::{PierServer, Proto, get, guest};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

fn serve(flags: &[&str]) -> PierServer {
    let app = guest("faults");
    let mut args: Vec<&str> = flags.to_vec();
    args.push(app.to_str().unwrap());
    PierServer::start(pier(), &args).expect("pier starts")
}

/// The CPU time (user + system, in clock ticks) each thread of `pid` has used, by thread name
/// (`main` for the main thread: threads pier does not name share its name).
fn cpu_by_thread(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let main = dir.file_name().unwrap().to_str() == Some(&pid.to_string());
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // a thread that just ended
        };
        // Fields after the parenthesised name: state is the 3rd field, utime the 14th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let name = if main { "main" } else { name.trim() };
        threads.push((name.to_string(), ticks));
    }
    threads
}

/// The serving threads' CPU ticks: the main thread (the first) and `pier-serve-N`.
fn serving_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut serving: Vec<_> = cpu_by_thread(pid)
        .into_iter()
        .filter(|(name, _)| name == "main" || name.starts_with("pier-serve-"))
        .collect();
    serving.sort();
    serving
}

#[tokio::test]
async fn connections_spread_over_the_threads_and_each_thread_runs_its_own_guests() {
    // Each request computes until its 100 ms timeout, on the thread that accepted it.
    let server = serve(&["--threads", "2", "--timeout", "100ms"]);
    // (The other serving threads start just after the serving line: their sockets already
    // listen.)
    let names = |threads: &[(String, u64)]| -> Vec<String> {
        threads.iter().map(|(name, _)| name.clone()).collect()
    };
    let mut before = serving_cpu(server.pid());
    for _ in 0..100 {
        if names(&before).len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        before = serving_cpu(server.pid());
    }
    assert_eq!(names(&before), ["main", "pier-serve-1"], "{before:?}");
    // 16 connections: all of them given to one socket of two would be a 1 in 32,768 chance.
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let addr = server.addr.clone();
            tokio::spawn(async move { get(&addr, Proto::H1, "/loop").await })
        })
        .collect();
    for request in requests {
        let answer = request.await.unwrap().expect("answered");
        assert_eq!(
            answer.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            answer.text()
        );
    }
    let after = serving_cpu(server.pid());
    for ((name, was), (_, now)) in before.iter().zip(&after) {
        // Each thread ran at least one request's 100 ms of guest: 10 ticks; half that is
        // asked, for a thread the scheduler held back. A thread that accepted nothing, or
        // handed its guests to the other, would have run none.
        assert!(
            now - was >= 5,
            "{name} ran {} ticks of the guests: {before:?} -> {after:?}\n{}",
            now - was,
            server.log()
        );
    }
}

#[tokio::test]
async fn a_threaded_port_is_not_joined_by_another_server() {
    let server = serve(&["--threads", "2"]);
    let app = guest("faults");
    for threads in ["1", "2"] {
        pier_testkit::assert_one_line_error(
            pier(),
            &[
                "serve",
                "--addr",
                &server.addr,
                "--threads",
                threads,
                app.to_str().unwrap(),
            ],
            &["already in use", &server.addr],
        );
    }
    // The first server still answers every connection.
    for _ in 0..8 {
        let answer = get(&server.addr, Proto::H1, "/").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
}

#[test]
fn threads_and_workers_are_one_or_the_other() {
    let app = guest("faults");
    let out = std::process::Command::new(pier())
        .args(["serve", "--threads", "2", "--workers", "2"])
        .arg(&app)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--threads") && stderr.contains("--workers"),
        "{stderr}"
    );
}
