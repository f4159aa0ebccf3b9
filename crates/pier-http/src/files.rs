//! Static files: a manifest route's `files = "DIR"`. `GET` and `HEAD` of the files under one
//! directory, as a production file server answers them (RFC 9110):
//!
//! - validators: a strong `ETag` (from the file's size and modification time, in nanoseconds)
//!   and `Last-Modified`; conditional requests in the RFC's order (`If-Match`,
//!   `If-Unmodified-Since` -> 412; `If-None-Match`, `If-Modified-Since` -> 304);
//! - one byte range (`Range`, `If-Range`; 206, or 416 with `Content-Range: bytes */LEN`); a
//!   request for several ranges gets the whole file, which the RFC allows;
//! - `Content-Type` from the extension, `Content-Length`, `Accept-Ranges: bytes`; the body read
//!   from the file as it is sent, never whole in memory;
//! - a directory answers with its `index.html`; asked for without its trailing slash, it
//!   redirects (308) to the path with one, so relative links in the page resolve.
//!
//! Paths are checked before the disk is touched: the path after the route's prefix is
//! percent-decoded, and a segment that is `..` or `.`, or holds a NUL, a backslash or a
//! `:` (a Windows drive), makes the request a 400. Names beginning with a dot (`.env`, `.git`)
//! are not served (404). A file reached through a symbolic link is served only if it lies
//! under the directory (its real path is checked): a link out of it is a 404.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pier_config::RoutePath;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::body::{BodyError, ResponseBody, error_response};
use crate::conditional::{Condition, evaluate, range};

/// Bytes read from a file per body frame.
const CHUNK: usize = 64 * 1024;

/// The files of one directory, served on one route.
#[derive(Debug)]
pub struct Files {
    /// The directory, its real path (symbolic links resolved).
    root: PathBuf,
    /// The route's path: a prefix is taken off the request's path; an exact route serves the
    /// directory's index.
    route: RoutePath,
}

/// A file found for a request.
struct Found {
    file: tokio::fs::File,
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl Files {
    /// The files under `root`, served on `route`.
    pub fn new(root: &Path, route: RoutePath) -> std::io::Result<Files> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Files { root, route })
    }

    /// Answers the request `req` (its body is not read).
    pub async fn serve(&self, req: &http::request::Parts) -> Response<ResponseBody> {
        let method = &req.method;
        if method != Method::GET && method != Method::HEAD {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on static files: GET or HEAD"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = req.uri.path();
        let rest = match &self.route {
            RoutePath::Exact(_) => "/",
            RoutePath::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                // A filter changed the path to one outside the route.
                _ => return not_found(path),
            },
        };
        let segments = match safe_segments(rest) {
            Ok(segments) => segments,
            Err(why) => {
                return error_response(StatusCode::BAD_REQUEST, &format!("bad path: {why}"));
            }
        };
        if segments.iter().any(|s| s.starts_with('.')) {
            return not_found(path);
        }
        let mut relative = PathBuf::new();
        relative.extend(&segments);
        let wants_dir = rest.ends_with('/');
        let found = match self.open(relative, wants_dir).await {
            Ok(Lookup::File(found)) => found,
            Ok(Lookup::Directory) => {
                // `/docs` of a directory: on to `/docs/`, so the index's relative links work.
                let mut location = format!("{path}/");
                if let Some(query) = req.uri.query() {
                    location.push('?');
                    location.push_str(query);
                }
                let mut response = error_response(
                    StatusCode::PERMANENT_REDIRECT,
                    &format!("a directory: {location}"),
                );
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                return response;
            }
            Ok(Lookup::Missing) => return not_found(path),
            Err(e) => {
                tracing::warn!(root = %self.root.display(), path, "cannot read a static file: {e}");
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the file cannot be read",
                );
            }
        };
        respond(found, req.method == Method::HEAD, &req.headers).await
    }

    /// Opens `relative` under the root (a directory's `index.html` when `wants_dir` or it is a
    /// directory), if it is a regular file whose real path lies under the root. The lookup
    /// (two path resolutions, a stat, an open and an fstat) runs as one blocking task rather
    /// than one hand-off to a blocking thread per call.
    async fn open(&self, relative: PathBuf, wants_dir: bool) -> std::io::Result<Lookup> {
        let root = self.root.clone();
        let lookup = tokio::task::spawn_blocking(move || lookup(&root, &relative, wants_dir))
            .await
            .map_err(std::io::Error::other)?;
        Ok(match lookup? {
            Looked::File(file, meta) => Lookup::File(Found {
                file: tokio::fs::File::from_std(file),
                path: meta.path,
                len: meta.len,
                modified: meta.modified,
            }),
            Looked::Directory => Lookup::Directory,
            Looked::Missing => Lookup::Missing,
        })
    }
}

enum Lookup {
    File(Found),
    Directory,
    Missing,
}

/// What [`lookup`] found: the file still a std one (it is made a tokio one on the async side).
enum Looked {
    File(std::fs::File, FoundMeta),
    Directory,
    Missing,
}

