//! Clients that try to make pier and what sits in front of it disagree on where a request ends
//! (request smuggling, RFC 9112 §6 and §11.2), or send what the grammar forbids: each such
//! request gets one answer at most, its connection is closed, and whatever it carried after
//! its framing is never answered as a request of its own. Other clients keep being served.
//! (HTTP/2's frame-level abuse is in h2_frames.rs; slow clients and header floods in
//! production.rs.)

use std::time::Duration;

use http::StatusCode;
use pier_testkit::{PierServer, Proto, get, guest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// Sends `raw` on a connection of its own and reads until pier closes it (at most 5 s: a
/// connection still open then is a failure of the case).
async fn exchange(addr: &str, raw: &[u8]) -> (String, bool) {
    let (answer, closed) = pier_testkit::raw_exchange(addr, raw, Duration::from_secs(5)).await;
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// The requests that frame their body two ways, or that no reading frames safely: one answer at
/// most (`allowed`: the statuses it may have; a rejection is 400, or 501 for a transfer coding
/// pier does not know; a 200 is the guest's answer to what came before the framing broke), the
/// connection closed, the request hidden behind never answered.
#[tokio::test]
async fn ambiguous_framing_is_refused_and_nothing_is_smuggled_through() {
    let app = guest("hello");
    let server = PierServer::start(pier(), &[app.to_str().unwrap()]).unwrap();
    let hidden = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            // RFC 9112 §6.1: reject, or frame by Transfer-Encoding and close after answering
            // (hyper does the latter: the connection closes, nothing after is read).
            "Content-Length and Transfer-Encoding",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\ntransfer-encoding: \
                 chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
            &["200", "400"],
        ),
        (
            "Transfer-Encoding and Content-Length, the other order",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: \
                 5\r\n\r\n0\r\n\r\n{hidden}"
            ),
            &["200", "400"],
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 0\r\n\r\n\
                 abcde{hidden}"
            ),
            &["400"],
        ),
        (
            "a Content-Length list that disagrees with itself",
            format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5, 0\r\n\r\nabcde{hidden}"),
            &["400"],
        ),
        (
            "a signed Content-Length",
            format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +5\r\n\r\nabcde{hidden}"),
            &["400"],
        ),
        (
            // RFC 9112 §6.1: chunked not last in a request's codings: 400, and close.
            "a transfer coding other than chunked",
            format!("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nabcde{hidden}"),
            &["400", "501"],
        ),
        (
            "chunked, then another coding",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n\r\n\
                 0\r\n\r\n{hidden}"
            ),
            &["400", "501"],
        ),
        (
            // RFC 9112 §5.2: obs-fold in a request: 400 (or unfolded; never a second line).
            "an obs-folded header",
            format!(
                "GET / HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n transfer-encoding: chunked\r\n\
                 \r\n{hidden}"
            ),
            &["400"],
        ),
        (
            // RFC 9112 §2.2: a bare CR is refused.
            "a bare CR in a header",
            format!("GET / HTTP/1.1\r\nhost: x\r\nx-cr: a\rb\r\n\r\n{hidden}"),
            &["400"],
        ),
        (
            "a space before the colon",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding : chunked\r\ncontent-length: \
                 0\r\n\r\n5\r\nabcde\r\n0\r\n\r\n{hidden}"
            ),
            &["400"],
        ),
        (
            "a chunk size that is not hex",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n\
                 0\r\n\r\n{hidden}"
            ),
            &["200", "400"],
        ),
        (
            "a chunk size that overflows",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                 10000000000000000\r\nabc\r\n0\r\n\r\n{hidden}"
            ),
            &["200", "400"],
        ),
        (
            "a chunk shorter than its size",
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                 5\r\nab\r\n0\r\n\r\n{hidden}"
            ),
            &["200", "400"],
        ),
    ];
    for (what, raw, allowed) in cases {
        let (answer, closed) = exchange(&server.addr, raw.as_bytes()).await;
        let answers = answer.matches("HTTP/1.1 ").count();
        assert!(answers <= 1, "{what}: {answers} answers:\n{answer}");
        assert!(closed, "{what}: the connection was left open:\n{answer}");
        if answers == 1 {
            let at = answer.find("HTTP/1.1 ").unwrap() + "HTTP/1.1 ".len();
            let status = &answer[at..at + 3];
            assert!(
                allowed.contains(&status),
                "{what}: {status}, expected one of {allowed:?}:\n{answer}"
            );
        }
        assert!(!answer.contains("smuggled"), "{what}:\n{answer}");
    }
    assert_eq!(
        get(&server.addr, Proto::H1, "/").await.unwrap().status,
        StatusCode::OK,
        "still serving"
    );
}

/// What the grammar allows is served: a bare LF ends a line (RFC 9112 §2.2 lets a recipient
/// take it as one), and pipelined requests each framed one way are each answered, in order.
#[tokio::test]
async fn well_framed_requests_are_answered_in_order() {
    let app = guest("hello");
    let server = PierServer::start(pier(), &[app.to_str().unwrap()]).unwrap();
    let raw = "GET / HTTP/1.1\nhost: x\n\n\
               POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc\
               POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
               GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let (answer, closed) = exchange(&server.addr, raw.as_bytes()).await;
    assert!(closed, "{answer}");
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "200"], "{answer}");
}

