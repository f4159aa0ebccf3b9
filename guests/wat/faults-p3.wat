;; world: service
;; A WASI 0.3 service (its handler lifted without the async option) that misbehaves on request,
;; chosen by the path's first letter after "/":
;;   /trap    traps              /loop    loops forever
;;   /memory  grows memory until it cannot, then traps
;;   anything else: answers with the error code `DNS-timeout` instead of a response
(module
  (import "wasi:http/types@0.3.0" "[method]request.get-path-with-query" (func $request.path (param i32 i32)))
  (import "wasi:http/types@0.3.0" "[resource-drop]request" (func $request.drop (param i32)))

  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))

  ;; handle: async func(request) -> result<response, error-code>
  (func (export "wasi:http/handler@0.3.0#handle") (param $request i32) (result i32)
    (local $first i32)
    ;; option<string> at 0: tag, then (pointer, length)
    (call $request.path (local.get $request) (i32.const 0))
    (if (i32.and (i32.load8_u (i32.const 0)) (i32.ge_u (i32.load (i32.const 8)) (i32.const 2)))
      (then (local.set $first (i32.load8_u offset=1 (i32.load (i32.const 4))))))
    (call $request.drop (local.get $request))
    (if (i32.eq (local.get $first) (i32.const 116)) ;; t
      (then unreachable))
    (if (i32.eq (local.get $first) (i32.const 108)) ;; l
      (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $first) (i32.const 109)) ;; m
      (then
        (loop $grow
          (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
        unreachable))
    ;; err(DNS-timeout): the result's tag at 64, the error code's at 72
    (i32.store8 (i32.const 64) (i32.const 1))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.const 64))
)
