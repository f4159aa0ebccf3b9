;; A Proxy-Wasm filter (ABI 0.2.1) against the raw ABI, for pier's filter tests:
;;   request  /t/local...  answers 204 itself (proxy_send_local_response)
;;   request  /t/trap...   traps (to exercise the failure policy)
;;   request  with header x-deny (any value): answers 403 itself
;;   otherwise             adds request header x-filtered: yes
;;   response              adds x-filter-response: 1
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (data (i32.const 16) ":path")            ;; 5
  (data (i32.const 32) "x-filtered")       ;; 10
  (data (i32.const 48) "yes")              ;; 3
  (data (i32.const 64) "x-filter-response") ;; 17
  (data (i32.const 96) "1")                ;; 1
  (data (i32.const 112) "filter started")  ;; 14
  (data (i32.const 128) "/t/local")        ;; 8
  (data (i32.const 144) "/t/trap")         ;; 7
  (data (i32.const 160) "x-deny")          ;; 6
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 112) (i32.const 14)))
    (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  ;; Whether the :path value (pointer at 1024, length at 1028) starts with the len bytes at p.
  (func $path_starts_with (param $p i32) (param $len i32) (result i32)
    (local $i i32)
    (if (i32.lt_u (i32.load (i32.const 1028)) (local.get $len)) (then (return (i32.const 0))))
    (block $differ
      (loop $each
        (br_if $differ (i32.ne (i32.load8_u (i32.add (i32.load (i32.const 1024)) (local.get $i)))
                               (i32.load8_u (i32.add (local.get $p) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $each (i32.lt_u (local.get $i) (local.get $len)))
        (return (i32.const 1))))
    (i32.const 0))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 1024) (i32.const 1028)))
    (if (call $path_starts_with (i32.const 128) (i32.const 8))
      (then
        (drop (call $local (i32.const 204) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const -1)))
        (return (i32.const 1))))
    (if (call $path_starts_with (i32.const 144) (i32.const 7)) (then unreachable))
    ;; Found (status 0): x-deny is there.
    (if (i32.eqz (call $get (i32.const 0) (i32.const 160) (i32.const 6) (i32.const 1032) (i32.const 1036)))
      (then
        (drop (call $local (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const -1)))
        (return (i32.const 1))))
    (drop (call $add (i32.const 0) (i32.const 32) (i32.const 10) (i32.const 48) (i32.const 3)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 64) (i32.const 17) (i32.const 96) (i32.const 1)))
    (i32.const 0))
)
