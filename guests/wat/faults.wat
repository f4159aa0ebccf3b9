;; world: http
;; Misbehaves on request, chosen by the path's first letter after "/":
;;   /trap    traps before answering          /never  returns without answering
;;   /abort   sends the head, then traps      /loop   loops forever
;;   /print   writes to stdout and stderr     /memory grows memory until it cannot
;;   /sink    reads the whole body, then 200  /wait   sleeps 300 ms, then 200
;;   anything else: 200 "ok"
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.path-with-query" (func $request.path (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream.drop (param i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.consume" (func $request.consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-body.stream" (func $incoming.stream (param i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]input-stream.blocking-skip" (func $input.skip (param i32 i64 i32)))
  (import "wasi:clocks/monotonic-clock@0.2.12" "subscribe-duration" (func $sleep_for (param i64) (result i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $pollable.block (param i32)))
  (import "wasi:cli/stdout@0.2.12" "get-stdout" (func $stdout (result i32)))
  (import "wasi:cli/stderr@0.2.12" "get-stderr" (func $stderr (result i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))

  (data (i32.const 16) "ok\n")                              ;; 3
  (data (i32.const 32) "partial")                           ;; 7
  (data (i32.const 48) "first line\nsecond line\n")         ;; 23
  (data (i32.const 80) "no newline at the end")             ;; 21
  (data (i32.const 112) "printed\n")                        ;; 8
  (global $ret i32 (i32.const 1024))

  ;; Sets a 200 response and returns its body's output stream (the body handle is at ret+16).
  (func $start (param $outparam i32) (result i32)
    (local $response i32)
    (local.set $response (call $response.new (call $fields.new)))
    (call $response.body (local.get $response) (global.get $ret))
    (i32.store offset=16 (global.get $ret) (i32.load offset=4 (global.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body.write (i32.load offset=16 (global.get $ret)) (global.get $ret))
    (i32.load offset=4 (global.get $ret)))

  (func $write (param $stream i32) (param $ptr i32) (param $len i32)
    (call $stream.write (local.get $stream) (local.get $ptr) (local.get $len) (global.get $ret)))

  (func $respond (param $outparam i32) (param $ptr i32) (param $len i32)
    (local $stream i32) (local $body i32)
    (local.set $stream (call $start (local.get $outparam)))
    (local.set $body (i32.load offset=16 (global.get $ret)))
    (call $write (local.get $stream) (local.get $ptr) (local.get $len))
    (call $stream.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))

  (func $handle_trap unreachable)

  (func $handle_abort (param $outparam i32)
    (call $write (call $start (local.get $outparam)) (i32.const 32) (i32.const 7))
    unreachable)

  (func $handle_loop (loop $forever (br $forever)))

  ;; Grows memory a page at a time; pier's memory limit turns the failed growth into a trap.
  (func $handle_memory
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)

  ;; Reads (skips) the request body to its end, then answers.
  (func $handle_sink (param $request i32) (param $outparam i32)
    (local $in i32)
    (call $request.consume (local.get $request) (global.get $ret))
    (call $incoming.stream (i32.load offset=4 (global.get $ret)) (global.get $ret))
    (local.set $in (i32.load offset=4 (global.get $ret)))
    (block $eof
      (loop $skip
        (call $input.skip (local.get $in) (i64.const 65536) (global.get $ret))
        (br_if $eof (i32.load8_u (global.get $ret)))
        (br $skip)))
    ;; A stream that failed (rather than closed) means the body was refused: give up.
    (if (i32.eqz (i32.load8_u offset=8 (global.get $ret))) (then unreachable))
    (call $respond (local.get $outparam) (i32.const 16) (i32.const 3)))

  (func $handle_wait (param $outparam i32)
    (call $pollable.block (call $sleep_for (i64.const 300000000)))
    (call $respond (local.get $outparam) (i32.const 16) (i32.const 3)))

  (func $handle_print (param $outparam i32)
    (call $write (call $stdout) (i32.const 48) (i32.const 23))
    (call $write (call $stderr) (i32.const 80) (i32.const 21))
    (call $respond (local.get $outparam) (i32.const 112) (i32.const 8)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $letter i32)
    (call $request.path (local.get $request) (global.get $ret))
    (if (i32.and (i32.load8_u (global.get $ret)) (i32.gt_u (i32.load offset=8 (global.get $ret)) (i32.const 1)))
      (then (local.set $letter (i32.load8_u offset=1 (i32.load offset=4 (global.get $ret))))))
    (if (i32.eq (local.get $letter) (i32.const 0x74)) (then (call $handle_trap)))         ;; t
    (if (i32.eq (local.get $letter) (i32.const 0x6e)) (then (return)))                    ;; n
    (if (i32.eq (local.get $letter) (i32.const 0x61)) (then (call $handle_abort (local.get $outparam)))) ;; a
    (if (i32.eq (local.get $letter) (i32.const 0x6c)) (then (call $handle_loop)))         ;; l
    (if (i32.eq (local.get $letter) (i32.const 0x70))                                     ;; p
      (then (call $handle_print (local.get $outparam)) (return)))
    (if (i32.eq (local.get $letter) (i32.const 0x6d)) (then (call $handle_memory)))       ;; m
    (if (i32.eq (local.get $letter) (i32.const 0x73))                                     ;; s
      (then (call $handle_sink (local.get $request) (local.get $outparam)) (return)))
    (if (i32.eq (local.get $letter) (i32.const 0x77))                                     ;; w
      (then (call $handle_wait (local.get $outparam)) (return)))
    (call $respond (local.get $outparam) (i32.const 16) (i32.const 3)))
)
