;; world: http
;; Isolation probe. Each request increments a mutable global and a counter in linear memory (and
;; one more in every other 4 KiB page from 16 KiB to the end of the initial memory, so a request
;; writes many separate runs of pages; "memory=" is the largest of these counters), grows the
;; memory by 4 pages and increments counters in the first and the last grown page,
;; marks a funcref table slot (counting how many requests found it marked), and reports the
;; memory's size in pages when the request began, the handle number it was given, and the whole
;; seconds its monotonic clock read when the request began:
;;   "global=G memory=M pages=P grown=A/B table=T handle=H clock=S"
;; A fresh instance per request answers
;; "global=1 memory=1 pages=1 grown=1/1 table=1 handle=H clock=0" with the same H every time;
;; any state carried over from an earlier request changes a number. (The clock counts from the
;; instance's first use of it: one counting from when the pool made the slot, or from an earlier
;; request, would tell the guest how long the pool had kept it.)
;; (The tests also build it with a larger initial memory, 16 pages, so it covers both memory
;; resets and writes ~120 runs of pages per request, and
;; with a pause of `$pause_ns` after it has written its counters and before it answers, so a test
;; can act on the memory of an instance that is still alive.)
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream.drop (param i32)))
  (import "wasi:clocks/monotonic-clock@0.2.12" "now" (func $now (result i64)))
  (import "wasi:clocks/monotonic-clock@0.2.12" "subscribe-duration" (func $sleep_for (param i64) (result i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $pollable.block (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))

  (global $pause_ns i64 (i64.const 0))
  (global $count (mut i32) (i32.const 0))
  (global $ret i32 (i32.const 1024))
  (global $memory_counter i32 (i32.const 4000))
  (data (i32.const 16) "global=")
  (data (i32.const 32) " memory=")
  (data (i32.const 48) " table=")
  (data (i32.const 64) " handle=")
  (data (i32.const 80) " pages=")
  (data (i32.const 96) " grown=")
  (data (i32.const 112) "/")
  (data (i32.const 128) " clock=")
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
    (local $pages i32) (local $first i32) (local $last i32)
    (local $at i32) (local $end i32) (local $memory i32) (local $clock i32)
    (local.set $clock (i32.wrap_i64 (i64.div_u (call $now) (i64.const 1000000000))))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (global.get $memory_counter) (i32.add (i32.load (global.get $memory_counter)) (i32.const 1)))
    ;; counters in the first and the last of 4 grown pages
    (local.set $pages (memory.size))
    (local.set $memory (i32.load (global.get $memory_counter)))
    (local.set $at (i32.const 16384))
    (local.set $end (i32.mul (local.get $pages) (i32.const 65536)))
    (block $scattered
      (loop $next
        (br_if $scattered (i32.ge_u (local.get $at) (local.get $end)))
        (i32.store (local.get $at) (i32.add (i32.load (local.get $at)) (i32.const 1)))
        (if (i32.gt_u (i32.load (local.get $at)) (local.get $memory))
          (then (local.set $memory (i32.load (local.get $at)))))
        (local.set $at (i32.add (local.get $at) (i32.const 8192)))
        (br $next)))
    (if (i32.lt_s (memory.grow (i32.const 4)) (i32.const 0)) (then unreachable))
    (local.set $first (i32.add (i32.mul (local.get $pages) (i32.const 65536)) (i32.const 16)))
    (local.set $last (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 16)))
    (i32.store (local.get $first) (i32.add (i32.load (local.get $first)) (i32.const 1)))
    (i32.store (local.get $last) (i32.add (i32.load (local.get $last)) (i32.const 1)))
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
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $memory) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 80) (i32.const 7))
    (local.set $p (i32.add (local.get $p) (i32.const 7)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $pages) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 96) (i32.const 7))
    (local.set $p (i32.add (local.get $p) (i32.const 7)))
    (local.set $p (i32.add (local.get $p) (call $itoa (i32.load (local.get $first)) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 112) (i32.const 1))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (i32.add (local.get $p) (call $itoa (i32.load (local.get $last)) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 48) (i32.const 7))
    (local.set $p (i32.add (local.get $p) (i32.const 7)))
    (local.set $p (i32.add (local.get $p) (call $itoa (global.get $table_seen) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 64) (i32.const 8))
    (local.set $p (i32.add (local.get $p) (i32.const 8)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $request) (local.get $p))))
    (memory.copy (local.get $p) (i32.const 128) (i32.const 7))
    (local.set $p (i32.add (local.get $p) (i32.const 7)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $clock) (local.get $p))))
    (i32.store8 (local.get $p) (i32.const 10))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))

    (if (i64.ne (global.get $pause_ns) (i64.const 0))
      (then (call $pollable.block (call $sleep_for (global.get $pause_ns)))))

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
