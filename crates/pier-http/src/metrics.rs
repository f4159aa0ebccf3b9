//! Prometheus metrics: their names, and the recorder that the admin listener renders.
//!
//! Metrics are recorded through the `metrics` facade everywhere; without `--admin-addr` no
//! recorder is installed and recording costs next to nothing. The recorder is installed before
//! anything is served: what every request records is registered once ([`RequestMetrics`]).

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by status class (`2xx`, `4xx`, ...).
pub const REQUESTS: &str = "pier_requests_total";
/// Time from request head to the end of the response body.
pub const REQUEST_SECONDS: &str = "pier_request_duration_seconds";
/// Time a guest spent handling one request (instantiation included, unless made ahead).
pub const GUEST_SECONDS: &str = "pier_guest_execution_seconds";
/// Time to instantiate a fresh instance on its request (not counting those made ahead).
pub const INSTANTIATE_SECONDS: &str = "pier_instantiation_seconds";
/// Requests currently being answered.
pub const IN_FLIGHT: &str = "pier_requests_in_flight";
/// Instances that served a request, by when they were made (`ahead`, `on_request`).
pub const INSTANCES: &str = "pier_instances_created_total";
/// Requests that waited for room before their instance started (see the pace of live
/// instances).
pub const INSTANCES_PACED: &str = "pier_instances_paced_total";
/// Fresh instances live now (made, and not yet reset).
pub const INSTANCES_LIVE: &str = "pier_instances_live";
/// Requests waiting for room among the live instances now.
pub const INSTANCES_QUEUED: &str = "pier_instances_queued";
/// Guest failures by kind (`trap`, `timeout`, `out_of_memory`, and `pool_full` for a request the
/// pool had no instance for, answered 503).
pub const GUEST_FAILURES: &str = "pier_guest_failures_total";
/// Requests refused before reaching a guest, by reason.
pub const REJECTED: &str = "pier_requests_rejected_total";
/// Request body bytes received.
pub const BYTES_IN: &str = "pier_request_body_bytes_total";
/// Response body bytes sent.
pub const BYTES_OUT: &str = "pier_response_body_bytes_total";

/// Outgoing requests from guests, by result (status class, `error`, `denied`).
pub const OUTBOUND_REQUESTS: &str = "pier_outbound_requests_total";
/// New outgoing connections opened (requests minus these reused a pooled connection).
pub const OUTBOUND_CONNECTIONS: &str = "pier_outbound_connections_total";
/// Time from sending an outgoing request to its response head.
pub const OUTBOUND_SECONDS: &str = "pier_outbound_request_duration_seconds";
/// Response body bytes received by outgoing requests.
pub const OUTBOUND_BYTES_IN: &str = "pier_outbound_response_body_bytes_total";

/// Requests through a shared HTTP cache (`cache`), by `result`: `hit`, `stale` (sent stale:
/// while revalidating, or in place of an error), `revalidated` (a 304 refreshed it), `miss`,
/// `bypass` (a method the cache does not answer), `collapsed` (answered by another request's
/// fetch).
pub const CACHE_REQUESTS: &str = "pier_cache_requests_total";
/// Bytes of responses stored in a cache.
pub const CACHE_STORED_BYTES: &str = "pier_cache_stored_bytes_total";
/// Bytes of entries a cache evicted for room.
pub const CACHE_EVICTED_BYTES: &str = "pier_cache_evicted_bytes_total";
/// Operations on a cache's Redis store that failed or took too long (the requests then
/// bypassed the cache).
pub const CACHE_STORE_ERRORS: &str = "pier_cache_store_errors_total";

/// Pool slots (`kind`: `memory`, `table`) that served an instance before and are free now: warm,
/// so the next instance of the same component starts there without page faults.
pub const POOL_WARM_SLOTS: &str = "pier_pool_unused_warm_slots";
/// Bytes of reset pages those free warm slots keep resident (`kind`: `memory`, `table`). The pool
/// does not give them back to the kernel: after a burst of N concurrent instances, up to N slots'
/// worth stays resident until reused.
pub const POOL_RESIDENT_BYTES: &str = "pier_pool_unused_resident_bytes";
/// Pages between runs a request wrote that pier made private copies of, so that the pool's reset
/// finds few enough runs to keep all of them resident (`pier_engine::Joined`). It grows while
/// pool slots warm up, then stays flat.
pub const RESET_PAGES_JOINED: &str = "pier_reset_pages_joined_total";

/// The Prometheus status classes, in order.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of a status code's class in [`STATUS_CLASSES`].
fn status_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The Prometheus status class of a status code.
pub fn status_class(status: StatusCode) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// What every answered request records ([`REQUESTS`], [`REQUEST_SECONDS`]) for one route of a
/// manifest, or for the requests outside one: each series registered on its first use and
/// kept, not looked up in the recorder (its key built, its labels allocated) on every request.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    requests: [OnceLock<Counter>; 5],
    seconds: OnceLock<Histogram>,
}

