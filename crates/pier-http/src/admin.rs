//! The admin listener (`/metrics`, `/healthz`, and `PURGE /cache/NAME?url=URL` for the HTTP
//! caches): this process's metrics and caches, or, in the supervisor of `pier serve --workers`,
//! every worker's (see [`Workers`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// What an admin listener reports on.
#[derive(Clone)]
pub enum Admin {
    /// This process's own metrics, with the state of the serving app's instance pools as of
    /// the scrape.
    Process(PrometheusHandle, Arc<crate::Live>),
    /// The metrics of a supervisor's workers.
    Workers(Arc<Workers>),
}

impl Admin {
    /// The status, content type and body answering `method` on `path` with `query`.
    async fn respond(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> (StatusCode, &'static str, String) {
        const EXPOSITION: &str = "text/plain; version=0.0.4";
        if let Some(name) = path.strip_prefix("/cache/") {
            let (status, body) = self.purge(method, name, query).await;
            return (status, "text/plain", body);
        }
        match (path, self) {
            ("/metrics", Admin::Process(handle, live)) => {
                crate::metrics::record_pool(&live.engines());
                (StatusCode::OK, EXPOSITION, handle.render())
            }
            ("/metrics", Admin::Workers(workers)) => {
                (StatusCode::OK, EXPOSITION, workers.render().await)
            }
            ("/healthz", Admin::Process(_, live)) => (
                StatusCode::OK,
                "text/plain",
                format!("ok: generation {}\n", live.generation()),
            ),
            ("/healthz", Admin::Workers(workers)) => {
                let (status, body) = workers.health();
                (status, "text/plain", body)
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics, /healthz or PURGE /cache/NAME?url=URL\n".to_string(),
            ),
        }
    }

    /// `PURGE` (or `DELETE`) `/cache/NAME?url=URL` forgets what cache NAME stores for URL;
    /// `?prefix=URL` for every URL starting with it (`http://example.com/api/`). Answers how
    /// many URLs were forgotten (summed over the workers of `--workers`).
    async fn purge(
        &self,
        method: &Method,
        name: &str,
        query: Option<&str>,
    ) -> (StatusCode, String) {
        if method.as_str() != "PURGE" && method != Method::DELETE {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} /cache/{name}: use PURGE or DELETE\n"),
            );
        }
        let Some((what, target)) = purge_target(query) else {
            return (
                StatusCode::BAD_REQUEST,
                "give the URL to forget: ?url=URL, or ?prefix=URL for every URL under it\n"
                    .to_string(),
            );
        };
        match self {
            Admin::Process(_, live) => {
                let Some(cache) = live.cache(name) else {
                    return (StatusCode::NOT_FOUND, format!("no cache named {name}\n"));
                };
                let purged = match what {
                    Purge::Url => match target.parse::<http::Uri>() {
                        Ok(uri) if uri.authority().is_some() => {
                            usize::from(cache.cache().invalidate(&uri).await)
                        }
                        _ => {
                            return (
                                StatusCode::BAD_REQUEST,
                                format!("url={target}: an absolute URL (http://HOST/PATH)\n"),
                            );
                        }
                    },
                    Purge::Prefix => cache.cache().invalidate_prefix(&target).await,
                };
                tracing::info!(cache = name, target, purged, "purged");
                (StatusCode::OK, format!("purged {purged}\n"))
            }
            Admin::Workers(workers) => workers.purge(method, name, query.unwrap_or("")).await,
        }
    }
}

/// What a purge forgets.
enum Purge {
    /// One URL.
    Url,
    /// Every URL starting with a prefix.
    Prefix,
}

/// The purge a query asks for (`url=` or `prefix=`, percent-decoded).
fn purge_target(query: Option<&str>) -> Option<(Purge, String)> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let what = match key {
            "url" => Purge::Url,
            "prefix" => Purge::Prefix,
            _ => return None,
        };
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .ok()?
            .into_owned();
        (!value.is_empty()).then_some((what, value))
    })
}

/// The workers of `pier serve --workers`, as the supervisor's admin listener sees them: each
/// worker serves its own metrics on a loopback listener the supervisor made for it, and a
/// scrape of the supervisor gathers them all, every sample labelled with its `worker`.
pub struct Workers {
    listeners: Vec<std::net::TcpListener>,
    running: Vec<AtomicBool>,
}

/// How long a scrape waits for one worker's metrics.
const WORKER_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The gauge saying which workers answered the scrape.
const WORKER_UP: &str = "pier_worker_up";

