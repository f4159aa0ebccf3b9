//! Test support for pier: guests, a `pier` process harness, and a small HTTP client that speaks
//! HTTP/1.1 or HTTP/2 (prior knowledge) on purpose.

pub mod compose;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A WAT guest from `guests/wat/`, built into a component by this crate's build script.
pub fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("PIER_TEST_GUESTS")).join(format!("{name}.wasm"));
    assert!(path.exists(), "no guest {name} at {}", path.display());
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The WASI test suite (WebAssembly/wasi-testsuite's prebuilt tests, their specifications and
/// runner), used in place at `../shared/wasi-testsuite` beside the repository.
pub fn wasi_testsuite() -> PathBuf {
    let path = repo_root().join("../shared/wasi-testsuite");
    assert!(
        path.join("tests").is_dir(),
        "the WASI test suite is not at {}",
        path.display()
    );
    path
}

/// A WASI 0.3 test component of the suite, by name (`http-service-echo`).
pub fn wasip3_test(name: &str) -> PathBuf {
    wasi_testsuite()
        .join("tests/rust/testsuite/wasm32-wasip3")
        .join(format!("{name}.wasm"))
}

/// A guest built by `guests/build.sh` from a third-party toolchain (componentize-py,
/// componentize-js), under `guests/build/`. `None` when it has not been built, which fails the
/// test in CI (where `.ci/run` builds them) and skips it, loudly, elsewhere.
pub fn toolchain_guest(file: &str) -> Option<PathBuf> {
    toolchain_built(&format!("guests/build/{file}"))
}

/// A file `guests/build.sh` builds with a third-party toolchain, by its path in the repository
/// (`examples/app/build/api.wasm`); as [`toolchain_guest`].
pub fn toolchain_built(relative: &str) -> Option<PathBuf> {
    let path = repo_root().join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing: guests/build.sh must build it in CI",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not built (run guests/build.sh)",
        path.display()
    );
    None
}

/// Runs `pier ARGS` to completion (logging off, no stdin, a scratch compile cache) and asserts
/// it failed the way a user should see a start-up error: exit code 1 and exactly one line on
/// stderr, starting `pier: ` and containing every `needle`. Returns that line.
pub fn assert_one_line_error(pier: &Path, args: &[&str], needles: &[&str]) -> String {
    let out = Command::new(pier)
        .args(args)
        .env("PIER_LOG", "off")
        .env(
            "PIER_CACHE_DIR",
            std::env::temp_dir().join("pier-testkit-cache"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("pier runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line, got:\n{stderr}");
    assert!(lines[0].starts_with("pier: "), "{}", lines[0]);
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{args:?}: {needle:?} missing from {:?}",
            lines[0]
        );
    }
    lines[0].to_string()
}

/// A running `pier serve` child process.
pub struct PierServer {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` (or `https://`)
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The admin listener's `127.0.0.1:PORT`, when `--admin-addr` was given.
    pub admin_addr: Option<String>,
    log: Arc<Mutex<String>>,
}

impl PierServer {
    /// Starts `pier serve --addr 127.0.0.1:0 ARGS...` and waits for its "serving" line.
    pub fn start(pier: &Path, args: &[&str]) -> Result<PierServer> {
        Self::start_with_env(pier, args, &[])
    }

