#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root), builds, and runs the whole test suite:
#   1. the concurrency-labelled tests under ThreadSanitizer (build-tsan/),
#   2. every test in the Release build (build/). The last line is CTest's summary.
# This is the README's test command and exactly what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== build (Release)"
cmake --preset release >/dev/null
cmake --build build

echo "== concurrency tests under ThreadSanitizer"
cmake --preset tsan >/dev/null
mapfile -t tsan_targets < <(ctest --test-dir build-tsan -L concurrency -N | awk '/Test +#/ {print $3}')
cmake --build build-tsan --target "${tsan_targets[@]}"
ctest --test-dir build-tsan -L concurrency --output-on-failure

echo "== all tests (Release)"
ctest --test-dir build --output-on-failure