impl Workers {
    /// Makes a loopback admin listener for each of `n` workers.
    pub fn bind(n: usize) -> std::io::Result<Workers> {
        let listeners = (0..n)
            .map(|_| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
            .collect::<Result<Vec<_>, _>>()?;
        let running = (0..n).map(|_| AtomicBool::new(false)).collect();
        Ok(Workers { listeners, running })
    }

    /// Worker `index`'s admin listener, to be inherited by the worker.
    pub fn listener(&self, index: usize) -> &std::net::TcpListener {
        &self.listeners[index]
    }

    /// Records whether worker `index` is running (scrapes skip those that are not).
    pub fn set_running(&self, index: usize, running: bool) {
        self.running[index].store(running, Ordering::Relaxed);
    }

    fn running(&self) -> usize {
        self.running
            .iter()
            .filter(|r| r.load(Ordering::Relaxed))
            .count()
    }

    fn health(&self) -> (StatusCode, String) {
        let (running, all) = (self.running(), self.running.len());
        let (status, word) = if running > 0 {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        };
        (
            status,
            format!("{word}: {running} of {all} workers running\n"),
        )
    }

    /// A purge sent to every running worker (each has a cache of its own): the sum of what
    /// they forgot, or the first refusal.
    async fn purge(&self, method: &Method, name: &str, query: &str) -> (StatusCode, String) {
        let target = format!("/cache/{name}?{query}");
        let sends = self
            .listeners
            .iter()
            .enumerate()
            .filter(|(index, _)| self.running[*index].load(Ordering::Relaxed))
            .filter_map(|(_, listener)| listener.local_addr().ok())
            .map(|addr| {
                let target = target.clone();
                async move {
                    tokio::time::timeout(WORKER_SCRAPE_TIMEOUT, ask(addr, method.clone(), &target))
                        .await
                }
            });
        let mut purged = 0;
        for answer in futures_util::future::join_all(sends).await {
            match answer {
                Ok(Ok((StatusCode::OK, body))) => {
                    purged += body
                        .trim()
                        .strip_prefix("purged ")
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0);
                }
                Ok(Ok((status, body))) => return (status, body),
                Ok(Err(e)) => tracing::warn!("a worker did not take the purge: {e}"),
                Err(_) => tracing::warn!("a worker did not answer the purge in time"),
            }
        }
        (StatusCode::OK, format!("purged {purged}\n"))
    }

    /// Every running worker's metrics, merged into one exposition.
    async fn render(&self) -> String {
        let scrapes = self
            .listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| async move {
                if !self.running[index].load(Ordering::Relaxed) {
                    return None;
                }
                let addr = listener.local_addr().ok()?;
                match tokio::time::timeout(WORKER_SCRAPE_TIMEOUT, scrape(addr)).await {
                    Ok(Ok(text)) => Some(text),
                    Ok(Err(e)) => {
                        tracing::warn!(worker = index, "cannot read the worker's metrics: {e}");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(worker = index, "the worker's metrics did not come in time");
                        None
                    }
                }
            });
        let texts = futures_util::future::join_all(scrapes).await;
        merge_workers(&texts)
    }
}

/// One worker's `/metrics`.
async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = ask(addr, Method::GET, "/metrics").await?;
    anyhow::ensure!(status == StatusCode::OK, "{status}");
    Ok(body)
}

/// `method target` on a worker's admin listener at `addr`: the status and body.
async fn ask(
    addr: SocketAddr,
    method: Method,
    target: &str,
) -> anyhow::Result<(StatusCode, String)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

/// One exposition made of the workers' (`texts[N]` is worker N's, `None` if it did not answer):
/// one `HELP` and `TYPE` per family, in the order first seen, each sample labelled `worker="N"`,
/// then the `pier_worker_up` gauge. Counters are per worker, so a worker that is replaced shows as a
/// counter reset of its own series, which `rate()` handles; `sum without (worker)` adds them up.
pub fn merge_workers(texts: &[Option<String>]) -> String {
    let mut families: Vec<Family> = Vec::new();
    for (worker, text) in texts.iter().enumerate() {
        let Some(text) = text else { continue };
        let mut current: Option<usize> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let (Some(kind @ ("HELP" | "TYPE")), Some(name)) = (words.next(), words.next())
                else {
                    continue;
                };
                let at = family(&mut families, name);
                // Every worker describes the family the same way: keep the first description.
                if !families[at]
                    .comments
                    .iter()
                    .any(|c| c.starts_with(&format!("# {kind} ")))
                {
                    families[at].comments.push(line.to_string());
                }
                current = Some(at);
                continue;
            }
            let split = line.find(['{', ' ']).unwrap_or(line.len());
            let (name, rest) = line.split_at(split);
            // A sample belongs to the family described last (histograms: `_bucket`, `_sum`,
            // `_count`), unless its name is not that family's.
            let at = match current {
                Some(at) if name.starts_with(families[at].name.as_str()) => at,
                _ => family(&mut families, name),
            };
            let labelled = match rest.strip_prefix('{') {
                Some(labels) => format!("{name}{{worker=\"{worker}\",{labels}"),
                None => format!("{name}{{worker=\"{worker}\"}}{rest}"),
            };
            families[at].samples.push(labelled);
        }
    }
    let mut out = String::new();
    for family in &families {
        for line in family.comments.iter().chain(&family.samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "# HELP {WORKER_UP} Whether the worker answered this scrape\n# TYPE {WORKER_UP} gauge\n"
    ));
    for (worker, text) in texts.iter().enumerate() {
        let up = u8::from(text.is_some());
        out.push_str(&format!("{WORKER_UP}{{worker=\"{worker}\"}} {up}\n"));
    }
    out
}

