//! A stored response: its head as the origin sent it, its whole body, and what decides how long
//! it may be used.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, request};
use http_cache_semantics::CachePolicy;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    /// RFC 9111's view of it.
    pub policy: CachePolicy,
    /// Its status.
    pub status: StatusCode,
    /// Its header fields as received (repeated fields kept), without the hop-by-hop ones.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// When it goes stale.
    pub stale_at: SystemTime,
    /// How long after that it may still be used (RFC 5861).
    pub windows: Windows,
    /// The request header values its `Vary` names, as the request that stored it had them.
    pub(crate) vary: Vec<(HeaderName, Vec<http::HeaderValue>)>,
    /// `Vary: *`: it matches no request.
    pub(crate) vary_any: bool,
    /// The head of a plain hit, as last built from it.
    pub hit_head: HitHead,
}

/// The response head of a plain hit (no conditions, no range), built from an entry and kept
/// with the `Age` and `ttl` it was built for: the hits of the next second or so reuse it.
#[derive(Debug, Default)]
pub struct HitHead(arc_swap::ArcSwapOption<(u64, i64, HeaderMap)>);

impl HitHead {
    /// The head kept, if it was built for `age` and `ttl`.
    pub fn get(&self, age: u64, ttl: i64) -> Option<HeaderMap> {
        let kept = self.0.load();
        let (a, t, head) = kept.as_deref()?;
        (*a == age && *t == ttl).then(|| head.clone())
    }

    /// Keeps `head`, built for `age` and `ttl`.
    pub fn keep(&self, age: u64, ttl: i64, head: HeaderMap) {
        self.0.store(Some(std::sync::Arc::new((age, ttl, head))));
    }
}

impl Entry {
    /// The response `status`, `headers` and `body` to `req`, received at `now` and judged by
    /// `policy`.
    pub fn new(
        req: &request::Parts,
        policy: CachePolicy,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        now: SystemTime,
    ) -> Entry {
        let headers = without_hop_by_hop(headers);
        let vary = vary_names(&headers)
            .map(|name| {
                let values = req.headers.get_all(&name).iter().cloned().collect();
                (name, values)
            })
            .collect();
        let vary_any = headers
            .get_all(http::header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim() == "*");
        Entry {
            stale_at: now + policy.time_to_live(now),
            windows: Windows::of(&headers),
            policy,
            status,
            headers,
            body,
            vary,
            vary_any,
            hit_head: HitHead::default(),
        }
    }

    /// The same entry, revalidated at `now` by a `304 Not Modified` whose head is `fresh`: its
    /// header fields replace the stored ones of the same names (RFC 9111 §3.2), and `policy`
    /// (from the revalidation) decides from now on.
    pub fn revalidated(&self, policy: CachePolicy, fresh: &HeaderMap, now: SystemTime) -> Entry {
        let mut headers = self.headers.clone();
        let fresh = without_hop_by_hop(fresh);
        for name in fresh.keys() {
            // The 304 describes the stored body: its framing fields do not apply.
            if *name == http::header::CONTENT_LENGTH {
                continue;
            }
            headers.remove(name);
            for value in fresh.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Entry {
            stale_at: now + policy.time_to_live(now),
            windows: Windows::of(&headers),
            policy,
            status: self.status,
            headers,
            body: self.body.clone(),
            vary: self.vary.clone(),
            vary_any: self.vary_any,
            hit_head: HitHead::default(),
        }
    }

    /// Whether `other` answers the same requests (the same values of the headers `Vary` names).
    pub(crate) fn same_variant(&self, other: &Entry) -> bool {
        self.vary == other.vary
    }

    /// Whether a request with `headers` has the values of the headers `Vary` names that the
    /// request that stored it had (never, for `Vary: *`).
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        !self.vary_any
            && self
                .vary
                .iter()
                .all(|(name, values)| headers.get_all(name).iter().eq(values.iter()))
    }

    /// Bytes it takes in a store, roughly: its body, its header fields, and the head of a plain
    /// hit it keeps (the same fields, their values shared, and two more).
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32 + 32)
            .sum();
        (self.body.len() + headers + 512 + 128) as u64
    }

    /// Its age at `now`, in whole seconds (the `Age` header).
    pub fn age(&self, now: SystemTime) -> u64 {
        self.policy.age(now).as_secs()
    }

    /// Seconds it stays fresh from `now` (negative: stale for that long), for `Cache-Status`'s
    /// `ttl`.
    pub fn ttl(&self, now: SystemTime) -> i64 {
        match self.stale_at.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    }

    /// Whether `stale-if-error` lets it be sent at `now` in place of an origin's error.
    pub fn usable_on_error(&self, now: SystemTime) -> bool {
        self.windows.on_error(self.stale_at, now)
    }
}

/// How long past its freshness a response may be used, by RFC 5861's `Cache-Control`
/// directives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Windows {
    /// `stale-while-revalidate`: sent while pier revalidates it in the background.
    pub while_revalidate: Option<Duration>,
    /// `stale-if-error`: sent when the origin fails (an error, or a 500, 502, 503 or 504).
    pub if_error: Option<Duration>,
}

