#!/usr/bin/env bash
# Runs pier's coverage-guided fuzz targets for SECONDS each (default 10): ./test.sh runs them
# briefly; a longer run is e.g. `fuzz/run.sh 600 optimizer`. On the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its flags, and `--sanitizer none` needs no nightly
# sanitizer runtime. A crash, a hang (an input taking over 10 s), running out of memory or a
# target that does not build fails the run; the input found is left in fuzz/artifacts/TARGET/
# and, fixed, belongs in the target's unit or property tests.
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(manifest grants units proxywasm_pairs optimizer)
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2 || exit 1
export RUSTC_BOOTSTRAP=1
# Seeds (copied, so the corpus libFuzzer grows stays out of the repository).
mkdir -p target/corpus/optimizer
cp ../guests/prebuilt/*.component.wasm target/corpus/optimizer/ 2>/dev/null || true
for target in "${targets[@]}"; do
  mkdir -p "target/corpus/$target"
  # Only what this run finds counts (an old finding stays in target/findings/ until fixed).
  if compgen -G "artifacts/$target/*" >/dev/null; then
    mkdir -p target/findings && mv artifacts/"$target"/* target/findings/
  fi
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run --sanitizer none --dev "$target" "target/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=131072 -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 > "target/$target.log" 2>&1
  status=$?
  grep -E "^Done|DONE|SUMMARY|panicked" "target/$target.log" || true
  if [ "$status" -ne 0 ] || compgen -G "artifacts/$target/*" >/dev/null; then
    tail -40 "target/$target.log" >&2
    echo "fuzz: $target failed (exit $status): $(ls artifacts/"$target" 2>/dev/null)" >&2
    exit 1
  fi
done
if compgen -G "target/findings/*" >/dev/null; then
  echo "fuzz: $(ls target/findings | wc -l) earlier findings, not re-run here, wait in fuzz/target/findings/" >&2
fi
