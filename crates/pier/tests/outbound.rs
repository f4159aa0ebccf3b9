//! Outbound HTTP from guests: a WAT guest (and a componentize-py one) forwarding to upstreams the
//! test starts on loopback. Pooling, TLS trust, timeouts, policy and error codes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pier_testkit::{PierServer, Proto, guest};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// An upstream on 127.0.0.1 counting the TCP connections it accepts and the HTTP versions seen.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    h2_requests: Arc<AtomicUsize>,
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

async fn route(req: Request<Incoming>, h2: Arc<AtomicUsize>) -> Response<UpBody> {
    if req.version() == http::Version::HTTP_2 {
        h2.fetch_add(1, Ordering::Relaxed);
    }
    let full = |s: &'static str| {
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    };
    match req.uri().path() {
        // The whole request body, then the same bytes back. (Read first: the forwarding guest
        // sends its whole body before it reads the response, so an upstream that answered while
        // still reading could fill both directions' buffers and stall.)
        "/echo" => match req.into_body().collect().await {
            Ok(body) => Response::new(
                Full::new(body.to_bytes())
                    .map_err(|never| match never {})
                    .boxed(),
            ),
            Err(e) => Response::new(
                Full::new(Bytes::from(e.to_string()))
                    .map_err(|never| match never {})
                    .boxed(),
            ),
        },
        // What the upstream received: its Host header and the repeated x-rep values.
        "/headers" => {
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_string())
                .unwrap_or_default();
            let reps: Vec<&str> = req
                .headers()
                .get_all("x-rep")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            let te = req.headers().contains_key("te");
            let via = req
                .headers()
                .get("via")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let text = format!(
                "host={host} x-rep={} te={te} via={via} xff={xff}",
                reps.join(",")
            );
            Response::new(
                Full::new(Bytes::from(text))
                    .map_err(|never| match never {})
                    .boxed(),
            )
        }
        "/never" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Response::new(full("too late"))
        }
        "/stall" => {
            // The head and a first chunk, then nothing for a minute.
            let (tx, body) = pier_testkit::channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first chunk ")).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            Response::new(body.map_err(|never| match never {}).boxed())
        }
        // A redirect to the address in `x-to` (the upstream's client must not follow it).
        "/redirect" => {
            let to = req
                .headers()
                .get("x-to")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let mut response = Response::new(full("moved"));
            *response.status_mut() = http::StatusCode::FOUND;
            response
                .headers_mut()
                .insert("location", to.parse().unwrap());
            response
        }
        _ => Response::new(full("upstream hello")),
    }
}

impl Upstream {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::serve(listener, tls)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let h2_requests = Arc::new(AtomicUsize::new(0));
        let (count, h2) = (connections.clone(), h2_requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let (h2, tls) = (h2.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let h2 = h2.clone();
                        async move { Ok::<_, Infallible>(route(req, h2).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            connections,
            h2_requests,
        }
    }
}

/// Sends `method path` to pier's forwarding guest, aimed at `target` (`HOST:PORT`).
async fn forward(
    pier: &PierServer,
    target: &str,
    https: bool,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> pier_testkit::Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-forward-to", target);
    if https {
        req = req.header("x-forward-scheme", "https");
    }
    pier_testkit::send(
        &pier.addr,
        Proto::H1,
        req.body(Full::new(Bytes::from(body))).unwrap(),
    )
    .await
    .unwrap()
}

fn serve_forward(flags: &[&str]) -> PierServer {
    let app = guest("forward");
    let mut args = flags.to_vec();
    args.push(app.to_str().unwrap());
    PierServer::start(pier(), &args).unwrap()
}

const DENIED: &str = "error-code 15\n";

/// The forwarding guest answered 502 with `code`, well within 2 s of `began`.
fn assert_fails_in_time(answer: &pier_testkit::Answer, code: &str, began: Instant) {
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::BAD_GATEWAY, code)
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "took {:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn get_and_a_10_mb_post_stream_through_the_upstream() {
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let pier = serve_forward(&["--allow-outbound", &format!("http://{target}")]);
    let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::OK, "upstream hello")
    );

    let body: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let answer = forward(&pier, &target, false, "POST", "/echo", body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.body == body,
        "10 MB round trip differs ({} bytes back)",
        answer.body.len()
    );
}

