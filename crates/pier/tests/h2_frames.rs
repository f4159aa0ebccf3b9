//! HTTP/2 as RFC 9113 says, checked with frames written by hand (no HTTP/2 library between the
//! test and pier): the connection preface, stream states, header blocks, content-length,
//! SETTINGS, PING, WINDOW_UPDATE, frame sizes and oversized header sections. Every case runs on
//! h2c (prior knowledge, sharing the port with HTTP/1.1) and on TLS with ALPN h2.

use std::sync::Arc;
use std::time::Duration;

use pier_testkit::{PierServer, guest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const CANCEL: u32 = 0x8;

/// One frame: a 9-byte header and its payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1).
fn hpack_int(first: u8, n: u32, mut value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut out = vec![first | max as u8];
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
    out
}

/// A header block of literals without indexing (new names, no Huffman coding).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0);
        out.extend(hpack_int(0, 7, name.len()));
        out.extend_from_slice(name.as_bytes());
        out.extend(hpack_int(0, 7, value.len()));
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The pseudo-headers of `method path`.
fn request(method: &'static str, path: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
    ]
}

fn headers(stream: u32, flags: u8, list: &[(&str, &str)]) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, stream, &hpack(list))
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// How a case ended, as the server said it.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// RST_STREAM on this stream with this code.
    Reset(u32, u32),
    /// GOAWAY with this code.
    GoAway(u32),
    /// The connection closed without either.
    Closed,
    /// Nothing within the wait.
    Silent,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
}

/// Where to reach pier: h2c on its port, or TLS with ALPN h2.
#[derive(Clone, Copy, Debug)]
enum Transport {
    H2c,
    Tls,
}

struct Server {
    pier: PierServer,
    cert: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn start(transport: Transport, app: &str, flags: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let app = guest(app);
    let mut args: Vec<&str> = flags.to_vec();
    if let Transport::Tls = transport {
        args.extend([
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ]);
    }
    args.push(app.to_str().unwrap());
    let pier = PierServer::start(pier(), &args).unwrap();
    Server {
        pier,
        cert: cert.cert.der().to_vec(),
        _dir: dir,
    }
}

impl Server {
    /// A connection that has not sent anything yet.
    async fn connect(&self, transport: Transport) -> Conn {
        let tcp = tokio::net::TcpStream::connect(&self.pier.addr)
            .await
            .unwrap();
        let io: Box<dyn Io> = match transport {
            Transport::H2c => Box::new(tcp),
            Transport::Tls => {
                use rustls::pki_types::{CertificateDer, ServerName};
                let mut roots = rustls::RootCertStore::empty();
                roots.add(CertificateDer::from(self.cert.clone())).unwrap();
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"h2".to_vec()];
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                Box::new(tls)
            }
        };
        Conn { io }
    }

    /// A connection past the preface and the first SETTINGS exchange.
    async fn open(&self, transport: Transport) -> Conn {
        let mut conn = self.connect(transport).await;
        conn.send(PREFACE).await;
        conn.send(&settings(&[])).await;
        conn
    }
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) {
        // The server may have closed already (that is what some cases expect).
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    /// The next frame, `None` at the end of the connection or after `wait` of silence.
    async fn next(&mut self, wait: Duration) -> Result<Frame, Ended> {
        let mut head = [0u8; 9];
        match tokio::time::timeout(wait, self.io.read_exact(&mut head)).await {
            Err(_) => return Err(Ended::Silent),
            Ok(Err(_)) => return Err(Ended::Closed),
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if self.io.read_exact(&mut payload).await.is_err() {
            return Err(Ended::Closed);
        }
        let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        };
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            self.send(&frame_ack()).await;
        }
        Ok(frame)
    }

    /// Reads until the server resets a stream or goes away (or closes, or says nothing for two
    /// seconds), answering its SETTINGS; gives that and the frames before it.
    async fn until_error(&mut self) -> (Ended, Vec<Frame>) {
        let mut seen = Vec::new();
        loop {
            match self.next(Duration::from_secs(2)).await {
                Ok(f) if f.kind == RST_STREAM => return (Ended::Reset(f.stream, f.code()), seen),
                Ok(f) if f.kind == GOAWAY && f.code() != 0 => {
                    return (Ended::GoAway(f.code()), seen);
                }
                Ok(f) => seen.push(f),
                Err(ended) => return (ended, seen),
            }
        }
    }

    /// Reads frames until one of `kind` on `stream`.
    async fn expect(&mut self, kind: u8, stream: u32) -> Frame {
        loop {
            match self.next(Duration::from_secs(5)).await {
                Ok(f) if f.kind == kind && f.stream == stream => return f,
                Ok(_) => {}
                Err(ended) => panic!("no frame {kind} on stream {stream}: {ended:?}"),
            }
        }
    }
}