/// A found file's path and metadata.
struct FoundMeta {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// `relative` under `root` (its real path), on the calling (blocking) thread.
fn lookup(root: &Path, relative: &Path, wants_dir: bool) -> std::io::Result<Looked> {
    let inside = |candidate: &Path| match std::fs::canonicalize(candidate) {
        Ok(real) if real.starts_with(root) => Ok(Some(real)),
        Ok(_) => Ok(None),
        Err(e) if missing(&e) => Ok(None),
        Err(e) => Err(e),
    };
    let Some(mut real) = inside(&root.join(relative))? else {
        return Ok(Looked::Missing);
    };
    if std::fs::metadata(&real)?.is_dir() {
        if !wants_dir {
            return Ok(Looked::Directory);
        }
        let Some(index) = inside(&real.join("index.html"))? else {
            return Ok(Looked::Missing);
        };
        real = index;
    } else if wants_dir {
        // `/file.txt/`: not a directory.
        return Ok(Looked::Missing);
    }
    let file = match std::fs::File::open(&real) {
        Ok(file) => file,
        Err(e) if missing(&e) => return Ok(Looked::Missing),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Looked::Missing);
    }
    Ok(Looked::File(
        file,
        FoundMeta {
            path: real,
            len: meta.len(),
            modified: meta.modified().ok(),
        },
    ))
}

fn missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn not_found(path: &str) -> Response<ResponseBody> {
    error_response(StatusCode::NOT_FOUND, &format!("no file at {path}"))
}

/// The decoded segments of `path` (the part after the route's prefix), or why it is refused.
fn safe_segments(path: &str) -> Result<Vec<String>, &'static str> {
    let mut segments = Vec::new();
    for raw in path.split('/') {
        if raw.is_empty() {
            continue;
        }
        let segment = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| "not UTF-8 once decoded")?;
        if segment == ".." || segment == "." {
            return Err("a \"..\" or \".\" segment");
        }
        if segment.contains('\0') {
            return Err("a NUL byte");
        }
        if segment.contains('\\') {
            return Err("a backslash");
        }
        if segment.contains('/') {
            return Err("an encoded slash");
        }
        if segment.contains(':') {
            return Err("a colon");
        }
        segments.push(segment.into_owned());
    }
    Ok(segments)
}

/// The strong validator of a file: its length and modification time.
pub(crate) fn etag(len: u64, modified: Option<SystemTime>) -> Option<String> {
    let since = modified?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!(
        "\"{len:x}-{:x}.{:x}\"",
        since.as_secs(),
        since.subsec_nanos()
    ))
}

async fn respond(mut found: Found, head: bool, headers: &HeaderMap) -> Response<ResponseBody> {
    let etag = etag(found.len, found.modified);
    let last_modified = found.modified.map(httpdate::fmt_http_date);
    let mut response = Response::new(ResponseBody::Full(None));
    {
        let out = response.headers_mut();
        if let Some(tag) = etag.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
            out.insert(header::ETAG, tag);
        }
        if let Some(date) = last_modified
            .as_deref()
            .and_then(|d| HeaderValue::from_str(d).ok())
        {
            out.insert(header::LAST_MODIFIED, date);
        }
    }
    match evaluate(headers, etag.as_deref(), found.modified) {
        Condition::Proceed => {}
        Condition::NotModified => {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        Condition::Failed => {
            let mut failed = error_response(
                StatusCode::PRECONDITION_FAILED,
                "the file does not meet the request's preconditions",
            );
            failed.headers_mut().extend(response.headers_mut().drain());
            return failed;
        }
    }
    let out = response.headers_mut();
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let mime = mime_guess::from_path(&found.path).first_or_octet_stream();
    let content_type = match mime.type_() {
        mime_guess::mime::TEXT => format!("{mime}; charset=utf-8"),
        _ if mime == mime_guess::mime::APPLICATION_JAVASCRIPT => format!("{mime}; charset=utf-8"),
        _ => mime.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        out.insert(header::CONTENT_TYPE, value);
    }
    let (start, len) = match range(
        headers,
        found.len,
        etag.as_deref(),
        last_modified.as_deref(),
    ) {
        Ok(None) => (0, found.len),
        Ok(Some((first, last))) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let value = format!("bytes {first}-{last}/{}", found.len);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("ASCII"),
            );
            (first, last - first + 1)
        }
        Err(()) => {
            let mut unsatisfiable = error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &format!("the range is beyond the file's {} bytes", found.len),
            );
            let value = format!("bytes */{}", found.len);
            unsatisfiable.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("ASCII"),
            );
            return unsatisfiable;
        }
    };
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if head || len == 0 {
        // HEAD: the headers GET would have, no body (hyper keeps the Content-Length).
        return response;
    }
    if start > 0
        && let Err(e) = found.file.seek(SeekFrom::Start(start)).await
    {
        tracing::warn!(path = %found.path.display(), "cannot seek in a static file: {e}");
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "the file cannot be read");
    }
    *response.body_mut() = ResponseBody::File(FileBody {
        file: found.file,
        left: len,
        buf: BytesMut::new(),
    });
    response
}

/// A file's bytes, `left` of them from where the file stands, read as they are sent. A file
/// that ends early (truncated while being sent) aborts the response rather than send fewer
/// bytes than its length said.
pub struct FileBody {
    file: tokio::fs::File,
    left: u64,
    buf: BytesMut,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.left).unwrap_or(CHUNK).min(CHUNK);
        if this.buf.capacity() < want {
            this.buf.reserve(want);
        }
        match tokio_util::io::poll_read_buf(
            Pin::new(&mut (&mut this.file).take(want as u64)),
            cx,
            &mut this.buf,
        ) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Ok(0)) => Poll::Ready(Some(Err("the file ended before its length".into()))),
            Poll::Ready(Ok(n)) => {
                this.left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused_before_the_disk() {
        assert_eq!(safe_segments("/a/b%20c.txt").unwrap(), ["a", "b c.txt"]);
        assert_eq!(safe_segments("//a//").unwrap(), ["a"]);
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/b",
            "/a/./b",
            "/a%00.txt",
            "/a%5c..%5cb",
            "/a%2f..%2fb",
            "/c:/windows",
            "/%ff",
        ] {
            assert!(safe_segments(bad).is_err(), "{bad}");
        }
    }
}
