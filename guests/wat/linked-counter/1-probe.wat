;; world: http
;; The isolation probe (see ../counter.wat) as a dynamically linked component: this shared
;; library answers requests, `2-state.wat` holds the state, and wit-component's linker joins
;; them the way componentize-py links libpython (a generated module owns the memory and the
;; function table; each library imports both and places its data and table entries at
;; `__memory_base` / `__table_base`). Each request reports what it found before changing it:
;;   "global=G memory=M table=T indirect=I handle=H"
;; A fresh instance answers "global=1 memory=1 table=8 indirect=7 handle=H" every time: a
;; counter in a mutable global, one in linear memory, the function a table slot held (8 until a
;; request overwrites it with 7) and a call through the library's first table entry.
(module
  (@dylink.0 (mem-info (memory 2048 4)))
  (import "env" "memory" (memory 0))
  (import "env" "__indirect_function_table" (table 0 funcref))
  (import "env" "__memory_base" (global $mb i32))
  (import "env" "__table_base" (global $tb i32))
  (import "env" "bump_global" (func $bump_global (result i32)))
  (import "env" "bump_memory" (func $bump_memory (result i32)))
  (import "env" "swap_table" (func $swap_table (result i32)))
  (import "env" "call_first" (func $call_first (result i32)))
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream.drop (param i32)))

  ;; At __memory_base: labels (0..63), a return area (64), the answer (128..1023), and 1 KiB that
  ;; cabi_realloc hands out (1024..2047).
  (data (global.get $mb) "global= memory= table= indirect= handle=")

  (func $at (param $offset i32) (result i32) (i32.add (global.get $mb) (local.get $offset)))

  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (global.get $heap) (i32.const 2048)) (then unreachable))
    (call $at (local.get $p)))

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

  ;; Appends the label at [offset, offset+len) and n at p; returns the new end.
  (func $field (param $p i32) (param $offset i32) (param $len i32) (param $n i32) (result i32)
    (memory.copy (local.get $p) (call $at (local.get $offset)) (local.get $len))
    (local.set $p (i32.add (local.get $p) (local.get $len)))
    (i32.add (local.get $p) (call $itoa (local.get $n) (local.get $p))))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $response i32) (local $body i32) (local $stream i32) (local $p i32) (local $ret i32)
    (local.set $ret (call $at (i32.const 64)))
    (local.set $p (call $at (i32.const 128)))
    (local.set $p (call $field (local.get $p) (i32.const 0) (i32.const 7) (call $bump_global)))
    (local.set $p (call $field (local.get $p) (i32.const 7) (i32.const 8) (call $bump_memory)))
    (local.set $p (call $field (local.get $p) (i32.const 15) (i32.const 7) (call $swap_table)))
    (local.set $p (call $field (local.get $p) (i32.const 22) (i32.const 10) (call $call_first)))
    (local.set $p (call $field (local.get $p) (i32.const 32) (i32.const 8) (local.get $request)))
    (i32.store8 (local.get $p) (i32.const 10))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))

    (local.set $response (call $response.new (call $fields.new)))
    (call $response.body (local.get $response) (local.get $ret))
    (local.set $body (i32.load offset=4 (local.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body.write (local.get $body) (local.get $ret))
    (local.set $stream (i32.load offset=4 (local.get $ret)))
    (call $stream.write (local.get $stream) (call $at (i32.const 128))
      (i32.sub (local.get $p) (call $at (i32.const 128))) (local.get $ret))
    (call $stream.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (local.get $ret)))
)