#[tokio::test]
async fn headers_are_forwarded_repeated_and_host_comes_from_the_url() {
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let pier = serve_forward(&["--allow-outbound", &format!("http://{target}")]);
    let req = Request::builder()
        .uri("/headers")
        .header("x-forward-to", &target)
        .header("x-rep", "a")
        .header("x-rep", "b")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = pier_testkit::send(&pier.addr, Proto::H1, req)
        .await
        .unwrap();
    // The client's own Host (localhost) is not forwarded; the URL's authority is, with its
    // non-default port; `te` is a forbidden header for guests.
    assert_eq!(
        answer.text(),
        format!("host={target} x-rep=a,b te=false via= xff=")
    );
}

#[tokio::test]
async fn host_leaves_out_the_default_port() {
    // Port 80 needs root (or CAP_NET_BIND_SERVICE); without it this test cannot run and says
    // so. 127.0.0.2 keeps clear of anything on 127.0.0.1:80.
    let listener = match tokio::net::TcpListener::bind("127.0.0.2:80").await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("SKIPPED: no permission to listen on 127.0.0.2:80 ({e})");
            return;
        }
        Err(e) => panic!("cannot listen on 127.0.0.2:80: {e}"),
    };
    let _upstream = Upstream::serve(listener, None);
    let pier = serve_forward(&["--allow-outbound", "http://127.0.0.2:80"]);
    // With the port spelled out or left implicit, Host is the bare name (wasmtime#8430).
    for target in ["127.0.0.2:80", "127.0.0.2"] {
        let answer = forward(&pier, target, false, "GET", "/headers", vec![]).await;
        assert_eq!(
            answer.text(),
            "host=127.0.0.2 x-rep= te=false via= xff=",
            "target {target}"
        );
    }
}

