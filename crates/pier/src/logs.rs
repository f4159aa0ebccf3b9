//! pier's log on stderr. `pier serve` holds back what it logs while starting (compiling,
//! caching, sizing the pool) until its `pier: serving URL` line is out, so that line is the first
//! one a harness reads; a start that fails writes the held lines before its error.

use std::io::Write;
use std::sync::Mutex;

use crate::LogFormat;

/// Lines waiting for `release`; `None` once released.
static HELD: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Writes to stderr, or into the held lines while they are held.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(lines) => {
                lines.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => {
                drop(held);
                std::io::stderr().write(buf)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Sets up logging with `default` as the filter unless `PIER_LOG` says otherwise; with
/// `hold`, log lines are held until [`release`].
pub fn init(default: &str, format: LogFormat, hold: bool) {
    if hold {
        *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Writes the held lines, and every line from now on, to stderr.
pub fn release() {
    release_after("");
}

/// Writes `first` (whole lines), then the held lines, in one write to stderr, so a reader gets
/// them together; every line from now on goes straight to stderr.
pub fn release_after(first: &str) {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut out = first.as_bytes().to_vec();
    out.extend(held.unwrap_or_default());
    let _ = std::io::stderr().write_all(&out);
}
