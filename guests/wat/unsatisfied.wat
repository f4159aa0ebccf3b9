;; world: unsatisfied
;; Imports pier:guests/missing, which no host provides: pier must refuse it at start, naming it.
(module
  (import "pier:guests/missing" "frob" (func $frob))
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 8192))
  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param i32 i32) (call $frob))
)
