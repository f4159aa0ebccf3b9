//! The pace of live instances: requests past the room wait for their instance to start, but
//! guests that wait long are never held back behind each other.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pier_testkit::{PierServer, Proto, guest};
use tokio::sync::Barrier;

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// An origin that answers no request before `n` are waiting on it at once.
async fn barrier_origin(n: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let barrier = Arc::new(Barrier::new(n));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let barrier = barrier.clone();
                    async move {
                        barrier.wait().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("all here"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A thundering herd of requests whose guests all wait on one slow origin: every guest must be
/// live at once for any of them to be answered. The room for live instances (twice the threads)
/// is far smaller, so requests queue, and are let in as the live ones all wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_waiting_on_a_slow_origin_are_all_let_in() {
    // pier runs a thread per core, and room for twice as many instances at least: three times
    // that, or 48, whichever is more.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = (6 * cores).max(48);
    let origin = barrier_origin(n).await;
    let app = guest("forward");
    let pier = PierServer::start(
        pier(),
        &[
            "--allow-outbound",
            &format!("http://{origin}"),
            "--admin-addr",
            "127.0.0.1:0",
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let addr = pier.addr.clone();
        let to = origin.to_string();
        requests.spawn(async move {
            let req = Request::get(format!("/herd/{i}"))
                .header("x-forward-to", to)
                .body(Full::new(Bytes::new()))
                .unwrap();
            pier_testkit::send(&addr, Proto::H1, req).await.unwrap()
        });
    }
    let answers = tokio::time::timeout(Duration::from_secs(60), requests.join_all())
        .await
        .expect("every guest live at once: the origin answers only then");
    for answer in answers {
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "all here")
        );
    }

    let admin = pier.admin_addr.clone().expect("admin listener");
    let counter = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    // An instance ends (its store reset, its room given back) just after its response is
    // written: the last ones may still be ending when the answers are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = pier_testkit::get(&admin, Proto::H1, "/metrics")
            .await
            .unwrap()
            .text();
        if counter(&metrics, "pier_instances_live") == 0.0 || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        counter(&metrics, "pier_instances_paced_total") > 0.0,
        "{n} requests at once were more than the room: some waited for it"
    );
    assert_eq!(
        counter(&metrics, "pier_instances_live"),
        0.0,
        "every instance gone"
    );
    assert_eq!(counter(&metrics, "pier_instances_queued"), 0.0);
}
