//! `pier serve` end to end: the real binary, real sockets on loopback, HTTP/1.1 and HTTP/2.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use pier_testkit::{Client, PROTOS, PierServer, Proto, get, guest, request, send};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

fn serve(guest_name: &str) -> PierServer {
    PierServer::start(pier(), &[guest(guest_name).to_str().unwrap()]).expect("pier starts")
}

#[tokio::test]
async fn hello_over_h1_and_h2_keeps_repeated_headers() {
    let server = serve("hello");
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}");
        assert_eq!(answer.text(), "hello from pier\n", "{proto:?}");
        assert_eq!(answer.headers["content-type"], "text/plain", "{proto:?}");
        let cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
        assert_eq!(
            cookies,
            ["a=1", "b=2"],
            "{proto:?}: both set-cookie headers, in order"
        );
        // The guest was done before the response went out: its length is known.
        assert_eq!(answer.headers["content-length"], "16", "{proto:?}");
        assert!(
            !answer.headers.contains_key("transfer-encoding"),
            "{proto:?}"
        );
    }
}

#[tokio::test]
async fn components_built_against_older_wasi_0_2_releases_are_served() {
    for name in ["hello-0.2.0", "hello-0.2.3"] {
        let server = serve(name);
        let answer = get(&server.addr, Proto::H1, "/").await.unwrap();
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "hello from pier\n"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn echo_copies_headers_and_body() {
    let server = serve("echo");
    for proto in PROTOS {
        let req = Request::builder()
            .method("POST")
            .uri("/echo")
            .header("x-one", "1")
            .header("x-rep", "a")
            .header("x-rep", "b")
            .body(Full::new(Bytes::from_static(b"ping")))
            .unwrap();
        let answer = send(&server.addr, proto, req).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "ping");
        if proto == Proto::H2 {
            // Trailers keep a body it had finished before the response went out unmeasured.
            let trailers = answer.trailers.expect("the echo guest's trailer");
            assert_eq!(trailers["x-echo-trailer"], "done");
            assert!(!answer.headers.contains_key("content-length"));
        }
        assert_eq!(answer.headers["x-echo-x-one"], "1");
        let reps: Vec<_> = answer.headers.get_all("x-echo-x-rep").iter().collect();
        assert_eq!(
            reps,
            ["a", "b"],
            "{proto:?}: repeated request headers stay repeated"
        );
    }
}

/// A request body produced on the fly, chunk by chunk, so the client never holds it whole.
struct Pattern {
    remaining: usize,
    offset: usize,
}

const CHUNK: usize = 64 * 1024;

fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

impl http_body::Body for Pattern {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK);
        let chunk: Vec<u8> = (self.offset..self.offset + n).map(pattern_byte).collect();
        self.remaining -= n;
        self.offset += n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
    }
}

