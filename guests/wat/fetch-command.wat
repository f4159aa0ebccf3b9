;; world: command-http
;; A command sending `GET /` to the authority given as its first argument (HOST:PORT, over
;; http) through wasi:http/outgoing-handler. Prints "status NNN" and exits 0 when a response
;; comes back; prints "error-code NN" (the wasi:http error-code case number, two digits:
;; 15 = HTTP-request-denied, ...) and exits 1 when the request fails.
(module
  (import "wasi:cli/environment@0.2.12" "get-arguments" (func $args (param i32)))
  (import "wasi:cli/stdout@0.2.12" "get-stdout" (func $stdout (result i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-request" (func $out.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-scheme" (func $out.scheme (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-authority" (func $out.authority (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-path-with-query" (func $out.path (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/outgoing-handler@0.2.12" "handle" (func $send (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.get" (func $future.get (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.subscribe" (func $future.subscribe (param i32) (result i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $pollable.block (param i32)))
  (import "wasi:io/poll@0.2.12" "[resource-drop]pollable" (func $pollable.drop (param i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-response.status" (func $status (param i32) (result i32)))

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

  (data (i32.const 16) "status ")      ;; 7, then three digits and a newline
  (data (i32.const 48) "error-code ")  ;; 11, then two digits and a newline
  (data (i32.const 80) "/")
  (global $ret i32 (i32.const 1024))

  ;; Writes `value` as `digits` decimal digits at `at`, then a newline.
  (func $decimal (param $at i32) (param $value i32) (param $digits i32)
    (i32.store8 (i32.add (local.get $at) (local.get $digits)) (i32.const 10))
    (block $done
      (loop $digit
        (br_if $done (i32.eqz (local.get $digits)))
        (local.set $digits (i32.sub (local.get $digits) (i32.const 1)))
        (i32.store8 (i32.add (local.get $at) (local.get $digits))
          (i32.add (i32.const 48) (i32.rem_u (local.get $value) (i32.const 10))))
        (local.set $value (i32.div_u (local.get $value) (i32.const 10)))
        (br $digit))))

  (func $print (param $ptr i32) (param $len i32)
    (call $stream.write (call $stdout) (local.get $ptr) (local.get $len) (global.get $ret)))

  ;; "error-code NN", then the run fails.
  (func $fail (param $code i32) (result i32)
    (call $decimal (i32.const 59) (local.get $code) (i32.const 2))
    (call $print (i32.const 48) (i32.const 14))
    (i32.const 1))

  (func (export "wasi:cli/run@0.2.12#run") (result i32)
    (local $out i32) (local $future i32) (local $pollable i32) (local $arg i32)
    ;; the first argument after the program's name: (pointer, length) at list + 8
    (call $args (global.get $ret))
    (local.set $arg (i32.add (i32.load (global.get $ret)) (i32.const 8)))
    (local.set $out (call $out.new (call $fields.new)))
    (drop (call $out.scheme (local.get $out) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)))
    (drop (call $out.authority (local.get $out) (i32.const 1)
                (i32.load (local.get $arg)) (i32.load offset=4 (local.get $arg))))
    (drop (call $out.path (local.get $out) (i32.const 1) (i32.const 80) (i32.const 1)))
    (call $send (local.get $out) (i32.const 0) (i32.const 0) (global.get $ret))
    (if (i32.load8_u (global.get $ret))
      (then (return (call $fail (i32.load8_u offset=8 (global.get $ret))))))
    (local.set $future (i32.load offset=8 (global.get $ret)))
    (block $ready
      (loop $wait
        (call $future.get (local.get $future) (global.get $ret))
        (br_if $ready (i32.load8_u (global.get $ret)))
        (local.set $pollable (call $future.subscribe (local.get $future)))
        (call $pollable.block (local.get $pollable))
        (call $pollable.drop (local.get $pollable))
        (br $wait)))
    (if (i32.load8_u offset=16 (global.get $ret))
      (then (return (call $fail (i32.load8_u offset=24 (global.get $ret))))))
    (call $decimal (i32.const 23) (call $status (i32.load offset=24 (global.get $ret))) (i32.const 3))
    (call $print (i32.const 16) (i32.const 11))
    (i32.const 0))
)