fn frame_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

const TRANSPORTS: [Transport; 2] = [Transport::H2c, Transport::Tls];

#[tokio::test]
async fn an_invalid_preface_gets_goaway_protocol_error() {
    for transport in TRANSPORTS {
        let server = start(transport, "hello", &[]);
        for bad in [
            &b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"[..],
            b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n",
            b"PRI /index.html HTTP/2.0\r\n\r\n",
        ] {
            let mut conn = server.connect(transport).await;
            conn.send(bad).await;
            let first = conn.next(Duration::from_secs(5)).await.unwrap();
            assert_eq!(
                (first.kind, first.payload.len()),
                (SETTINGS, 0),
                "{transport:?}"
            );
            let goaway = conn.next(Duration::from_secs(5)).await.unwrap();
            assert_eq!(
                (goaway.kind, goaway.code()),
                (GOAWAY, PROTOCOL_ERROR),
                "{transport:?} {bad:?}"
            );
            assert_eq!(
                conn.next(Duration::from_secs(5)).await.unwrap_err(),
                Ended::Closed
            );
        }
        // The port still serves.
        let mut conn = server.open(transport).await;
        conn.send(&headers(1, END_STREAM, &request("GET", "/")))
            .await;
        let response = conn.expect(HEADERS, 1).await;
        assert!(!response.payload.is_empty());
    }
}

/// Each case: what the client sends after the preface, and how the server must end it. Gives
/// a description of what went otherwise.
async fn check(
    server: &Server,
    transport: Transport,
    what: &str,
    frames: &[Vec<u8>],
    want: Ended,
) -> Option<String> {
    let mut conn = server.open(transport).await;
    for f in frames {
        conn.send(f).await;
    }
    let (ended, seen) = conn.until_error().await;
    // 5.4.1: an endpoint MAY treat a stream error as a connection error (with its code).
    let escalated = matches!((&ended, &want), (Ended::GoAway(a), Ended::Reset(_, b)) if a == b);
    (ended != want && !escalated).then(|| {
        format!(
            "{what} over {transport:?}: {ended:?}, not {want:?}; frames before: {:?}",
            seen.iter()
                .map(|f| (f.kind, f.flags, f.stream))
                .collect::<Vec<_>>()
        )
    })
}

