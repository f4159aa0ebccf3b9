//! Stream contexts: what one HTTP stream carries through a filter's callbacks (its header maps,
//! body buffers, trailers, pause state and properties), and what the host knows about it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::{LocalResponse, Pairs};

/// What the host knows about a request, for properties (`source.address`, `request.id`...).
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// Counts requests: `request.id` when the client sent no `x-request-id`.
    pub serial: u64,
    /// When the request arrived.
    pub started: SystemTime,
}

impl Default for StreamInfo {
    fn default() -> Self {
        StreamInfo {
            peer: None,
            local: None,
            protocol: "HTTP/1.1",
            serial: 0,
            started: SystemTime::now(),
        }
    }
}

/// The two directions of an HTTP stream (`proxy_continue_stream`'s stream types 0 and 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The request, client to handler.
    Request = 0,
    /// The response, handler to client.
    Response = 1,
}

/// One HTTP stream's state inside a VM.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Connection and request facts.
    pub info: Arc<StreamInfo>,
    /// Map 0, pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) first.
    pub request_headers: Pairs,
    /// Map 1, during `proxy_on_request_trailers`.
    pub request_trailers: Pairs,
    /// Map 2, `:status` first.
    pub response_headers: Pairs,
    /// Map 3, during `proxy_on_response_trailers`.
    pub response_trailers: Pairs,
    /// Buffer 0: the request body seen by the current body callback.
    pub request_body: Vec<u8>,
    /// Buffer 1: the response body seen by the current body callback.
    pub response_body: Vec<u8>,
    /// Whether the filter may have changed the request (0) or response (1) headers: only then
    /// are they written back.
    pub changed: [bool; 2],
    /// Set by `proxy_send_local_response`.
    pub local_response: Option<LocalResponse>,
    /// Once the response head has gone to the client, a local response is no longer possible.
    pub response_started: bool,
    /// The direction a callback paused, until `proxy_continue_stream` resumes it.
    pub paused: Option<Direction>,
    /// A `proxy_continue_stream` made during the callback that then returns PAUSE: the pause
    /// is over before it starts.
    pub continued: Option<Direction>,
    /// Set by `proxy_close_stream`: the stream is reset.
    pub closed: bool,
    /// Properties the filter set (`proxy_set_property`).
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// Woken when a paused stream is resumed, answered, closed, or its VM is lost.
    pub wake: Arc<Notify>,
    /// The root context (plugin) the stream was created for.
    pub root: i32,
}

impl StreamState {
    /// A new stream for a request described by `info`.
    pub fn new(info: Arc<StreamInfo>) -> StreamState {
        StreamState {
            info,
            ..Default::default()
        }
    }

    fn header(&self, map: &Pairs, name: &[u8]) -> Option<Vec<u8>> {
        map.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// A stream property by its NUL-separated path, or `None` when it has no value.
    pub fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        if let Some(value) = self.properties.get(path) {
            return Some(value.clone());
        }
        let info = &self.info;
        let text = |s: String| Some(s.into_bytes());
        match path {
            b"request\0path" => self.header(&self.request_headers, b":path"),
            b"request\0url_path" => self
                .header(&self.request_headers, b":path")
                .map(|p| p.split(|&b| b == b'?').next().unwrap_or_default().to_vec()),
            b"request\0query" => self.header(&self.request_headers, b":path").map(|p| {
                p.splitn(2, |&b| b == b'?')
                    .nth(1)
                    .unwrap_or_default()
                    .to_vec()
            }),
            b"request\0method" => self.header(&self.request_headers, b":method"),
            b"request\0host" => self.header(&self.request_headers, b":authority"),
            b"request\0scheme" => self.header(&self.request_headers, b":scheme"),
            b"request\0protocol" => text(info.protocol.to_string()),
            b"request\0id" => self
                .header(&self.request_headers, b"x-request-id")
                .or_else(|| text(format!("{:016x}", info.serial))),
            b"request\0time" => {
                let nanos = info
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                Some(nanos.to_le_bytes().to_vec())
            }
            b"request\0headers" => Some(crate::pairs::serialize(
                self.request_headers
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice())),
            )),
            // Numbers are 64-bit little-endian, as Envoy gives them.
            b"response\0code" => self
                .header(&self.response_headers, b":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u64>().ok())
                .map(|code| code.to_le_bytes().to_vec()),
            b"response\0headers" => Some(crate::pairs::serialize(
                self.response_headers
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice())),
            )),
            b"source\0address" => info.peer.map(|a| a.to_string().into_bytes()),
            b"source\0port" => info.peer.map(|a| (a.port() as u64).to_le_bytes().to_vec()),
            b"destination\0address" => info.local.map(|a| a.to_string().into_bytes()),
            b"destination\0port" => info.local.map(|a| (a.port() as u64).to_le_bytes().to_vec()),
            _ => {
                // `request.headers.NAME` / `response.headers.NAME`: one header's value.
                if let Some(name) = path.strip_prefix(b"request\0headers\0") {
                    self.header(&self.request_headers, name)
                } else if let Some(name) = path.strip_prefix(b"response\0headers\0") {
                    self.header(&self.response_headers, name)
                } else {
                    None
                }
            }
        }
    }
}
