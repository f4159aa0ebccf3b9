//! A guest's stdout and stderr, into pier's log: one event per line, tagged with the component,
//! within a budget of bytes per instance (`--max-log-size`): past it the rest is dropped, and
//! one line says so. A guest cannot flood the log, or the disk behind it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept before it is logged without its newline, so a guest cannot grow the buffer
/// without bound.
const MAX_LINE: usize = 16 * 1024;

/// A guest's stdout or stderr, sent to pier's log one line per event, tagged with the component.
#[derive(Clone)]
pub struct GuestLog(Arc<GuestLogInner>);

struct GuestLogInner {
    component: Arc<str>,
    stream: &'static str,
    pending: Mutex<Vec<u8>>,
    budget: Arc<LogBudget>,
}

/// The bytes an instance may still write to its stdout and stderr together.
#[derive(Debug)]
pub struct LogBudget {
    max: u64,
    left: AtomicU64,
    told: AtomicBool,
}

impl LogBudget {
    /// `max` bytes in all (`u64::MAX`: no limit).
    pub fn new(max: u64) -> Arc<LogBudget> {
        Arc::new(LogBudget {
            max,
            left: AtomicU64::new(max),
            told: AtomicBool::new(false),
        })
    }

    /// How much of `n` bytes may still be written.
    fn take(&self, n: usize) -> usize {
        let n = n as u64;
        let granted = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_sub(n))
            })
            .map_or(0, |left| left.min(n));
        granted as usize
    }
}

impl GuestLog {
    /// A log sink for `component`'s `stream` ("stdout" or "stderr"), spending `budget` (shared
    /// with the instance's other stream).
    pub fn new(component: Arc<str>, stream: &'static str, budget: Arc<LogBudget>) -> Self {
        GuestLog(Arc::new(GuestLogInner {
            component,
            stream,
            pending: Mutex::new(Vec::new()),
            budget,
        }))
    }
}

impl GuestLogInner {
    fn write(&self, bytes: &[u8]) {
        let allowed = self.budget.take(bytes.len());
        if allowed < bytes.len() && !self.budget.told.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                target: "pier::guest",
                component = &*self.component,
                "the instance wrote more than {} bytes to stdout and stderr: the rest is dropped \
                 (--max-log-size)",
                self.budget.max
            );
        }
        let mut bytes = &bytes[..allowed];
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&bytes[..newline]);
            self.emit(&pending);
            pending.clear();
            bytes = &bytes[newline + 1..];
        }
        pending.extend_from_slice(bytes);
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            self.emit(&pending);
            *pending = rest;
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        tracing::info!(target: "pier::guest", component = &*self.component, stream = self.stream, "{line}");
    }
}

impl Drop for GuestLogInner {
    fn drop(&mut self) {
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            self.emit(&pending);
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.write(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two streams of an instance share its budget; past it writes are taken and dropped.
    #[test]
    fn an_instance_writes_to_the_log_within_its_budget() {
        let budget = LogBudget::new(10);
        assert_eq!(budget.take(4), 4);
        assert_eq!(budget.take(4), 4);
        assert_eq!(budget.take(4), 2, "the rest of it");
        assert_eq!(budget.take(4), 0);
        let log = GuestLog::new("c".into(), "stdout", LogBudget::new(5));
        log.0.write(b"abcdefgh\n");
        assert_eq!(
            *log.0.pending.lock().unwrap(),
            b"abcde",
            "cut at the budget"
        );
        assert!(log.0.budget.told.load(Ordering::Acquire), "said once");
        let unlimited = LogBudget::new(u64::MAX);
        assert_eq!(unlimited.take(usize::MAX), usize::MAX);
    }
}