#[tokio::test]
async fn connections_to_an_upstream_are_reused() {
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let pier = serve_forward(&["--allow-outbound", &format!("http://{target}")]);
    for _ in 0..100 {
        let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let opened = upstream.connections.load(Ordering::Relaxed);
    assert!(
        opened <= 5,
        "100 sequential requests opened {opened} connections"
    );
}

struct TestPki {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TestPki {
        ca_pem: ca.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}

#[tokio::test]
async fn http2_over_tls_with_a_private_ca() {
    let pki = test_pki();
    let upstream = Upstream::start(Some(pki.acceptor.clone())).await;
    let target = format!("localhost:{}", upstream.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let allow = format!("https://{target}");
    // One serving thread: each keeps a pool of its own, and these requests' new connections
    // would be spread over them.
    let pier = serve_forward(&[
        "--allow-outbound",
        &allow,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    for _ in 0..3 {
        let answer = forward(&pier, &target, true, "GET", "/hello", vec![]).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "upstream hello")
        );
    }
    assert_eq!(
        upstream.h2_requests.load(Ordering::Relaxed),
        3,
        "ALPN chose HTTP/2"
    );
    assert_eq!(
        upstream.connections.load(Ordering::Relaxed),
        1,
        "one multiplexed connection"
    );

    // Without the CA the certificate is not trusted: TLS-certificate-error (13).
    let untrusting = serve_forward(&["--allow-outbound", &allow]);
    let answer = forward(&untrusting, &target, true, "GET", "/hello", vec![]).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::BAD_GATEWAY, "error-code 13\n")
    );
}

#[tokio::test]
async fn timeouts_map_to_their_error_codes_in_time() {
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let pier = serve_forward(&[
        "--allow-outbound",
        &format!("http://{target}"),
        "--outbound-first-byte-timeout",
        "300ms",
        "--outbound-between-bytes-timeout",
        "300ms",
    ]);
    // An upstream that never answers: connection-read-timeout (9), counted from the connection
    // (the default 10 s connect cap must not be added to it).
    let began = Instant::now();
    let answer = forward(&pier, &target, false, "GET", "/never", vec![]).await;
    assert_fails_in_time(&answer, "error-code 09\n", began);

    // A body that stalls mid-way: the response is aborted, never passed off as complete.
    let began = Instant::now();
    let req = Request::builder()
        .uri("/stall")
        .header("x-forward-to", &target)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let mut client = pier_testkit::Client::connect(&pier.addr, Proto::H1)
            .await
            .unwrap();
        let response = client.send(req).await?;
        response
            .into_body()
            .collect()
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .expect("never hangs");
    assert!(
        result.is_err(),
        "a stalled upstream body must fail the response"
    );
    assert!(began.elapsed() < Duration::from_secs(2));

    // A TLS server that accepts TCP but never finishes the handshake: connection-timeout (8).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let target = format!("localhost:{}", silent_addr.port());
    let pier = serve_forward(&[
        "--allow-outbound",
        &format!("https://{target}"),
        "--outbound-connect-timeout",
        "300ms",
    ]);
    let began = Instant::now();
    let answer = forward(&pier, &target, true, "GET", "/", vec![]).await;
    assert_fails_in_time(&answer, "error-code 08\n", began);
}

#[tokio::test]
async fn denied_hosts_get_http_request_denied_and_a_log_line() {
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    // Nothing granted.
    let pier = serve_forward(&[]);
    let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::BAD_GATEWAY, DENIED)
    );
    assert!(
        pier.wait_for_log(
            &format!("grant it with --allow-outbound http://{target}"),
            Duration::from_secs(5)
        ),
        "{}",
        pier.log()
    );
    assert_eq!(
        upstream.connections.load(Ordering::Relaxed),
        0,
        "no connection was even attempted"
    );
    // A guest repeating the denied request does not flood the log: the denial is said once a
    // minute.
    for _ in 0..20 {
        let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
        assert_eq!(answer.text(), DENIED);
    }
    let said = pier.log().matches("grant it with --allow-outbound").count();
    assert_eq!(said, 1, "{}", pier.log());
}

