#!/usr/bin/env bash
# Runs pier's coverage-guided fuzz targets for SECONDS each (default 10): ./test.sh runs them
# briefly; a longer run is e.g. `fuzz/run.sh 600 optimizer`. On the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its flags, and `--sanitizer none` needs no nightly
# sanitizer runtime. A crash fails the run and leaves its input in fuzz/artifacts/TARGET/;
# fixed, it belongs in the target's unit or property tests.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(manifest grants units proxywasm_pairs optimizer)
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
export RUSTC_BOOTSTRAP=1
# Seeds (copied, so the corpus libFuzzer grows stays out of the repository).
mkdir -p target/corpus/optimizer
cp ../guests/prebuilt/*.component.wasm target/corpus/optimizer/ 2>/dev/null || true
for target in "${targets[@]}"; do
  mkdir -p "target/corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run --sanitizer none --dev "$target" "target/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 |
    grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY|thread|panicked)|DONE|crash" || true
  # cargo fuzz exits non-zero on a crash; pipefail is off for the grep, so check the artifacts.
  if compgen -G "artifacts/$target/crash-*" >/dev/null; then
    echo "fuzz: $target crashed: $(ls artifacts/"$target"/crash-*)" >&2
    exit 1
  fi
done