#[tokio::test]
async fn a_50_mb_body_streams_through_echo_without_buffering() {
    const SIZE: usize = 50 * 1024 * 1024;
    let server = serve("echo");
    let pid = server.pid();
    for proto in PROTOS {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(rss) = pier_testkit::rss_bytes(pid) {
                        peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .body(Pattern {
                remaining: SIZE,
                offset: 0,
            })
            .unwrap();
        let response = client.send(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(data) = frame.data_ref() {
                for (i, b) in data.iter().enumerate() {
                    assert_eq!(
                        *b,
                        pattern_byte(seen + i),
                        "{proto:?}: byte {} differs",
                        seen + i
                    );
                }
                seen += data.len();
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap();
        assert_eq!(seen, SIZE, "{proto:?}: the whole body came back");
        let peak_mb = peak.load(std::sync::atomic::Ordering::Relaxed) / (1024 * 1024);
        assert!(
            peak_mb < 100,
            "{proto:?}: pier's RSS peaked at {peak_mb} MB while streaming 50 MB"
        );
    }
}

#[tokio::test]
async fn a_trap_is_a_500_and_the_server_keeps_serving() {
    let server = serve("faults");
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/trap").await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{proto:?}"
        );
        assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(answer.headers["server"], "pier");
        assert_eq!(answer.text(), "the component failed\n");
        let next = get(&server.addr, proto, "/ok").await.unwrap();
        assert_eq!(
            (next.status, next.text().as_str()),
            (StatusCode::OK, "ok\n"),
            "{proto:?}"
        );
    }
    assert!(
        server.wait_for_log("guest failed", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(
        log.contains("wasm trap: wasm `unreachable` instruction executed"),
        "{log}"
    );
    assert!(
        log.contains("wasm backtrace:"),
        "the trap is logged with its backtrace: {log}"
    );
    assert!(
        log.contains("handle_trap"),
        "the backtrace names the guest function: {log}"
    );
}

#[tokio::test]
async fn a_guest_that_never_answers_is_a_500_with_a_log_line() {
    let server = serve("faults");
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/never").await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{proto:?}"
        );
        assert_eq!(answer.text(), "the component returned no response\n");
    }
    // The log reaches the test through a pipe and a reader thread: wait for it.
    assert!(
        server.wait_for_log(
            "guest returned without setting a response",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
    assert_eq!(
        get(&server.addr, Proto::H1, "/ok").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_trap_after_the_headers_aborts_the_response() {
    let server = serve("faults");
    for proto in PROTOS {
        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let req = Request::builder()
            .uri("/abort")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            // HTTP/1.1 may close the connection before the buffered head is flushed; HTTP/2
            // delivers the head, then resets the stream. Either way the response must fail.
            let response = client.send(req).await?;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{proto:?}: the head was set before the trap"
            );
            response
                .into_body()
                .collect()
                .await
                .map_err(anyhow::Error::from)
        })
        .await
        .expect("an aborted response never hangs");
        assert!(
            outcome.is_err(),
            "{proto:?}: the response must fail, not end as if complete"
        );
        let next = get(&server.addr, proto, "/ok").await.unwrap();
        assert_eq!(next.status, StatusCode::OK, "{proto:?}");
    }
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    // Globals, memory (grown or not), tables and resource handle numbers must all be pristine for
    // every request, sequential or concurrent, whatever the pool does to make instances cheap:
    // small memories copied back whole or large ones reset page by page, instances made on their
    // request or made ahead of it (and then counted as such).
    let counter = guest("counter");
    let counter = counter.to_str().unwrap();
    let on_request = PierServer::start(pier(), &[counter]).expect("pier starts");
    assert!(
        on_request
            .log()
            .contains("memories are reset after each request: whole")
    );
    assert_fresh_instances(&on_request, 1).await;

    // The large build writes ~120 separate runs of pages per request: more than the pool's scan
    // takes, so without swap pier joins them first (and then no page may be left unreset).
    let large = guest("counter-large-memory");
    let large = PierServer::start(
        pier(),
        &["--admin-addr", "127.0.0.1:0", large.to_str().unwrap()],
    )
    .expect("pier starts");
    let reset = if pier_engine::swap_is_on() {
        "the first 256 KiB copied back, the rest handed back to the kernel (swap is on"
    } else {
        "only the pages each request wrote, its runs joined so they all stay resident"
    };
    assert!(
        large
            .log()
            .contains(&format!("memories are reset after each request: {reset}")),
        "{}",
        large.log()
    );
    assert_fresh_instances(&large, 16).await;
    if !pier_engine::swap_is_on() {
        let (joined, metrics) = counter_value(&large, "pier_reset_pages_joined_total").await;
        assert!(joined > 0, "no runs were joined:\n{metrics}");
    }

    // Worker processes, each running its guests on one thread.
    let workers = PierServer::start(pier(), &["--workers", "2", counter]).expect("pier starts");
    assert!(
        workers.log().contains("every worker listens workers=2"),
        "{}",
        workers.log()
    );
    assert_fresh_instances(&workers, 1).await;

    let ahead = PierServer::start(
        pier(),
        &["--prewarm", "2", "--admin-addr", "127.0.0.1:0", counter],
    )
    .expect("pier starts");
    assert_fresh_instances(&ahead, 1).await;
    let (made_ahead, metrics) =
        counter_value(&ahead, "pier_instances_created_total{made=\"ahead\"}").await;
    assert!(
        made_ahead >= 20,
        "sequential requests were served by instances made ahead:\n{metrics}"
    );
}

#[tokio::test]
async fn memory_swapped_out_during_a_request_is_still_reset() {
    // A page a request wrote, paged out to swap while its instance was alive, must not reach a
    // later request in the same pool slot. The probe writes its counters, then pauses 500 ms,
    // during which the test pages out the whole process (MADV_PAGEOUT); the requests after it
    // must all be fresh. Without swap nothing is paged out and pier keeps the dirty-page scan.
    let probe = guest("counter-paused-large-memory");
    let server = PierServer::start(pier(), &[probe.to_str().unwrap()]).expect("pier starts");
    if !pier_engine::swap_is_on() {
        assert!(
            server.log().contains(
                "memories are reset after each request: only the pages each request wrote"
            ),
            "{}",
            server.log()
        );
        eprintln!(
            "no swap on this machine: nothing can be paged out, so only the reset chosen is checked"
        );
        return;
    }
    assert!(
        server.log().contains("swap is on"),
        "with swap, large memories are not reset by the scan:\n{}",
        server.log()
    );
    let fresh = "global=1 memory=1 pages=16 grown=1/1 table=1 handle=";
    for _ in 0..3 {
        let paused = get(&server.addr, Proto::H1, "/");
        let pid = server.pid();
        let page_out = async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            tokio::task::spawn_blocking(move || page_out(pid))
                .await
                .unwrap()
        };
        let (answer, paged) = tokio::join!(paused, page_out);
        assert!(answer.unwrap().text().starts_with(fresh));
        assert!(paged > 0, "nothing was paged out");
        // The page-out really reached swap (else this round would check nothing).
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        let swapped_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSwap:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        assert!(swapped_kib > Some(0), "nothing in swap:\n{status}");
        // The paused request's slot comes back into use within a few requests.
        for _ in 0..6 {
            let answer = get(&server.addr, Proto::H1, "/").await.unwrap().text();
            assert!(
                answer.starts_with(fresh),
                "state leaked through swap: {answer}"
            );
        }
    }
}

/// Asks the kernel to page out every writable private mapping of process `pid` (to swap, for
/// anonymous pages); returns the bytes of mappings it was asked about.
fn page_out(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // SAFETY: plain system calls on descriptors and memory this function owns; the ranges are
    // another process's, which process_madvise only advises.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as libc::c_int;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let mut advised = 0;
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
            if !perms.contains('w') || !perms.contains('p') {
                continue;
            }
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
            );
            let mut start = lo;
            while start < hi {
                let len = (hi - start).min(1 << 30);
                let iov = libc::iovec {
                    iov_base: start as *mut libc::c_void,
                    iov_len: len,
                };
                let n = libc::syscall(
                    libc::SYS_process_madvise,
                    pidfd,
                    &iov,
                    1,
                    libc::MADV_PAGEOUT,
                    0,
                );
                if n > 0 {
                    advised += n as usize;
                }
                start += len;
            }
        }
        libc::close(pidfd);
        advised
    }
}