#[tokio::test]
async fn a_name_resolving_to_loopback_needs_loopback_granted() {
    let upstream = Upstream::start(None).await;
    let port = upstream.addr.port();
    let by_name = format!("localhost:{port}");
    // A wildcard host matches the name `localhost`, but the address it resolves to is loopback.
    let pier = serve_forward(&["--allow-outbound", &format!("http://*:{port}")]);
    let answer = forward(&pier, &by_name, false, "GET", "/hello", vec![]).await;
    assert_eq!(answer.text(), DENIED);
    assert!(
        pier.wait_for_log(
            "a loopback/private/link-local address",
            Duration::from_secs(5)
        ),
        "{}",
        pier.log()
    );
    let answer = forward(
        &pier,
        &upstream.addr.to_string(),
        false,
        "GET",
        "/hello",
        vec![],
    )
    .await;
    assert_eq!(
        answer.text(),
        DENIED,
        "an IP literal is checked as an address too"
    );
    // Loopback spelled as a decimal, hex, octal or short IPv4 number (which the resolver turns
    // into 127.0.0.1), as an IPv4-mapped IPv6 address, or as 0.0.0.0: all refused the same way.
    for spelled in [
        "2130706433",
        "0x7f000001",
        "017700000001",
        "127.1",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ] {
        let target = format!("{spelled}:{port}");
        let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
        assert_eq!(answer.text(), DENIED, "{target}");
    }

    // Granting the loopback address (or the name localhost) lets it through.
    let pier = serve_forward(&[
        "--allow-outbound",
        &format!("http://*:{port}"),
        "--allow-outbound",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let answer = forward(&pier, &by_name, false, "GET", "/hello", vec![]).await;
    assert_eq!(answer.text(), "upstream hello");
    let pier = serve_forward(&["--allow-outbound", &format!("http://localhost:{port}")]);
    let answer = forward(&pier, &by_name, false, "GET", "/hello", vec![]).await;
    assert_eq!(answer.text(), "upstream hello");
}

#[tokio::test]
async fn outbound_metrics_show_reuse() {
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    // One serving thread: each keeps a pool of its own.
    let pier = serve_forward(&[
        "--allow-outbound",
        &format!("http://{target}"),
        "--admin-addr",
        "127.0.0.1:0",
        "--threads",
        "1",
    ]);
    for _ in 0..10 {
        forward(&pier, &target, false, "GET", "/hello", vec![]).await;
    }
    let metrics = pier_testkit::get(pier.admin_addr.as_ref().unwrap(), Proto::H1, "/metrics")
        .await
        .unwrap()
        .text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "pier_outbound_requests_total{result=\"2xx\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "pier_outbound_connections_total{scheme=\"http\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_componentize_py_guest_fetches_through_the_pool() {
    let Some(app) = pier_testkit::toolchain_guest("python-fetch.wasm") else {
        return;
    };
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let allow = format!("http://{target}");
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-cache");
    let pier = PierServer::start_with_env(
        pier(),
        // One serving thread: each keeps a pool of its own.
        &[
            "--allow-outbound",
            &allow,
            "--threads",
            "1",
            app.to_str().unwrap(),
        ],
        &[("PIER_CACHE_DIR", cache.to_str().unwrap())],
    )
    .unwrap();
    for _ in 0..3 {
        let req = Request::builder()
            .uri("/")
            .header("x-fetch-url", format!("http://{target}/hello"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = pier_testkit::send(&pier.addr, Proto::H1, req)
            .await
            .unwrap();
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "fetched: upstream hello")
        );
    }
    assert_eq!(upstream.connections.load(Ordering::Relaxed), 1);
    let req = Request::builder()
        .uri("/")
        .header("x-fetch-url", "http://example.com/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = pier_testkit::send(&pier.addr, Proto::H1, req)
        .await
        .unwrap();
    assert!(
        answer.text().contains("HttpRequestDenied"),
        "{}",
        answer.text()
    );
}

/// `pier serve --upstream URL`: the reverse-proxy handler.
fn serve_upstream(flags: &[&str]) -> PierServer {
    PierServer::start(pier(), flags).unwrap()
}

#[tokio::test]
async fn the_upstream_handler_proxies_with_forwarding_headers() {
    let upstream = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let origin = format!("http://{target}");
    let filter = guest("filter-headers");
    let pier = serve_upstream(&["--upstream", &origin, "--filter", filter.to_str().unwrap()]);
    for proto in pier_testkit::PROTOS {
        let answer = pier_testkit::get(&pier.addr, proto, "/hello")
            .await
            .unwrap();
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "upstream hello"),
            "{proto:?}"
        );
        assert_eq!(answer.headers["via"], "1.1 pier");
        assert_eq!(
            answer.headers["x-filter-response"], "1",
            "filters apply to the upstream handler too"
        );

        let req = Request::builder()
            .uri("/headers")
            .header("x-rep", "a")
            .header("x-rep", "b")
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = pier_testkit::send(&pier.addr, proto, req).await.unwrap();
        assert_eq!(
            answer.text(),
            format!("host={target} x-rep=a,b te=false via=1.1 pier xff=127.0.0.1"),
            "{proto:?}"
        );

        let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 241) as u8).collect();
        let answer = pier_testkit::request(&pier.addr, proto, "POST", "/echo", &body)
            .await
            .unwrap();
        assert!(answer.body == body, "{proto:?}: 1 MB streamed through");
    }
    let opened = upstream.connections.load(Ordering::Relaxed);
    assert!(opened <= 3, "pooled: {opened} connections");
}

