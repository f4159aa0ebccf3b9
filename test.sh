#!/usr/bin/env bash
# pier's whole test suite. Builds the guests that come from third-party toolchains
# (componentize-py, componentize-js, the AssemblyScript Proxy-Wasm SDKs; installed locally on
# first use) and the example app's components, then runs every test.
set -euo pipefail
cd "$(dirname "$0")"
guests/build.sh python
guests/build.sh js
guests/build.sh filters
guests/build.sh app
cargo test --workspace --locked "$@"
