#!/usr/bin/env bash
# Builds pier's guests. One script for all of them:
#
#   guests/build.sh            everything whose toolchain is available (installs the Python,
#                              JavaScript and AssemblyScript toolchains into target/guest-tools,
#                              guests/js and guests/proxywasm-as/*)
#   guests/build.sh c          C programs and C Proxy-Wasm filters -> guests/prebuilt/
#                              (committed; needs Debian's clang, lld and wasi-libc)
#   guests/build.sh examples   examples/hello/hello.wat -> hello.wasm (committed)
#   guests/build.sh python     componentize-py hello, fetch, kv, a WASI 0.3 service and middleware ->
#                              guests/build/python-*.wasm
#   guests/build.sh js         componentize-js hello -> guests/build/js-hello.wasm
#   guests/build.sh app        examples/app's Python and JavaScript components ->
#                              examples/app/build/api.wasm and web.wasm
#   guests/build.sh filters    Proxy-Wasm filters on the AssemblyScript SDKs from npm ->
#                              guests/build/filter-solo.wasm and filter-gcore.wasm
#
# WAT test guests (guests/wat/) need no step here: the pier-testkit build script compiles them
# for every test build. Python and JavaScript components are ~13-18 MB, so they are built here
# (by .ci/run before the tests) rather than committed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=guests/build
tools=target/guest-tools
mkdir -p "$build" guests/prebuilt

pier_guest() {
  cargo run --quiet --locked -p pier-testkit --bin pier-guest -- "$@"
}