#[tokio::test]
async fn the_upstream_handler_answers_502_and_504() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let pier = serve_upstream(&["--upstream", &dead]);
    let answer = pier_testkit::get(&pier.addr, Proto::H1, "/").await.unwrap();
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers["server"], "pier");

    let upstream = Upstream::start(None).await;
    let origin = format!("http://{}", upstream.addr);
    let pier = serve_upstream(&[
        "--upstream",
        &origin,
        "--outbound-first-byte-timeout",
        "300ms",
    ]);
    let began = Instant::now();
    let answer = pier_testkit::get(&pier.addr, Proto::H1, "/never")
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(began.elapsed() < Duration::from_secs(2));
}

/// A name that does not resolve (`.invalid` never does, RFC 6761) is DNS-error (1) to a guest
/// and 502 from the upstream handler, at once; a resolver that does not answer at all would be
/// DNS-timeout (0) to the guest and 504 at the connect timeout. pier keeps serving.
#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_dns_error() {
    let pier = serve_forward(&[
        "--allow-outbound",
        "http://no-such-host.invalid",
        "--outbound-connect-timeout",
        "3s",
    ]);
    let began = Instant::now();
    let answer = forward(&pier, "no-such-host.invalid", false, "GET", "/", vec![]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        matches!(
            answer.text().as_str(),
            "error-code 01\n" | "error-code 00\n"
        ),
        "{}",
        answer.text()
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );

    let pier = serve_upstream(&[
        "--upstream",
        "http://no-such-host.invalid",
        "--outbound-connect-timeout",
        "3s",
    ]);
    let answer = pier_testkit::get(&pier.addr, Proto::H1, "/").await.unwrap();
    assert!(
        matches!(
            answer.status,
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
        ),
        "{}",
        answer.status
    );
    assert!(
        // DnsError, or DnsTimeout where the resolver does not answer at all.
        pier.wait_for_log("Dns", Duration::from_secs(5)),
        "{}",
        pier.log()
    );
}

/// A redirect is the guest's to follow or not: pier's client hands the 302 back as it came and
/// never goes to the `Location` itself (which could be an address the guest may not reach).
#[tokio::test]
async fn redirects_are_not_followed_by_the_client() {
    let upstream = Upstream::start(None).await;
    let secret = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let pier = serve_forward(&["--allow-outbound", &format!("http://{target}")]);
    let req = Request::get("/redirect")
        .header("x-forward-to", &target)
        .header("x-to", format!("http://{}/secret", secret.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = pier_testkit::send(&pier.addr, Proto::H1, req)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::FOUND, "{}", answer.text());
    assert_eq!(answer.text(), "moved");
    assert_eq!(
        secret.connections.load(Ordering::Relaxed),
        0,
        "the redirect was followed"
    );
}

/// `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` in pier's environment are ignored: outgoing requests
/// go where their URL says, under the outbound policy, never through a proxy nobody granted.
#[tokio::test]
async fn proxy_environment_variables_are_ignored() {
    let upstream = Upstream::start(None).await;
    let proxy = Upstream::start(None).await;
    let target = upstream.addr.to_string();
    let proxy_url = format!("http://{}", proxy.addr);
    let app = guest("forward");
    let allow = format!("http://{target}");
    let pier = PierServer::start_with_env(
        pier(),
        &["--allow-outbound", &allow, app.to_str().unwrap()],
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("ALL_PROXY", &proxy_url),
        ],
    )
    .unwrap();
    let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
    assert_eq!(answer.text(), "upstream hello");
    assert_eq!(upstream.connections.load(Ordering::Relaxed), 1);
    assert_eq!(
        proxy.connections.load(Ordering::Relaxed),
        0,
        "went through the proxy"
    );
}

