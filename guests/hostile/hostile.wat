;; world: http-sockets
;; A guest that attacks its host, chosen by the path's first letter after "/":
;;   /recurse  recurses without end (stack overflow)     /table   grows its table until it cannot
;;   /headers  adds 1 KiB header fields without end (the host's limit on fields stops it)
;;   /crlf     tries to add a header value with CR LF in it (a header injection), then answers
;;   /drip     answers, then writes one byte every 100 ms, forever
;;   /body     answers, then loops forever while its body is open
;;   /log      writes 64 MiB to stdout, then answers
;;   /memory   grows its memory a page at a time, writing to each, until it cannot (then traps)
;;   /sockets  opens TCP sockets (wasi:sockets) until refused, keeping them: answers with headers
;;             x-sockets (how many it got) and x-error (the error-code case that stopped it)
;;   /fields   makes header-field resources without end, keeping them (the host's cap stops it)
;;   anything else: 200 "ok"
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.append" (func $fields.append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.path-with-query" (func $request.path (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set" (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream.drop (param i32)))
  (import "wasi:clocks/monotonic-clock@0.2.12" "subscribe-duration" (func $sleep_for (param i64) (result i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $pollable.block (param i32)))
  (import "wasi:io/poll@0.2.12" "[resource-drop]pollable" (func $pollable.drop (param i32)))
  (import "wasi:cli/stdout@0.2.12" "get-stdout" (func $stdout (result i32)))
  (import "wasi:sockets/tcp-create-socket@0.2.12" "create-tcp-socket" (func $tcp.create (param i32 i32)))

  (memory (export "memory") 3)
  (table $table 1 funcref)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))

  (data (i32.const 16) "ok\n")                       ;; 3
  (data (i32.const 32) "x-bomb")                     ;; 6
  (data (i32.const 48) "x-injected")                 ;; 10
  (data (i32.const 64) "a\0d\0aset-cookie: evil=1")  ;; 21
  (data (i32.const 128) "d")                         ;; 1
  (data (i32.const 160) "x-sockets")                 ;; 9
  (data (i32.const 176) "x-error")                   ;; 7
  ;; 256..1280: a 1 KiB header value; 65536..69632: a 4 KiB log chunk (both filled at use).
  (global $ret i32 (i32.const 2048))

  ;; Sets a 200 response with `fields` and returns its body's output stream (the body handle
  ;; is at ret+16).
  (func $start (param $outparam i32) (param $fields i32) (result i32)
    (local $response i32)
    (local.set $response (call $response.new (local.get $fields)))
    (call $response.body (local.get $response) (global.get $ret))
    (i32.store offset=16 (global.get $ret) (i32.load offset=4 (global.get $ret)))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body.write (i32.load offset=16 (global.get $ret)) (global.get $ret))
    (i32.load offset=4 (global.get $ret)))

  ;; Writes, and traps if the stream failed (the client is gone).
  (func $write (param $stream i32) (param $ptr i32) (param $len i32)
    (call $stream.write (local.get $stream) (local.get $ptr) (local.get $len) (global.get $ret))
    (if (i32.load8_u (global.get $ret)) (then unreachable)))

  (func $respond (param $outparam i32) (param $fields i32)
    (local $stream i32) (local $body i32)
    (local.set $stream (call $start (local.get $outparam) (local.get $fields)))
    (local.set $body (i32.load offset=16 (global.get $ret)))
    (call $write (local.get $stream) (i32.const 16) (i32.const 3))
    (call $stream.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))

  (func $nap (param $ns i64)
    (local $p i32)
    (local.set $p (call $sleep_for (local.get $ns)))
    (call $pollable.block (local.get $p))
    (call $pollable.drop (local.get $p)))

  (func $recurse (param $n i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))

  (func $handle_memory
    (local $old i32)
    (loop $grow
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.eq (local.get $old) (i32.const -1)) (then unreachable))
      (i32.store8 (i32.shl (local.get $old) (i32.const 16)) (i32.const 1))
      (br $grow)))

  ;; Writes `value` in decimal at `ptr`; gives its length.
  (func $decimal (param $value i32) (param $ptr i32) (result i32)
    (local $len i32) (local $v i32) (local $i i32)
    (local.set $v (local.get $value))
    (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $count (local.get $v)))
    (local.set $v (local.get $value))
    (local.set $i (local.get $len))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $ptr) (local.get $i))
        (i32.add (i32.const 0x30) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $i)))
    (local.get $len))

  (func $handle_sockets (param $outparam i32)
    (local $n i32) (local $fields i32)
    (block $refused
      (loop $open
        (call $tcp.create (i32.const 0) (global.get $ret))
        (br_if $refused (i32.load8_u (global.get $ret)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br_if $open (i32.lt_u (local.get $n) (i32.const 100000)))))
    (local.set $fields (call $fields.new))
    (call $fields.append (local.get $fields) (i32.const 160) (i32.const 9)
      (i32.const 192) (call $decimal (local.get $n) (i32.const 192)) (i32.const 2304))
    (call $fields.append (local.get $fields) (i32.const 176) (i32.const 7)
      (i32.const 208) (call $decimal (i32.load8_u offset=4 (global.get $ret)) (i32.const 208))
      (i32.const 2304))
    (call $respond (local.get $outparam) (local.get $fields)))

  (func $handle_fields
    (loop $more
      (drop (call $fields.new))
      (br $more)))

  (func $handle_table
    (loop $grow
      (br_if $grow (i32.ne (table.grow $table (ref.null func) (i32.const 1000)) (i32.const -1))))
    unreachable)

  (func $handle_headers (param $outparam i32)
    (local $fields i32) (local $n i32)
    (memory.fill (i32.const 256) (i32.const 0x76) (i32.const 1024))
    (local.set $fields (call $fields.new))
    (block $full
      (loop $more
        (call $fields.append (local.get $fields) (i32.const 32) (i32.const 6)
          (i32.const 256) (i32.const 1024) (global.get $ret))
        (br_if $full (i32.load8_u (global.get $ret)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br_if $more (i32.lt_u (local.get $n) (i32.const 100000)))))
    (call $respond (local.get $outparam) (local.get $fields)))

  (func $handle_crlf (param $outparam i32)
    (local $fields i32)
    (local.set $fields (call $fields.new))
    ;; Refused with an error result: the guest goes on and answers without it.
    (call $fields.append (local.get $fields) (i32.const 48) (i32.const 10)
      (i32.const 64) (i32.const 21) (global.get $ret))
    (call $respond (local.get $outparam) (local.get $fields)))

  (func $handle_drip (param $outparam i32)
    (local $stream i32)
    (local.set $stream (call $start (local.get $outparam) (call $fields.new)))
    (loop $forever
      (call $write (local.get $stream) (i32.const 128) (i32.const 1))
      (call $nap (i64.const 100000000))
      (br $forever)))

  (func $handle_body (param $outparam i32)
    (drop (call $start (local.get $outparam) (call $fields.new)))
    (loop $forever (br $forever)))

  (func $handle_log (param $outparam i32)
    (local $out i32) (local $n i32)
    (memory.fill (i32.const 65536) (i32.const 0x6c) (i32.const 4095))
    (i32.store8 (i32.const 69631) (i32.const 10))
    (local.set $out (call $stdout))
    (loop $more
      (call $write (local.get $out) (i32.const 65536) (i32.const 4096))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $n) (i32.const 16384))))
    (call $stream.drop (local.get $out))
    (call $respond (local.get $outparam) (call $fields.new)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $letter i32)
    (call $request.path (local.get $request) (global.get $ret))
    (if (i32.and (i32.load8_u (global.get $ret)) (i32.gt_u (i32.load offset=8 (global.get $ret)) (i32.const 1)))
      (then (local.set $letter (i32.load8_u offset=1 (i32.load offset=4 (global.get $ret))))))
    (if (i32.eq (local.get $letter) (i32.const 0x72)) (then (drop (call $recurse (i32.const 0)))))  ;; r
    (if (i32.eq (local.get $letter) (i32.const 0x74)) (then (call $handle_table)))                  ;; t
    (if (i32.eq (local.get $letter) (i32.const 0x6d)) (then (call $handle_memory)))                 ;; m
    (if (i32.eq (local.get $letter) (i32.const 0x66)) (then (call $handle_fields)))                 ;; f
    (if (i32.eq (local.get $letter) (i32.const 0x73))                                               ;; s
      (then (call $handle_sockets (local.get $outparam)) (return)))
    (if (i32.eq (local.get $letter) (i32.const 0x68))                                               ;; h
      (then (call $handle_headers (local.get $outparam)) (return)))
    (if (i32.eq (local.get $letter) (i32.const 0x63))                                               ;; c
      (then (call $handle_crlf (local.get $outparam)) (return)))
    (if (i32.eq (local.get $letter) (i32.const 0x64)) (then (call $handle_drip (local.get $outparam)))) ;; d
    (if (i32.eq (local.get $letter) (i32.const 0x62)) (then (call $handle_body (local.get $outparam)))) ;; b
    (if (i32.eq (local.get $letter) (i32.const 0x6c))                                               ;; l
      (then (call $handle_log (local.get $outparam)) (return)))
    (call $respond (local.get $outparam) (call $fields.new)))
)