#[tokio::test]
async fn stream_and_connection_errors_follow_rfc_9113() {
    let post = request("POST", "/");
    let mut with_length = post.clone();
    with_length.push(("content-length", "10"));
    let mut short_length = post.clone();
    short_length.push(("content-length", "2"));
    let mut upper = request("GET", "/");
    upper.push(("X-Upper", "1"));
    let mut connection = request("GET", "/");
    connection.push(("connection", "keep-alive"));
    let mut te = request("GET", "/");
    te.push(("te", "gzip"));
    let mut late_pseudo = vec![("x-first", "1")];
    late_pseudo.extend(request("GET", "/"));
    let no_path = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
    ];
    let mut unknown_pseudo = request("GET", "/");
    unknown_pseudo.push((":nope", "1"));
    let big_frame = frame(DATA, 0, 1, &vec![0u8; 16_385]);

    for transport in TRANSPORTS {
        let server = start(transport, "echo", &[]);
        let cases: Vec<(&str, Vec<Vec<u8>>, Ended)> = vec![
            (
                "a second HEADERS without END_STREAM (not trailers)",
                vec![headers(1, 0, &post), headers(1, 0, &[("x-more", "1")])],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "DATA short of content-length",
                vec![
                    headers(1, 0, &with_length),
                    frame(DATA, END_STREAM, 1, b"12345"),
                ],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "DATA past content-length",
                vec![
                    headers(1, 0, &short_length),
                    frame(DATA, END_STREAM, 1, b"12345"),
                ],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "DATA after the client's RST_STREAM",
                vec![
                    headers(1, 0, &post),
                    rst_stream(1, CANCEL),
                    frame(DATA, 0, 1, b"late"),
                ],
                // 5.1, closed: a stream error of type STREAM_CLOSED.
                Ended::Reset(1, STREAM_CLOSED),
            ),
            (
                "DATA after END_STREAM (half-closed, remote)",
                vec![
                    headers(1, 0, &post),
                    frame(DATA, END_STREAM, 1, b"done"),
                    frame(DATA, 0, 1, b"more"),
                ],
                Ended::Reset(1, STREAM_CLOSED),
            ),
            (
                "an upper-case header name",
                vec![headers(1, END_STREAM, &upper)],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "a connection-specific header",
                vec![headers(1, END_STREAM, &connection)],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "te other than trailers",
                vec![headers(1, END_STREAM, &te)],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "a pseudo-header after a regular one",
                vec![headers(1, END_STREAM, &late_pseudo)],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "no :path",
                vec![headers(1, END_STREAM, &no_path)],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "an unknown pseudo-header",
                vec![headers(1, END_STREAM, &unknown_pseudo)],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "DATA on stream 0",
                vec![frame(DATA, 0, 0, b"x")],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "HEADERS on an even (server) stream id",
                vec![headers(2, END_STREAM, &request("GET", "/"))],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "a stream id lower than one already used",
                vec![
                    headers(5, END_STREAM, &request("GET", "/")),
                    headers(3, END_STREAM, &request("GET", "/")),
                ],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "RST_STREAM on an idle stream",
                vec![rst_stream(7, CANCEL)],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "CONTINUATION without HEADERS",
                vec![frame(CONTINUATION, END_HEADERS, 1, &hpack(&[("x", "1")]))],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "another frame inside a header block",
                vec![
                    frame(HEADERS, 0, 1, &hpack(&request("GET", "/"))),
                    frame(PING, 0, 0, &[0; 8]),
                ],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "SETTINGS_ENABLE_PUSH of 2",
                vec![settings(&[(0x2, 2)])],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1",
                vec![settings(&[(0x4, 0x8000_0000)])],
                Ended::GoAway(FLOW_CONTROL_ERROR),
            ),
            (
                "SETTINGS_MAX_FRAME_SIZE under 16384",
                vec![settings(&[(0x5, 100)])],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "SETTINGS whose length is not a multiple of 6",
                vec![frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0])],
                Ended::GoAway(FRAME_SIZE_ERROR),
            ),
            (
                "a SETTINGS ACK with a payload",
                vec![frame(SETTINGS, ACK, 0, &[0, 1, 0, 0, 0, 1])],
                Ended::GoAway(FRAME_SIZE_ERROR),
            ),
            (
                "SETTINGS on a stream",
                vec![frame(SETTINGS, 0, 1, &[])],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "a PING of 7 bytes",
                vec![frame(PING, 0, 0, &[0; 7])],
                Ended::GoAway(FRAME_SIZE_ERROR),
            ),
            (
                "PING on a stream",
                vec![frame(PING, 0, 1, &[0; 8])],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "WINDOW_UPDATE of 0 on the connection",
                vec![window_update(0, 0)],
                Ended::GoAway(PROTOCOL_ERROR),
            ),
            (
                "WINDOW_UPDATE of 0 on a stream",
                vec![headers(1, 0, &post), window_update(1, 0)],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
            (
                "a connection window past 2^31-1",
                vec![window_update(0, 0x7fff_ffff)],
                Ended::GoAway(FLOW_CONTROL_ERROR),
            ),
            (
                "a frame over SETTINGS_MAX_FRAME_SIZE",
                vec![headers(1, 0, &post), big_frame.clone()],
                Ended::GoAway(FRAME_SIZE_ERROR),
            ),
            (
                "a PRIORITY of the wrong length",
                vec![frame(PRIORITY, 0, 1, &[0; 4])],
                Ended::Reset(1, FRAME_SIZE_ERROR),
            ),
            (
                "a stream that depends on itself",
                vec![frame(PRIORITY, 0, 1, &[0, 0, 0, 1, 16])],
                Ended::Reset(1, PROTOCOL_ERROR),
            ),
        ];
        let mut wrong = Vec::new();
        for (what, frames, want) in cases {
            wrong.extend(check(&server, transport, what, &frames, want).await);
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

/// A stream whose response the handler has already sent, and whose request is still open, gets
/// PROTOCOL_ERROR for a HEADERS frame that is not trailers (or the server reset it already,
/// when it stopped reading the request, after which it ignores the stream's frames).
#[tokio::test]
async fn a_second_headers_after_the_response_is_a_stream_error() {
    for transport in TRANSPORTS {
        let server = start(transport, "hello", &[]);
        let mut conn = server.open(transport).await;
        conn.send(&headers(1, 0, &request("POST", "/"))).await;
        let response = conn.expect(HEADERS, 1).await;
        assert!(!response.payload.is_empty());
        conn.send(&headers(1, 0, &[("x-more", "1")])).await;
        let (ended, _) = conn.until_error().await;
        assert!(
            matches!(ended, Ended::Reset(1, PROTOCOL_ERROR | 0 | CANCEL)),
            "{transport:?}: {ended:?}"
        );
        // The connection goes on.
        conn.send(&headers(3, END_STREAM, &request("GET", "/")))
            .await;
        conn.expect(HEADERS, 3).await;
    }
}

#[tokio::test]
async fn ping_is_answered_with_its_payload() {
    for transport in TRANSPORTS {
        let server = start(transport, "hello", &[]);
        let mut conn = server.open(transport).await;
        conn.send(&frame(PING, 0, 0, b"12345678")).await;
        loop {
            let f = conn.next(Duration::from_secs(5)).await.unwrap();
            if f.kind == PING {
                assert_eq!((f.flags, &f.payload[..]), (ACK, &b"12345678"[..]));
                break;
            }
        }
    }
}

/// An oversized header section is a 431 from pier (body, `server: pier`, logged), as on
/// HTTP/1.1, whether pier's limit or the HTTP/2 layer's catches it.
#[tokio::test]
async fn an_oversized_header_section_is_431() {
    for transport in TRANSPORTS {
        let server = start(transport, "hello", &[]);
        for size in [70_000, 200_000] {
            let mut conn = server.open(transport).await;
            let value = "v".repeat(size);
            let mut list = request("GET", "/");
            list.push(("x-big", &value));
            let block = hpack(&list);
            // HEADERS then CONTINUATIONs of at most 16 KiB.
            let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let last = i + 1 == chunks.len();
                let flags = if last { END_HEADERS } else { 0 };
                let kind = if i == 0 { HEADERS } else { CONTINUATION };
                let flags = if i == 0 { flags | END_STREAM } else { flags };
                conn.send(&frame(kind, flags, 1, chunk)).await;
            }
            // The head is pier's (its status is HPACK-coded); the body says it is pier's 431.
            let mut frames = Vec::new();
            loop {
                match conn.next(Duration::from_secs(5)).await {
                    Ok(f) if f.kind == HEADERS => break,
                    Ok(f) => frames.push((f.kind, f.stream, f.payload)),
                    Err(e) => panic!("{transport:?} {size}: {e:?} after {frames:?}"),
                }
            }
            let body = conn.expect(DATA, 1).await;
            let text = String::from_utf8_lossy(&body.payload).into_owned();
            assert!(
                text.starts_with("request header section too large"),
                "{transport:?} {size}: {text}"
            );
        }
        assert!(
            server
                .pier
                .wait_for_log("status=431", Duration::from_secs(5)),
            "{}",
            server.pier.log()
        );
    }
}

