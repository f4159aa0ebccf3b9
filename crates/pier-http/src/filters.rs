//! The Proxy-Wasm filter chain around a handler: request headers in order, response headers in
//! reverse order, like Envoy's filter chain (and Pingora's `request_filter`/`response_filter`).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use pier_proxywasm::{Filter, LocalResponse, Outcome, Pairs, Stream};

use crate::body::ResponseBody;

/// The filters of a server, in the order given.
#[derive(Default, Clone)]
pub struct FilterChain(pub Vec<Arc<Filter>>);

/// Streams opened by the request phase, for the response phase.
pub type Streams = Vec<(Arc<Filter>, Stream)>;

impl FilterChain {
    /// Whether there are no filters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every filter's request-headers phase on `parts`. `Err` is a response to send instead.
    pub fn on_request(
        &self,
        parts: &mut http::request::Parts,
        end_of_stream: bool,
    ) -> Result<Streams, Box<Response<ResponseBody>>> {
        let mut pairs = request_pairs(parts);
        let mut streams = Vec::with_capacity(self.0.len());
        for filter in &self.0 {
            match filter.on_request_headers(&mut pairs, end_of_stream) {
                (Outcome::Continue, Some(stream)) => streams.push((filter.clone(), stream)),
                (Outcome::Continue, None) => {}
                (Outcome::Respond(local), _) => {
                    for (filter, stream) in streams {
                        filter.on_stream_end(stream);
                    }
                    return Err(Box::new(local_response(local)));
                }
            }
        }
        apply_request(parts, pairs);
        Ok(streams)
    }

    /// Runs the response-headers phase of the filters that saw the request, last first.
    pub fn on_response(
        streams: Streams,
        response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        let mut pairs: Pairs = Vec::with_capacity(parts.headers.len() + 1);
        pairs.push((
            b":status".to_vec(),
            parts.status.as_str().as_bytes().to_vec(),
        ));
        pairs.extend(
            parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        let end_of_stream = http_body::Body::is_end_stream(&body);
        for (filter, stream) in streams.into_iter().rev() {
            if let Outcome::Respond(local) =
                filter.on_response_headers(stream, &mut pairs, end_of_stream)
            {
                return local_response(local);
            }
        }
        let mut status = parts.status;
        parts.headers = headers_from(&pairs, |name, value| {
            if name == b":status"
                && let Some(s) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .and_then(|v| StatusCode::from_u16(v).ok())
            {
                status = s;
            }
        });
        parts.status = status;
        Response::from_parts(parts, body)
    }
}

fn request_pairs(parts: &http::request::Parts) -> Pairs {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut pairs: Pairs = Vec::with_capacity(parts.headers.len() + 4);
    pairs.push((
        b":method".to_vec(),
        parts.method.as_str().as_bytes().to_vec(),
    ));
    pairs.push((b":path".to_vec(), path.as_bytes().to_vec()));
    pairs.push((b":authority".to_vec(), authority.into_bytes()));
    pairs.push((
        b":scheme".to_vec(),
        parts.uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
    ));
    pairs.extend(
        parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    pairs
}

fn apply_request(parts: &mut http::request::Parts, pairs: Pairs) {
    let mut path = None;
    parts.headers = headers_from(&pairs, |name, value| {
        if name == b":path" {
            path = Some(value.to_vec());
        }
    });
    if let Some(path) = path.and_then(|p| http::uri::PathAndQuery::try_from(p).ok())
        && parts.uri.path_and_query() != Some(&path)
    {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(path);
        if let Ok(rebuilt) = http::Uri::from_parts(uri) {
            parts.uri = rebuilt;
        }
    }
}

/// Regular headers from pairs (repeated names kept); pseudo-headers go to `pseudo`. Pairs that
/// are not valid HTTP are dropped with a log line.
fn headers_from(pairs: &Pairs, mut pseudo: impl FnMut(&[u8], &[u8])) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if name.starts_with(b":") {
            pseudo(name, value);
            continue;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => {
                tracing::warn!(name = %String::from_utf8_lossy(name), "a filter set an invalid header; dropped")
            }
        }
    }
    headers
}

fn local_response(local: LocalResponse) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(local.body))));
    *response.status_mut() =
        StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = headers_from(&local.headers, |_, _| {});
    response
}
