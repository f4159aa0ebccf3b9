;; world: http
;; Forwards each request to another server through wasi:http/outgoing-handler, streaming the
;; body both ways: method, path-with-query and headers are kept (pier refuses the forbidden ones,
;; such as host and connection, and the guest skips them); the target comes from request headers
;; `x-forward-to: HOST:PORT` and `x-forward-scheme: https` (default http). The upstream's status
;; and body come back. If the request fails, the answer is 502 with the body "error-code NN\n",
;; NN being the wasi:http error-code case number, two digits (15 = HTTP-request-denied, ...).
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.get" (func $fields.get (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.entries" (func $fields.entries (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.append" (func $fields.append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.headers" (func $request.headers (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.method" (func $request.method (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.path-with-query" (func $request.path (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.consume" (func $request.consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-body.stream" (func $incoming.stream (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-request" (func $out.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-method" (func $out.method (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-scheme" (func $out.scheme (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-authority" (func $out.authority (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-path-with-query" (func $out.path (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.body" (func $out.body (param i32 i32)))
  (import "wasi:http/outgoing-handler@0.2.12" "handle" (func $send (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.get" (func $future.get (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.subscribe" (func $future.subscribe (param i32) (result i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $pollable.block (param i32)))
  (import "wasi:io/poll@0.2.12" "[resource-drop]pollable" (func $pollable.drop (param i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-response.status" (func $upstream.status (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-response.consume" (func $upstream.consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.set-status-code" (func $response.status (param i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-splice" (func $stream.splice (param i32 i32 i64 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $output.drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $input.drop (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get 3) (i32.const 16)) (i32.const 1))))))
    (local.get $p))

  (data (i32.const 16) "x-forward-to")      ;; 12
  (data (i32.const 32) "x-forward-scheme")  ;; 16
  (data (i32.const 48) "error-code ")       ;; 11
  (global $ret i32 (i32.const 1024))

  ;; The first value of request header NAME: pointer at ret+0, length at ret+4 (length 0: none).
  (func $header (param $headers i32) (param $name i32) (param $len i32)
    (call $fields.get (local.get $headers) (local.get $name) (local.get $len) (global.get $ret))
    (if (i32.eqz (i32.load offset=4 (global.get $ret)))
      (then (i64.store (global.get $ret) (i64.const 0)))
      (else
        (i32.store offset=4 (global.get $ret) (i32.load offset=4 (i32.load (global.get $ret))))
        (i32.store (global.get $ret) (i32.load (i32.load (global.get $ret)))))))

  ;; Copies everything from input stream `in` to output stream `out`, then drops both. A stream
  ;; that fails (rather than closes) traps, so a broken body is never passed on as complete.
  (func $pump (param $in i32) (param $out i32)
    (block $eof
      (loop $copy
        (call $stream.splice (local.get $out) (local.get $in) (i64.const 65536) (global.get $ret))
        (br_if $eof (i32.load8_u (global.get $ret)))
        (br $copy)))
    (if (i32.eqz (i32.load8_u offset=8 (global.get $ret))) (then unreachable))
    (call $input.drop (local.get $in))
    (call $output.drop (local.get $out)))

  ;; Answers with `status` and returns the response body (its output stream at ret+16).
  (func $answer (param $outparam i32) (param $status i32) (result i32)
    (local $response i32) (local $body i32)
    (local.set $response (call $response.new (call $fields.new)))
    (drop (call $response.status (local.get $response) (local.get $status)))
    (call $response.body (local.get $response) (global.get $ret))
    (local.set $body (i32.load offset=4 (global.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body.write (local.get $body) (global.get $ret))
    (i32.store offset=16 (global.get $ret) (i32.load offset=4 (global.get $ret)))
    (local.get $body))

  ;; 502 "error-code N".
  (func $fail (param $outparam i32) (param $code i32)
    (local $body i32) (local $stream i32)
    (local.set $body (call $answer (local.get $outparam) (i32.const 502)))
    (local.set $stream (i32.load offset=16 (global.get $ret)))
    (i32.store8 (i32.const 59) (i32.add (i32.const 48) (i32.div_u (local.get $code) (i32.const 10))))
    (i32.store8 (i32.const 60) (i32.add (i32.const 48) (i32.rem_u (local.get $code) (i32.const 10))))
    (i32.store8 (i32.const 61) (i32.const 10))
    (call $stream.write (local.get $stream) (i32.const 48) (i32.const 14) (global.get $ret))
    (call $output.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $headers i32) (local $out i32) (local $out_body i32) (local $future i32) (local $pollable i32)
    (local $upstream i32) (local $body i32) (local $https i32) (local $fields i32) (local $list i32)
    (local $count i32)
    (local.set $headers (call $request.headers (local.get $request)))
    ;; copy the request headers; append refuses forbidden names, and those are simply skipped
    (local.set $fields (call $fields.new))
    (call $fields.entries (local.get $headers) (global.get $ret))
    (local.set $list (i32.load (global.get $ret)))
    (local.set $count (i32.load offset=4 (global.get $ret)))
    (block $copied
      (loop $next
        (br_if $copied (i32.eqz (local.get $count)))
        (call $fields.append (local.get $fields)
              (i32.load (local.get $list)) (i32.load offset=4 (local.get $list))
              (i32.load offset=8 (local.get $list)) (i32.load offset=12 (local.get $list)) (global.get $ret))
        (local.set $list (i32.add (local.get $list) (i32.const 16)))
        (local.set $count (i32.sub (local.get $count) (i32.const 1)))
        (br $next)))
    (local.set $out (call $out.new (local.get $fields)))
    ;; method and path, as received
    (call $request.method (local.get $request) (global.get $ret))
    (drop (call $out.method (local.get $out) (i32.load8_u (global.get $ret))
                (i32.load offset=4 (global.get $ret)) (i32.load offset=8 (global.get $ret))))
    (call $request.path (local.get $request) (global.get $ret))
    (drop (call $out.path (local.get $out) (i32.load8_u (global.get $ret))
                (i32.load offset=4 (global.get $ret)) (i32.load offset=8 (global.get $ret))))
    ;; scheme: https when x-forward-scheme is 5 bytes long ("https"), else http
    (call $header (local.get $headers) (i32.const 32) (i32.const 16))
    (local.set $https (i32.eq (i32.load offset=4 (global.get $ret)) (i32.const 5)))
    (drop (call $out.scheme (local.get $out) (i32.const 1) (local.get $https) (i32.const 0) (i32.const 0)))
    (call $header (local.get $headers) (i32.const 16) (i32.const 12))
    (drop (call $out.authority (local.get $out) (i32.const 1)
                (i32.load (global.get $ret)) (i32.load offset=4 (global.get $ret))))
    (call $out.body (local.get $out) (global.get $ret))
    (local.set $out_body (i32.load offset=4 (global.get $ret)))

    ;; send
    (call $send (local.get $out) (i32.const 0) (i32.const 0) (global.get $ret))
    (if (i32.load8_u (global.get $ret))
      (then (call $fail (local.get $outparam) (i32.load8_u offset=8 (global.get $ret))) (return)))
    (local.set $future (i32.load offset=8 (global.get $ret)))

    ;; stream the request body up
    (call $request.consume (local.get $request) (global.get $ret))
    (call $incoming.stream (i32.load offset=4 (global.get $ret)) (global.get $ret))
    (local.set $body (i32.load offset=4 (global.get $ret)))
    (call $body.write (local.get $out_body) (global.get $ret))
    (call $pump (local.get $body) (i32.load offset=4 (global.get $ret)))
    (call $body.finish (local.get $out_body) (i32.const 0) (i32.const 0) (global.get $ret))

    ;; wait for the response head
    (block $ready
      (loop $wait
        (call $future.get (local.get $future) (global.get $ret))
        (br_if $ready (i32.load8_u (global.get $ret)))
        (local.set $pollable (call $future.subscribe (local.get $future)))
        (call $pollable.block (local.get $pollable))
        (call $pollable.drop (local.get $pollable))
        (br $wait)))
    (if (i32.load8_u offset=16 (global.get $ret))
      (then (call $fail (local.get $outparam) (i32.load8_u offset=24 (global.get $ret))) (return)))
    (local.set $upstream (i32.load offset=24 (global.get $ret)))

    ;; stream the response body down
    (local.set $body (call $answer (local.get $outparam) (call $upstream.status (local.get $upstream))))
    (local.set $out (i32.load offset=16 (global.get $ret)))
    (call $upstream.consume (local.get $upstream) (global.get $ret))
    (call $incoming.stream (i32.load offset=4 (global.get $ret)) (global.get $ret))
    (call $pump (i32.load offset=4 (global.get $ret)) (local.get $out))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))
)
