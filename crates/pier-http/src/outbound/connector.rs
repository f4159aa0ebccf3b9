//! Opening an outbound connection: resolve, check every address against the policy, connect
//! (with a timeout), and negotiate TLS with ALPN (`h2`, `http/1.1`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use pier_config::{Denied, OutboundPolicy};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What the request being sent tells the connector, and learns from it.
pub struct RequestConnect {
    /// The connect timeout (the guest's, capped by the host's).
    pub timeout: Duration,
    /// When a new connection for this request finished connecting (unset: none was made, or
    /// it is still connecting).
    pub connected_at: std::sync::OnceLock<std::time::Instant>,
    /// Set while a new connection is being made for this request.
    pub connecting: std::sync::atomic::AtomicBool,
}

tokio::task_local! {
    /// The request being sent, for the connector it may call.
    pub static REQUEST: Arc<RequestConnect>;
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every address the name resolved to is one the policy refuses.
    #[error("{0}")]
    Denied(Denied),
    /// Name resolution failed.
    #[error("DNS lookup of {host} failed: {error}")]
    Dns { host: String, error: io::Error },
    /// Name resolution did not answer within the connect timeout.
    #[error("DNS lookup of {0} timed out")]
    DnsTimeout(String),
    /// Name resolution gave no address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// TCP (or TLS) did not complete in time.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// TCP connect failed.
    #[error("connecting to {addr} failed: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    /// The TLS handshake failed.
    #[error("TLS with {host} failed: {error}")]
    Tls { host: String, error: io::Error },
    /// The URI has no host.
    #[error("the URL has no host")]
    NoHost,
}

/// Opens policy-checked, optionally TLS, connections for the pooled client.
#[derive(Clone)]
pub struct Connector {
    policy: Arc<OutboundPolicy>,
    tls: TlsConnector,
    default_timeout: Duration,
}

impl Connector {
    /// A connector enforcing `policy`, trusting what `tls` trusts.
    pub fn new(policy: Arc<OutboundPolicy>, tls: TlsConnector, default_timeout: Duration) -> Self {
        Connector {
            policy,
            tls,
            default_timeout,
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        let request = REQUEST.try_with(Arc::clone).ok();
        let timeout = request.as_ref().map_or(this.default_timeout, |r| r.timeout);
        if let Some(r) = &request {
            r.connecting
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or(ConnectError::NoHost)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let scheme = if tls { "https" } else { "http" };
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            // Resolving and connecting share the connect timeout; a lookup that uses it up is
            // a DNS timeout, not a connection's.
            let deadline = tokio::time::Instant::now() + timeout;
            let open = async {
                let lookup = tokio::net::lookup_host((host.as_str(), port));
                let addrs: Vec<SocketAddr> = tokio::time::timeout_at(deadline, lookup)
                    .await
                    .map_err(|_| ConnectError::DnsTimeout(host.clone()))?
                    .map_err(|source| ConnectError::Dns {
                        host: host.clone(),
                        error: source,
                    })?
                    .collect();
                if addrs.is_empty() {
                    return Err(ConnectError::NoAddress(host.clone()));
                }
                // The address is checked, not only the name: a public name that resolves to a
                // loopback or metadata address is refused unless a pattern names it.
                let mut denied = None;
                let mut last_err = None;
                for addr in addrs {
                    if let Err(d) = this.policy.check_ip(scheme, &host, addr.ip(), port) {
                        denied.get_or_insert(d);
                        continue;
                    }
                    match TcpStream::connect(addr).await {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            return Ok(stream);
                        }
                        Err(source) => {
                            last_err = Some(ConnectError::Connect {
                                addr,
                                error: source,
                            })
                        }
                    }
                }
                Err(last_err
                    .or(denied.map(ConnectError::Denied))
                    .expect("at least one address"))
            };
            let tcp = tokio::time::timeout_at(deadline, open)
                .await
                .map_err(|_| ConnectError::Timeout(host.clone()))??;
            metrics::counter!(crate::metrics::OUTBOUND_CONNECTIONS, "scheme" => scheme)
                .increment(1);
            let connected = |stream: Stream| {
                if let Some(r) = &request {
                    let _ = r.connected_at.set(std::time::Instant::now());
                }
                Ok(TokioIo::new(stream))
            };
            if !tls {
                return connected(Stream::Plain(tcp));
            }
            let name = ServerName::try_from(host.clone()).map_err(|e| ConnectError::Tls {
                host: host.clone(),
                error: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
            let stream = tokio::time::timeout(timeout, this.tls.connect(name, tcp))
                .await
                .map_err(|_| ConnectError::Timeout(host.clone()))?
                .map_err(|source| ConnectError::Tls {
                    host: host.clone(),
                    error: source,
                })?;
            connected(Stream::Tls(Box::new(stream)))
        })
    }
}

/// A plain or TLS connection.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(tcp) => tcp.connected(),
            Stream::Tls(tls) => {
                let connected = tls.get_ref().0.connected();
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
