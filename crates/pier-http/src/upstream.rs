//! The upstream handler: a reverse proxy to one origin, through the pooled outbound client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Body;
use http_body_util::BodyExt;
use pier_config::{OutboundConfig, OutboundPolicy};
use pier_engine::Outbound;
use wasmtime_wasi_http::Error;

use crate::body::{GuestOutcome, ResponseBody, error_response};
use crate::outbound::{CaError, OutboundClient};

/// Headers that describe one hop and are never forwarded (RFC 9110 7.6.1), besides any the
/// `connection` header names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Proxies every request to `origin`.
pub struct Upstream {
    origin: Uri,
    client: Arc<OutboundClient>,
}

impl Upstream {
    /// A proxy to `origin` (`http://HOST:PORT` or `https://...`), with the outbound client's
    /// pool, trust and timeouts; the operator chose this address, so no policy applies to it.
    pub fn new(origin: Uri, outbound: &OutboundConfig) -> Result<Upstream, CaError> {
        let config = OutboundConfig {
            policy: OutboundPolicy::unrestricted(),
            ..outbound.clone()
        };
        Ok(Upstream {
            origin,
            client: Arc::new(OutboundClient::new(&config)?),
        })
    }

    /// Sends `req` on to the origin and streams its answer back: 502 if the origin cannot be
    /// reached, 504 if it does not answer in time.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Error>,
    {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{}", self.origin.to_string().trim_end_matches('/'), path);
        let Ok(uri) = uri.parse::<Uri>() else {
            return error_response(StatusCode::BAD_REQUEST, "bad request target");
        };
        let named: Vec<HeaderName> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::try_from(name.trim()).ok())
            .collect();
        for name in HOP_BY_HOP.iter().chain(&named) {
            parts.headers.remove(name);
        }
        // The client derives Host from the origin's authority.
        parts.headers.remove(header::HOST);
        let client_ip = peer.ip().to_string();
        if let Ok(value) = HeaderValue::try_from(client_ip.as_str()) {
            parts.headers.append("x-forwarded-for", value);
        }
        let forwarded = if peer.is_ipv6() {
            format!("for=\"[{client_ip}]\";proto=http")
        } else {
            format!("for={client_ip};proto=http")
        };
        if let Ok(value) = HeaderValue::try_from(forwarded) {
            parts.headers.append(header::FORWARDED, value);
        }
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static("1.1 pier"));
        parts.uri = uri;
        // The client speaks whatever the origin negotiates, whatever the client spoke to pier.
        parts.version = http::Version::HTTP_11;
        let request = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        match self.client.send(request, None).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                for name in &HOP_BY_HOP {
                    parts.headers.remove(name);
                }
                parts
                    .headers
                    .append(header::VIA, HeaderValue::from_static("1.1 pier"));
                // An upstream body never "fails" the way a guest does: its own errors abort it.
                Response::from_parts(
                    parts,
                    ResponseBody::guest(body, Arc::new(GuestOutcome::default())),
                )
            }
            Err(e) => {
                tracing::warn!(upstream = %self.origin, "upstream request failed: {e:?}");
                match e {
                    Error::DnsTimeout
                    | Error::ConnectionTimeout
                    | Error::ConnectionReadTimeout
                    | Error::HttpResponseTimeout => error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream did not answer in time",
                    ),
                    _ => {
                        error_response(StatusCode::BAD_GATEWAY, "the upstream could not be reached")
                    }
                }
            }
        }
    }
}
