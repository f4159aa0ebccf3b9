;; world: http
;; Streams the request body back as the response body, and copies every request header NAME into
;; the response as x-echo-NAME (repeated headers stay repeated). The body ends with the trailer
;; x-echo-trailer: done.
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.append" (func $fields.append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.entries" (func $fields.entries (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.headers" (func $request.headers (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.consume" (func $request.consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-body.stream" (func $incoming.stream (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-splice" (func $stream.splice (param i32 i32 i64 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $output.drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $input.drop (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func $alloc (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (call $alloc (local.get 2) (local.get 3)))

  (data (i32.const 16) "x-echo-")
  (data (i32.const 32) "x-echo-trailer") ;; 14
  (data (i32.const 48) "done")           ;; 4
  (global $ret i32 (i32.const 1024))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $headers i32) (local $list i32) (local $count i32) (local $entry i32) (local $name i32)
    (local $name_len i32) (local $response i32) (local $body i32) (local $in i32) (local $out i32)
    ;; Response headers: x-echo-NAME for each request header.
    (local.set $headers (call $fields.new))
    (call $fields.entries (call $request.headers (local.get $request)) (global.get $ret))
    (local.set $list (i32.load (global.get $ret)))
    (local.set $count (i32.load offset=4 (global.get $ret)))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $count)))
        (local.set $entry (local.get $list))
        (local.set $name_len (i32.add (i32.const 7) (i32.load offset=4 (local.get $entry))))
        (local.set $name (call $alloc (i32.const 1) (local.get $name_len)))
        (memory.copy (local.get $name) (i32.const 16) (i32.const 7))
        (memory.copy (i32.add (local.get $name) (i32.const 7)) (i32.load (local.get $entry))
                     (i32.load offset=4 (local.get $entry)))
        (call $fields.append (local.get $headers) (local.get $name) (local.get $name_len)
              (i32.load offset=8 (local.get $entry)) (i32.load offset=12 (local.get $entry)) (global.get $ret))
        (local.set $list (i32.add (local.get $list) (i32.const 16)))
        (local.set $count (i32.sub (local.get $count) (i32.const 1)))
        (br $next)))
    (local.set $response (call $response.new (local.get $headers)))
    (call $response.body (local.get $response) (global.get $ret))
    (local.set $body (i32.load offset=4 (global.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    ;; Body: splice request -> response until the request body ends.
    (call $request.consume (local.get $request) (global.get $ret))
    (call $incoming.stream (i32.load offset=4 (global.get $ret)) (global.get $ret))
    (local.set $in (i32.load offset=4 (global.get $ret)))
    (call $body.write (local.get $body) (global.get $ret))
    (local.set $out (i32.load offset=4 (global.get $ret)))
    (block $eof
      (loop $copy
        (call $stream.splice (local.get $out) (local.get $in) (i64.const 65536) (global.get $ret))
        (br_if $eof (i32.load8_u (global.get $ret)))
        (br $copy)))
    (call $input.drop (local.get $in))
    (call $output.drop (local.get $out))
    (local.set $headers (call $fields.new))
    (call $fields.append (local.get $headers) (i32.const 32) (i32.const 14) (i32.const 48) (i32.const 4)
          (global.get $ret))
    (call $body.finish (local.get $body) (i32.const 1) (local.get $headers) (global.get $ret)))
)