const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A GET of `/` on `stream` over an open connection: whether it is answered 200 (HPACK's
/// static table codes 200 as 0x88).
async fn answered(conn: &mut Conn, stream: u32) -> bool {
    conn.send(&headers(
        stream,
        END_HEADERS | END_STREAM,
        &request("GET", "/"),
    ))
    .await;
    let head = conn.expect(HEADERS, stream).await;
    head.payload.first() == Some(&0x88)
}

/// pier's resident memory now.
fn rss(server: &Server) -> u64 {
    pier_testkit::rss_bytes(server.pier.pid()).unwrap()
}

/// What every flood must leave: another client served, pier's memory grown by less than 64 MiB
/// since `before`.
async fn others_served_with_memory_bounded(server: &Server, before: u64) {
    let mut other = server.open(Transport::H2c).await;
    assert!(answered(&mut other, 1).await, "another client is served");
    let grown = rss(server).saturating_sub(before);
    assert!(grown < 64 << 20, "grew {grown} bytes");
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client opening streams and cancelling them at once,
/// thousands in a burst, is told to calm down (GOAWAY ENHANCE_YOUR_CALM) or closed; its
/// streams do not pile up (memory stays bounded), and other clients are served throughout.
#[tokio::test]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let server = start(Transport::H2c, "hello", &[]);
    let before = rss(&server);
    let mut abuser = server.open(Transport::H2c).await;
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let stream = 2 * i + 1;
        burst.extend(headers(
            stream,
            END_HEADERS | END_STREAM,
            &request("GET", "/"),
        ));
        burst.extend(rst_stream(stream, CANCEL));
    }
    abuser.send(&burst).await;
    let (ended, _) = abuser.until_error().await;
    assert_eq!(ended, Ended::GoAway(ENHANCE_YOUR_CALM));
    others_served_with_memory_bounded(&server, before).await;
}

