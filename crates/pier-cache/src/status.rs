//! The `Cache-Status` response header (RFC 9211): how the cache handled the request.

use http::HeaderValue;

/// Why a request went to the origin (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored for the URL.
    UriMiss,
    /// Stored, but for other values of the `Vary` headers.
    VaryMiss,
    /// Stored, but stale: revalidated (or replaced).
    Stale,
    /// The request's own directives (`no-cache`, `max-age=0`...) asked for the origin.
    Request,
    /// A method the cache does not answer (the URL's entries are invalidated on success).
    Method,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
            Forward::Method => "method",
        }
    }
}

/// One cache's entry in `Cache-Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Answered from the store.
    pub hit: bool,
    /// Why the origin was asked, if it was.
    pub fwd: Option<Forward>,
    /// The origin's status, when it answered.
    pub fwd_status: Option<u16>,
    /// Seconds the response stays fresh (negative: stale for that long).
    pub ttl: Option<i64>,
    /// The response was stored.
    pub stored: bool,
    /// It waited for another request's fetch instead of sending its own.
    pub collapsed: bool,
    /// More about it (`stale-while-revalidate`, `stale-if-error`, `only-if-cached`).
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    /// A hit, fresh for `ttl` more seconds.
    pub fn hit(ttl: i64) -> CacheStatus {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    /// A request sent to the origin, for `why`.
    pub fn forward(why: Forward) -> CacheStatus {
        CacheStatus {
            fwd: Some(why),
            ..CacheStatus::default()
        }
    }

    /// The header value, for the cache named `pier`.
    pub fn header(&self) -> HeaderValue {
        use std::fmt::Write;

        let mut s = String::with_capacity(48);
        s.push_str("pier");
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(s, "; fwd-status={status}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(s, "; ttl={ttl}");
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            s.push_str("; detail=");
            s.push_str(detail);
        }
        HeaderValue::from_str(&s).expect("only tokens and numbers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_follows_rfc_9211() {
        assert_eq!(CacheStatus::hit(30).header(), "pier; hit; ttl=30");
        let mut miss = CacheStatus::forward(Forward::UriMiss);
        miss.fwd_status = Some(200);
        miss.stored = true;
        assert_eq!(miss.header(), "pier; fwd=uri-miss; fwd-status=200; stored");
        let mut stale = CacheStatus::hit(-3);
        stale.fwd = Some(Forward::Stale);
        stale.detail = Some("stale-if-error");
        assert_eq!(
            stale.header(),
            "pier; hit; fwd=stale; ttl=-3; detail=stale-if-error"
        );
    }
}
