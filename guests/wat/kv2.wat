;; world: http-kv2
;; Compare-and-swap and counters in the "default" store (wasi:keyvalue@0.2.0-draft2), by path:
;;   /race  two cas handles on "r" (which must not be "one" already), both read; the first
;;          swap ("one") wins, the second fails with cas-failed; then a get of "r": answers
;;          "one-won" if all of that held, else "wrong"
;;   /add   increments "n" by 7: answers the new value in decimal (non-negative)
;; Any other path answers "?".
(module
  (import "wasi:keyvalue/store@0.2.0-draft2" "open" (func $open (param i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft2" "[method]bucket.get" (func $get (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft2" "[resource-drop]bucket" (func $bucket.drop (param i32)))
  (import "wasi:keyvalue/atomics@0.2.0-draft2" "[static]cas.new" (func $cas.new (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/atomics@0.2.0-draft2" "[method]cas.current" (func $cas.current (param i32 i32)))
  (import "wasi:keyvalue/atomics@0.2.0-draft2" "[resource-drop]cas" (func $cas.drop (param i32)))
  (import "wasi:keyvalue/atomics@0.2.0-draft2" "swap" (func $swap (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/atomics@0.2.0-draft2" "increment" (func $increment (param i32 i32 i32 i64 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.path-with-query" (func $request.path (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream.drop (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))

  (data (i32.const 16) "default")   ;; 7
  (data (i32.const 32) "r")         ;; 1
  (data (i32.const 36) "n")         ;; 1
  (data (i32.const 40) "one")       ;; 3
  (data (i32.const 44) "two")       ;; 3
  (data (i32.const 48) "one-won")   ;; 7
  (data (i32.const 64) "wrong")     ;; 5
  (data (i32.const 72) "?")         ;; 1
  (global $ret i32 (i32.const 1024))
  (global $out i32 (i32.const 2048))

  (func $decimal (param $n i64) (result i32)
    (local $len i32) (local $i i32) (local $tmp i64)
    (local.set $tmp (local.get $n))
    (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $tmp (i64.div_u (local.get $tmp) (i64.const 10)))
      (br_if $count (i64.ne (local.get $tmp) (i64.const 0))))
    (local.set $i (local.get $len))
    (loop $digits
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 128) (local.get $i))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $digits (i32.ne (local.get $i) (i32.const 0))))
    (local.get $len))

  (func $open_default (result i32)
    (call $open (i32.const 16) (i32.const 7) (global.get $ret))
    (if (i32.load8_u (global.get $ret)) (then unreachable))
    (i32.load offset=4 (global.get $ret)))

  ;; A cas on "r", its value read; traps on an error.
  (func $cas (param $bucket i32) (result i32)
    (local $cas i32)
    (call $cas.new (local.get $bucket) (i32.const 32) (i32.const 1) (global.get $ret))
    (if (i32.load8_u (global.get $ret)) (then unreachable))
    (local.set $cas (i32.load offset=4 (global.get $ret)))
    (call $cas.current (local.get $cas) (global.get $ret))
    (if (i32.load8_u (global.get $ret)) (then unreachable))
    (local.get $cas))

  ;; /race: 1 if everything held.
  (func $race (result i32)
    (local $bucket i32) (local $a i32) (local $b i32) (local $ok i32)
    (local.set $bucket (call $open_default))
    (local.set $a (call $cas (local.get $bucket)))
    (local.set $b (call $cas (local.get $bucket)))
    (call $swap (local.get $a) (i32.const 40) (i32.const 3) (global.get $ret))
    (local.set $ok (i32.eqz (i32.load8_u (global.get $ret))))
    (call $swap (local.get $b) (i32.const 44) (i32.const 3) (global.get $ret))
    ;; err, cas-failed (case 1), with a fresh cas to drop
    (if (i32.load8_u (global.get $ret))
      (then
        (if (i32.eq (i32.load8_u offset=4 (global.get $ret)) (i32.const 1))
          (then (call $cas.drop (i32.load offset=8 (global.get $ret))))
          (else (local.set $ok (i32.const 0)))))
      (else (local.set $ok (i32.const 0))))
    ;; "r" is "one"
    (call $get (local.get $bucket) (i32.const 32) (i32.const 1) (global.get $ret))
    (local.set $ok (i32.and (local.get $ok)
      (i32.and (i32.eqz (i32.load8_u (global.get $ret)))
        (i32.and (i32.eq (i32.load8_u offset=4 (global.get $ret)) (i32.const 1))
          (i32.and (i32.eq (i32.load offset=12 (global.get $ret)) (i32.const 3))
                   (i32.eq (i32.load8_u (i32.load offset=8 (global.get $ret))) (i32.const 111)))))))
    (call $bucket.drop (local.get $bucket))
    (local.get $ok))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $response i32) (local $body i32) (local $stream i32) (local $len i32) (local $bucket i32)
    (i32.store (global.get $out) (i32.const 72))
    (i32.store offset=4 (global.get $out) (i32.const 1))
    (call $request.path (local.get $request) (global.get $ret))
    (local.set $len (i32.load offset=8 (global.get $ret)))
    (block $done
      (if (i32.eq (local.get $len) (i32.const 5)) ;; /race
        (then
          (if (call $race)
            (then (i32.store (global.get $out) (i32.const 48)) (i32.store offset=4 (global.get $out) (i32.const 7)))
            (else (i32.store (global.get $out) (i32.const 64)) (i32.store offset=4 (global.get $out) (i32.const 5))))
          (br $done)))
      (if (i32.eq (local.get $len) (i32.const 4)) ;; /add
        (then
          (local.set $bucket (call $open_default))
          (call $increment (local.get $bucket) (i32.const 36) (i32.const 1) (i64.const 7) (global.get $ret))
          (call $bucket.drop (local.get $bucket))
          (if (i32.load8_u (global.get $ret)) (then unreachable))
          (i32.store (global.get $out) (i32.const 128))
          (i32.store offset=4 (global.get $out) (call $decimal (i64.load offset=8 (global.get $ret))))
          (br $done))))
    (local.set $response (call $response.new (call $fields.new)))
    (call $response.body (local.get $response) (global.get $ret))
    (local.set $body (i32.load offset=4 (global.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body.write (local.get $body) (global.get $ret))
    (local.set $stream (i32.load offset=4 (global.get $ret)))
    (call $stream.write (local.get $stream) (i32.load (global.get $out)) (i32.load offset=4 (global.get $out)) (global.get $ret))
    (call $stream.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))
)
