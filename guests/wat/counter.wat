;; world: http
;; Isolation probe. Each request increments a mutable global and a counter in linear memory,
;; marks a funcref table slot (counting how many requests found it marked), and reports the
;; handle number it was given for the request:
;;   "global=G memory=M table=T handle=H"
;; A fresh instance per request answers "global=1 memory=1 table=1 handle=H" with the same H
;; every time; any state carried over from an earlier request changes a number.
(module
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

  (global $count (mut i32) (i32.const 0))
  (global $ret i32 (i32.const 1024))
  (global $memory_counter i32 (i32.const 4000))
  (data (i32.const 16) "global=")
  (data (i32.const 32) " memory=")
  (data (i32.const 48) " table=")
  (data (i32.const 64) " handle=")
  (table $marks 1 funcref)
  (global $table_seen (mut i32) (i32.const 1))
  (func $mark)
  (elem declare func $mark)

  ;; Writes n in decimal at ptr; returns the length.
  (func $itoa (param $n i32) (param $ptr i32) (result i32)
    (local $len i32) (local $i i32) (local $t i32)
    (local.set $t (local.get $n))
    (loop $digits
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $digits (local.get $t)))
    (local.set $i (local.get $len))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $ptr) (local.get $i))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $write (local.get $i)))
    (local.get $len))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $response i32) (local $body i32) (local $stream i32) (local $p i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (global.get $memory_counter) (i32.add (i32.load (global.get $memory_counter)) (i32.const 1)))
    ;; table=1 when the slot is still null (fresh), 2 when an earlier request marked it.
    (if (i32.eqz (ref.is_null (table.get $marks (i32.const 0))))
      (then (global.set $table_seen (i32.const 2))))
    (table.set $marks (i32.const 0) (ref.func $mark))
    ;; "global=G memory=M\n" at 2048
    (local.set $p (i32.const 2048))
    (memory.copy (local.get $p) (i32.const 16) (i32.const 7))
    (local.set $p (i32.add (local.get $p) (i32.const 7)))
    (local.set $p (i32.add (local.get $p) (call $itoa (global.get $count) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 32) (i32.const 8))
    (local.set $p (i32.add (local.get $p) (i32.const 8)))
    (local.set $p (i32.add (local.get $p) (call $itoa (i32.load (global.get $memory_counter)) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 48) (i32.const 7))
    (local.set $p (i32.add (local.get $p) (i32.const 7)))
    (local.set $p (i32.add (local.get $p) (call $itoa (global.get $table_seen) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 64) (i32.const 8))
    (local.set $p (i32.add (local.get $p) (i32.const 8)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $request) (local.get $p))))
    (i32.store8 (local.get $p) (i32.const 10))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))

    (local.set $response (call $response.new (call $fields.new)))
    (call $response.body (local.get $response) (global.get $ret))
    (local.set $body (i32.load offset=4 (global.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body.write (local.get $body) (global.get $ret))
    (local.set $stream (i32.load offset=4 (global.get $ret)))
    (call $stream.write (local.get $stream) (i32.const 2048) (i32.sub (local.get $p) (i32.const 2048)) (global.get $ret))
    (call $stream.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))
)
