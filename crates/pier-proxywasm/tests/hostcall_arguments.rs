//! Every Proxy-Wasm hostcall with arbitrary pointers, lengths, ids, enums and sizes, from a
//! filter that makes generated sequences of calls in its request and response callbacks: pier
//! answers each with a status or ends the callback as a trap, never panics, never hangs, and
//! the filter keeps serving the next stream. Arguments lean on the edges: the end of memory,
//! lengths that overflow, negative numbers, and pointers into real data (a header map, names),
//! so calls also get past their checks. `PROPTEST_CASES=20000` runs it longer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pier_proxywasm::{Filter, Pairs, PluginConfig, Shared, StreamInfo, VmConfig};
use proptest::prelude::*;

/// Hostcall parameter types: all i32 but the metric values.
#[derive(Clone, Copy)]
enum Ty {
    I32,
    I64,
}
use Ty::{I32, I64};

/// Every hostcall pier links for filters, with its ABI signature (all return an i32 status).
const HOSTCALLS: &[(&str, &[Ty])] = &[
    ("proxy_log", &[I32, I32, I32]),
    ("proxy_get_log_level", &[I32]),
    ("proxy_get_current_time_nanoseconds", &[I32]),
    ("proxy_set_tick_period_milliseconds", &[I32]),
    ("proxy_get_configuration", &[I32, I32]),
    ("proxy_get_buffer_bytes", &[I32, I32, I32, I32, I32]),
    ("proxy_get_buffer_status", &[I32, I32, I32]),
    ("proxy_set_buffer_bytes", &[I32, I32, I32, I32, I32]),
    ("proxy_get_header_map_pairs", &[I32, I32, I32]),
    ("proxy_set_header_map_pairs", &[I32, I32, I32]),
    ("proxy_get_header_map_value", &[I32, I32, I32, I32, I32]),
    ("proxy_add_header_map_value", &[I32, I32, I32, I32, I32]),
    ("proxy_replace_header_map_value", &[I32, I32, I32, I32, I32]),
    ("proxy_remove_header_map_value", &[I32, I32, I32]),
    ("proxy_get_header_map_size", &[I32, I32]),
    ("proxy_get_property", &[I32, I32, I32, I32]),
    ("proxy_set_property", &[I32, I32, I32, I32]),
    (
        "proxy_send_local_response",
        &[I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    ("proxy_continue_stream", &[I32]),
    ("proxy_close_stream", &[I32]),
    ("proxy_continue_request", &[]),
    ("proxy_continue_response", &[]),
    ("proxy_get_status", &[I32, I32, I32]),
    ("proxy_set_effective_context", &[I32]),
    ("proxy_done", &[]),
    ("proxy_get_shared_data", &[I32, I32, I32, I32, I32]),
    ("proxy_set_shared_data", &[I32, I32, I32, I32, I32]),
    ("proxy_register_shared_queue", &[I32, I32, I32]),
    ("proxy_resolve_shared_queue", &[I32, I32, I32, I32, I32]),
    ("proxy_dequeue_shared_queue", &[I32, I32, I32]),
    ("proxy_enqueue_shared_queue", &[I32, I32, I32]),
    ("proxy_define_metric", &[I32, I32, I32, I32]),
    ("proxy_increment_metric", &[I32, I64]),
    ("proxy_record_metric", &[I32, I64]),
    ("proxy_get_metric", &[I32, I32]),
    (
        "proxy_http_call",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    (
        "proxy_grpc_call",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    (
        "proxy_grpc_stream",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    ("proxy_grpc_send", &[I32, I32, I32, I32]),
    ("proxy_grpc_cancel", &[I32]),
    ("proxy_grpc_close", &[I32]),
    (
        "proxy_call_foreign_function",
        &[I32, I32, I32, I32, I32, I32],
    ),
];

/// Where the filter keeps real data for arguments to point at: a two-pair header map at
/// `MAP` (24 bytes), and the text `x-key` at `NAME`.
const MAP: i64 = 1024;
const NAME: i64 = 1100;

/// One hostcall and its arguments.
type Call = (usize, Vec<i64>);

fn argument() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        0i64..16,
        // The end of the one-page memory.
        65_500i64..65_540,
        Just(MAP),
        Just(NAME),
        Just(24),
        Just(5),
        Just(i64::from(i32::MAX)),
        Just(i64::from(i32::MIN)),
        any::<i32>().prop_map(i64::from),
        any::<i64>(),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    (0..HOSTCALLS.len()).prop_flat_map(|index| {
        prop::collection::vec(argument(), HOSTCALLS[index].1.len())
            .prop_map(move |args| (index, args))
    })
}

/// The filter: a bump allocator over the second half of its memory (0 once it is used up), and
/// `calls` made in both header callbacks, statuses dropped.
fn filter_text(calls: &[Call]) -> String {
    let mut imports = String::new();
    for (name, params) in HOSTCALLS {
        let params: Vec<&str> = params
            .iter()
            .map(|t| match t {
                I32 => "i32",
                I64 => "i64",
            })
            .collect();
        imports.push_str(&format!(
            "  (import \"env\" \"{name}\" (func ${name} (param {}) (result i32)))\n",
            params.join(" ")
        ));
    }
    let mut body = String::new();
    for (index, args) in calls {
        let (name, types) = HOSTCALLS[*index];
        body.push_str(&format!("    (drop (call ${name}"));
        for (ty, value) in types.iter().zip(args) {
            match ty {
                I32 => body.push_str(&format!(" (i32.const {})", *value as i32)),
                I64 => body.push_str(&format!(" (i64.const {value})")),
            }
        }
        body.push_str("))\n");
    }
    format!(
        r#"(module
{imports}  (memory (export "memory") 1)
  ;; count 2; "a" = "1", "x-key" = "v"
  (data (i32.const {MAP}) "\02\00\00\00\01\00\00\00\01\00\00\00\05\00\00\00\01\00\00\00a\001\00x-key\00v\00")
  (data (i32.const {NAME}) "x-key")
  (global $next (mut i32) (i32.const 32768))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (if (i32.gt_u (local.get $size) (i32.sub (i32.const 65536) (global.get $next)))
      (then (return (i32.const 0))))
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func $calls
{body}  )
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $calls) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $calls) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
)"#
    )
}

