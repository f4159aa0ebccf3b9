//! The routing table: which pipeline answers a request. A route naming the request's host beats
//! one without a host; then an exact path beats a prefix, and a longer prefix a shorter one. A
//! prefix matches on a segment boundary (`/api/...` takes `/api` and `/api/x`, not `/apix`).
//! No route: 404, answered (and logged) like every error.
//!
//! The guest of a manifest's route learns how it was routed from two request headers pier sets
//! (and removes when a client sends them): `x-pier-route`, the pattern as written, and
//! `x-pier-path-info`, the part of the path after a prefix route's prefix (empty for an exact
//! route). The path itself is kept as the client sent it. The single route of a command line
//! (`pier serve app.wasm`) announces nothing: its requests reach the guest as they came.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use pier_config::RoutePath;

use crate::body::Observed;
use crate::conn::InFlight;
use crate::service::Pipeline;

/// `x-pier-route`: the route's pattern.
pub const ROUTE_HEADER: &str = "x-pier-route";
/// `x-pier-path-info`: the path after a prefix route's prefix.
pub const PATH_INFO_HEADER: &str = "x-pier-path-info";

/// One route and what answers it.
pub struct Entry {
    /// Only requests for this host (lower-case, no port).
    pub host: Option<String>,
    /// The path it matches.
    pub path: RoutePath,
    /// What answers it.
    pub pipeline: Arc<Pipeline>,
    /// The pattern as written, for `x-pier-route`.
    pattern: HeaderValue,
    /// Whether the guest is told the route.
    announce: bool,
}

impl Entry {
    /// `pipeline` on `host` and `path`; with `announce`, requests carry `x-pier-route` and
    /// `x-pier-path-info`.
    pub fn new(
        host: Option<String>,
        path: RoutePath,
        pipeline: Arc<Pipeline>,
        announce: bool,
    ) -> Entry {
        let pattern = path.pattern();
        Entry {
            host,
            path,
            pipeline,
            pattern: HeaderValue::from_str(&pattern).unwrap_or(HeaderValue::from_static("/...")),
            announce,
        }
    }
}

/// The routes of a server, and what answers when none matches.
pub struct Router {
    entries: Vec<Entry>,
    not_found: Arc<Pipeline>,
}

impl Router {
    /// A router over `entries`; `not_found` answers the rest (a 404 pipeline).
    pub fn new(entries: Vec<Entry>, not_found: Arc<Pipeline>) -> Router {
        Router { entries, not_found }
    }

    /// The entry for `host` (as the client sent it, port and all) and `path`, and the path
    /// after its prefix.
    pub fn find<'a, 'p>(
        &'a self,
        host: Option<&str>,
        path: &'p str,
    ) -> Option<(&'a Entry, &'p str)> {
        let host = host.map(|h| {
            let h = h.rsplit_once(':').map_or(h, |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') {
                    name
                } else {
                    h
                }
            });
            h.trim_end_matches('.')
        });
        let mut best: Option<((bool, bool, usize), &Entry, &str)> = None;
        for entry in &self.entries {
            let host_match = match (&entry.host, host) {
                (None, _) => false,
                (Some(want), Some(got)) if want.eq_ignore_ascii_case(got) => true,
                (Some(_), _) => continue,
            };
            let (exact, len, info) = match &entry.path {
                RoutePath::Exact(p) if p == path => (true, p.len(), ""),
                RoutePath::Exact(_) => continue,
                RoutePath::Prefix(p) => match path.strip_prefix(p.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        (false, p.len(), rest)
                    }
                    _ => continue,
                },
            };
            let rank = (host_match, exact, len);
            if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
                best = Some((rank, entry, info));
            }
        }
        best.map(|(_, entry, info)| (entry, info))
    }

    /// Answers `req` with the pipeline of its route (`in_flight`: its connection, if it came
    /// on one).
    ///
    /// Not an `async fn`: the route is chosen here, and the pipeline's future is all the caller
    /// holds (moved with every request, it stays as small as that one).
    pub fn serve<B>(
        &self,
        mut req: Request<B>,
        in_flight: Option<InFlight>,
    ) -> impl Future<Output = Response<Observed>> + Send + '_
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let host = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let pipeline = match self.find(host, req.uri().path()) {
            None => &self.not_found,
            Some((entry, info)) => {
                if entry.announce {
                    let info = HeaderValue::from_str(info).unwrap_or(HeaderValue::from_static(""));
                    let headers = req.headers_mut();
                    headers.insert(ROUTE_HEADER, entry.pattern.clone());
                    headers.insert(PATH_INFO_HEADER, info);
                }
                &entry.pipeline
            }
        };
        pipeline.serve(req, in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router whose pipelines are told apart by their position (their pattern).
    fn table(routes: &[(Option<&str>, &str)]) -> Router {
        let pipeline = Pipeline::not_found_for_tests();
        let entries = routes
            .iter()
            .map(|(host, pattern)| {
                let path = match pattern.strip_suffix("/...") {
                    Some(prefix) => RoutePath::Prefix(prefix.to_string()),
                    None => RoutePath::Exact(pattern.to_string()),
                };
                Entry::new(host.map(str::to_string), path, pipeline.clone(), true)
            })
            .collect();
        Router::new(entries, pipeline)
    }

    fn found(router: &Router, host: Option<&str>, path: &str) -> Option<(String, String)> {
        router.find(host, path).map(|(entry, info)| {
            let host = entry
                .host
                .clone()
                .map(|h| format!("{h} "))
                .unwrap_or_default();
            (
                format!("{host}{}", entry.pattern.to_str().unwrap()),
                info.to_string(),
            )
        })
    }

    #[test]
    fn the_most_specific_route_wins() {
        let router = table(&[
            (None, "/..."),
            (None, "/api/..."),
            (None, "/api/v2/..."),
            (None, "/api/health"),
            (None, "/"),
            (Some("admin.example.com"), "/..."),
        ]);
        let cases = [
            (None, "/", Some(("/", ""))),
            (None, "/index.html", Some(("/...", "/index.html"))),
            (None, "/api", Some(("/api/...", ""))),
            (None, "/api/", Some(("/api/...", "/"))),
            (None, "/api/users/7", Some(("/api/...", "/users/7"))),
            (None, "/apix", Some(("/...", "/apix"))),
            (None, "/api/v2/x", Some(("/api/v2/...", "/x"))),
            (None, "/api/health", Some(("/api/health", ""))),
            (None, "/api/health/x", Some(("/api/...", "/health/x"))),
            (
                Some("admin.example.com"),
                "/api/x",
                Some(("admin.example.com /...", "/api/x")),
            ),
            (
                Some("ADMIN.example.com:8080"),
                "/",
                Some(("admin.example.com /...", "/")),
            ),
            (Some("other.example.com"), "/", Some(("/", ""))),
        ];
        for (host, path, want) in cases {
            let want = want.map(|(r, i)| (r.to_string(), i.to_string()));
            assert_eq!(found(&router, host, path), want, "{host:?} {path}");
        }
        let narrow = table(&[(None, "/api/..."), (Some("a.example"), "/x")]);
        assert_eq!(found(&narrow, None, "/other"), None, "no route: 404");
        assert_eq!(found(&narrow, Some("b.example"), "/x"), None);
        assert_eq!(
            found(&narrow, Some("[::1]:80"), "/api"),
            Some(("/api/...".into(), "".into()))
        );
    }
}
