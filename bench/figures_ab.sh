#!/usr/bin/env bash
# Re-measures the figures of docs/benchmarks.md for two builds side by side: each section's own
# command, run from each source tree with that tree's scripts and build/bin, in alternating order
# (A B, B A, A B, ...) so that a noisy machine hits both alike. Writes one log per section, tree
# and round; the figures are read from the logs (docs/benchmarks.md, "Then and now").
#
#   bench/figures_ab.sh --a OLD_TREE --b NEW_TREE --out DIR [SECTION[:ROUNDS] ...]
#
# Each tree must be built (`cmake --preset release && cmake --build build`). Sections, in the
# order of docs/benchmarks.md: limiter http http400 rpc cluster detect persist kill9 outage
# redis_layout peers seed chaos_kill chaos_partition. Without sections: all, with the default
# rounds below. Sections that use network namespaces (seed, chaos_*) need root. Every command is
# bounded by `timeout`; a section that fails is logged and the run goes on.
set -u

a="" b="" out=""
sections=()
while [ $# -gt 0 ]; do
  case "$1" in
    --a) a=$(cd "$2" && pwd); shift 2 ;;
    --b) b=$(cd "$2" && pwd); shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "figures_ab.sh: unknown option $1" >&2; exit 2 ;;
    *) sections+=("$1"); shift ;;
  esac
done
if [ -z "$a" ] || [ -z "$b" ] || [ -z "$out" ]; then
  echo "figures_ab.sh: --a, --b and --out are required (see --help)" >&2
  exit 2
fi
for tree in "$a" "$b"; do
  if [ ! -x "$tree/build/bin/throttlexd" ]; then
    echo "figures_ab.sh: $tree/build/bin/throttlexd is missing: build that tree first" >&2
    exit 2
  fi
done
mkdir -p "$out"
py=/usr/bin/python3

# section → "default rounds|time limit in seconds|command run in the tree" (OUT is the log folder)
declare -A spec=(
  [limiter]="3|900|build/bin/limiter_bench --benchmark_out=OUT/limiter.json --benchmark_out_format=json"
  [http]="3|120|bash bench/http_compare.sh -d 10 --rounds 1"
  [http400]="3|120|bash bench/http_compare.sh -t 12 -c 400 -d 10 --rounds 1"
  [rpc]="3|300|bash bench/rpc_report.sh --rounds 1 --duration 5s --keys 1000000"
  [cluster]="3|600|$py bench/cluster_report.py --rounds 1 --duration 4s --detect-runs 0"
  [detect]="5|180|$py bench/cluster_report.py --skip-throughput --detect-runs 1"
  [persist]="1|900|$py bench/persistence_report.py --rounds 3 --duration 4s"
  [kill9]="5|300|cd tests/integration && THROTTLEX_BIN=\$PWD/../../build/bin $py -m unittest -v test_persistence.PersistenceTest.test_kill_of_a_node_over_admits_at_most_its_last_snapshot_interval"
  [outage]="3|300|cd tests/integration && THROTTLEX_BIN=\$PWD/../../build/bin $py -m unittest -v test_persistence.PersistenceTest.test_redis_outage_neither_fails_nor_slows_checks"
  [redis_layout]="1|300|ctest --test-dir build -R persistence_redis_store_test -V"
  [peers]="3|300|$py bench/peers_report.py --only throttlex --rounds 1 --duration 10 --out OUT"
  [seed]="1|600|$py cluster/seed_report.py --duration 10 --keys 1000000 --memory-keys 1000000 --out OUT"
  [chaos_kill]="2|240|bash cluster/chaos/kill.sh"
  [chaos_partition]="2|300|bash cluster/chaos/partition.sh --duration 12 --seen-bound 10 --after 5"
)
order=(limiter http http400 rpc cluster detect persist kill9 outage redis_layout peers seed
       chaos_kill chaos_partition)
[ ${#sections[@]} -eq 0 ] && sections=("${order[@]}")

run_one() {  # section tree-label tree round rounds-limit command
  local name=$1 label=$2 tree=$3 round=$4 limit=$5 cmd=$6
  local log="$out/$name.$label.$round.log" dir="$out/$name.$label.$round"
  mkdir -p "$dir"
  cmd=${cmd//OUT/$dir}
  {
    echo "# $name, tree $label ($tree, $(git -C "$tree" rev-parse --short HEAD)), round $round"
    echo "# $cmd"
    echo "# start $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$log"
  (cd "$tree" && timeout --kill-after=10 "$limit" bash -c "$cmd") >>"$log" 2>&1
  echo "# rc=$? end $(date -u +%FT%TZ)" >>"$log"
  echo "$name $label round $round: $(tail -1 "$log")"
}

for item in "${sections[@]}"; do
  name=${item%%:*}
  if [ -z "${spec[$name]+x}" ]; then
    echo "figures_ab.sh: unknown section $name (known: ${order[*]})" >&2
    exit 2
  fi
  IFS='|' read -r rounds limit cmd <<<"${spec[$name]}"
  [ "$item" != "$name" ] && rounds=${item#*:}
  for ((r = 1; r <= rounds; r++)); do
    if ((r % 2)); then
      run_one "$name" a "$a" "$r" "$limit" "$cmd"
      run_one "$name" b "$b" "$r" "$limit" "$cmd"
    else
      run_one "$name" b "$b" "$r" "$limit" "$cmd"
      run_one "$name" a "$a" "$r" "$limit" "$cmd"
    fi
  done
done
