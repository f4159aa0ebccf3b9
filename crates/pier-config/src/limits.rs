//! Protections `pier serve` applies by default, each tunable by a flag.

use std::time::Duration;

/// Limits on requests, guests and connections. [`Limits::default`] is what pier uses unless told
/// otherwise; every field has a flag of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `--max-memory`: linear memory one guest instance may grow to; past it the guest traps.
    pub max_memory: u64,
    /// `--timeout`: wall-clock time one request may spend in its guest; zero means no limit.
    pub timeout: Duration,
    /// `--max-body`: request body size; larger bodies get 413.
    pub max_body: u64,
    /// `--max-header-size`: total size of a request's header section; larger gets 431.
    pub max_header_size: usize,
    /// `--max-headers`: number of request header fields; more gets 431.
    pub max_headers: usize,
    /// `--header-timeout`: time a client has to send a request's headers (slowloris).
    pub header_timeout: Duration,
    /// `--idle-timeout`: how long a keep-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// `--send-timeout`: how long pier's writes may wait on a client that does not read them
    /// (slow-read, zero window) before its connection is closed; zero means no limit.
    pub send_timeout: Duration,
    /// `--max-outbound-requests`: outgoing HTTP requests one guest instance may have in flight
    /// at once; one more fails at once with `connection-limit-reached`.
    pub max_outbound_requests: usize,
    /// `--max-log-size`: bytes one guest instance may write to its stdout and stderr together;
    /// the rest is dropped, and one log line says so.
    pub max_log_size: u64,
    /// `--max-sockets`: sockets one guest instance may have open (`wasi:sockets` 0.2); one more
    /// is `new-socket-limit`.
    pub max_sockets: usize,
    /// `--max-handles`: resources (handles: streams, fields, sockets, ...) one guest instance may
    /// hold; past it the guest traps. Bounds the host memory a guest can make pier hold.
    pub max_handles: usize,
    /// `--max-concurrency`: requests in guests at once; beyond it pier answers 503 at once.
    pub max_concurrency: usize,
    /// `--max-connections`: open client connections; beyond it pier stops accepting.
    pub max_connections: usize,
    /// `--h2-max-streams`: concurrent streams per HTTP/2 connection.
    pub h2_max_streams: u32,
    /// `--drain-timeout`: on shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory: 128 << 20,
            timeout: Duration::from_secs(30),
            max_body: 64 << 20,
            max_header_size: 64 << 10,
            max_headers: 100,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_outbound_requests: 100,
            max_log_size: 1 << 20,
            max_sockets: 100,
            max_handles: 10_000,
            max_concurrency: 500,
            max_connections: 10_000,
            h2_max_streams: 100,
            drain_timeout: Duration::from_secs(30),
        }
    }
}
