//! Production serving: TLS, limits and timeouts, overload, drain, metrics and logs. Every test is
//! bounded in time and count and talks to loopback only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use pier_testkit::{Client, PROTOS, PierServer, Proto, get, guest, read, request, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

fn serve(guest_name: &str, flags: &[&str]) -> PierServer {
    let app = guest(guest_name);
    let mut args: Vec<&str> = flags.to_vec();
    args.push(app.to_str().unwrap());
    PierServer::start(pier(), &args).expect("pier starts")
}

fn assert_pier_error(answer: &pier_testkit::Answer, status: StatusCode, text: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert_eq!(answer.headers["server"], "pier");
    assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        answer.text().contains(text),
        "{:?} should say {text:?}",
        answer.text()
    );
}

fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
    rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap()
}

/// The hello guest over TLS with `cert` (its files in a directory kept while the guard lives).
fn serve_tls(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (PierServer, PathBuf, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = serve(
        "hello",
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    (server, cert_path, key_path, dir)
}

/// A renewed certificate is served after `SIGHUP`, without a restart: handshakes from then on
/// present it; a pair that does not load leaves the one in service serving, with an error.
/// Only TLS 1.2 and 1.3 are offered: a client asking for anything older is refused.
#[tokio::test]
async fn the_certificate_is_reloaded_on_sighup_and_old_protocols_are_refused() {
    let old = self_signed();
    let new = self_signed();
    let (server, cert_path, key_path, _dir) = serve_tls(&old);
    let trusts = |root: Vec<u8>| {
        let addr = server.addr.clone();
        async move {
            pier_testkit::connect_tls::<Full<Bytes>>(&addr, &root, &[b"h2"])
                .await
                .is_ok()
        }
    };
    assert!(trusts(old.cert.der().to_vec()).await);
    assert!(!trusts(new.cert.der().to_vec()).await);

    std::fs::write(&cert_path, new.cert.pem()).unwrap();
    std::fs::write(&key_path, new.signing_key.serialize_pem()).unwrap();
    pier_testkit::signal(server.pid(), "HUP").unwrap();
    assert!(
        server.wait_for_log(
            "reloaded (SIGHUP): the TLS certificate",
            Duration::from_secs(10)
        ),
        "{}",
        server.log()
    );
    assert!(trusts(new.cert.der().to_vec()).await, "the renewed one");
    assert!(!trusts(old.cert.der().to_vec()).await);

    // A key that is not the certificate's: refused, the renewed one kept.
    std::fs::write(&key_path, old.signing_key.serialize_pem()).unwrap();
    pier_testkit::signal(server.pid(), "HUP").unwrap();
    assert!(
        server.wait_for_log(
            "the TLS certificate in service is kept",
            Duration::from_secs(10)
        ),
        "{}",
        server.log()
    );
    assert!(trusts(new.cert.der().to_vec()).await);

    // TLS 1.2 and 1.3 only: a client offering TLS 1.1 alone (a ClientHello of record version
    // 3.1 with client_version 3.2, no extensions) is refused with a fatal alert.
    let mut hello: Vec<u8> = vec![0x03, 0x02];
    hello.extend([0u8; 32]); // random
    hello.push(0); // no session id
    hello.extend([0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    hello.extend([0x01, 0x00]); // no compression
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend(&handshake);
    let mut stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    stream.write_all(&record).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    // An alert record (21), fatal (2): protocol_version (70) or handshake_failure (40).
    assert!(
        reply.len() == 7 && reply[0] == 21 && reply[5] == 2 && [70, 40].contains(&reply[6]),
        "{reply:?}"
    );
}

#[tokio::test]
async fn tls_serves_h1_and_h2_by_alpn() {
    let cert = self_signed();
    let (server, _, _, _dir) = serve_tls(&cert);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    for (alpn, want) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], Proto::H2),
        (&[b"http/1.1".as_slice()][..], Proto::H1),
    ] {
        let (mut client, proto) = pier_testkit::connect_tls(&server.addr, cert.cert.der(), alpn)
            .await
            .unwrap();
        assert_eq!(proto, want);
        let req = Request::builder()
            .uri("/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.send(req).await.unwrap();
        let expected_version = if want == Proto::H2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(response.version(), expected_version);
        assert_eq!(read(response).await.unwrap().text(), "hello from pier\n");
    }
    // A client that never finishes its handshake does not hold up others.
    let _stalled = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (mut client, _) =
        pier_testkit::connect_tls::<Full<Bytes>>(&server.addr, cert.cert.der(), &[b"h2"])
            .await
            .unwrap();
    let response = client
        .send(
            Request::builder()
                .uri("/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn bad_tls_files_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.to_str().unwrap();
    let app = guest("hello");
    pier_testkit::assert_one_line_error(
        pier(),
        &[
            "serve",
            "--tls-cert",
            junk,
            "--tls-key",
            junk,
            app.to_str().unwrap(),
        ],
        &["pier: --tls-cert ", "junk.pem"],
    );
}

#[tokio::test]
async fn a_memory_bomb_is_a_500_and_the_server_keeps_serving() {
    let server = serve("faults", &["--max-memory", "4MiB"]);
    for proto in PROTOS {
        let answer = get(&server.addr, proto, "/memory").await.unwrap();
        assert_pier_error(
            &answer,
            StatusCode::INTERNAL_SERVER_ERROR,
            "ran out of memory",
        );
        assert_eq!(
            get(&server.addr, proto, "/ok").await.unwrap().status,
            StatusCode::OK
        );
    }
    // The server writes the line before it answers, but the test reads pier's stderr on a
    // thread of its own, which may not have caught up yet.
    assert!(
        server.wait_for_log("kind=\"out_of_memory\"", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn an_infinite_loop_is_a_504_within_the_timeout() {
    let server = serve("faults", &["--timeout", "500ms"]);
    for proto in PROTOS {
        let began = Instant::now();
        let answer = get(&server.addr, proto, "/loop").await.unwrap();
        let took = began.elapsed();
        assert_pier_error(
            &answer,
            StatusCode::GATEWAY_TIMEOUT,
            "did not answer within 500ms",
        );
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(600),
            "{proto:?}: took {took:?}"
        );
        assert_eq!(
            get(&server.addr, proto, "/ok").await.unwrap().status,
            StatusCode::OK
        );
    }
    // A guest that waits (rather than computes) past its deadline is stopped too.
    let server = serve("faults", &["--timeout", "100ms"]);
    let answer = get(&server.addr, Proto::H1, "/wait").await.unwrap();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
}

// Multi-threaded: the looping requests wait on their own while the test measures the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_that_compute_do_not_hold_up_other_requests() {
    for flags in [
        &["--timeout", "3s"][..],
        &["--timeout", "3s", "--workers", "2"],
    ] {
        let server = serve("faults", flags);
        // Two computing guests per thread, each on a connection of its own.
        let busy: Vec<_> = (0..4)
            .map(|_| {
                let addr = server.addr.clone();
                tokio::spawn(async move { get(&addr, Proto::H1, "/loop").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..4 {
            let began = Instant::now();
            let answer = get(&server.addr, Proto::H1, "/ok").await.unwrap();
            let took = began.elapsed();
            assert_eq!(answer.status, StatusCode::OK);
            assert!(
                took < Duration::from_millis(1000),
                "{flags:?}: a request took {took:?} behind computing guests"
            );
        }
        for stuck in busy {
            let answer = stuck.await.unwrap().unwrap();
            assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        }
    }
}

#[tokio::test]
async fn an_instance_made_ahead_starts_its_clock_with_its_request() {
    // The instance waiting for the next request was made long before it: the request still gets
    // its whole --timeout, and no less or more.
    let server = serve("faults", &["--prewarm", "1", "--timeout", "300ms"]);
    assert_eq!(
        get(&server.addr, Proto::H1, "/ok").await.unwrap().status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(&server.addr, Proto::H1, "/ok").await.unwrap().status,
        StatusCode::OK,
        "an instance made 600 ms ago is not past a 300 ms timeout"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let began = Instant::now();
    let answer = get(&server.addr, Proto::H1, "/loop").await.unwrap();
    let took = began.elapsed();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(400),
        "took {took:?}"
    );
}

/// A `GET /` with `n` header fields.
fn with_fields(n: usize) -> Request<Full<Bytes>> {
    let mut req = Request::builder().uri("/");
    for i in 0..n {
        req = req.header(format!("x-h{i}"), "v");
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let server = serve(
        "hello",
        &["--max-headers", "10", "--max-header-size", "1KiB"],
    );
    for proto in PROTOS {
        let answer = pier_testkit::send(&server.addr, proto, with_fields(20))
            .await
            .unwrap();
        assert_pier_error(
            &answer,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request header fields",
        );

        let big = Request::builder()
            .uri("/")
            .header("x-big", "v".repeat(1500))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = pier_testkit::send(&server.addr, proto, big).await.unwrap();
        assert_pier_error(
            &answer,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header section too large",
        );

        assert_eq!(
            get(&server.addr, proto, "/").await.unwrap().status,
            StatusCode::OK
        );
    }
}

/// More header fields than the HTTP/1 parser takes at the default limit (100): still pier's
/// 431, on both protocols, and pier serves on.
#[tokio::test]
async fn more_fields_than_the_parser_takes_are_pier_431() {
    let server = serve("hello", &[]);
    for proto in PROTOS {
        let answer = pier_testkit::send(&server.addr, proto, with_fields(150))
            .await
            .unwrap();
        assert_pier_error(
            &answer,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many",
        );
        assert_eq!(
            get(&server.addr, proto, "/").await.unwrap().status,
            StatusCode::OK
        );
    }
}

/// A header section beyond what pier buffers (twice --max-header-size) is still pier's 431 on
/// HTTP/1.1: its body, `server: pier`, the access log; and a head that does not parse is pier's
/// 400. (HTTP/2's oversized sections are in h2_frames.rs.)
#[tokio::test]
async fn heads_the_parser_refuses_are_pier_errors_too() {
    let server = serve("hello", &[]);
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "v".repeat(200_000)
    );
    for (request, status, body) in [
        (
            big.as_str(),
            "431",
            "request header section too large, or with too many fields\n",
        ),
        (
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "400",
            "malformed request head\n",
        ),
    ] {
        let (answer, closed) =
            pier_testkit::raw_exchange(&server.addr, request.as_bytes(), Duration::from_secs(30))
                .await;
        assert!(closed, "pier closes the connection after its error");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        assert!(answer.contains("\r\nserver: pier\r\n"), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.ends_with(&format!("\r\n\r\n{body}")), "{answer}");
        assert!(
            server.wait_for_log(&format!("status={status}"), Duration::from_secs(5)),
            "{}",
            server.log()
        );
    }
    assert_eq!(
        get(&server.addr, Proto::H1, "/").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_up_front_and_mid_stream() {
    let server = serve("faults", &["--max-body", "1KiB"]);
    for proto in PROTOS {
        let answer = request(&server.addr, proto, "POST", "/sink", &[b'x'; 2048])
            .await
            .unwrap();
        assert_pier_error(
            &answer,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 1024 bytes",
        );
        let answer = request(&server.addr, proto, "POST", "/sink", &[b'x'; 1000])
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{proto:?}: under the limit");

        // No content-length: the limit is enforced as the body streams in.
        let mut client = Client::connect(&server.addr, proto).await.unwrap();
        let (tx, body) = pier_testkit::channel_body();
        let req = Request::builder()
            .method("POST")
            .uri("/sink")
            .body(body)
            .unwrap();
        let pending = tokio::spawn(async move { read(client.send(req).await?).await });
        for _ in 0..4 {
            if tx.send(Bytes::from(vec![b'y'; 400])).await.is_err() {
                break;
            }
        }
        drop(tx);
        let answer = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_pier_error(
            &answer,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 1024 bytes",
        );
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let server = serve("hello", &["--header-timeout", "500ms"]);
    let mut slow = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    let began = Instant::now();
    let served = async {
        for _ in 0..5 {
            assert_eq!(
                get(&server.addr, Proto::H1, "/").await.unwrap().status,
                StatusCode::OK
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let cut_off = async {
        let mut buf = [0u8; 1024];
        loop {
            // Trickle a header byte now and then; pier must still close the connection.
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return began.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => {
                    let _ = slow.write_all(b"x").await;
                }
            }
            assert!(began.elapsed() < Duration::from_secs(5), "never cut off");
        }
    };
    let ((), took) = tokio::join!(served, cut_off);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "cut off after {took:?}"
    );
}

#[tokio::test]
async fn overload_gets_503_with_retry_after_and_the_rest_succeed() {
    let server = serve("faults", &["--max-concurrency", "4"]);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let addr = server.addr.clone();
            tokio::spawn(async move {
                let began = Instant::now();
                let answer = get(&addr, PROTOS[i % 2], "/wait").await.unwrap();
                (answer, began.elapsed())
            })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for task in tasks {
        let (answer, took) = task.await.unwrap();
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(answer.headers["retry-after"], "1");
                assert_eq!(answer.headers["server"], "pier");
                assert!(
                    took < Duration::from_millis(250),
                    "503 must be immediate, took {took:?}"
                );
            }
            other => panic!("unexpected {other}: {}", answer.text()),
        }
    }
    assert!(ok >= 4 && busy >= 20, "ok {ok}, busy {busy}");
    assert_eq!(ok + busy, 50);
    assert_eq!(
        get(&server.addr, Proto::H1, "/ok").await.unwrap().status,
        StatusCode::OK,
        "recovers"
    );
}

/// A fresh instance is reset after its response is written, in a task of its own that holds the
/// request's `--max-concurrency` slot until the store is gone (`handler.rs`, `Handover`): a
/// client's next request on the same connection, sent the moment the answer arrives, must still
/// find the slot given back, never a 503.
#[tokio::test]
async fn back_to_back_requests_at_max_concurrency_1_are_all_answered() {
    let server = serve("faults", &["--max-concurrency", "1"]);
    for proto in PROTOS {
        let mut client = Client::<Full<Bytes>>::connect(&server.addr, proto)
            .await
            .unwrap();
        for i in 0..200 {
            let req = Request::get("/ok").body(Full::new(Bytes::new())).unwrap();
            let answer = read(client.send(req).await.unwrap()).await.unwrap();
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (StatusCode::OK, "ok\n"),
                "{proto:?}, request {i}"
            );
        }
    }
}

/// A component that needs more of the pool than a typical one gets a fresh instance for each of
/// `--max-concurrency` requests at once. (Sized for a typical component, two memories and 20 core
/// instances per component instance, the pool held the first guest's 31 memories for one request
/// at a time and the second's 153 core instances for three: every other request waiting in the
/// guest failed with a 500.)
#[tokio::test]
async fn components_with_many_memories_or_instances_get_one_for_every_concurrent_request() {
    for name in ["faults-many-memories", "faults-many-instances"] {
        let server = serve(name, &["--max-concurrency", "8"]);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let addr = server.addr.clone();
                tokio::spawn(async move { get(&addr, PROTOS[i % 2], "/wait").await })
            })
            .collect();
        for task in tasks {
            let answer = task.await.unwrap().unwrap();
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (StatusCode::OK, "ok\n"),
                "{name}: {}",
                server.log()
            );
        }
    }
}

#[tokio::test]
async fn drain_finishes_every_request_in_flight_then_exits_0() {
    // Three serving threads: requests are in flight on each (see tests/threads.rs).
    let server = serve("faults", &["--drain-timeout", "10s", "--threads", "3"]);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let addr = server.addr.clone();
            tokio::spawn(async move { get(&addr, PROTOS[i % 2], "/wait").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    pier_testkit::signal(server.pid(), "TERM").unwrap();
    for task in tasks {
        let answer = task.await.unwrap().expect("accepted requests are not lost");
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "ok\n")
        );
    }
    let began = Instant::now();
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(began.elapsed() < Duration::from_secs(5));
}

/// SIGTERM while clients keep sending, on HTTP/1.1 keep-alive and HTTP/2 connections: every
/// request pier began is answered whole (its access line says 200, complete) and reaches its
/// client; the only failures the clients see are requests pier never began (sent on a connection
/// it was closing, or a connection refused once it stopped listening); pier exits 0 well within
/// the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_continuous_load_loses_no_request_pier_began() {
    let mut server = serve("faults", &["--drain-timeout", "10s"]);
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let addr = server.addr.clone();
            tokio::spawn(async move {
                let (mut answered, mut failures) = (0usize, Vec::new());
                // New connections until pier stops accepting; requests on each until it ends.
                while let Ok(mut client) =
                    Client::<Full<Bytes>>::connect(&addr, PROTOS[c % 2]).await
                {
                    loop {
                        let req = Request::get("/ok").body(Full::new(Bytes::new())).unwrap();
                        match client.send(req).await {
                            Ok(response) => {
                                let answer = read(response).await.expect("a begun answer is whole");
                                assert_eq!(
                                    (answer.status, answer.text().as_str()),
                                    (StatusCode::OK, "ok\n")
                                );
                                answered += 1;
                            }
                            Err(e) => {
                                failures.push(format!("{e:#}"));
                                break;
                            }
                        }
                    }
                }
                (answered, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pier_testkit::signal(server.pid(), "TERM").unwrap();
    let began = Instant::now();
    let (mut answered, mut failures) = (0, Vec::new());
    for client in clients {
        let (n, f) = tokio::time::timeout(Duration::from_secs(20), client)
            .await
            .expect("clients end once pier is gone")
            .unwrap();
        answered += n;
        failures.extend(f);
    }
    let status = server.exited().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    // The last lines, written as pier exited, reach the log.
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    let logged = log
        .lines()
        .filter(|l| {
            l.contains("pier::access") && l.contains("status=200 ") && l.contains("complete=true")
        })
        .count();
    let other = log
        .lines()
        .filter(|l| {
            l.contains("pier::access")
                && !(l.contains("status=200 ") && l.contains("complete=true"))
        })
        .collect::<Vec<_>>();
    assert!(
        other.is_empty(),
        "requests pier began that did not complete: {other:?}"
    );
    assert_eq!(
        logged, answered,
        "every request pier answered reached its client"
    );
    assert!(answered > 20, "only {answered} requests");
    eprintln!(
        "{answered} answered; {} sent on closing connections: {:?}",
        failures.len(),
        failures.iter().collect::<std::collections::BTreeSet<_>>()
    );
}

#[tokio::test]
async fn the_drain_timeout_bounds_shutdown() {
    let server = serve("faults", &["--drain-timeout", "300ms", "--timeout", "60s"]);
    let addr = server.addr.clone();
    let stuck = tokio::spawn(async move { get(&addr, Proto::H1, "/loop").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    let status = server.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "took {:?}",
        began.elapsed()
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the request still running at the deadline is cut"
    );
}

#[tokio::test]
async fn metrics_and_health_on_the_admin_listener() {
    let server = serve(
        "faults",
        &["--admin-addr", "127.0.0.1:0", "--timeout", "200ms"],
    );
    let admin = server.admin_addr.clone().expect("admin address printed");
    let health = get(&admin, Proto::H1, "/healthz").await.unwrap();
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "ok: generation 1\n")
    );

    for path in ["/ok", "/ok", "/trap", "/loop"] {
        get(&server.addr, Proto::H1, path).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = get(&admin, Proto::H1, "/metrics").await.unwrap().text();
    for line in [
        "pier_requests_total{status=\"2xx\"} 2",
        "pier_requests_total{status=\"5xx\"} 2",
        "pier_guest_failures_total{kind=\"trap\"} 1",
        "pier_guest_failures_total{kind=\"timeout\"} 1",
        "pier_instances_created_total{made=\"on_request\"} 4",
        "pier_requests_in_flight 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} missing from:\n{metrics}"
        );
    }
    for histogram in [
        "pier_request_duration_seconds_bucket",
        "pier_guest_execution_seconds_count",
        "pier_instantiation_seconds_count",
    ] {
        assert!(metrics.contains(histogram), "{histogram} missing");
    }
    assert!(metrics.contains("pier_response_body_bytes_total"));
    // The requests ran one after another, so their instances' slots are free now and warm,
    // keeping their reset memory resident for the next request.
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    assert!(value("pier_pool_unused_warm_slots{kind=\"memory\"}") >= 1.0);
    assert!(value("pier_pool_unused_resident_bytes{kind=\"memory\"}") > 0.0);
    value("pier_pool_unused_warm_slots{kind=\"table\"}");
}

/// The first line of `server`'s log containing `needle`, waiting a few seconds for it.
fn log_line(server: &PierServer, needle: &str) -> String {
    assert!(
        server.wait_for_log(needle, Duration::from_secs(5)),
        "no {needle}"
    );
    server
        .log()
        .lines()
        .find(|l| l.contains(needle))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn access_log_lines_in_text_and_json() {
    let server = serve("hello", &[]);
    get(&server.addr, Proto::H1, "/some/path?q=1")
        .await
        .unwrap();
    let line = log_line(&server, "pier::access");
    for field in [
        "method=GET",
        "path=\"/some/path\"",
        "status=200",
        "bytes=16",
        "complete=true",
        "guest_us=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    // A HEAD request is answered in full by the head alone.
    let head = Request::head("/h").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(
        send(&server.addr, Proto::H1, head).await.unwrap().status,
        StatusCode::OK
    );
    let line = log_line(&server, "method=HEAD");
    assert!(line.contains("complete=true"), "{line}");

    let app = guest("hello");
    let server =
        PierServer::start(pier(), &["--log-format", "json", app.to_str().unwrap()]).unwrap();
    get(&server.addr, Proto::H2, "/j").await.unwrap();
    let line = log_line(&server, "pier::access");
    let json: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(json["path"], "/j");
    assert_eq!(json["status"], 200);
    assert_eq!(json["bytes"], 16);
}

#[tokio::test]
async fn the_header_timeout_bounds_the_wait_for_the_next_http1_request_not_an_http2_one() {
    let server = serve(
        "hello",
        &["--header-timeout", "300ms", "--idle-timeout", "10s"],
    );
    let request = || {
        Request::builder()
            .uri("/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut h1 = Client::<Full<Bytes>>::connect(&server.addr, Proto::H1)
        .await
        .unwrap();
    let mut h2 = Client::<Full<Bytes>>::connect(&server.addr, Proto::H2)
        .await
        .unwrap();
    // Requests in quick succession keep both connections, for longer than the header timeout
    // in all: it counts from the last response, not from the connection's start.
    for _ in 0..6 {
        for client in [&mut h1, &mut h2] {
            let response = client.send(request()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().collect().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Quiet for longer than the header timeout: an HTTP/1 client that sends no head is cut off;
    // an HTTP/2 connection waits for its idle timeout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        h1.send(request()).await.is_err(),
        "the HTTP/1 connection should have been closed"
    );
    let response = h2.send(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let server = serve(
        "hello",
        &["--idle-timeout", "300ms", "--header-timeout", "10s"],
    );
    let (mut client, _) = (
        Client::<Full<Bytes>>::connect(&server.addr, Proto::H2)
            .await
            .unwrap(),
        (),
    );
    let response = client
        .send(
            Request::builder()
                .uri("/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "hello from pier\n"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let again = client
        .send(
            Request::builder()
                .uri("/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(
        again.is_err(),
        "the idle HTTP/2 connection should have been closed"
    );
}

/// The worker processes of a `pier serve --workers` supervisor.
fn workers_of(supervisor: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{supervisor}/task")).unwrap() {
        let children = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap();
        pids.extend(
            children
                .split_whitespace()
                .map(|p| p.parse::<u32>().unwrap()),
        );
    }
    pids
}

/// Whether a process is gone (or a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    matches!(state(pid), None | Some('Z'))
}

/// Whether every thread of a process is stopped (SIGSTOP).
fn stopped_whole(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.into_iter().all(|task| {
        let tid = task.unwrap().file_name();
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/task/{}/stat", tid.to_string_lossy()));
        stat.ok()
            .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with('T')))
            .unwrap_or(false)
    })
}

/// A process's state letter (`R`, `S`, `T` for stopped, `Z`, ...), if it exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses, which may itself hold spaces.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Which workers answer 40 requests, each on a new connection (the env guest prints the
/// `PIER_WORKER` it was granted).
async fn answering_workers(addr: &str) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let answer = get(addr, PROTOS[i % 2], "/").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let text = answer.text();
        let worker = text
            .lines()
            .find_map(|l| l.strip_prefix("PIER_WORKER="))
            .unwrap_or_else(|| panic!("no PIER_WORKER in {text:?}"));
        seen.insert(worker.to_string());
    }
    seen
}

// Multi-threaded: the client's connections must answer the drain (HTTP/2 GOAWAY and PING)
// while the test thread blocks waiting for pier to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_one_port_and_a_dead_worker_is_replaced() {
    let server = serve("env", &["--workers", "2", "--env", "PIER_WORKER"]);
    let workers = workers_of(server.pid());
    assert_eq!(workers.len(), 2, "{}", server.log());
    // The kernel spreads connections over both workers' listeners.
    assert_eq!(
        answering_workers(&server.addr).await,
        ["0", "1"].map(String::from).into()
    );

    pier_testkit::signal(workers[0], "KILL").unwrap();
    assert!(
        server.wait_for_log("worker exited unexpectedly", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers_of(server.pid()).len() < 2 || workers_of(server.pid()).contains(&workers[0]) {
        assert!(
            Instant::now() < deadline,
            "no new worker:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every request succeeds, and the new worker takes its share.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answering_workers(&server.addr).await.len() < 2 {
        assert!(Instant::now() < deadline, "the new worker never answered");
    }

    // SIGTERM to the supervisor stops every worker, gracefully.
    let workers = workers_of(server.pid());
    let status = server.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    for pid in workers {
        assert!(gone(pid), "worker {pid} outlived its supervisor");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_of_workers_shows_every_workers_metrics() {
    let server = serve(
        "env",
        &[
            "--workers",
            "2",
            "--env",
            "PIER_WORKER",
            "--admin-addr",
            "127.0.0.1:0",
        ],
    );
    let admin = server.admin_addr.clone().expect("admin address printed");
    let health = get(&admin, Proto::H1, "/healthz").await.unwrap();
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "ok: 2 of 2 workers running\n")
    );
    // Requests on new connections, counted by the worker that answered each.
    let mut answered = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..40 {
        let text = get(&server.addr, PROTOS[i % 2], "/").await.unwrap().text();
        let worker = text
            .lines()
            .find_map(|l| l.strip_prefix("PIER_WORKER="))
            .unwrap_or_else(|| panic!("no PIER_WORKER in {text:?}"));
        *answered.entry(worker.to_string()).or_default() += 1;
    }
    assert_eq!(answered.len(), 2, "{answered:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = get(&admin, Proto::H1, "/metrics").await.unwrap().text();
    for (worker, count) in &answered {
        let line = format!("pier_requests_total{{worker=\"{worker}\",status=\"2xx\"}} {count}");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} missing from:\n{metrics}"
        );
        let up = format!("pier_worker_up{{worker=\"{worker}\"}} 1");
        assert!(metrics.lines().any(|l| l == up), "{up:?} missing");
    }
    assert_eq!(
        metrics
            .matches("# TYPE pier_requests_total counter")
            .count(),
        1,
        "one family, every worker's samples:\n{metrics}"
    );

    // A worker that does not answer is left out of the scrape and said to be down; the others
    // are still there.
    let workers = workers_of(server.pid());
    assert_eq!(workers.len(), 2);
    let stopped = workers
        .iter()
        .position(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/environ"))
                .unwrap()
                .split('\0')
                .any(|v| v == "PIER_WORKER=0")
        })
        .expect("worker 0");
    pier_testkit::signal(workers[stopped], "STOP").unwrap();
    // kill(2) returns before the signal has stopped every thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stopped_whole(workers[stopped]) {
        assert!(Instant::now() < deadline, "the worker did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = get(&admin, Proto::H1, "/metrics").await.unwrap().text();
    pier_testkit::signal(workers[stopped], "CONT").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "pier_worker_up{worker=\"0\"} 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("pier_requests_total{worker=\"0\""),
        "{metrics}"
    );
    let line = format!(
        "pier_requests_total{{worker=\"1\",status=\"2xx\"}} {}",
        answered["1"]
    );
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_for_a_dead_worker_wait_for_its_replacement() {
    let server = serve("env", &["--workers", "2", "--env", "PIER_WORKER"]);
    let workers = workers_of(server.pid());
    assert_eq!(workers.len(), 2, "{}", server.log());
    // A stopped worker accepts nothing: the connections the kernel gives its socket queue there.
    pier_testkit::signal(workers[0], "STOP").unwrap();
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let addr = server.addr.clone();
            tokio::spawn(async move {
                let answer =
                    tokio::time::timeout(Duration::from_secs(20), get(&addr, Proto::H1, "/"))
                        .await
                        .expect("answered in time")
                        .expect("answered");
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
                answer.text()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = requests.iter().filter(|r| !r.is_finished()).count();
    assert!(
        (1..16).contains(&waiting),
        "{waiting} of 16 requests wait: the kernel should have spread them over both workers"
    );

    // Its replacement takes the same socket, and with it the connections waiting there.
    pier_testkit::signal(workers[0], "KILL").unwrap();
    let mut answered_by = std::collections::BTreeSet::new();
    for request in requests {
        let text = request.await.expect("no request was lost");
        answered_by.insert(
            text.lines()
                .find(|l| l.starts_with("PIER_WORKER="))
                .map(String::from),
        );
    }
    assert_eq!(
        answered_by,
        ["PIER_WORKER=0", "PIER_WORKER=1"]
            .map(|w| Some(w.to_string()))
            .into()
    );
    let status = server.terminate().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_second_pier_cannot_take_the_port_of_one_with_workers() {
    let server = serve("hello", &["--workers", "2"]);
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    for workers in ["2", "1"] {
        let args = ["serve", "--addr", &server.addr, "--workers", workers, hello];
        pier_testkit::assert_one_line_error(pier(), &args, &["already in use", "--addr"]);
    }
}

/// `pier serve --workers 2` on a copy of the hello guest, whose file is then broken and worker 0
/// killed: its replacement finds a file that is not wasm. The copy's directory, its path, the
/// server and the two first workers' pids.
fn workers_whose_component_breaks() -> (tempfile::TempDir, PathBuf, PierServer, Vec<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.wasm");
    std::fs::copy(guest("hello"), &app).unwrap();
    let server = PierServer::start(pier(), &["--workers", "2", app.to_str().unwrap()]).unwrap();
    let workers = workers_of(server.pid());
    assert_eq!(workers.len(), 2);
    // The running workers loaded the component; a replacement will find this instead.
    std::fs::write(&app, b"not wasm").unwrap();
    pier_testkit::signal(workers[0], "KILL").unwrap();
    (dir, app, server, workers)
}

#[tokio::test]
async fn a_worker_that_cannot_be_replaced_stops_the_others_and_pier_exits_1() {
    let (_dir, _app, server, workers) = workers_whose_component_breaks();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gone(server.pid()) {
        assert!(
            Instant::now() < deadline,
            "pier kept running:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone(workers[1]), "the healthy worker was left running");
    let log = server.log();
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("drained"),
        "the healthy worker drained:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_fails_is_tried_again() {
    // The first replacement finds a broken file; by the next try it is whole again.
    let (_dir, app, server, _) = workers_whose_component_breaks();
    assert!(
        server.wait_for_log("replacement 1 of 4 failed", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    std::fs::copy(guest("hello"), &app).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers_of(server.pid()).len() < 2 {
        assert!(!gone(server.pid()), "pier gave up:\n{}", server.log());
        assert!(
            Instant::now() < deadline,
            "no replacement:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let answer = get(&server.addr, Proto::H1, "/").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert!(
        !server.log().contains("replacement 2 of 4"),
        "{}",
        server.log()
    );
}

#[test]
fn the_supervisor_compiles_once_for_all_workers() {
    let cache = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    let server = PierServer::start_with_env(
        pier(),
        &["--workers", "2", hello.to_str().unwrap()],
        &[("PIER_CACHE_DIR", cache.path().to_str().unwrap())],
    )
    .unwrap();
    // Both workers found the code in the cache: neither compiled it. (Their start-up logs
    // follow the serving line.)
    assert!(
        server.wait_for_log("every worker listens workers=2", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().matches("memories are reset").count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    assert_eq!(log.matches("memories are reset").count(), 2, "{log}");
    assert!(!log.contains("compiled in"), "a worker compiled:\n{log}");
    let entries = std::fs::read_dir(cache.path()).unwrap().count();
    assert!(entries > 0, "nothing in the compile cache");
}

/// `RUST_BACKTRACE=1` keeps panics' backtraces but must not have every error value capture one
/// (wasmtime makes one each time it drops a WASI 0.3 store: ~9% of a fresh 0.3 request): pier
/// sets `RUST_LIB_BACKTRACE=0` for itself, which its worker processes are started with, unless
/// the user set it.
#[test]
fn rust_backtrace_is_for_panics_only_unless_rust_lib_backtrace_says_otherwise() {
    let environ_of = |pid: u32| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        String::from_utf8_lossy(&environ)
            .split('\0')
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let hello = guest("hello");
    for (env, expected) in [
        (vec![("RUST_BACKTRACE", "1")], "RUST_LIB_BACKTRACE=0"),
        (
            vec![("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
            "RUST_LIB_BACKTRACE=1",
        ),
    ] {
        let server =
            PierServer::start_with_env(pier(), &["--workers", "2", hello.to_str().unwrap()], &env)
                .unwrap();
        let workers = workers_of(server.pid());
        assert_eq!(workers.len(), 2, "{}", server.log());
        for worker in workers {
            let environ = environ_of(worker);
            assert!(
                environ.iter().any(|v| v == expected),
                "{env:?}: worker {worker} started without {expected}: {environ:?}"
            );
            assert!(environ.iter().any(|v| v == "RUST_BACKTRACE=1"));
        }
    }
}

#[test]
fn a_stop_while_workers_start_is_graceful() {
    let mut pier = std::process::Command::new(pier())
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--no-cache",
            "--workers",
            "2",
        ])
        .arg(guest("hello"))
        .env("PIER_LOG", "off")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    pier_testkit::signal(pier.id(), "TERM").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = pier.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "pier did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn workers_stop_when_their_supervisor_is_killed() {
    let server = serve("hello", &["--workers", "2"]);
    let workers = workers_of(server.pid());
    assert_eq!(workers.len(), 2);
    pier_testkit::signal(server.pid(), "KILL").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !workers.iter().all(|&pid| gone(pid)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived a killed supervisor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn workers_refuse_what_they_cannot_share_and_report_start_up_errors_once() {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let filter = ["serve", "--workers", "2", "--filter", hello, hello];
    pier_testkit::assert_one_line_error(pier(), &filter, &["--workers 2", "--filter"]);
    // A worker that cannot start says why; the supervisor adds nothing and exits 1.
    let module = pier_testkit::repo_root().join("guests/prebuilt/cli.wasm");
    let module = module.to_str().unwrap();
    let args = ["serve", "--addr", "127.0.0.1:0", "--workers", "2", module];
    pier_testkit::assert_one_line_error(pier(), &args, &["not a component"]);
}

/// Over TLS a 0.2 guest is told its request came as `https` (an HTTP/1.1 request names no
/// scheme: the connection's is given; an HTTP/2 one names its own).
#[tokio::test]
async fn a_0_2_guest_over_tls_is_told_https() {
    let Some(app) = pier_testkit::toolchain_guest("python-hello.wasm") else {
        return;
    };
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("p3-serve-cache");
    let server = PierServer::start_with_env(
        pier(),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
            app.to_str().unwrap(),
        ],
        &[("PIER_CACHE_DIR", cache.to_str().unwrap())],
    )
    .unwrap();
    for alpn in [b"h2".as_slice(), b"http/1.1"] {
        let (client, proto) = pier_testkit::connect_tls(&server.addr, cert.cert.der(), &[alpn])
            .await
            .unwrap();
        let response = match client {
            pier_testkit::Client::H2(mut sender) => {
                let req = Request::get("https://localhost/url")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                sender.send_request(req).await.unwrap()
            }
            mut h1 => {
                let req = Request::get("/url").body(Full::new(Bytes::new())).unwrap();
                h1.send(req).await.unwrap()
            }
        };
        let answer = read(response).await.unwrap();
        assert_eq!(answer.text(), "https://localhost/url", "{proto:?}");
    }
}