/// DNS rebinding: a granted name whose answer changes from an address a pattern names
/// (127.0.0.2) to one nothing grants (127.0.0.1, where another server listens on the same port)
/// is refused the moment it resolves there. pier checks the address it is about to connect to,
/// at every new connection, so the answer used is the answer checked. (`/etc/hosts` is a file
/// bound over it in pier's own mount namespace, rewritten between the requests.)
#[tokio::test]
async fn a_name_rebound_to_a_denied_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.2 rebind.test\n").unwrap();
    let Some(wrapper) =
        pier_testkit::namespaced_pier(dir.path(), "mount --bind \"$PIER_HOSTS\" /etc/hosts")
    else {
        return;
    };
    // The granted upstream on 127.0.0.2, the one it must not reach on 127.0.0.1, one port.
    let (upstream, secret) = loop {
        let granted = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = granted.local_addr().unwrap().port();
        if let Ok(other) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            break (Upstream::serve(granted, None), Upstream::serve(other, None));
        }
    };
    let port = upstream.addr.port();
    let target = format!("rebind.test:{port}");
    let app = guest("forward");
    let pier = PierServer::start_with_env(
        &wrapper,
        &[
            "--allow-outbound",
            &format!("http://rebind.test:{port}"),
            "--allow-outbound",
            &format!("http://127.0.0.2:{port}"),
            // Pooled connections go at once: every request resolves the name again.
            "--outbound-idle-timeout",
            "100ms",
            app.to_str().unwrap(),
        ],
        &[
            ("PIER", pier().to_str().unwrap()),
            ("PIER_HOSTS", hosts.to_str().unwrap()),
        ],
    )
    .unwrap();
    let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
    assert_eq!(answer.text(), "upstream hello", "the granted address");
    // Rebound, in place (the bound file keeps its inode).
    std::fs::write(&hosts, "127.0.0.1 rebind.test\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        let answer = forward(&pier, &target, false, "GET", "/hello", vec![]).await;
        assert_eq!(answer.text(), DENIED);
    }
    assert_eq!(
        secret.connections.load(Ordering::Relaxed),
        0,
        "the rebound address was reached"
    );
    assert!(
        pier.wait_for_log("resolves to 127.0.0.1", Duration::from_secs(5)),
        "{}",
        pier.log()
    );
}

/// An upstream that resets the connection mid-body (a 1,000-byte body announced, 100 sent,
/// then RST): the client's response is cut, never passed off as complete, through the upstream
/// handler and through a guest's outgoing request alike; the access log says so; pier goes on
/// serving.
#[tokio::test]
async fn an_upstream_reset_mid_body_is_never_a_complete_response() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                    .await;
                let _ = stream.write_all(&[b'x'; 100]).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // A reset, not a close.
                let _ = stream.set_zero_linger();
            });
        }
    });
    let origin = format!("http://{addr}");
    let proxy = serve_upstream(&["--upstream", &origin]);
    let forwarder = serve_forward(&["--allow-outbound", &origin]);
    for (pier, forwarded) in [(&proxy, false), (&forwarder, true)] {
        let mut req = Request::get("/cut");
        if forwarded {
            req = req.header("x-forward-to", addr.to_string());
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let mut client = pier_testkit::Client::connect(&pier.addr, Proto::H1)
            .await
            .unwrap();
        let whole = match client.send(req).await {
            Ok(response) => match response.into_body().collect().await {
                Ok(body) => Some(body.to_bytes().len()),
                Err(_) => None,
            },
            Err(_) => None,
        };
        assert_eq!(
            whole, None,
            "forwarded {forwarded}: a cut body passed off as whole"
        );
        assert!(
            pier.wait_for_log("complete=false", Duration::from_secs(5)),
            "{}",
            pier.log()
        );
    }
    // Still serving: the forwarding guest answers (a 502 without a target to forward to).
    let answer = pier_testkit::get(&forwarder.addr, Proto::H1, "/").await;
    assert!(answer.is_ok(), "pier still serves");
}