impl RequestMetrics {
    /// The metrics of the requests outside a manifest's routes (one process-wide set).
    pub fn unrouted() -> &'static RequestMetrics {
        static UNROUTED: OnceLock<RequestMetrics> = OnceLock::new();
        UNROUTED.get_or_init(RequestMetrics::default)
    }

    /// A request answered with `status`, in `elapsed`; `route` is its route's pattern and
    /// component, for a manifest's route (the labels of a series registered now).
    pub fn answered(&self, route: Option<(&str, &str)>, status: StatusCode, elapsed: Duration) {
        let class = status_index(status);
        let requests = self.requests[class].get_or_init(|| {
            let status = STATUS_CLASSES[class];
            match route {
                None => metrics::counter!(REQUESTS, "status" => status),
                Some((route, component)) => metrics::counter!(
                    REQUESTS,
                    "status" => status,
                    "route" => route.to_string(),
                    "component" => component.to_string()
                ),
            }
        });
        requests.increment(1);
        let seconds = self.seconds.get_or_init(|| match route {
            None => metrics::histogram!(REQUEST_SECONDS),
            Some((route, component)) => metrics::histogram!(
                REQUEST_SECONDS,
                "route" => route.to_string(),
                "component" => component.to_string()
            ),
        });
        seconds.record(elapsed.as_secs_f64());
    }
}

/// [`IN_FLIGHT`], registered once.
pub fn in_flight() -> &'static Gauge {
    static IN_FLIGHT_GAUGE: OnceLock<Gauge> = OnceLock::new();
    IN_FLIGHT_GAUGE.get_or_init(|| metrics::gauge!(IN_FLIGHT))
}

/// [`BYTES_OUT`], registered once.
pub fn bytes_out() -> &'static Counter {
    static BYTES_OUT_COUNTER: OnceLock<Counter> = OnceLock::new();
    BYTES_OUT_COUNTER.get_or_init(|| metrics::counter!(BYTES_OUT))
}

/// Installs the Prometheus recorder (once per process) and returns the handle that renders it.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .install_recorder()?;
    metrics::describe_counter!(REQUESTS, "Requests answered, by status class");
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Request duration, head to end of body"
    );
    metrics::describe_histogram!(
        GUEST_SECONDS,
        metrics::Unit::Seconds,
        "Guest execution time per request"
    );
    metrics::describe_histogram!(
        INSTANTIATE_SECONDS,
        metrics::Unit::Seconds,
        "Instantiation time per request"
    );
    metrics::describe_gauge!(IN_FLIGHT, "Requests being answered");
    metrics::describe_gauge!(INSTANCES_LIVE, "Fresh instances live now");
    metrics::describe_gauge!(
        INSTANCES_QUEUED,
        "Requests waiting for room among the live instances"
    );
    metrics::describe_counter!(INSTANCES, "Instances created");
    metrics::describe_counter!(
        INSTANCES_PACED,
        "Requests that waited for room among the live instances before theirs started"
    );
    metrics::describe_counter!(
        RESET_PAGES_JOINED,
        "Pages made resident so the pool resets all a request wrote without handing pages back"
    );
    metrics::describe_counter!(GUEST_FAILURES, "Guest failures by kind");
    metrics::describe_counter!(
        REJECTED,
        "Requests refused before reaching a guest, by reason"
    );
    metrics::describe_counter!(
        BYTES_IN,
        metrics::Unit::Bytes,
        "Request body bytes received"
    );
    metrics::describe_counter!(BYTES_OUT, metrics::Unit::Bytes, "Response body bytes sent");
    metrics::describe_counter!(
        OUTBOUND_REQUESTS,
        "Outgoing requests from guests, by result"
    );
    metrics::describe_counter!(OUTBOUND_CONNECTIONS, "New outgoing connections opened");
    metrics::describe_histogram!(
        OUTBOUND_SECONDS,
        metrics::Unit::Seconds,
        "Outgoing request time to response head"
    );
    metrics::describe_counter!(
        OUTBOUND_BYTES_IN,
        metrics::Unit::Bytes,
        "Outgoing response body bytes received"
    );
    metrics::describe_gauge!(
        POOL_WARM_SLOTS,
        "Free pool slots that served an instance before"
    );
    metrics::describe_gauge!(
        POOL_RESIDENT_BYTES,
        metrics::Unit::Bytes,
        "Bytes free warm pool slots keep resident"
    );
    // Upkeep (histogram summaries) on a timer, not on every scrape.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Sets the pool gauges from the engines' pooling allocators, summed, as of now (called on each
/// scrape).
pub fn record_pool(engines: &[wasmtime::Engine]) {
    let (mut warm, mut resident) = ([0u64; 2], [0u64; 2]);
    for pool in engines.iter().filter_map(|e| e.pooling_allocator_metrics()) {
        warm[0] += u64::from(pool.unused_warm_memories());
        resident[0] += pool.unused_memory_bytes_resident() as u64;
        warm[1] += u64::from(pool.unused_warm_tables());
        resident[1] += pool.unused_table_bytes_resident() as u64;
    }
    for (i, kind) in ["memory", "table"].into_iter().enumerate() {
        metrics::gauge!(POOL_WARM_SLOTS, "kind" => kind).set(warm[i] as f64);
        metrics::gauge!(POOL_RESIDENT_BYTES, "kind" => kind).set(resident[i] as f64);
    }
}
