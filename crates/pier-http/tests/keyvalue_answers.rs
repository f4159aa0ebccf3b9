//! An answer that used a key-value store leaves only once the store's writes are on disk.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use pier_config::{CacheConfig, Grants};
use pier_engine::{CompileCache, HttpApp, KeyValueLimits, KeyValueState, StoreSettings, WasmFile};
use pier_kv::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_waits_until_the_write_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(pier_kv::Sqlite::open(&dir.path().join("default.sqlite")).unwrap());
    let wasm = WasmFile::read(&pier_testkit::guest("kv")).unwrap();
    let (_engine, mut app) = HttpApp::load_for_serving(
        &wasm,
        &Grants::default(),
        &CompileCache::new(&CacheConfig::Disabled),
        StoreSettings::default(),
        pier_engine::PoolSizes::guessed(10, 0),
    )
    .unwrap();
    let stores = BTreeMap::from([("default".to_string(), store.clone())]);
    app.set_key_value(KeyValueState::new("kv", stores, KeyValueLimits::default()));
    let app = Arc::new(app);
    for expected in 1..=20 {
        let req = http::Request::builder()
            .uri("http://localhost/count")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }),
            )
            .unwrap();
        let (response, _) = pier_http::handler::handle(app.clone(), req, None, None, None).await;
        assert_eq!(response.status(), 200);
        // The syncer has put the increment on disk by the time the answer is handed over.
        assert!(
            store.sync_point().is_none(),
            "answer {expected} left before its write was on disk"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, expected.to_string().as_bytes());
    }
}
