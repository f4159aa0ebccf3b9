;; world: http-kv
;; Uses the key-value store (wasi:keyvalue@0.2.0-draft), by path:
;;   /count   opens "default" and increments "hits": answers the new count, in decimal
;;   /denied  opens "secret", which pier should not grant: answers the error ("access-denied")
;;   /big     sets a 300-byte key in "default": answers the error ("other: MESSAGE")
;;   /gs      one get and one set of "bench" in "default" (the benchmark's request): "stored"
;;   a path of 10 bytes (/key/00042): sets that path as a key in "default", to "v": answers
;;            "stored" once the store has said so, or the error
;; Any other path answers "?".
(module
  (import "wasi:keyvalue/store@0.2.0-draft" "open" (func $open (param i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft" "[method]bucket.set" (func $set (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft" "[method]bucket.get" (func $get (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft" "[resource-drop]bucket" (func $bucket.drop (param i32)))
  (import "wasi:keyvalue/atomics@0.2.0-draft" "increment" (func $increment (param i32 i32 i32 i64 i32)))
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

  (data (i32.const 16) "default")        ;; 7
  (data (i32.const 32) "hits")           ;; 4
  (data (i32.const 48) "secret")         ;; 6
  (data (i32.const 64) "access-denied")  ;; 13
  (data (i32.const 80) "other: ")        ;; 7
  (data (i32.const 96) "?")              ;; 1
  (data (i32.const 100) "v")             ;; 1
  (data (i32.const 112) "no-such-store") ;; 13
  (data (i32.const 104) "stored")        ;; 6
  ;; 128..: a decimal number; 512..812: a 300-byte key (filled at /big)
  (global $ret i32 (i32.const 1024))
  (global $out i32 (i32.const 2048))

  ;; Writes `n` in decimal at 128.., returning its length.
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

  ;; The text of the store error whose discriminant is at `at` (a string at at+4 for other).
  ;; Leaves ptr at $out and len at $out+4.
  (func $error (param $at i32)
    (local $disc i32)
    (local.set $disc (i32.load8_u (local.get $at)))
    (if (i32.eq (local.get $disc) (i32.const 0))
      (then (i32.store (global.get $out) (i32.const 112)) (i32.store offset=4 (global.get $out) (i32.const 13)) (return)))
    (if (i32.eq (local.get $disc) (i32.const 1))
      (then (i32.store (global.get $out) (i32.const 64)) (i32.store offset=4 (global.get $out) (i32.const 13)) (return)))
    ;; other(message): "other: " then the message, copied after it at 4096
    (memory.copy (i32.const 4096) (i32.const 80) (i32.const 7))
    (memory.copy (i32.const 4103) (i32.load offset=4 (local.get $at)) (i32.load offset=8 (local.get $at)))
    (i32.store (global.get $out) (i32.const 4096))
    (i32.store offset=4 (global.get $out) (i32.add (i32.const 7) (i32.load offset=8 (local.get $at)))))

  ;; Opens "default" (traps if it cannot: the tests grant it).
  (func $open_default (result i32)
    (call $open (i32.const 16) (i32.const 7) (global.get $ret))
    (if (i32.load8_u (global.get $ret)) (then unreachable))
    (i32.load offset=4 (global.get $ret)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $response i32) (local $body i32) (local $stream i32) (local $len i32) (local $bucket i32)
    (local $path i32)
    (i32.store (global.get $out) (i32.const 96))
    (i32.store offset=4 (global.get $out) (i32.const 1))
    (call $request.path (local.get $request) (global.get $ret))
    (local.set $path (i32.load offset=4 (global.get $ret)))
    (local.set $len (i32.load offset=8 (global.get $ret)))
    (block $done
      (if (i32.eq (local.get $len) (i32.const 6)) ;; /count
        (then
          (local.set $bucket (call $open_default))
          (call $increment (local.get $bucket) (i32.const 32) (i32.const 4) (i64.const 1) (global.get $ret))
          (call $bucket.drop (local.get $bucket))
          (if (i32.load8_u (global.get $ret))
            (then (call $error (i32.add (global.get $ret) (i32.const 8))) (br $done)))
          (i32.store (global.get $out) (i32.const 128))
          (i32.store offset=4 (global.get $out) (call $decimal (i64.load offset=8 (global.get $ret))))
          (br $done)))
      (if (i32.eq (local.get $len) (i32.const 7)) ;; /denied
        (then
          (call $open (i32.const 48) (i32.const 6) (global.get $ret))
          (if (i32.load8_u (global.get $ret))
            (then (call $error (i32.add (global.get $ret) (i32.const 4))) (br $done)))
          (call $bucket.drop (i32.load offset=4 (global.get $ret)))
          (br $done)))
      (if (i32.eq (local.get $len) (i32.const 10)) ;; /key/NNNNN
        (then
          (local.set $bucket (call $open_default))
          (call $set (local.get $bucket) (local.get $path) (i32.const 10) (i32.const 100) (i32.const 1) (global.get $ret))
          (call $bucket.drop (local.get $bucket))
          (if (i32.load8_u (global.get $ret))
            (then (call $error (i32.add (global.get $ret) (i32.const 4))) (br $done)))
          (i32.store (global.get $out) (i32.const 104))
          (i32.store offset=4 (global.get $out) (i32.const 6))
          (br $done)))
      (if (i32.eq (local.get $len) (i32.const 3)) ;; /gs
        (then
          (local.set $bucket (call $open_default))
          (call $get (local.get $bucket) (i32.const 32) (i32.const 4) (global.get $ret))
          (call $set (local.get $bucket) (i32.const 32) (i32.const 4) (i32.const 100) (i32.const 1) (global.get $ret))
          (call $bucket.drop (local.get $bucket))
          (if (i32.load8_u (global.get $ret))
            (then (call $error (i32.add (global.get $ret) (i32.const 4))) (br $done)))
          (i32.store (global.get $out) (i32.const 104))
          (i32.store offset=4 (global.get $out) (i32.const 6))
          (br $done)))
      (if (i32.eq (local.get $len) (i32.const 4)) ;; /big
        (then
          (memory.fill (i32.const 512) (i32.const 107) (i32.const 300))
          (local.set $bucket (call $open_default))
          (call $set (local.get $bucket) (i32.const 512) (i32.const 300) (i32.const 100) (i32.const 1) (global.get $ret))
          (call $bucket.drop (local.get $bucket))
          (if (i32.load8_u (global.get $ret))
            (then (call $error (i32.add (global.get $ret) (i32.const 4))) (br $done)))
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
