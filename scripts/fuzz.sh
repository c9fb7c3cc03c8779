#!/usr/bin/env bash
# Runs the libFuzzer targets (fuzz/, docs/fuzzing.md) with ASan+UBSan, each until FUZZ_RUNS
# executions (default 10 million) or FUZZ_SECONDS seconds (default 3600), whichever comes first;
# FUZZ_JOBS targets at once (default: the number of cores). Each target starts from its seed
# corpus in fuzz/corpus and keeps what it finds in build-fuzz/corpus/TARGET; a crash leaves its
# input in build-fuzz/crashes/ and fails the script. Needs clang (scripts/setup.sh installs it).
#   scripts/fuzz.sh                      # every target
#   FUZZ_RUNS=100000 scripts/fuzz.sh http_api   # one target, briefly
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${FUZZ_RUNS:-10000000}
SECONDS_EACH=${FUZZ_SECONDS:-3600}
JOBS=${FUZZ_JOBS:-$(nproc)}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/corpus)
fi

if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "fuzz.sh: needs clang and libFuzzer: apt-get install clang libclang-rt-14-dev" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev
fi
cmake --preset fuzz >/dev/null
cmake --build build-fuzz --target "${targets[@]/#/fuzz_}"
mkdir -p build-fuzz/crashes build-fuzz/logs

run() {
  local t=$1
  mkdir -p "build-fuzz/corpus/$t"
  if build-fuzz/bin/fuzz_"$t" -runs="$RUNS" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
       -artifact_prefix="build-fuzz/crashes/$t-" "build-fuzz/corpus/$t" "fuzz/corpus/$t" \
       >"build-fuzz/logs/$t.log" 2>&1; then
    echo "$t: $(grep -o 'stat::number_of_executed_units: [0-9]*' "build-fuzz/logs/$t.log" | grep -o '[0-9]*$') executions, $(grep -o 'stat::average_exec_per_sec: *[0-9]*' "build-fuzz/logs/$t.log" | grep -o '[0-9]*$')/s, no failure"
  else
    echo "$t: FAILED (build-fuzz/logs/$t.log, build-fuzz/crashes/$t-*)"
    grep -E 'ERROR|SUMMARY' "build-fuzz/logs/$t.log" | head -5
    return 1
  fi
}

failed=0
running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"