/// Checks that the isolation probe, whose memory starts at `pages` pages, answers as a fresh
/// instance to every request.
///
/// The pool's timing included: the probe reports its monotonic clock in whole seconds, and the
/// requests after the first come more than a second after the pool made (or last used) their
/// slots, so a clock counting from the slot's making or from an earlier request in it would
/// tell the guest how long the pool had kept its instance.
async fn assert_fresh_instances(server: &PierServer, pages: u32) {
    let first = get(&server.addr, Proto::H1, "/").await.unwrap().text();
    let fresh = format!("global=1 memory=1 pages={pages} grown=1/1 table=1 handle=");
    assert!(first.starts_with(&fresh), "{first}");
    assert!(first.trim_end().ends_with(" clock=0"), "{first}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for proto in PROTOS {
        for _ in 0..20 {
            let answer = get(&server.addr, proto, "/").await.unwrap();
            assert_eq!(
                answer.text(),
                first,
                "{proto:?}: state leaked between requests"
            );
        }
    }
    let concurrent = (0..64).map(|i| {
        let addr = server.addr.clone();
        tokio::spawn(async move { get(&addr, PROTOS[i % 2], "/").await.unwrap().text() })
    });
    for answer in futures_join(concurrent).await {
        assert_eq!(answer, first);
    }
}