/// CONTINUATION flood (CVE-2024-27316): a header block that never ends, in empty or tiny
/// CONTINUATION frames, is cut off (the connection goes away) long before it is all sent, with
/// memory bounded, and other clients are served.
#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let server = start(Transport::H2c, "hello", &[]);
    let before = rss(&server);
    let mut abuser = server.open(Transport::H2c).await;
    let head = hpack(&request("GET", "/"));
    abuser.send(&frame(HEADERS, END_STREAM, 1, &head)).await;
    // 1 M frames: empty ones (no size limit grows), then one byte of a header each.
    let empty = frame(CONTINUATION, 0, 1, &[]);
    let tiny = frame(CONTINUATION, 0, 1, &[0x40]);
    let mut cut = false;
    for round in 0..200 {
        let one = if round % 2 == 0 { &empty } else { &tiny };
        let chunk: Vec<u8> = one.repeat(5000);
        let sent = tokio::time::timeout(Duration::from_secs(2), abuser.io.write_all(&chunk)).await;
        if !matches!(sent, Ok(Ok(()))) {
            cut = true;
            break;
        }
    }
    let (ended, _) = abuser.until_error().await;
    assert!(
        matches!(ended, Ended::GoAway(ENHANCE_YOUR_CALM)) || (cut && ended == Ended::Closed),
        "{ended:?}"
    );
    others_served_with_memory_bounded(&server, before).await;
}

/// PING and SETTINGS floods from a client that never reads what pier answers: pier's answers
/// do not pile up (the HTTP/2 layer keeps one PING answer pending and stops reading while it
/// cannot write), memory stays bounded, other clients are served, and the flooding connection
/// is closed once pier's writes have waited on it for `--send-timeout`.
#[tokio::test]
async fn ping_and_settings_floods_from_a_client_that_never_reads_stay_bounded() {
    let server = start(Transport::H2c, "hello", &["--send-timeout", "2s"]);
    let before = rss(&server);
    for flood in [frame(PING, 0, 0, &[7; 8]), settings(&[(0x4, 65_535)])] {
        let mut abuser = server.open(Transport::H2c).await;
        let chunk = flood.repeat(10_000);
        // Up to 2 M frames, or until pier stops reading (its answers unread fill the socket).
        let mut stalled = false;
        for _ in 0..200 {
            let sent =
                tokio::time::timeout(Duration::from_secs(1), abuser.io.write_all(&chunk)).await;
            if !matches!(sent, Ok(Ok(()))) {
                stalled = true;
                break;
            }
        }
        assert!(stalled, "pier read 2 M frames it could not answer");
        let mut other = server.open(Transport::H2c).await;
        assert!(answered(&mut other, 1).await, "another client is served");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), abuser.io.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection is closed");
    }
    assert!(
        server
            .pier
            .wait_for_log("the client has not read for 2s", Duration::from_secs(5)),
        "{}",
        server.pier.log()
    );
    let grown = rss(&server).saturating_sub(before);
    assert!(grown < 64 << 20, "grew {grown} bytes");
}

