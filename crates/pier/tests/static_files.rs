//! A manifest's static files routes (`files = "DIR"`), answered as a file server answers: GET and
//! HEAD with validators, 304 and 412 by the RFC's rules, one byte range, a directory's index,
//! and nothing outside the directory whatever the path says.

use std::path::Path;

use http::{Request, StatusCode};
use pier_testkit::{PROTOS, PierServer, Proto, get, send};

fn pier() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// An app with `public/` on `/static/...` and its index on `/`, and a secret beside it.
fn app() -> (tempfile::TempDir, PierServer) {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("public");
    std::fs::create_dir_all(public.join("docs")).unwrap();
    std::fs::write(public.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(public.join("docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(public.join("a.txt"), "0123456789").unwrap();
    std::fs::write(public.join("app.js"), "let x = 1;\n").unwrap();
    std::fs::write(public.join(".env"), "TOKEN=hidden\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), public.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(public.join("a.txt"), public.join("alias.txt")).unwrap();
    std::fs::write(
        dir.path().join("pier.toml"),
        r#"manifest_version = 1
[[route]]
path = "/static/..."
files = "public"
[[route]]
path = "/"
files = "public"
"#,
    )
    .unwrap();
    let manifest = dir.path().join("pier.toml");
    let server = PierServer::start(pier(), &[manifest.to_str().unwrap()]).unwrap();
    (dir, server)
}

async fn ask(
    server: &PierServer,
    proto: Proto,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> pier_testkit::Answer {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(&server.addr, proto, req.body(Default::default()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn files_are_served_with_validators_ranges_and_conditions() {
    let (_dir, server) = app();
    for proto in PROTOS {
        let a = get(&server.addr, proto, "/static/a.txt").await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{proto:?}");
        assert_eq!(a.text(), "0123456789");
        assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(a.headers["content-length"], "10");
        assert_eq!(a.headers["accept-ranges"], "bytes");
        let etag = a.headers["etag"].to_str().unwrap().to_string();
        let modified = a.headers["last-modified"].to_str().unwrap().to_string();
        assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
        let js = get(&server.addr, proto, "/static/app.js").await.unwrap();
        assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");

        let head = ask(&server, proto, "HEAD", "/static/a.txt", &[]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.text(), "");
        assert_eq!(head.headers["content-length"], "10");
        assert_eq!(head.headers["etag"], etag.as_str());

        for conditional in [
            ("if-none-match", etag.as_str()),
            ("if-none-match", "\"x\", *"),
            ("if-modified-since", modified.as_str()),
        ] {
            let not_modified = ask(&server, proto, "GET", "/static/a.txt", &[conditional]).await;
            assert_eq!(
                not_modified.status,
                StatusCode::NOT_MODIFIED,
                "{conditional:?}"
            );
            assert_eq!(not_modified.text(), "");
            assert_eq!(not_modified.headers["etag"], etag.as_str());
        }
        let changed = ask(
            &server,
            proto,
            "GET",
            "/static/a.txt",
            &[("if-none-match", "\"old\"")],
        )
        .await;
        assert_eq!(changed.status, StatusCode::OK);
        let failed = ask(
            &server,
            proto,
            "GET",
            "/static/a.txt",
            &[("if-match", "\"old\"")],
        )
        .await;
        assert_eq!(failed.status, StatusCode::PRECONDITION_FAILED);

        let range = ask(
            &server,
            proto,
            "GET",
            "/static/a.txt",
            &[("range", "bytes=2-5")],
        )
        .await;
        assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(range.text(), "2345");
        assert_eq!(range.headers["content-range"], "bytes 2-5/10");
        assert_eq!(range.headers["content-length"], "4");
        let suffix = ask(
            &server,
            proto,
            "GET",
            "/static/a.txt",
            &[("range", "bytes=-3")],
        )
        .await;
        assert_eq!(suffix.text(), "789");
        let beyond = ask(
            &server,
            proto,
            "GET",
            "/static/a.txt",
            &[("range", "bytes=20-")],
        )
        .await;
        assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(beyond.headers["content-range"], "bytes */10");
        let stale = ask(
            &server,
            proto,
            "GET",
            "/static/a.txt",
            &[("range", "bytes=2-5"), ("if-range", "\"old\"")],
        )
        .await;
        assert_eq!(
            stale.status,
            StatusCode::OK,
            "If-Range not holding: the whole file"
        );
        assert_eq!(stale.text(), "0123456789");
        let fresh = ask(
            &server,
            proto,
            "GET",
            "/static/a.txt",
            &[("range", "bytes=2-5"), ("if-range", etag.as_str())],
        )
        .await;
        assert_eq!(fresh.status, StatusCode::PARTIAL_CONTENT);

        let post = ask(&server, proto, "POST", "/static/a.txt", &[]).await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers["allow"], "GET, HEAD");
    }
}

#[tokio::test]
async fn directories_answer_with_their_index() {
    let (_dir, server) = app();
    for proto in PROTOS {
        let home = get(&server.addr, proto, "/").await.unwrap();
        assert_eq!(home.text(), "<h1>home</h1>\n", "{proto:?}");
        assert_eq!(home.headers["content-type"], "text/html; charset=utf-8");
        let docs = get(&server.addr, proto, "/static/docs/").await.unwrap();
        assert_eq!(docs.text(), "<h1>docs</h1>\n");
        let bare = get(&server.addr, proto, "/static/docs?v=1").await.unwrap();
        assert_eq!(bare.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(bare.headers["location"], "/static/docs/?v=1");
        let root = get(&server.addr, proto, "/static").await.unwrap();
        assert_eq!(
            root.status,
            StatusCode::PERMANENT_REDIRECT,
            "the prefix itself"
        );
        assert_eq!(root.headers["location"], "/static/");
        let missing = get(&server.addr, proto, "/static/nope.txt").await.unwrap();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let not_a_dir = get(&server.addr, proto, "/static/a.txt/").await.unwrap();
        assert_eq!(not_a_dir.status, StatusCode::NOT_FOUND);
    }
}

/// Traversal in every spelling is refused before the disk; hidden files and links out of the
/// directory are not served; a link inside it is.
#[tokio::test]
async fn nothing_outside_the_directory_is_served() {
    let (_dir, server) = app();
    for proto in PROTOS {
        for path in [
            "/static/../secret.txt",
            "/static/docs/../../secret.txt",
            "/static/%2e%2e/secret.txt",
            "/static/%2E%2E%2Fsecret.txt",
            "/static/..%5csecret.txt",
            "/static/a.txt%00.html",
            "/static/c:/secret.txt",
        ] {
            let answer = get(&server.addr, proto, path).await.unwrap();
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{proto:?} {path}");
            assert!(!answer.text().contains("outside"), "{path}");
        }
        for path in ["/static/.env", "/static/escape.txt"] {
            let answer = get(&server.addr, proto, path).await.unwrap();
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{proto:?} {path}");
            assert!(!answer.text().contains("hidden") && !answer.text().contains("outside"));
        }
        let alias = get(&server.addr, proto, "/static/alias.txt").await.unwrap();
        assert_eq!(alias.text(), "0123456789", "a link inside the directory");
    }
}
