//! RFC 9110's conditional and range requests, for any representation pier holds whole or can
//! read from any offset: a static file, a cached response. What a request's `If-*` fields ask
//! ([`evaluate`], in the RFC's order) and the one byte range it asks for ([`range`]).

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, header};

/// Whether an `If-Match`/`If-None-Match` list matches `etag` (`*` matches any file); `weak`
/// compares opaque tags only (the `W/` prefix ignored), as `If-None-Match` does.
pub(crate) fn list_matches(
    headers: &HeaderMap,
    name: header::HeaderName,
    etag: &str,
    weak: bool,
) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',').map(str::trim).any(|tag| {
                tag == "*" || {
                    let (is_weak, tag) = match tag.strip_prefix("W/") {
                        Some(tag) => (true, tag),
                        None => (false, tag),
                    };
                    tag == etag && (weak || !is_weak)
                }
            })
        })
    })
}

pub(crate) fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

/// Whole seconds: HTTP dates have no fraction.
pub(crate) fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the conditional headers make of a request for a representation (RFC 9110 section
/// 13.2.2).
pub(crate) enum Condition {
    /// Go on: the whole file, or a range of it.
    Proceed,
    /// `304 Not Modified`.
    NotModified,
    /// `412 Precondition Failed`.
    Failed,
}

pub(crate) fn evaluate(
    headers: &HeaderMap,
    etag: Option<&str>,
    modified: Option<SystemTime>,
) -> Condition {
    if headers.contains_key(header::IF_MATCH) {
        if !etag.is_some_and(|e| list_matches(headers, header::IF_MATCH, e, false)) {
            return Condition::Failed;
        }
    } else if let (Some(since), Some(modified)) =
        (date(headers, header::IF_UNMODIFIED_SINCE), modified)
        && seconds(modified) > seconds(since)
    {
        return Condition::Failed;
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        if etag.is_some_and(|e| list_matches(headers, header::IF_NONE_MATCH, e, true)) {
            return Condition::NotModified;
        }
    } else if let (Some(since), Some(modified)) =
        (date(headers, header::IF_MODIFIED_SINCE), modified)
        && seconds(modified) <= seconds(since)
    {
        return Condition::NotModified;
    }
    Condition::Proceed
}

/// The one range asked for, if the request asks for one that applies (`If-Range` holding);
/// `Err` if the range cannot be satisfied.
pub(crate) fn range(
    headers: &HeaderMap,
    len: u64,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        // A strong tag, or the exact date: anything else asks for the whole file.
        let holds = if if_range.starts_with('"') {
            etag == Some(if_range)
        } else {
            last_modified == Some(if_range)
        };
        if !holds {
            return Ok(None);
        }
    }
    let parsed = match http_range_header::parse_range_header(value) {
        Ok(parsed) => parsed,
        // Malformed: ignored, as the RFC says.
        Err(_) => return Ok(None),
    };
    match parsed.validate(len) {
        Ok(ranges) if ranges.len() == 1 => Ok(Some((*ranges[0].start(), *ranges[0].end()))),
        // Several (or none usable of an empty file): the whole file.
        Ok(_) => Ok(None),
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => Err(()),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::files::etag;

    #[test]
    fn conditions_follow_the_rfc_order() {
        let modified = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let tag = etag(10, Some(modified)).unwrap();
        let date = httpdate::fmt_http_date(modified);
        let earlier = httpdate::fmt_http_date(modified - std::time::Duration::from_secs(5));
        let eval = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            match evaluate(&headers, Some(&tag), Some(modified)) {
                Condition::Proceed => "go",
                Condition::NotModified => "304",
                Condition::Failed => "412",
            }
        };
        assert_eq!(eval(&[]), "go");
        assert_eq!(eval(&[("if-none-match", &tag)]), "304");
        assert_eq!(eval(&[("if-none-match", &format!("W/{tag}"))]), "304");
        assert_eq!(eval(&[("if-none-match", "\"other\", *")]), "304");
        assert_eq!(eval(&[("if-none-match", "\"other\"")]), "go");
        // If-None-Match present: If-Modified-Since is not looked at.
        assert_eq!(
            eval(&[("if-none-match", "\"other\""), ("if-modified-since", &date)]),
            "go"
        );
        assert_eq!(eval(&[("if-modified-since", &date)]), "304");
        assert_eq!(eval(&[("if-modified-since", &earlier)]), "go");
        assert_eq!(eval(&[("if-match", &tag)]), "go");
        assert_eq!(eval(&[("if-match", &format!("W/{tag}"))]), "412");
        assert_eq!(eval(&[("if-match", "\"other\"")]), "412");
        assert_eq!(eval(&[("if-unmodified-since", &earlier)]), "412");
        assert_eq!(eval(&[("if-unmodified-since", &date)]), "go");
    }

    #[test]
    fn one_range_or_the_whole_file() {
        let headers = |range: &str, if_range: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
            if let Some(v) = if_range {
                h.insert(header::IF_RANGE, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let tag = Some("\"a-1.0\"");
        let date = Some("Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(
            range(&headers("bytes=2-5", None), 10, tag, date),
            Ok(Some((2, 5)))
        );
        assert_eq!(
            range(&headers("bytes=-3", None), 10, tag, date),
            Ok(Some((7, 9)))
        );
        assert_eq!(
            range(&headers("bytes=8-", None), 10, tag, date),
            Ok(Some((8, 9)))
        );
        assert_eq!(range(&headers("bytes=20-", None), 10, tag, date), Err(()));
        assert_eq!(
            range(&headers("bytes=0-1,4-5", None), 10, tag, date),
            Ok(None)
        );
        assert_eq!(range(&headers("lines=1-2", None), 10, tag, date), Ok(None));
        assert_eq!(
            range(&headers("bytes=2-5", Some("\"a-1.0\"")), 10, tag, date),
            Ok(Some((2, 5)))
        );
        assert_eq!(
            range(&headers("bytes=2-5", Some("\"stale\"")), 10, tag, date),
            Ok(None),
            "a changed file: the whole of it"
        );
        assert_eq!(
            range(&headers("bytes=2-5", date), 10, tag, date),
            Ok(Some((2, 5)))
        );
    }
}
