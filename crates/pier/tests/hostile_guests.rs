//! Guests that attack their host (`guests/hostile/hostile.wat`), served beside a normal guest
//! that is kept under load meanwhile: the normal guest's requests all succeed, pier's memory
//! stays bounded (memory bombs included, again and again), each hostile request gets the
//! documented answer, and the log names the cause.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use pier_testkit::{Client, PierServer, Proto, guest};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// Requests to the `hostile.test` host reach the hostile guest; all others the hello guest.
fn serve(dir: &std::path::Path) -> PierServer {
    let manifest = dir.join("pier.toml");
    std::fs::write(
        &manifest,
        format!(
            "manifest_version = 1\n\
             [[route]]\nhost = \"hostile.test\"\npath = \"/...\"\ncomponent = \"hostile\"\n\
             [[route]]\npath = \"/...\"\ncomponent = \"hello\"\n\
             [component.hostile]\nsource = {:?}\n\
             allowed_sockets = [\"tcp-connect:127.0.0.1:9\"]\n\
             [component.hello]\nsource = {:?}\n",
            guest("hostile").display().to_string(),
            guest("hello").display().to_string(),
        ),
    )
    .unwrap();
    PierServer::start(
        pier(),
        &[
            "--timeout",
            "2s",
            "--max-memory",
            "32MiB",
            "--max-sockets",
            "50",
            "--max-handles",
            "5000",
            manifest.to_str().unwrap(),
        ],
    )
    .unwrap()
}

/// What a hostile request got: its status and headers, and its body, or the error that cut it.
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

async fn attack(addr: &str, path: &str) -> Got {
    let mut client = Client::connect(addr, Proto::H1).await.unwrap();
    let req = Request::get(path)
        .header("host", "hostile.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("the body ends, one way or the other")
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

#[tokio::test]
async fn hostile_guests_get_their_answers_while_a_normal_guest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let before = pier_testkit::rss_bytes(server.pid()).unwrap();

    // The normal guest under load throughout: four clients, one request at a time each.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (addr, stop) = (server.addr.clone(), stop.clone());
        let (served, failed) = (served.clone(), failed.clone());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match pier_testkit::get(&addr, Proto::H1, "/").await {
                    Ok(a) if a.status == StatusCode::OK => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }

    // Memory bombs, four at once, again and again: each grows to the cap writing every page,
    // traps (500); what they touched goes back with their instances, so pier's memory does not
    // grow with each bomb.
    for round in 0..5 {
        let bombs: Vec<_> = (0..4)
            .map(|_| {
                let addr = server.addr.clone();
                tokio::spawn(async move { attack(&addr, "/memory").await.status })
            })
            .collect();
        for bomb in bombs {
            assert_eq!(bomb.await.unwrap(), StatusCode::INTERNAL_SERVER_ERROR);
        }
        let grown = pier_testkit::rss_bytes(server.pid())
            .unwrap()
            .saturating_sub(before);
        eprintln!(
            "after {} memory bombs of 32 MiB: grown {} MiB",
            4 * (round + 1),
            grown >> 20
        );
        assert!(grown < 256 << 20, "grew {grown} bytes");
    }
    assert!(
        server.wait_for_log(
            "past its memory limit, --max-memory",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );

    // Sockets opened and kept: the 51st is refused with new-socket-limit (10), every time
    // (each instance's sockets close with it), and pier's own descriptors do not pile up.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    for _ in 0..5 {
        let got = attack(&server.addr, "/sockets").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            (&got.headers["x-sockets"], &got.headers["x-error"]),
            (&"50".parse().unwrap(), &"10".parse().unwrap()),
        );
    }
    // The last instance's sockets close with it, when its store is reset, which is just after
    // its response is written.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fds() >= fds_before + 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        fds() < fds_before + 20,
        "{} descriptors, {fds_before} before",
        fds()
    );
    // Resources made and kept (header fields, a few bytes of guest memory each, host memory
    // each): the table's cap stops the guest (a trap, 500).
    let got = attack(&server.addr, "/fields").await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        server.wait_for_log(
            "as many resources as it may, --max-handles",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );

    for _ in 0..3 {
        // Stack overflow and table growth: traps, 500, the cause in the log.
        let got = attack(&server.addr, "/recurse").await;
        assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
        let got = attack(&server.addr, "/table").await;
        assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(
        server.wait_for_log("call stack exhausted", Duration::from_secs(5)),
        "{}",
        server.log()
    );

    // Header fields without end: the host's limit on a response's fields stops the guest (a
    // trap: 500), and its head is never sent.
    let got = attack(&server.addr, "/headers").await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!got.headers.contains_key("x-bomb"));
    assert!(
        server.wait_for_log("total size of fields exceeds limit", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    // A header injection is refused by the guest's own `fields.append`: never sent.
    let got = attack(&server.addr, "/crlf").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.headers.contains_key("set-cookie"), "{:?}", got.headers);
    assert!(!got.headers.contains_key("x-injected"), "{:?}", got.headers);

    // A body dripped forever, or never finished: cut at the timeout, never taken as complete.
    for path in ["/drip", "/body"] {
        let got = attack(&server.addr, path).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert!(got.body.is_err(), "{path}: a complete body: {:?}", got.body);
    }

    // A guest that never reads an 8 MiB request body: answered, on both protocols; the body is
    // not held (HTTP/1.1 closes the connection or drains it, HTTP/2 resets the stream's upload).
    for proto in [Proto::H1, Proto::H2] {
        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let req = Request::post("/unread")
            .header("host", "hostile.test")
            .body(Full::new(Bytes::from(vec![b'x'; 8 << 20])))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(20), client.send(req))
            .await
            .expect("answered without reading the body")
            .unwrap_or_else(|e| panic!("{proto:?}: {e:?}"));
        assert_eq!(answer.status(), StatusCode::OK, "{proto:?}");
    }

    // 64 MiB of output: the log takes the first 1 MiB and says the rest was dropped.
    let got = attack(&server.addr, "/log").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        server.wait_for_log(
            "the rest is dropped (--max-log-size)",
            Duration::from_secs(5)
        ),
        "no word of the dropped output"
    );
    assert!(
        server.log().len() < 4 << 20,
        "log of {} bytes",
        server.log().len()
    );

    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the normal guest's requests all succeed"
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    let grown = pier_testkit::rss_bytes(server.pid())
        .unwrap()
        .saturating_sub(before);
    assert!(grown < 256 << 20, "grew {grown} bytes");
}