fn engine() -> &'static wasmtime::Engine {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        pier_engine::new_engine(
            pier_engine::EngineKind::Serve {
                pool: pier_engine::PoolSizes::guessed(4, 4),
                reset: pier_engine::MemoryReset::DirtyPages,
            },
            false,
        )
        .unwrap()
    })
}

/// One stream through the filter, both header phases; how it ended, or `None` if it hung.
async fn stream(filter: &Filter) -> Option<String> {
    let run = async {
        let mut request: Pairs = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/".to_vec()),
            (b":authority".to_vec(), b"localhost".to_vec()),
        ];
        let (outcome, stream) = filter
            .on_request_headers(Arc::new(StreamInfo::default()), &mut request, true)
            .await;
        let mut seen = format!("{outcome:?}");
        if let Some(stream) = stream {
            let mut response: Pairs = vec![(b":status".to_vec(), b"200".to_vec())];
            seen += &format!(
                " then {:?}",
                stream.on_response_headers(&mut response, true).await
            );
        }
        seen
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .ok()
}

fn check(calls: &[Call]) -> Result<(), TestCaseError> {
    let path = std::env::temp_dir().join(format!(
        "pier-hostcall-arguments-{}-{:?}.wat",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, filter_text(calls)).unwrap();
    let loaded = Filter::load(
        engine(),
        &path,
        VmConfig::default(),
        vec![PluginConfig::default()],
        Arc::new(Shared::new(1 << 20)),
        None,
    );
    let _ = std::fs::remove_file(&path);
    let filter = loaded.expect("the filter links: every hostcall is there with its signature");
    let filter = &filter[0];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for round in 0..2 {
            let seen = stream(filter).await;
            prop_assert!(seen.is_some(), "stream {round} hung after {calls:?}");
        }
        Ok(())
    })
}

proptest! {

    #[test]
    fn any_arguments_to_any_hostcall_are_a_status_or_a_trap(
        calls in prop::collection::vec(call(), 1..12),
    ) {
        check(&calls)?;
    }
}

/// Each hostcall alone, with every argument at each edge value in turn.
#[test]
fn every_hostcall_at_every_edge() {
    let edges = [0i64, -1, 65_532, 65_536, i64::from(i32::MAX), MAP, NAME];
    for (index, (_, params)) in HOSTCALLS.iter().enumerate() {
        for edge in edges {
            let calls: Vec<Call> = (0..params.len().max(1))
                .map(|at| {
                    let args = (0..params.len())
                        .map(|i| if i == at { edge } else { 5 })
                        .collect();
                    (index, args)
                })
                .collect();
            check(&calls).unwrap();
        }
    }
}
