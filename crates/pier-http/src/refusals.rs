//! What a connection answers below hyper, so that every error a client gets from pier looks,
//! logs and counts the same:
//!
//! - the responses hyper writes on its own for a request head it cannot parse (400, 414, and
//!   431 for a header section beyond its buffer or with more fields than it takes) become
//!   pier's: a one-line body, `server: pier`, `connection: close`, an access-log line and the
//!   rejection counter;
//! - a connection that starts like HTTP/2 (`PRI `) but with a wrong preface gets an empty
//!   SETTINGS frame and GOAWAY with PROTOCOL_ERROR (RFC 9113, 3.4), not an HTTP/1.1 400.

use std::net::SocketAddr;

/// The HTTP/2 client connection preface (RFC 9113, 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame (the server's preface), then GOAWAY(last stream 0, PROTOCOL_ERROR).
pub const GOAWAY_PROTOCOL_ERROR: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, no settings
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// The status of `bytes` when they are one of hyper's own error responses (a status line of
/// 400, 414 or 431, an empty body, nothing else), written whole.
pub fn automatic_error(bytes: &[u8]) -> Option<u16> {
    if bytes.len() > 512 || !bytes.ends_with(b"\r\n\r\n") {
        return None;
    }
    let rest = bytes
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| bytes.strip_prefix(b"HTTP/1.0 "))?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !matches!(status, 400 | 414 | 431) {
        return None;
    }
    let head = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    head.contains("\r\ncontent-length: 0\r\n").then_some(status)
}

/// pier's response in place of hyper's automatic `status` response, logged and counted as
/// every error pier answers is.
pub fn replace(status: u16, original: &[u8], peer: SocketAddr) -> Vec<u8> {
    let (reason, message, metric) = match status {
        414 => ("URI Too Long", "request target too long", "uri_too_long"),
        431 => (
            "Request Header Fields Too Large",
            "request header section too large, or with too many fields",
            "headers_too_large",
        ),
        _ => ("Bad Request", "malformed request head", "malformed_head"),
    };
    // Keep hyper's date line, if any.
    let text = String::from_utf8_lossy(original);
    let date = text
        .split("\r\n")
        .find(|line| line.to_ascii_lowercase().starts_with("date:"))
        .map(|line| format!("{line}\r\n"))
        .unwrap_or_default();
    let body = format!("{message}\n");
    tracing::debug!(%peer, "answering a request head hyper could not parse: {status} {message}");
    tracing::info!(
        target: "pier::access",
        method = "-",
        path = "-",
        status,
        bytes = body.len() as u64,
        duration_us = 0u64,
        complete = true,
    );
    metrics::counter!(crate::metrics::REJECTED, "reason" => metric).increment(1);
    let class = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    metrics::counter!(crate::metrics::REQUESTS, "status" => crate::metrics::status_class(class))
        .increment(1);
    format!(
        "HTTP/1.1 {status} {reason}\r\nserver: pier\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n{date}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether `seen`, the first bytes of a connection (at most 24), begin like HTTP/2's preface
/// but are not it.
pub fn bad_h2_preface(seen: &[u8]) -> bool {
    seen.len() >= 4 && seen.starts_with(b"PRI ") && !H2_PREFACE.starts_with(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_errors_are_told_from_responses() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 10:00:00 GMT\r\n\r\n";
        assert_eq!(automatic_error(hyper), Some(431));
        assert_eq!(
            automatic_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            Some(400)
        );
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 431 x\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 400 Bad Request\r\nserver: pier\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400",
        ] {
            assert_eq!(
                automatic_error(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        let ours = String::from_utf8(replace(431, hyper, "127.0.0.1:1".parse().unwrap())).unwrap();
        assert!(
            ours.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{ours}"
        );
        assert!(ours.contains("\r\nserver: pier\r\n"), "{ours}");
        assert!(
            ours.contains("\r\ndate: Sun, 06 Dec 2026 10:00:00 GMT\r\n"),
            "{ours}"
        );
        assert!(
            ours.ends_with("\r\n\r\nrequest header section too large, or with too many fields\n"),
            "{ours}"
        );
        assert!(ours.contains("content-length: 58\r\n"), "{ours}");
    }

    #[test]
    fn an_h2_preface_is_checked_byte_by_byte() {
        assert!(!bad_h2_preface(b"PRI"), "too early to tell");
        assert!(!bad_h2_preface(b"PRI * HTTP/2.0\r\n"));
        assert!(!bad_h2_preface(H2_PREFACE));
        assert!(bad_h2_preface(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"));
        assert!(bad_h2_preface(b"PRI /x"));
        assert!(!bad_h2_preface(b"GET / HTTP/1.1\r\n"));
    }
}