/// A header block split into a HEADERS frame and CONTINUATION frames of at most 16 KiB.
fn header_block(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    let mut chunks = block.chunks(16_384).peekable();
    let mut out = Vec::new();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let end = if last { END_HEADERS } else { 0 };
        if first {
            out.extend(frame(HEADERS, flags | end, stream, chunk));
            first = false;
        } else {
            out.extend(frame(CONTINUATION, end, stream, chunk));
        }
    }
    out
}

/// An HPACK bomb: one 4 KB field stored in the dynamic table, then referred to by a byte each,
/// 12,000 times a block (48 MB decoded from 12 KB on the wire), on 20 streams. pier answers
/// none of them 200: each is refused (431 or reset) or the connection goes away, memory stays
/// bounded, and other clients are served.
#[tokio::test]
async fn an_hpack_bomb_is_refused_with_memory_bounded() {
    let server = start(Transport::H2c, "hello", &[]);
    let before = rss(&server);
    let mut abuser = server.open(Transport::H2c).await;
    let streams: Vec<u32> = (0..20).map(|i| 2 * i + 1).collect();
    for &stream in &streams {
        let mut block = hpack(&request("GET", "/"));
        if stream == 1 {
            // Literal with incremental indexing, new name: it becomes dynamic index 62.
            block.push(0x40);
            block.extend(hpack_int(0, 7, 6));
            block.extend_from_slice(b"x-bomb");
            block.extend(hpack_int(0, 7, 4000));
            block.extend(std::iter::repeat_n(b'a', 4000));
        }
        block.extend(std::iter::repeat_n(0x80 | 62, 12_000));
        abuser.send(&header_block(stream, END_STREAM, &block)).await;
    }
    let mut concluded = std::collections::BTreeMap::new();
    let ended = loop {
        match abuser.next(Duration::from_secs(5)).await {
            Ok(f) if f.kind == HEADERS => {
                assert_ne!(
                    f.payload.first(),
                    Some(&0x88),
                    "stream {} answered 200",
                    f.stream
                );
                concluded.insert(f.stream, "refused");
            }
            Ok(f) if f.kind == RST_STREAM => {
                concluded.entry(f.stream).or_insert("reset");
            }
            Ok(f) if f.kind == GOAWAY => break Ended::GoAway(f.code()),
            Ok(_) => {}
            Err(ended) => break ended,
        }
        if concluded.len() == streams.len() {
            break Ended::Silent;
        }
    };
    eprintln!("hpack bomb: {concluded:?}, then {ended:?}");
    assert!(
        concluded.len() == streams.len() || matches!(ended, Ended::GoAway(_) | Ended::Closed),
        "{concluded:?} {ended:?}"
    );
    others_served_with_memory_bounded(&server, before).await;
}

