//! What a filter costs in-process: one stream through a no-op filter (guests/proxywasm/noop.wat):
//! request headers, response headers, and the end (`on_done`, `on_log`, `on_delete`).
//!
//!     cargo bench -p pier-proxywasm

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pier_proxywasm::{Filter, Pairs, StreamInfo};

fn stream(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let engine = pier_engine::new_engine(
        pier_engine::EngineKind::Serve {
            pool: pier_engine::PoolSizes::guessed(16, 16),
            reset: pier_engine::MemoryReset::DirtyPages,
        },
        false,
    )
    .unwrap();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/proxywasm/noop.wat");
    let filter = Filter::load(
        &engine,
        &path,
        Default::default(),
        vec![Default::default()],
        Default::default(),
        None,
    )
    .unwrap()
    .remove(0);
    let info = Arc::new(StreamInfo::default());
    let request: Pairs = vec![
        (b":method".to_vec(), b"GET".to_vec()),
        (b":path".to_vec(), b"/".to_vec()),
        (b":authority".to_vec(), b"localhost".to_vec()),
        (b"accept".to_vec(), b"*/*".to_vec()),
    ];
    c.bench_function("no-op filter: one stream", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut headers = request.clone();
            let (_, stream) = filter
                .on_request_headers(info.clone(), &mut headers, true)
                .await;
            let stream = stream.unwrap();
            let mut response = vec![(b":status".to_vec(), b"200".to_vec())];
            stream.on_response_headers(&mut response, false).await;
        })
    });
}

criterion_group!(benches, stream);
criterion_main!(benches);