    /// As [`PierServer::start`], with extra environment variables for pier itself.
    pub fn start_with_env(pier: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<PierServer> {
        let mut cmd = Command::new(pier);
        cmd.arg("serve").arg("--addr").arg("127.0.0.1:0").args(args);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !env.iter().any(|(k, _)| *k == "PIER_CACHE_DIR") {
            cmd.arg("--no-cache");
        }
        let mut child = cmd.spawn().context("spawning pier")?;
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (admin_tx, admin_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let text = line.trim_end_matches('\n').to_string();
                    line.clear();
                    if text.starts_with("pier: admin on ") {
                        let _ = admin_tx.send(text["pier: admin on http://".len()..].to_string());
                    }
                    {
                        let mut log = log.lock().unwrap();
                        log.push_str(&text);
                        log.push('\n');
                    }
                    // The serving line is the first line pier writes (harnesses wait for it),
                    // with its start-up log in the same write: the start is over once what
                    // came with it is in the log. Anything before it fails the start.
                    if let Some(tx) = tx.take() {
                        match text.strip_prefix("pier: serving ") {
                            Some(url) => {
                                while !reader.buffer().is_empty()
                                    && reader.read_line(&mut line).is_ok_and(|n| n > 0)
                                {
                                    let mut log = log.lock().unwrap();
                                    if line.starts_with("pier: admin on ") {
                                        let addr = &line["pier: admin on http://".len()..];
                                        let _ = admin_tx.send(addr.trim_end().to_string());
                                    }
                                    log.push_str(&line);
                                    line.clear();
                                }
                                let _ = tx.send(Ok(url.to_string()));
                            }
                            None => {
                                let _ = tx.send(Err(text.clone()));
                            }
                        }
                    }
                }
            });
        }
        let mut server = PierServer {
            child: Some(child),
            url: String::new(),
            addr: String::new(),
            admin_addr: None,
            log,
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(url)) => {
                server.addr = url
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string();
                server.url = url;
                // The admin line, when there is one, comes right after the serving line.
                if args.contains(&"--admin-addr") {
                    server.admin_addr = admin_rx.recv_timeout(Duration::from_secs(10)).ok();
                }
                Ok(server)
            }
            Ok(Err(line)) => {
                // Let the rest of a failed start arrive, for the message.
                std::thread::sleep(Duration::from_millis(300));
                bail!(
                    "pier's first line was not its serving line but {line:?}; its log:\n{}",
                    server.log()
                )
            }
            Err(_) => {
                let status = server.child.as_mut().unwrap().try_wait()?;
                bail!(
                    "pier did not start ({status:?}); its log:\n{}",
                    server.log()
                )
            }
        }
    }

    /// Everything pier wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits (at most 30 s) for the exit status.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().unwrap();
        let sent = signal(child.id(), "TERM");
        // A pier that hangs on shutdown fails the test instead of hanging the suite.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("pier did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        sent.map(|()| status)
    }

    /// Waits for the process to exit on its own.
    pub fn wait(mut self) -> Result<ExitStatus> {
        Ok(self.child.take().unwrap().wait()?)
    }

    /// Waits for the process to exit on its own, its log still there to read.
    pub fn exited(&mut self) -> Result<ExitStatus> {
        Ok(self.child.as_mut().unwrap().wait()?)
    }
}

impl Drop for PierServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A wrapper to start in place of pier (with [`PierServer::start_with_env`], `PIER` set to
/// pier's path in its environment) that runs pier in a user and mount namespace of its own,
/// after `setup`: shell commands run as that namespace's root (mounts: a small tmpfs, a file
/// bound over `/etc/hosts`). `None`, said on stderr, where this machine allows no user
/// namespaces (`unshare -rm`).
pub fn namespaced_pier(dir: &Path, setup: &str) -> Option<PathBuf> {
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"])
        .output();
    if !probe.is_ok_and(|out| out.status.success()) {
        eprintln!("SKIPPED: this machine lets no test make a mount namespace (unshare -rm)");
        return None;
    }
    let script = dir.join("pier-namespaced.sh");
    let setup = setup.replace('\'', "'\\''");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec unshare -rm sh -c '{setup} && exec \"$PIER\" \"$@\"' sh \"$@\"\n"),
    )
    .ok()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(script)
}

/// Sends a signal (by name, e.g. `TERM`) to a process.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// The resident set size of a process, in bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// HTTP version a [`Client`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1
    H1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

/// Both protocols, for tests that must hold for each.
pub const PROTOS: [Proto; 2] = [Proto::H1, Proto::H2];

/// One client connection to `addr`.
pub enum Client<B> {
    /// HTTP/1.1 connection.
    H1(hyper::client::conn::http1::SendRequest<B>),
    /// HTTP/2 connection.
    H2(hyper::client::conn::http2::SendRequest<B>),
}

impl<B> Client<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Opens a connection speaking `proto`.
    pub async fn connect(addr: &str, proto: Proto) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let io = TokioIo::new(stream);
        Ok(match proto {
            Proto::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Client::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Client::H2(sender)
            }
        })
    }

    /// Sends one request; the URI should be a path. The host is `localhost`, or the request's
    /// Host header: the Host header on HTTP/1.1, `:authority` on HTTP/2.
    pub async fn send(&mut self, mut req: Request<B>) -> Result<Response<Incoming>> {
        Ok(match self {
            Client::H1(sender) => {
                if !req.headers().contains_key(http::header::HOST) {
                    req.headers_mut()
                        .insert(http::header::HOST, "localhost".parse().unwrap());
                }
                sender.ready().await?;
                sender.send_request(req).await?
            }
            Client::H2(sender) => {
                let host = match req.headers_mut().remove(http::header::HOST) {
                    Some(host) => host.to_str()?.to_string(),
                    None => "localhost".to_string(),
                };
                let uri = format!("http://{host}{}", req.uri());
                *req.uri_mut() = uri.parse()?;
                sender.ready().await?;
                sender.send_request(req).await?
            }
        })
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Trailers, when the response had any.
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with `body` over a new connection and reads the whole answer.
pub async fn request(
    addr: &str,
    proto: Proto,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Answer> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::copy_from_slice(body)))?;
    send(addr, proto, req).await
}