/// A client that asks for a large response and never reads it (slow-read; on HTTP/2 a zero
/// window does the same) holds its connection only for `--send-timeout`: then pier closes it,
/// says so in its log, and other clients are served meanwhile.
#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off_after_the_send_timeout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    let size = 64 << 20;
    std::fs::write(dir.path().join("public/big"), vec![b'x'; size]).unwrap();
    let manifest = dir.path().join("pier.toml");
    std::fs::write(
        &manifest,
        "manifest_version = 1\n[[route]]\npath = \"/...\"\nfiles = \"public/\"\n",
    )
    .unwrap();
    let server = PierServer::start(
        pier(),
        &["--send-timeout", "1s", manifest.to_str().unwrap()],
    )
    .unwrap();
    let mut stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Not reading: pier's writes fill the socket's buffers, then wait.
    assert!(
        server.wait_for_log("the client has not read for 1s", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let other = get(&server.addr, Proto::H1, "/big").await.unwrap();
    assert_eq!(other.body.len(), size, "another client is served whole");
    // What was buffered arrives, then the end: never the whole body.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(got.len() < size, "{} bytes", got.len());
}

/// A request target longer than pier parses is `414 URI Too Long` (RFC 9112 §3), a head
/// larger than the header limit `431`, each answered and closed; shorter long ones are served.
#[tokio::test]
async fn a_request_target_too_long_is_414() {
    let app = guest("hello");
    let server = PierServer::start(pier(), &[app.to_str().unwrap()]).unwrap();
    for (length, status) in [(20_000, "200"), (70_000, "414"), (200_000, "431")] {
        let raw = format!(
            "GET /{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            "a".repeat(length)
        );
        let (answer, closed) = exchange(&server.addr, raw.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{length}: {}",
            &answer[..answer.len().min(200)]
        );
        assert!(closed, "{length}");
    }
}

/// Connections that open and say nothing, as many as `--max-connections`: pier stops accepting
/// (the next client waits in the kernel's backlog, pier's memory does not grow with them),
/// closes each silent one at `--header-timeout`, and the waiting client is then served.
#[tokio::test]
async fn silent_connections_up_to_the_limit_are_closed_and_the_next_client_served() {
    let app = guest("hello");
    let server = PierServer::start(
        pier(),
        // One serving thread: connections are accepted in the order they arrive (with
        // several, each thread's socket has a queue of its own, and the next client may be
        // taken before silent ones queued for another thread).
        &[
            "--max-connections",
            "20",
            "--header-timeout",
            "2s",
            "--threads",
            "1",
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&server.addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(15), get(&server.addr, Proto::H1, "/"))
        .await
        .expect("the next client is served once the silent ones are closed")
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    // It waited for a slot: the silent connections held all twenty.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    for mut stream in silent {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a silent connection is still open");
    }
}

/// A TLS handshake flood: clients that start a handshake and stall (a few bytes of a
/// ClientHello), and clients that complete handshakes and leave at once, hundreds of each. The
/// stalled ones are closed at `--header-timeout`, memory stays bounded, and a real client is
/// served throughout or, at the connection limit, as soon as the stalled ones are gone.
#[tokio::test]
async fn a_tls_handshake_flood_is_bounded_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let app = guest("hello");
    let server = PierServer::start(
        pier(),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
            "--max-connections",
            "300",
            "--header-timeout",
            "2s",
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    let root = cert.cert.der().to_vec();
    let served = |root: Vec<u8>, addr: String| async move {
        let (mut client, _) = pier_testkit::connect_tls::<http_body_util::Full<bytes::Bytes>>(
            &addr,
            &root,
            &[b"h2", b"http/1.1"],
        )
        .await
        .unwrap();
        let req = http::Request::get(format!("https://{addr}/"))
            .body(Default::default())
            .unwrap();
        pier_testkit::read(client.send(req).await.unwrap())
            .await
            .unwrap()
            .status
    };
    let before = pier_testkit::rss_bytes(server.pid()).unwrap();
    // 250 stalled handshakes: a TLS record header and half a ClientHello, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..250 {
        let mut stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        stream
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .await
            .unwrap();
        stalled.push(stream);
    }
    // 300 complete handshakes, dropped at once, 30 at a time.
    for _ in 0..10 {
        let rounds: Vec<_> = (0..30)
            .map(|_| {
                let (root, addr) = (root.clone(), server.addr.clone());
                tokio::spawn(async move {
                    let _ = pier_testkit::connect_tls::<http_body_util::Full<bytes::Bytes>>(
                        &addr,
                        &root,
                        &[b"http/1.1"],
                    )
                    .await;
                })
            })
            .collect();
        for round in rounds {
            round.await.unwrap();
        }
    }
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        served(root.clone(), server.addr.clone()),
    )
    .await
    .expect("a real client is served");
    assert_eq!(status, StatusCode::OK);
    for mut stream in stalled {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a stalled handshake is still open");
    }
    let grown = pier_testkit::rss_bytes(server.pid())
        .unwrap()
        .saturating_sub(before);
    assert!(grown < 64 << 20, "grew {grown} bytes");
    assert_eq!(served(root, server.addr.clone()).await, StatusCode::OK);
}

/// A client uploading more than `--max-body` (or a body the guest answers without reading)
/// gets pier's answer, not a reset: pier closes an HTTP/1.1 connection only after reading and
/// dropping what the client was still sending, for a while (a lingering close, RFC 9112 §9.6).
#[tokio::test]
async fn an_upload_refused_early_still_gets_its_answer() {
    let app = guest("hello");
    let server = PierServer::start(pier(), &["--max-body", "1MiB", app.to_str().unwrap()]).unwrap();
    for round in 0..10 {
        let req = http::Request::post("/")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'x';
                8 << 20
            ])))
            .unwrap();
        let answer = pier_testkit::send(&server.addr, Proto::H1, req)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "round {round}"
        );
    }
}
