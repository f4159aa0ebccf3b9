#!/usr/bin/env bash
# pier's whole test suite. Builds the guests that come from third-party toolchains
# (componentize-py, componentize-js, the AssemblyScript Proxy-Wasm SDKs; installed locally on
# first use) and the example app's components, then runs every test, then each coverage-guided
# fuzz target for a few seconds (fuzz/run.sh; cargo-fuzz is installed on first use).
set -euo pipefail
cd "$(dirname "$0")"
guests/build.sh python
guests/build.sh js
guests/build.sh filters
guests/build.sh app
cargo test --workspace --locked "$@"
# The fuzz targets run with the whole suite, not when it is narrowed by arguments.
if [ $# -eq 0 ]; then
  fuzz/run.sh 5
fi