build_c() {
  if ! command -v clang >/dev/null || [[ ! -e /usr/lib/wasm32-wasi/libc.a ]]; then
    echo "guests/build.sh: skipping C guests (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)" >&2
    return 0
  fi
  for src in guests/c/*.c; do
    name=$(basename "$src" .c)
    clang --target=wasm32-wasi --sysroot=/usr -O2 -Wl,--strip-debug -o "guests/prebuilt/$name.wasm" "$src"
    pier_guest adapt "guests/prebuilt/$name.wasm" "guests/prebuilt/$name.component.wasm"
    echo "built guests/prebuilt/$name.wasm and $name.component.wasm"
  done
  # Proxy-Wasm filters are core modules (WASI reactors exporting proxy_on_* and malloc), never
  # adapted into components.
  for src in guests/proxywasm/*.c; do
    name=$(basename "$src" .c)
    clang --target=wasm32-wasi --sysroot=/usr -O2 -Wall -Wextra -mexec-model=reactor -Wl,--strip-debug \
      -Wl,--export=malloc -Wl,--export=free -o "guests/prebuilt/filter-$name.wasm" "$src"
    echo "built guests/prebuilt/filter-$name.wasm"
  done
}

build_examples() {
  pier_guest wat2component examples/hello/hello.wat examples/hello/hello.wasm
  echo "built examples/hello/hello.wasm"
}

python_tools() {
  if [[ ! -x $tools/py/bin/componentize-py ]]; then
    python3 -m venv "$tools/py"
    "$tools/py/bin/pip" install --quiet componentize-py==0.25.1
  fi
}

js_tools() {
  if [[ ! -x guests/js/node_modules/.bin/componentize-js ]]; then
    (cd guests/js && npm ci --no-audit --no-fund --silent)
  fi
}

build_python() {
  python_tools
  local wit=$tools/wit-python out
  rm -rf "$wit"
  pier_guest wit-dir "$wit" 0.2.0 guests/python/wit
  out=$(mktemp -d)
  (cd "$out" && "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/hello bindings . >/dev/null)
  cp guests/python/app.py guests/python/fetch.py "$out/"
  for name in app:python-hello fetch:python-fetch; do
    (cd "$out" && "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/hello \
        componentize "${name%%:*}" -o "$root/$build/${name#*:}.wasm" >/dev/null)
    echo "built $build/${name#*:}.wasm"
  done
  rm -rf "$out"
  # The key-value app, against its own world (wasi:keyvalue 0.2.0-draft2).
  out=$(mktemp -d)
  cp guests/python/kv.py "$out/"
  (cd "$out" && "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/kv bindings . >/dev/null &&
    "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/kv componentize kv \
      -o "$root/$build/python-kv.wasm" >/dev/null)
  echo "built $build/python-kv.wasm"
  rm -rf "$out"
  # A WASI 0.3 service (wasi:http/service@0.3.0).
  out=$(mktemp -d)
  cp guests/python/service.py "$out/"
  (cd "$out" && "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/service bindings . >/dev/null &&
    "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/service componentize service \
      -o "$root/$build/python-p3.wasm" >/dev/null)
  echo "built $build/python-p3.wasm"
  rm -rf "$out"
  # A WASI 0.3 middleware (wasi:http/middleware@0.3.0).
  out=$(mktemp -d)
  cp guests/python/middleware.py "$out/"
  (cd "$out" && "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/middleware bindings . >/dev/null &&
    "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:python-guests/middleware componentize middleware \
      -o "$root/$build/python-middleware.wasm" >/dev/null)
  echo "built $build/python-middleware.wasm"
  rm -rf "$out"
}

build_js() {
  js_tools
  local wit=$tools/wit-js
  rm -rf "$wit"
  pier_guest wit-dir "$wit" 0.2.10 guests/js/wit
  (cd guests/js && ./node_modules/.bin/componentize-js app.js --wit "$root/$wit" --world-name hello \
      -o "$root/$build/js-hello.wasm" >/dev/null)
  echo "built $build/js-hello.wasm"
  (cd guests/js && ./node_modules/.bin/componentize-js kv.js --wit "$root/$wit" --world-name kv \
      -o "$root/$build/js-kv.wasm" >/dev/null)
  echo "built $build/js-kv.wasm"
}

# examples/app: its Python API (with wasi:config) and its JavaScript page -> examples/app/build/
build_app() {
  local app=examples/app wit out
  mkdir -p "$app/build"
  python_tools
  wit=$tools/wit-app-python
  rm -rf "$wit"
  pier_guest wit-dir "$wit" 0.2.0 "$app/python/wit"
  out=$(mktemp -d)
  cp "$app/python/app.py" "$out/"
  (cd "$out" && "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:example/api bindings . >/dev/null &&
    "$root/$tools/py/bin/componentize-py" -d "$root/$wit" -w pier:example/api componentize app \
      -o "$root/$app/build/api.wasm" >/dev/null)
  rm -rf "$out"
  echo "built $app/build/api.wasm"
  js_tools
  wit=$tools/wit-app-js
  rm -rf "$wit"
  pier_guest wit-dir "$wit" 0.2.10 "$app/js/wit"
  guests/js/node_modules/.bin/componentize-js "$app/js/app.js" --wit "$wit" --world-name web \
    -o "$app/build/web.wasm" >/dev/null
  echo "built $app/build/web.wasm"
}

# One npm project per SDK, each pinning its own AssemblyScript (the solo SDK needs asc 0.14.9, the
# gcore SDK asc 0.28 with the WASI shim); their asconfig.json holds the release options.
build_filters() {
  local sdk dir
  for sdk in solo gcore; do
    dir=guests/proxywasm-as/$sdk
    if [[ ! -x $dir/node_modules/.bin/asc ]]; then
      (cd "$dir" && npm ci --no-audit --no-fund --silent)
    fi
    (cd "$dir" && ./node_modules/.bin/asc assembly/index.ts --target release -o "$root/$build/filter-$sdk.wasm")
    echo "built $build/filter-$sdk.wasm"
  done
}

what=${1:-all}
case $what in
  c) build_c ;;
  examples) build_examples ;;
  python) build_python ;;
  js) build_js ;;
  filters) build_filters ;;
  app) build_app ;;
  all) build_c; build_examples; build_python; build_js; build_filters; build_app ;;
  *) echo "usage: guests/build.sh [all|c|examples|python|js|filters|app]" >&2; exit 2 ;;
esac
