//! In-process cost of one request with a fresh instance: store + instantiate + handle + body +
//! drop, through the same handler the server uses (no sockets).
//!
//! `cargo bench -p pier-http --bench instance` (Python/JS guests are included when
//! `guests/build.sh` has built them).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use pier_config::{CacheConfig, Grants};
use pier_engine::{CompileCache, HttpApp, StoreSettings, WasmFile};

/// Each guest, and whether the load-time optimiser runs on it (`python-hello-unmerged`: the
/// component as componentize-py linked it).
fn guests() -> Vec<(&'static str, std::path::PathBuf, bool)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = vec![("wat-hello", root.join("examples/hello/hello.wasm"), true)];
    for (name, file, optimize) in [
        ("python-hello", "python-hello.wasm", true),
        ("python-hello-unmerged", "python-hello.wasm", false),
        ("js-hello", "js-hello.wasm", true),
    ] {
        let path = root.join("guests/build").join(file);
        if path.exists() {
            out.push((name, path, optimize));
        }
    }
    out
}

fn fresh_instance(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/pier-cache");
    let cache = CompileCache::new(&CacheConfig::Dir(cache_dir));
    let mut group = c.benchmark_group("fresh-instance-request");
    for (name, path, optimize) in guests() {
        let wasm = WasmFile::read(&path).unwrap();
        let cache = cache.clone().optimize(optimize);
        // The engine each guest gets from `pier serve`: its pool fitted to the component.
        let (_engine, app) = HttpApp::load_for_serving(
            &wasm,
            &Grants::default(),
            &cache,
            StoreSettings::default(),
            pier_engine::PoolSizes::guessed(1000, 0),
        )
        .unwrap();
        let app = Arc::new(app);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let app = app.clone();
                async move {
                    let req = http::Request::builder()
                        .uri("http://localhost/")
                        .body(Empty::<Bytes>::new().map_err(
                            |never: Infallible| -> wasmtime_wasi_http::Error { match never {} },
                        ))
                        .unwrap();
                    let (response, _) =
                        pier_http::handler::handle(app, req, None, None, None).await;
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fresh_instance);
criterion_main!(benches);
