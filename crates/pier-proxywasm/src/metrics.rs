//! Filter metrics: `proxy_define_metric` and friends, exported to Prometheus as
//! `pier_filter_<name>{filter="..."}` through pier's metrics recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::{Caller, Linker};

use crate::memory::{read, write};
use crate::status::{Status, code};
use crate::vm::VmState;

/// Most metrics the filters of a server may define.
const MAX_METRICS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

enum Handle {
    Counter(metrics::Counter),
    Gauge(metrics::Gauge),
    Histogram(metrics::Histogram),
}

struct Metric {
    kind: Kind,
    value: i64,
    handle: Handle,
}

/// The metrics filters define, by id (ids are shared by every VM of a filter).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    ids: HashMap<(Arc<str>, Kind, String), u32>,
    metrics: Vec<Metric>,
}

/// A Prometheus metric name for a filter's metric name.
fn prometheus_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 12);
    out.push_str("pier_filter_");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn define(&self, filter: &Arc<str>, kind: i32, name: String) -> Result<u32, Status> {
        let kind = match kind {
            0 => Kind::Counter,
            1 => Kind::Gauge,
            2 => Kind::Histogram,
            _ => return Err(Status::BadArgument),
        };
        let mut registry = self.lock();
        let key = (filter.clone(), kind, name);
        if let Some(&id) = registry.ids.get(&key) {
            return Ok(id);
        }
        if registry.metrics.len() >= MAX_METRICS {
            return Err(Status::InternalFailure);
        }
        let full = prometheus_name(&key.2);
        let label = filter.to_string();
        let handle = match kind {
            Kind::Counter => Handle::Counter(metrics::counter!(full, "filter" => label)),
            Kind::Gauge => Handle::Gauge(metrics::gauge!(full, "filter" => label)),
            Kind::Histogram => Handle::Histogram(metrics::histogram!(full, "filter" => label)),
        };
        registry.metrics.push(Metric {
            kind,
            value: 0,
            handle,
        });
        let id = registry.metrics.len() as u32;
        registry.ids.insert(key, id);
        Ok(id)
    }

    fn with<T>(
        &self,
        id: u32,
        f: impl FnOnce(&mut Metric) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut registry = self.lock();
        let metric = (id as usize)
            .checked_sub(1)
            .and_then(|i| registry.metrics.get_mut(i))
            .ok_or(Status::NotFound)?;
        f(metric)
    }

    fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        self.with(id, |m| match &m.handle {
            Handle::Counter(c) if delta >= 0 => {
                c.increment(delta as u64);
                m.value = m.value.saturating_add(delta);
                Ok(())
            }
            Handle::Gauge(g) => {
                g.increment(delta as f64);
                m.value = m.value.saturating_add(delta);
                Ok(())
            }
            _ => Err(Status::BadArgument),
        })
    }

    fn record(&self, id: u32, value: i64) -> Result<(), Status> {
        self.with(id, |m| {
            match &m.handle {
                // A counter only moves up: recording a larger value adds the difference.
                Handle::Counter(c) => {
                    if value > m.value {
                        c.increment((value - m.value) as u64);
                        m.value = value;
                    }
                }
                Handle::Gauge(g) => {
                    g.set(value as f64);
                    m.value = value;
                }
                Handle::Histogram(h) => h.record(value as f64),
            }
            Ok(())
        })
    }

    fn get(&self, id: u32) -> Result<i64, Status> {
        self.with(id, |m| match m.kind {
            Kind::Histogram => Err(Status::BadArgument),
            _ => Ok(m.value),
        })
    }
}

/// Adds the metric hostcalls.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, VmState>, kind: i32, np: i32, nl: i32, ret: i32| -> i32 {
            code((|| {
                let name =
                    String::from_utf8(read(&mut c, np, nl)?).map_err(|_| Status::BadArgument)?;
                let (code, root) = (c.data().code.clone(), c.data().root().clone());
                let id = code.shared.metrics.define(&root.name, kind, name)?;
                write(&mut c, ret, &id.to_le_bytes())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Caller<'_, VmState>, id: i32, delta: i64| -> i32 {
            code(c.data().code.shared.metrics.increment(id as u32, delta))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Caller<'_, VmState>, id: i32, value: i64| -> i32 {
            code(c.data().code.shared.metrics.record(id as u32, value))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Caller<'_, VmState>, id: i32, ret: i32| -> i32 {
            code((|| {
                let value = c.data().code.shared.metrics.get(id as u32)?;
                write(&mut c, ret, &(value as u64).to_le_bytes())
            })())
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_histograms() {
        let metrics = Metrics::default();
        let f: Arc<str> = "f".into();
        let c = metrics.define(&f, 0, "hits".into()).unwrap();
        assert_eq!(
            metrics.define(&f, 0, "hits".into()).unwrap(),
            c,
            "define is idempotent"
        );
        metrics.increment(c, 2).unwrap();
        metrics.increment(c, 3).unwrap();
        assert_eq!(metrics.get(c), Ok(5));
        assert_eq!(
            metrics.increment(c, -1),
            Err(Status::BadArgument),
            "counters only go up"
        );
        let g = metrics.define(&f, 1, "level".into()).unwrap();
        metrics.record(g, 7).unwrap();
        metrics.increment(g, -2).unwrap();
        assert_eq!(metrics.get(g), Ok(5));
        let h = metrics.define(&f, 2, "sizes".into()).unwrap();
        metrics.record(h, 10).unwrap();
        assert_eq!(metrics.get(h), Err(Status::BadArgument));
        assert_eq!(metrics.define(&f, 9, "x".into()), Err(Status::BadArgument));
        assert_eq!(metrics.get(999), Err(Status::NotFound));
        assert_eq!(prometheus_name("my.metric-1"), "pier_filter_my_metric_1");
    }
}
