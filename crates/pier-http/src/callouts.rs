//! HTTP callouts from filters (`proxy_http_call`) to the upstreams named with
//! `--filter-upstream NAME=URL`, through a pooled outbound client whose policy allows exactly
//! those origins.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use pier_config::{OutboundConfig, OutboundPattern, OutboundPolicy};
use pier_engine::Outbound;
use pier_proxywasm::{CalloutReply, CalloutRequest, Callouts, Pairs};

use crate::outbound::{CaError, OutboundClient};

/// The largest callout response body read.
const MAX_BODY: usize = 16 << 20;

/// The named upstreams filters may call.
pub struct NamedUpstreams {
    upstreams: HashMap<String, Uri>,
    client: OutboundClient,
}

impl NamedUpstreams {
    /// A client for `upstreams` (name, origin URL), with the outbound trust and timeouts.
    pub fn new(upstreams: Vec<(String, Uri)>, outbound: &OutboundConfig) -> Result<Self, CaError> {
        let patterns = upstreams
            .iter()
            .filter_map(|(_, uri)| {
                let scheme = uri.scheme_str().unwrap_or("http");
                let host = uri.host()?;
                let port = uri
                    .port_u16()
                    .unwrap_or(if scheme == "https" { 443 } else { 80 });
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                };
                format!("{scheme}://{host}:{port}")
                    .parse::<OutboundPattern>()
                    .ok()
            })
            .collect();
        let config = OutboundConfig {
            policy: OutboundPolicy::new(patterns),
            ..outbound.clone()
        };
        Ok(NamedUpstreams {
            upstreams: upstreams.into_iter().collect(),
            client: OutboundClient::new(&config)?,
        })
    }
}

fn header_map(pairs: &Pairs) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs.iter().filter(|(k, _)| !k.starts_with(b":")) {
        let bad = || format!("invalid header {:?}", String::from_utf8_lossy(name));
        headers.append(
            HeaderName::from_bytes(name).map_err(|_| bad())?,
            HeaderValue::from_bytes(value).map_err(|_| bad())?,
        );
    }
    Ok(headers)
}

fn pairs_of(headers: &HeaderMap) -> Pairs {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

impl Callouts for NamedUpstreams {
    fn knows(&self, upstream: &str) -> bool {
        self.upstreams.contains_key(upstream)
    }

    fn call(
        &self,
        request: CalloutRequest,
    ) -> Pin<Box<dyn Future<Output = Result<CalloutReply, String>> + Send>> {
        let built = (|| {
            let origin = self
                .upstreams
                .get(&request.upstream)
                .ok_or("unknown upstream")?;
            let pseudo = |name: &[u8]| {
                request
                    .headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let method = Method::from_bytes(&pseudo(b":method")).map_err(|e| e.to_string())?;
            let path = String::from_utf8(pseudo(b":path")).map_err(|e| e.to_string())?;
            let uri: Uri = format!("{}{path}", origin.to_string().trim_end_matches('/'))
                .parse()
                .map_err(|e| format!("bad :path: {e}"))?;
            let trailers = if request.trailers.is_empty() {
                None
            } else {
                Some(Ok(header_map(&request.trailers)?))
            };
            let body = Full::new(Bytes::from(request.body))
                .map_err(|never| match never {})
                .with_trailers(std::future::ready(trailers))
                .boxed_unsync();
            let mut built = Request::builder()
                .method(method)
                .uri(uri)
                .body(body)
                .map_err(|e| e.to_string())?;
            *built.headers_mut() = header_map(&request.headers)?;
            Ok::<_, String>(built)
        })();
        let sent = built.map(|req| self.client.send(req, None));
        Box::pin(async move {
            let response = sent?.await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let mut headers = vec![(
                b":status".to_vec(),
                parts.status.as_str().as_bytes().to_vec(),
            )];
            headers.extend(pairs_of(&parts.headers));
            let collected = http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?;
            let trailers = collected.trailers().map(pairs_of).unwrap_or_default();
            Ok(CalloutReply {
                headers,
                body: collected.to_bytes().to_vec(),
                trailers,
            })
        })
    }
}
