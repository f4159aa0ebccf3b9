//! pier's outbound HTTP client for guests: one pooled client per app (keep-alive per origin,
//! HTTP/1.1 and HTTP/2 by ALPN), deny-by-default policy checked on the URL and on every resolved
//! address, system + webpki + `--ca-cert` trust, and timeouts that honour the guest's
//! `request-options` within the host's caps. Every failure maps to one `error-code`.

mod connector;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pier_config::{OutboundConfig, OutboundPolicy};
use pier_engine::Outbound;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use connector::{ConnectError, Connector, REQUEST, RequestConnect};

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--ca-cert {path}: {message}")]
pub struct CaError {
    path: String,
    message: String,
}

/// The shared outbound client of an app.
pub struct OutboundClient {
    /// One pool per serving thread ([`pier_threads`]): a pooled connection's task
    /// runs on the runtime that opened it, so a thread reusing another's connection would hand
    /// every response across threads.
    clients: Box<[Client<Connector, WasiBody>]>,
    policy: Arc<OutboundPolicy>,
    config: OutboundConfig,
}

impl OutboundClient {
    /// Builds the client: trust roots, pool and connector.
    pub fn new(config: &OutboundConfig) -> Result<OutboundClient, CaError> {
        let policy = Arc::new(config.policy.clone());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&config.ca_certs)?));
        let connector = Connector::new(policy.clone(), tls, config.connect_timeout);
        let clients = (0..pier_threads::slots())
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(config.pool_idle_timeout)
                    .pool_max_idle_per_host(config.pool_max_idle_per_host)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector.clone())
            })
            .collect();
        Ok(OutboundClient {
            clients,
            policy,
            config: config.clone(),
        })
    }
}

/// System roots, the bundled webpki roots, and the given CA files; ALPN `h2` then `http/1.1`.
fn tls_config(ca_certs: &[std::path::PathBuf]) -> Result<rustls::ClientConfig, CaError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for path in ca_certs {
        let err = |message: String| CaError {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(format!("{e:?}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("not valid PEM: {e:?}")))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The smaller of the guest's wish and the host's cap.
fn capped(guest: Option<Duration>, host: Duration) -> Duration {
    guest.map_or(host, |g| g.min(host))
}

impl Outbound for OutboundClient {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, Error>> + Send>> {
        let uri = request.uri().clone();
        let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let scheme = if tls { "https" } else { "http" };
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if let Err(denied) = self.policy.check_url(scheme, &host, port) {
            pier_engine::warn_denied(&format!("outgoing request denied: {denied}"));
            metrics::counter!(crate::metrics::OUTBOUND_REQUESTS, "result" => "denied").increment(1);
            return Box::pin(async { Err(Error::HttpRequestDenied) });
        }
        let connect = capped(
            options.and_then(|o| o.connect_timeout),
            self.config.connect_timeout,
        );
        let first_byte = capped(
            options.and_then(|o| o.first_byte_timeout),
            self.config.first_byte_timeout,
        );
        let between = capped(
            options.and_then(|o| o.between_bytes_timeout),
            self.config.between_bytes_timeout,
        );
        let timing = Arc::new(RequestConnect {
            timeout: connect,
            connected_at: std::sync::OnceLock::new(),
            connecting: std::sync::atomic::AtomicBool::new(false),
        });
        let client = &self.clients[pier_threads::slot(self.clients.len())];
        let sent = REQUEST.scope(timing.clone(), client.request(request));
        Box::pin(async move {
            let started = Instant::now();
            let response = match first_byte_deadline(sent, &timing, started, first_byte).await {
                None => Err(Error::ConnectionReadTimeout),
                Some(Err(e)) => Err(map_client_error(&e)),
                Some(Ok(response)) => Ok(response),
            };
            let result = match &response {
                Ok(r) => crate::metrics::status_class(r.status()),
                Err(_) => "error",
            };
            metrics::counter!(crate::metrics::OUTBOUND_REQUESTS, "result" => result).increment(1);
            metrics::histogram!(crate::metrics::OUTBOUND_SECONDS)
                .record(started.elapsed().as_secs_f64());
            let response = response
                .inspect_err(|e| tracing::debug!(%uri, "outgoing request failed: {e:?}"))?;
            Ok(response
                .map(|body| BetweenBytes::new(body.map_err(Error::from), between).boxed_unsync()))
        })
    }
}

/// Waits for the response head: `first_byte` from when the request could be sent, i.e. from the
/// start on a pooled connection, or from the moment a new connection was established (the
/// connector bounds connecting itself, with `connection-timeout`). `None` on timeout.
async fn first_byte_deadline<F: Future>(
    sent: F,
    timing: &RequestConnect,
    started: Instant,
    first_byte: Duration,
) -> Option<F::Output> {
    tokio::pin!(sent);
    loop {
        let from = match timing.connected_at.get() {
            Some(at) => *at,
            None if timing.connecting.load(std::sync::atomic::Ordering::Relaxed) => Instant::now(),
            None => started,
        };
        let deadline = tokio::time::Instant::from_std(from + first_byte);
        tokio::select! {
            output = &mut sent => return Some(output),
            () = tokio::time::sleep_until(deadline) => {
                // Still connecting: the connector's own timeout decides; look again.
                let connecting = timing.connecting.load(std::sync::atomic::Ordering::Relaxed)
                    && timing.connected_at.get().is_none();
                let due = timing.connected_at.get().map_or(started, |at| *at) + first_byte;
                if !connecting && Instant::now() >= due {
                    return None;
                }
            }
        }
    }
}

/// Maps a client error to the `error-code` the guest sees.
fn map_client_error(e: &hyper_util::client::legacy::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(connect) = err.downcast_ref::<ConnectError>() {
            return map_connect_error(connect);
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_closed() {
                return Error::HttpResponseIncomplete;
            }
            return Error::HttpProtocolError;
        }
        source = err.source();
    }
    Error::InternalError(Some(e.to_string()))
}

fn map_connect_error(e: &ConnectError) -> Error {
    match e {
        ConnectError::Denied(denied) => {
            pier_engine::warn_denied(&format!("outgoing request denied: {denied}"));
            Error::HttpRequestDenied
        }
        // The resolver's own words, for the guest and the log.
        ConnectError::Dns { error, .. } => Error::DnsError {
            rcode: Some(error.to_string()),
            info_code: None,
        },
        ConnectError::NoAddress(_) => Error::DnsError {
            rcode: Some("no address".into()),
            info_code: None,
        },
        ConnectError::DnsTimeout(_) => Error::DnsTimeout,
        ConnectError::Timeout(_) => Error::ConnectionTimeout,
        ConnectError::Connect { error: source, .. } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
            std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
            _ => Error::DestinationUnavailable,
        },
        ConnectError::Tls { error: source, .. } => match source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
            Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
                alert_id: Some(u8::from(*alert)),
                alert_message: Some(format!("{alert:?}")),
            },
            _ => Error::TlsProtocolError,
        },
        ConnectError::NoHost => Error::HttpRequestUriInvalid,
    }
}

/// A response body that fails with `connection-read-timeout` when no chunk arrives in time.
struct BetweenBytes<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> BetweenBytes<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        BetweenBytes {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B: Body<Data = Bytes, Error = Error> + Unpin> Body for BetweenBytes<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    metrics::counter!(crate::metrics::OUTBOUND_BYTES_IN)
                        .increment(data.len() as u64);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
