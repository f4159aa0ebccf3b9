//! `native-hello [ADDR] [--forward UPSTREAM]`: the native anchors of pier's benchmarks, plain
//! hyper with no WebAssembly at all.
//!
//! - By default it answers every request with "hello from pier\n" over HTTP/1.1 or h2c, the way
//!   pier's hello example does.
//! - With `--forward HOST:PORT` it sends every request on to that upstream through a pooled
//!   hyper-util client and streams the answer back, the way the forward guest does: the floor of
//!   what forwarding costs on the machine.
//! - With `--work-us N` it first computes for N microseconds on every request: a server that
//!   costs that much more CPU per request, to read how a slower server's throughput falls on
//!   the benchmark's machine (bench/RESULTS.md).
//! - With `--cache-control VALUE` its hello carries that `Cache-Control` (the origin of the
//!   cache benchmark).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let forward = args
        .iter()
        .position(|a| a == "--forward")
        .map(|i| args.get(i + 1).expect("--forward needs HOST:PORT").clone());
    let work = args.iter().position(|a| a == "--work-us").map(|i| {
        let us = args.get(i + 1).expect("--work-us needs N");
        std::time::Duration::from_micros(us.parse().expect("--work-us needs a number"))
    });
    let cache_control: Option<&'static str> =
        args.iter().position(|a| a == "--cache-control").map(|i| {
            &*args
                .get(i + 1)
                .expect("--cache-control needs VALUE")
                .clone()
                .leak()
        });
    let addr = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("native-hello: serving http://{}", listener.local_addr()?);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, hyper::body::Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let forward = forward.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let client = client.clone();
                let forward = forward.clone();
                async move {
                    if let Some(work) = work {
                        compute_for(work);
                    }
                    match forward {
                        Some(upstream) => forward_to(&client, &upstream, req).await,
                        None => Ok::<_, Infallible>(hello(cache_control)),
                    }
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Spins on the clock for `work`.
fn compute_for(work: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < work {
        std::hint::spin_loop();
    }
}

fn hello(cache_control: Option<&'static str>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(b"hello from pier\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    response
        .headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    if let Some(value) = cache_control {
        response
            .headers_mut()
            .insert("cache-control", value.parse().unwrap());
    }
    response
}

async fn forward_to(
    client: &Client<HttpConnector, hyper::body::Incoming>,
    upstream: &str,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{upstream}{path}")
        .parse()
        .expect("a valid URI");
    parts.headers.remove(hyper::header::HOST);
    Ok(
        match client.request(Request::from_parts(parts, body)).await {
            Ok(response) => response.map(BodyExt::boxed),
            Err(_) => {
                let mut response =
                    Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
                *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                response
            }
        },
    )
}
