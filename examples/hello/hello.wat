;; world: http
;; The smallest useful wasi:http/proxy component: 200 "hello from pier", with a content type and
;; two set-cookie headers (to show repeated headers survive).
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.append" (func $fields.append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream.drop (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  ;; Bump allocator: the instance lives for one request.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))

  (data (i32.const 16) "content-type")     ;; 12
  (data (i32.const 32) "text/plain")       ;; 10
  (data (i32.const 48) "set-cookie")       ;; 10
  (data (i32.const 64) "a=1")              ;; 3
  (data (i32.const 72) "b=2")              ;; 3
  (data (i32.const 80) "hello from pier\n") ;; 16

  ;; Return area for results passed through memory.
  (global $ret i32 (i32.const 1024))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $headers i32) (local $response i32) (local $body i32) (local $stream i32)
    (local.set $headers (call $fields.new))
    (call $fields.append (local.get $headers) (i32.const 16) (i32.const 12) (i32.const 32) (i32.const 10) (global.get $ret))
    (call $fields.append (local.get $headers) (i32.const 48) (i32.const 10) (i32.const 64) (i32.const 3) (global.get $ret))
    (call $fields.append (local.get $headers) (i32.const 48) (i32.const 10) (i32.const 72) (i32.const 3) (global.get $ret))
    (local.set $response (call $response.new (local.get $headers)))
    (call $response.body (local.get $response) (global.get $ret))
    (local.set $body (i32.load offset=4 (global.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body.write (local.get $body) (global.get $ret))
    (local.set $stream (i32.load offset=4 (global.get $ret)))
    (call $stream.write (local.get $stream) (i32.const 80) (i32.const 16) (global.get $ret))
    (call $stream.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))
)