impl Windows {
    /// The windows `headers`' `Cache-Control` gives (none where `must-revalidate`,
    /// `proxy-revalidate` or `no-cache` forbids serving stale).
    pub fn of(headers: &HeaderMap) -> Windows {
        let directives: Vec<(String, Option<String>)> = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| {
                let (name, value) = d.split_once('=').unwrap_or((d, ""));
                let value = value.trim().trim_matches('"');
                (
                    name.trim().to_ascii_lowercase(),
                    (!value.is_empty()).then(|| value.to_string()),
                )
            })
            .collect();
        let has = |name: &str| directives.iter().any(|(n, _)| n == name);
        if has("must-revalidate") || has("proxy-revalidate") || has("no-cache") {
            return Windows::default();
        }
        let seconds = |name: &str| {
            directives
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.as_deref()?.parse::<u64>().ok())
                .map(Duration::from_secs)
        };
        Windows {
            while_revalidate: seconds("stale-while-revalidate"),
            if_error: seconds("stale-if-error"),
        }
    }

    /// Whether a response stale since `stale_at` may be sent at `now` while it is revalidated.
    pub fn while_revalidating(&self, stale_at: SystemTime, now: SystemTime) -> bool {
        within(stale_at, self.while_revalidate, now)
    }

    /// Whether a response stale since `stale_at` may be sent at `now` in place of an error.
    pub fn on_error(&self, stale_at: SystemTime, now: SystemTime) -> bool {
        within(stale_at, self.if_error, now)
    }
}

fn within(stale_at: SystemTime, window: Option<Duration>, now: SystemTime) -> bool {
    window.is_some_and(|window| now <= stale_at + window)
}

/// Connection-specific fields, never stored (RFC 9111 §3.1), and those a `Connection` field
/// names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

fn without_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(&n) && !named.iter().any(|c| c == n) && n != "upgrade" {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// The header names a response's `Vary` lists.
pub(crate) fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
}

/// An entry for tests: a `GET http://example.com/a` with `request` headers, answered 200 with
/// `response` headers and `body` now.
#[cfg(test)]
pub(crate) fn sample(
    request: &[(&str, &str)],
    response: &[(&str, &str)],
    body: Bytes,
) -> std::sync::Arc<Entry> {
    let mut req = http::Request::get("http://example.com/a");
    for (name, value) in request {
        req = req.header(*name, *value);
    }
    let req = req.body(()).unwrap().into_parts().0;
    let mut res = http::Response::builder();
    for (name, value) in response {
        res = res.header(*name, *value);
    }
    let res = res.body(()).unwrap().into_parts().0;
    let policy = CachePolicy::new(&req, &res);
    std::sync::Arc::new(Entry::new(
        &req,
        policy,
        res.status,
        &res.headers,
        body,
        SystemTime::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_hit_head_is_reused_only_for_the_age_and_ttl_it_was_built_for() {
        let kept = HitHead::default();
        assert_eq!(kept.get(0, 60), None);
        kept.keep(
            0,
            60,
            headers(&[("age", "0"), ("cache-status", "pier; hit; ttl=60")]),
        );
        assert_eq!(
            kept.get(0, 60).unwrap()["cache-status"],
            "pier; hit; ttl=60"
        );
        assert_eq!(kept.get(1, 60), None);
        assert_eq!(kept.get(0, 59), None);
        kept.keep(1, 59, headers(&[("age", "1")]));
        assert_eq!(kept.get(1, 59).unwrap()["age"], "1");
        assert_eq!(kept.get(0, 60), None);
    }

    #[test]
    fn rfc_5861_windows_come_from_cache_control_unless_revalidation_is_required() {
        let w = Windows::of(&headers(&[(
            "cache-control",
            "max-age=1, stale-while-revalidate=30, stale-if-error=\"60\"",
        )]));
        assert_eq!(w.while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(w.if_error, Some(Duration::from_secs(60)));
        let stale_at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert!(w.while_revalidating(stale_at, stale_at + Duration::from_secs(30)));
        assert!(!w.while_revalidating(stale_at, stale_at + Duration::from_secs(31)));
        assert!(w.on_error(stale_at, stale_at + Duration::from_secs(60)));
        let strict = Windows::of(&headers(&[
            ("cache-control", "max-age=1, stale-if-error=60"),
            ("cache-control", "must-revalidate"),
        ]));
        assert_eq!(strict, Windows::default());
    }

    #[test]
    fn hop_by_hop_fields_are_not_stored_and_repeated_ones_are_kept() {
        let kept = without_hop_by_hop(&headers(&[
            ("connection", "x-conn"),
            ("x-conn", "1"),
            ("transfer-encoding", "chunked"),
            ("link", "<a>"),
            ("link", "<b>"),
        ]));
        assert_eq!(kept.len(), 2);
        assert_eq!(kept.get_all("link").iter().count(), 2);
    }
}