/// The value of the sample `name` (with its labels) on `server`'s `/metrics` (0 if absent), and
/// the whole page for messages.
async fn counter_value(server: &PierServer, name: &str) -> (u64, String) {
    let admin = server.admin_addr.clone().expect("admin address printed");
    let metrics = get(&admin, Proto::H1, "/metrics").await.unwrap().text();
    let value = metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    (value, metrics)
}

async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test]
async fn guest_stdio_goes_to_the_log_tagged_with_the_component() {
    let server = serve("faults");
    let answer = get(&server.addr, Proto::H1, "/print").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        server.wait_for_log("no newline at the end", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    for line in ["first line", "second line", "no newline at the end"] {
        let entry = log
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("{line:?} not logged: {log}"));
        assert!(entry.contains("component=\"faults\""), "{entry}");
    }
    let first = log.lines().find(|l| l.contains("first line")).unwrap();
    assert!(
        first.contains("stream=\"stdout\"") && !first.contains("second line"),
        "one event per line: {first}"
    );
    let last = log.lines().find(|l| l.contains("no newline")).unwrap();
    assert!(last.contains("stream=\"stderr\""), "{last}");
}

#[tokio::test]
async fn the_environment_holds_only_what_was_granted() {
    // SAFETY-free: set for the child through its environment, never for this process.
    let app = guest("env");
    let bare = PierServer::start_with_env(
        pier(),
        &[app.to_str().unwrap()],
        &[("PIER_SECRET", "s3cret")],
    )
    .unwrap();
    let answer = get(&bare.addr, Proto::H1, "/").await.unwrap();
    assert_eq!(answer.text(), "", "no host variable leaks in without --env");

    let granted = PierServer::start_with_env(
        pier(),
        &[
            "--env",
            "GREETING=hi",
            "--env",
            "PIER_SECRET",
            "--env",
            "NOT_SET_ANYWHERE",
            app.to_str().unwrap(),
        ],
        &[("PIER_SECRET", "s3cret")],
    )
    .unwrap();
    let answer = get(&granted.addr, Proto::H1, "/").await.unwrap();
    assert_eq!(answer.text(), "GREETING=hi\nPIER_SECRET=s3cret\n");
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let server = serve("echo");
    let mut client = Client::connect(&server.addr, Proto::H1).await.unwrap();
    let (tx, body) = pier_testkit::channel_body();
    let req = Request::builder()
        .method("POST")
        .uri("/")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move {
        let response = client.send(req).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    });
    tx.send(Bytes::from_static(b"first half, ")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    pier_testkit::signal(server.pid(), "TERM").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(Bytes::from_static(b"second half")).await.unwrap();
    drop(tx);
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"first half, second half");
    let exit = server.wait().unwrap();
    assert!(exit.success(), "pier exits 0 after draining: {exit:?}");
}

#[tokio::test]
async fn python_and_javascript_components_answer() {
    for (file, greeting) in [
        ("python-hello.wasm", "hello from python at /hi?x=1\n"),
        ("js-hello.wasm", "hello from javascript at /hi?x=1\n"),
    ] {
        let Some(app) = pier_testkit::toolchain_guest(file) else {
            continue;
        };
        let server = PierServer::start(pier(), &[app.to_str().unwrap()]).unwrap();
        for proto in PROTOS {
            for _ in 0..3 {
                let answer = request(&server.addr, proto, "GET", "/hi?x=1", b"")
                    .await
                    .unwrap();
                assert_eq!(
                    (answer.status, answer.text().as_str()),
                    (StatusCode::OK, greeting),
                    "{file} {proto:?}"
                );
            }
        }
    }
}