/// A client that opens streams with a flow-control window of 0, so that no DATA of their
/// responses can ever be sent (the socket stays writable: this is not a slow reader to TCP):
/// other clients are served meanwhile, nothing is sent past the window, and the connection is
/// closed once a response has waited on the window for `--send-timeout`.
#[tokio::test]
async fn a_client_whose_window_stays_closed_is_cut_off_after_the_send_timeout() {
    let server = start(Transport::H2c, "hello", &["--send-timeout", "2s"]);
    let before = rss(&server);
    let mut abuser = server.connect(Transport::H2c).await;
    abuser.send(PREFACE).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0.
    abuser.send(&settings(&[(0x4, 0)])).await;
    let streams: Vec<u32> = (0..50).map(|i| 2 * i + 1).collect();
    for &stream in &streams {
        abuser
            .send(&headers(stream, END_STREAM, &request("GET", "/")))
            .await;
    }
    let mut other = server.open(Transport::H2c).await;
    assert!(answered(&mut other, 1).await, "another client is served");
    let started = std::time::Instant::now();
    let mut heads = 0;
    let last = loop {
        match abuser.next(Duration::from_secs(10)).await {
            Ok(f) if f.kind == HEADERS => heads += 1,
            Ok(f) if f.kind == DATA => panic!("DATA sent past a zero window"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(last, Ended::Closed, "after {:?}", started.elapsed());
    assert!(heads <= streams.len());
    assert!(
        server
            .pier
            .wait_for_log("the client has not read for 2s", Duration::from_secs(5)),
        "{}",
        server.pier.log()
    );
    // The other client's connection, whose window is open, is not affected.
    assert!(
        answered(&mut other, 3).await,
        "the other client is still served"
    );
    let grown = rss(&server).saturating_sub(before);
    assert!(grown < 64 << 20, "grew {grown} bytes");
}

/// HTTP/2 slowloris: a client that sends a header block a byte at a time and never finishes it,
/// or sends only PINGs, opens no request: its connection is closed at `--idle-timeout` like any
/// connection with nothing in progress, however much it trickles.
#[tokio::test]
async fn a_trickling_http2_client_with_no_request_is_closed_at_the_idle_timeout() {
    let server = start(Transport::H2c, "hello", &["--idle-timeout", "2s"]);
    for trickle in ["header block", "pings"] {
        let mut abuser = server.open(Transport::H2c).await;
        // pier's SETTINGS, acknowledged now: no frame may come between a header block's frames.
        abuser.expect(SETTINGS, 0).await;
        if trickle == "header block" {
            // The pseudo-headers, then a field whose value is said to be 1 MB long, sent a
            // byte a frame.
            let mut head = hpack(&request("GET", "/"));
            head.extend([0x00, 0x01, b'x']);
            head.extend(hpack_int(0, 7, 1 << 20));
            abuser.send(&frame(HEADERS, END_STREAM, 1, &head)).await;
        }
        let started = std::time::Instant::now();
        let closed = loop {
            if started.elapsed() > Duration::from_secs(8) {
                break false;
            }
            let next = if trickle == "header block" {
                frame(CONTINUATION, 0, 1, b"a")
            } else {
                frame(PING, 0, 0, &[1; 8])
            };
            if abuser.io.write_all(&next).await.is_err() {
                break true;
            }
            // Drain what pier sends (PING answers, SETTINGS); a closed read is the end.
            match abuser.next(Duration::from_millis(300)).await {
                Err(Ended::Closed) => break true,
                Ok(f) if f.kind == GOAWAY => break true,
                _ => {}
            }
        };
        eprintln!("{trickle}: closed {closed} after {:?}", started.elapsed());
        assert!(closed, "{trickle}: still open after 8 s");
    }
}

/// A client that reads slowly but steadily over HTTP/2 (a window of 1 KiB, opened by 1 KiB every
/// 200 ms: a 16 KiB data frame of pier's waits three seconds for room) is reading, not stalled:
/// its response arrives whole past `--send-timeout`, which cuts only a client taking nothing.
#[tokio::test]
async fn a_slow_but_steady_http2_reader_is_not_cut_off() {
    let server = start(Transport::H2c, "echo", &["--send-timeout", "2s"]);
    let mut conn = server.connect(Transport::H2c).await;
    conn.send(PREFACE).await;
    conn.send(&settings(&[(0x4, 1024)])).await;
    let body = vec![b'x'; 20 << 10];
    let mut head = request("POST", "/");
    head.push(("content-length", "20480"));
    conn.send(&headers(1, 0, &head)).await;
    for (i, chunk) in body.chunks(16_384).enumerate() {
        let last = (i + 1) * 16_384 >= body.len();
        conn.send(&frame(DATA, if last { END_STREAM } else { 0 }, 1, chunk))
            .await;
    }
    let started = std::time::Instant::now();
    let mut got = 0usize;
    let ended = loop {
        match conn.next(Duration::from_millis(200)).await {
            Ok(f) if (f.kind == DATA || f.kind == HEADERS) && f.stream == 1 => {
                if f.kind == DATA {
                    got += f.payload.len();
                }
                if f.flags & END_STREAM != 0 {
                    break None;
                }
            }
            Ok(f) if f.kind == RST_STREAM || f.kind == GOAWAY => break Some(format!("{f:?}")),
            Ok(_) => {}
            // Nothing for 200 ms: room for 1 KiB more, on the stream and the connection.
            Err(Ended::Silent) => {
                conn.send(&window_update(1, 1024)).await;
                conn.send(&window_update(0, 1024)).await;
            }
            Err(e) => break Some(format!("{e:?}")),
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{got} bytes");
    };
    assert_eq!(
        ended,
        None,
        "cut after {got} bytes, {:?}",
        started.elapsed()
    );
    assert_eq!(got, body.len());
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "it was slow: {:?}",
        started.elapsed()
    );
}