/// Sends `POST path` (with `headers`) to an echoing guest over a new `proto` connection, its
/// body in two halves, and asserts that the head and the first half come back before the
/// client has sent the second (bodies stream both ways at once), then the rest. Returns the
/// response's head.
pub async fn echoes_while_sending(
    addr: &str,
    proto: Proto,
    path: &str,
    headers: &[(&str, &str)],
) -> http::response::Parts {
    let mut client = Client::connect(addr, proto).await.unwrap();
    let (tx, body) = channel_body();
    let mut req = Request::builder().method("POST").uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(body).unwrap();
    tx.send(Bytes::from_static(b"first half, ")).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.send(req))
        .await
        .expect("the head comes while the request body is still open")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{proto:?}");
    let (head, mut body) = response.into_parts();
    let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("the first half comes back before the second is sent")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first half, ", "{proto:?}");
    tx.send(Bytes::from_static(b"second half")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second half", "{proto:?}");
    head
}

/// Sends `raw` bytes on a connection of its own, writing on the side (the server may answer
/// before it has read them all), and reads until the server closes the connection or `wait`
/// passes: what came back, and whether the connection was closed within `wait`.
pub async fn raw_exchange(addr: &str, raw: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let raw = raw.to_vec();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&raw).await;
        write
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(wait, read.read_to_end(&mut answer))
        .await
        .is_ok();
    drop(writer.await);
    (answer, closed)
}

/// Sends `n` `POST path` requests at once, half over HTTP/1.1 and half over HTTP/2, each with a
/// body of its own, and asserts each is answered 200 with its own body (an echoing guest).
pub async fn echo_at_once(addr: &str, path: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let addr = addr.to_string();
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let body = format!("request {i}");
            let answer = request(&addr, proto, "POST", &path, body.as_bytes())
                .await
                .unwrap();
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{proto:?}: {}",
                answer.text()
            );
            assert_eq!(answer.text(), body);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// `GET path` over a new connection.
pub async fn get(addr: &str, proto: Proto, path: &str) -> Result<Answer> {
    request(addr, proto, "GET", path, b"").await
}

/// Sends a prepared request over a new connection and reads the whole answer.
pub async fn send(addr: &str, proto: Proto, req: Request<Full<Bytes>>) -> Result<Answer> {
    let mut client = Client::connect(addr, proto).await?;
    read(client.send(req).await?).await
}

/// A TLS client for `addr` (server name `localhost`) trusting only `root`, offering `alpn`; the
/// protocol the server picked decides HTTP/2 or HTTP/1.1.
pub async fn connect_tls<B>(addr: &str, root: &[u8], alpn: &[&[u8]]) -> Result<(Client<B>, Proto)>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, stream)
        .await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    Ok(if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (Client::H2(sender), Proto::H2)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (Client::H1(sender), Proto::H1)
    })
}

/// Reads a response whole.
pub async fn read(response: Response<Incoming>) -> Result<Answer> {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// A request body fed from a channel, so a test can send part of it, act, then send the rest.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, ChannelBody(rx))
}

/// See [`channel_body`].
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// A plain HTTP/1.1 + h2c upstream on 127.0.0.1 for tests of handlers and callouts: every
/// request header NAME comes back as `x-echo-NAME` (repeated stay repeated), the path as
/// `x-upstream-path`, and the request body as the response body; `/callout` answers
/// `callout body`. Returns its address; it runs until the test's runtime ends.
pub async fn echo_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let mut response = Response::builder()
                        .header("x-upstream-path", parts.uri.path())
                        .header("content-type", "text/plain");
                    for (name, value) in &parts.headers {
                        response = response.header(format!("x-echo-{name}"), value);
                    }
                    let body = if parts.uri.path() == "/callout" {
                        Bytes::from_static(b"callout body")
                    } else {
                        body.collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default()
                    };
                    Ok::<_, std::convert::Infallible>(response.body(Full::new(body)).unwrap())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A `redis-server` of its own, on a free loopback port, with no persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port. `None` when `redis-server` is not installed, which fails the
    /// test in CI (where `.ci/run` installs it) and skips it, loudly, elsewhere.
    pub fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        RedisServer::start_on(port)
    }

    /// Starts one on `port` (to bring a stopped server back where clients expect it).
    pub fn start_on(port: u16) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is missing: .ci/run must install it");
            }
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        let server = RedisServer {
            child: Some(child),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING.
    pub fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills it (as a crash would), waiting until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