/// One metric family of a merged exposition.
struct Family {
    name: String,
    comments: Vec<String>,
    samples: Vec<String>,
}

/// The index of family `name`, added if new.
fn family(families: &mut Vec<Family>, name: &str) -> usize {
    match families.iter().position(|f| f.name == name) {
        Some(at) => at,
        None => {
            families.push(Family {
                name: name.to_string(),
                comments: Vec::new(),
                samples: Vec::new(),
            });
            families.len() - 1
        }
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let admin = admin.clone();
                async move {
                    let (status, content_type, body) = admin
                        .respond(req.method(), req.uri().path(), req.uri().query())
                        .await;
                    Ok::<_, Infallible>(admin_response(status, content_type, body))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        content_type.parse().expect("static"),
    );
    response
        .headers_mut()
        .insert(http::header::SERVER, http::HeaderValue::from_static("pier"));
    response
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::ServeError> {
    crate::server::bind(addr, "--admin-addr").await
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER_0: &str = "\
# HELP pier_requests_total Requests answered, by status class
# TYPE pier_requests_total counter
pier_requests_total{status=\"2xx\"} 3
pier_requests_total{status=\"5xx\"} 1

# TYPE pier_requests_in_flight gauge
pier_requests_in_flight 0

# TYPE pier_guest_execution_seconds histogram
pier_guest_execution_seconds_bucket{le=\"0.001\"} 4
pier_guest_execution_seconds_bucket{le=\"+Inf\"} 4
pier_guest_execution_seconds_sum 0.002
pier_guest_execution_seconds_count 4
";

    const WORKER_2: &str = "\
# HELP pier_requests_total Requests answered, by status class
# TYPE pier_requests_total counter
pier_requests_total{status=\"2xx\"} 5

# TYPE pier_guest_failures_total counter
pier_guest_failures_total{kind=\"trap\"} 1
";

    #[test]
    fn every_family_once_every_sample_labelled_with_its_worker() {
        let merged = merge_workers(&[Some(WORKER_0.into()), None, Some(WORKER_2.into())]);
        let want = "\
# HELP pier_requests_total Requests answered, by status class
# TYPE pier_requests_total counter
pier_requests_total{worker=\"0\",status=\"2xx\"} 3
pier_requests_total{worker=\"0\",status=\"5xx\"} 1
pier_requests_total{worker=\"2\",status=\"2xx\"} 5

# TYPE pier_requests_in_flight gauge
pier_requests_in_flight{worker=\"0\"} 0

# TYPE pier_guest_execution_seconds histogram
pier_guest_execution_seconds_bucket{worker=\"0\",le=\"0.001\"} 4
pier_guest_execution_seconds_bucket{worker=\"0\",le=\"+Inf\"} 4
pier_guest_execution_seconds_sum{worker=\"0\"} 0.002
pier_guest_execution_seconds_count{worker=\"0\"} 4

# TYPE pier_guest_failures_total counter
pier_guest_failures_total{worker=\"2\",kind=\"trap\"} 1

# HELP pier_worker_up Whether the worker answered this scrape
# TYPE pier_worker_up gauge
pier_worker_up{worker=\"0\"} 1
pier_worker_up{worker=\"1\"} 0
pier_worker_up{worker=\"2\"} 1
";
        assert_eq!(merged, want);
    }

    #[test]
    fn health_counts_the_running_workers() {
        let workers = Workers::bind(2).unwrap();
        let said = |w: &Workers| {
            let (status, body) = w.health();
            (status.as_u16(), body)
        };
        assert_eq!(
            said(&workers),
            (503, "unavailable: 0 of 2 workers running\n".into())
        );
        workers.set_running(1, true);
        assert_eq!(said(&workers), (200, "ok: 1 of 2 workers running\n".into()));
        workers.set_running(0, true);
        assert_eq!(said(&workers), (200, "ok: 2 of 2 workers running\n".into()));
    }

    #[test]
    fn no_worker_answering_still_says_so() {
        let merged = merge_workers(&[None, None]);
        assert!(
            merged.contains("pier_worker_up{worker=\"0\"} 0\npier_worker_up{worker=\"1\"} 0\n")
        );
        assert_eq!(merged.matches("# TYPE").count(), 1);
    }
}
