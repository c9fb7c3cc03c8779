#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root), builds, and runs the whole test suite:
#   0. the formatting check (clang-format, .clang-format), the Release build with -Werror and
#      clang-tidy (.clang-tidy),
#   1. the unit tests and the fuzz targets' corpus replay (fuzz/, docs/fuzzing.md) under
#      ASan+UBSan (build-asan/), then the integration tests against the ASan+UBSan throttlexd and
#      throttlectl,
#   2. the concurrency-labelled tests under ThreadSanitizer (build-tsan/),
#   3. every other test in the Release build (build/): the client package, the chaos scenarios,
#      the timing_ tests and the cluster/ checks. The unit, fuzz-replay and integration tests ran in
#      stage 1 against the sanitizer build and are neither built nor run twice. The last line is
#      CTest's summary.
# Tests labelled `integration` (real clusters, timing verdicts) run alone (RUN_SERIAL); the others
# two at a time. Each stage header says how long the run has taken so far.
# This is the README's test command and exactly what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
stage() {
  local s=$(($(date +%s) - started))
  printf '== [%dm%02ds] %s\n' $((s / 60)) $((s % 60)) "$*"
}

./scripts/setup.sh

stage "format (clang-format $(clang-format --version | grep -o '[0-9][0-9.]*' | head -1))"
mapfile -t sources < <(git ls-files '*.cc' '*.h')
if ! clang-format --dry-run --Werror "${sources[@]}"; then
  echo "format: the files above differ from .clang-format; run: git ls-files '*.cc' '*.h' | xargs clang-format -i" >&2
  exit 1
fi

stage "build (Release, warnings are errors): what ships and what the Release stage runs"
# The unit tests and the fuzz drivers are built once, in stage 1, with the sanitizers (warnings are
# errors there too); here every other directory: the daemon, the CLI, the client, the load tools.
cmake --preset release >/dev/null
mapfile -t release_dirs < <(sed -n 's/^ *add_subdirectory(\([a-z_]*\)).*/\1/p' CMakeLists.txt | grep -vx -e tests -e fuzz)
cmake --build build --target "${release_dirs[@]/%//all}"

stage "clang-tidy (.clang-tidy: function size, use after move, thread safety, ...)"
mapfile -t tidy_sources < <(git ls-files 'daemon/*.cc' 'gossip/*.cc' 'persistence/*.cc' \
                                         'client/*.cc' 'limiter/*.cc' 'cli/*.cc')
# GCC-only warning flags in the compile database are not clang's business.
run-clang-tidy -p build -quiet -j "$(nproc)" -extra-arg=-Wno-unknown-warning-option -extra-arg=-Wthread-safety \
  "${tidy_sources[@]}" >build/clang-tidy.log 2>&1 || {
  grep -E 'warning:|error:' build/clang-tidy.log | sort -u >&2
  echo "clang-tidy: the findings above fail the build (see .clang-tidy)" >&2
  exit 1
}
echo "clang-tidy: ${#tidy_sources[@]} files clean"

stage "unit tests and fuzz corpus replay under ASan+UBSan"
cmake --preset asan >/dev/null
mapfile -t asan_targets < <(ctest --test-dir build-asan -L '^(unit|adapter|fuzz)$' -N | awk '/Test +#/ {print $3}')
cmake --build build-asan --target "${asan_targets[@]}"
ctest --test-dir build-asan -L '^(unit|adapter|fuzz)$' -j "$(nproc)" --output-on-failure

stage "integration tests against the ASan+UBSan binaries"
# The nodes, throttlectl and the forging tools of integration_security are the sanitizer build
# (a leak or UB fails the node's exit code); the load generators stay the Release build's. The
# chaos scenarios and the timing_ tests (verdicts on timing) run in the Release stage.
cmake --build build-asan --target throttlexd throttlectl gossip-forge rpc-forge
THROTTLEX_TOOLS_BIN="$PWD/build/bin" \
  ctest --test-dir build-asan -L integration -E '^(cluster_|timing_)' --output-on-failure

stage "concurrency tests under ThreadSanitizer"
cmake --preset tsan >/dev/null
mapfile -t tsan_targets < <(ctest --test-dir build-tsan -L concurrency -N | awk '/Test +#/ {print $3}')
cmake --build build-tsan --target "${tsan_targets[@]}"
ctest --test-dir build-tsan -L concurrency --output-on-failure

stage "all other tests (Release): package, chaos scenarios, timing_ tests, cluster/ checks"
ctest --test-dir build -LE '^(unit|adapter|fuzz)$' -E '^integration_' -j "$(nproc)" --output-on-failure
