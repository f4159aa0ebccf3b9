;; A Proxy-Wasm filter built for ABI 0.1.0: header callbacks without end_of_stream, the plugin
;; configuration read with proxy_get_configuration.
;;   request   adds x-abi: 0.1.0 and x-abi-config: <plugin configuration>
;;   response  adds x-abi-response: 0.1.0
(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_configuration" (func $config (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  (func (export "proxy_abi_version_0_1_0"))
  (data (i32.const 16) "x-abi")            ;; 5
  (data (i32.const 32) "0.1.0")            ;; 5
  (data (i32.const 48) "x-abi-config")     ;; 12
  (data (i32.const 64) "x-abi-response")   ;; 14
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5)))
    (global.set $heap (i32.const 4096))
    (if (i32.eqz (call $config (i32.const 1024) (i32.const 1028)))
      (then
        (drop (call $add (i32.const 0) (i32.const 48) (i32.const 12)
                    (i32.load (i32.const 1024)) (i32.load (i32.const 1028))))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 64) (i32.const 14) (i32.const 32) (i32.const 5)))
    (i32.const 0))
)
