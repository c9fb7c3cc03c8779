#!/usr/bin/env bash
# The cost of security (docs/benchmarks.md, docs/security.md): two 3-node clusters on loopback,
# one plain and one secured (RPC TLS with certificates, gossip sealed), measured alternately with
# the same load in the same run, so the machine's noise hits both alike.
#
#   bench/security_cost.sh [--rounds N] [--seconds S] [--rate CHECKS_PER_S]
#
# Loads, each entering at node 1 only, so about 2/3 of the checks are forwarded to their owners
# over the node-to-node RPC (TLS in the secured cluster):
#   rpc   throttlex-bench --batch 100 --route entry (the client's connection is TLS too)
#   http  wrk with random keys (bench/wrk/random_keys.lua); HTTP itself is plain in both
#   fixed with --rate: the rpc load open loop at that rate in both clusters, so that both do the
#         same work (a closed loop's slower cluster also forwards smaller batches, which cost more
#         per check): its CPU per check is the nodes' cost of security alone
# Prints one line per round and load, then the median throughput ratio (secured / plain), both
# medians of p99, and the nodes' CPU per check (user + system time of the cluster's three nodes
# over the load, warm-up included, divided by the checks at the measured rate over that time): on
# these shared cores the throughput also pays for the generator's own TLS, where the CPU per check
# is what a node with cores of its own would pay. Every process started here is stopped by PID; every load is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${THROTTLEX_BIN:-build/bin}
rounds=3 secs=5 rate=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--seconds S] [--rate CHECKS_PER_S]" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is not installed (scripts/setup.sh installs it)" >&2; exit 1; }

work=$(mktemp -d /tmp/throttlex-secbench-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
scripts/cluster-init.sh "$work/keys" 3 >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_log() {  # FILE PATTERN: until the node's log has the line (bounded)
  for _ in $(seq 1 400); do grep -q "$2" "$1" && return 0; sleep 0.05; done
  echo "no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

# start_cluster NAME SECURED: three nodes; sets NAME_http1 and NAME_rpc1.
start_cluster() {
  local name=$1 secured=$2 i seed=""
  for i in 1 2 3; do
    local http rpc gossip flags=()
    http=$(free_port); rpc=$(free_port); gossip=$(free_port)
    if ((secured)); then
      cp "$work/keys/keyring" "$work/keys/$name-$i.keyring"
      flags=(--gossip-keyring "$work/keys/$name-$i.keyring" --tls-ca "$work/keys/ca.crt"
             --tls-cert "$work/keys/node-$i.crt" --tls-key "$work/keys/node-$i.key")
    fi
    [[ -z $seed ]] || flags+=(--join "$seed")
    "$BIN/throttlexd" --bind 127.0.0.1 --node-id "$name-$i" --cluster-name "$name" \
      --gossip-preset local --threads 1 --http-port "$http" --rpc-port "$rpc" --metrics-port 0 \
      --gossip-port "$gossip" "${flags[@]}" 2>"$work/$name-$i.log" &
    pids+=($!)
    eval "${name}_pids+=($!)"
    wait_log "$work/$name-$i.log" "ready:"
    if [[ $i == 1 ]]; then
      seed=127.0.0.1:$gossip
      printf -v "${name}_http1" '%s' "$http"
      printf -v "${name}_rpc1" '%s' "$rpc"
    fi
  done
  wait_log "$work/$name-1.log" "member $name-3 joined"
  wait_log "$work/$name-1.log" "member $name-2 joined"
}
plain_pids=() secure_pids=()
start_cluster plain 0
start_cluster secure 1
tck=$(getconf CLK_TCK)
cpu_ticks() {  # PID...: user + system clock ticks of these processes so far
  local total=0 p f
  for p in "$@"; do
    read -r -a f < "/proc/$p/stat"
    total=$((total + f[13] + f[14]))  # utime, stime (the command has no spaces)
  done
  echo "$total"
}

tls_flags=(--tls-ca "$work/keys/ca.crt" --tls-cert "$work/keys/client.crt"
           --tls-key "$work/keys/client.key")
rpc_load() {  # RPC-PORT [TLS FLAGS...]: "throughput p99_us"
  local port=$1; shift
  "$BIN/throttlex-bench" --node "127.0.0.1:$port" "$@" --batch 100 --connections 2 --route entry \
    --keys 100000 --limit 1000000 --period 1m --duration "${secs}s" --warmup 1s --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.0f" % (r["throughput"], r["latency_us"]["p99"]))'
}
http_load() {  # HTTP-PORT: "throughput p99_us"
  wrk -t1 -c32 -d"${secs}s" --latency -s bench/wrk/random_keys.lua "http://127.0.0.1:$1" |
    awk '/Requests\/sec/ {rps=$2} / 99%/ {v=$2; u=1; if (v ~ /ms$/) u=1000; if (v ~ /us$/) u=1;
         if (v ~ /[0-9]s$/) u=1000000; sub(/[a-z]+$/, "", v); p99=v*u} END {printf "%.0f %.0f\n", rps, p99}'
}

# measure LOAD CLUSTER [ARGS...]: "throughput p99_us cpu_us_per_check"
measure() {
  local load=$1 cluster=$2; shift 2
  local -n cpids="${cluster}_pids"
  local before after t p wall=$secs
  before=$(cpu_ticks "${cpids[@]}")
  if [[ $load == rpc || $load == fixed ]]; then
    read -r t p < <(rpc_load "$@")
    wall=$((secs + 1))  # and its 1 s of warm-up
  else
    read -r t p < <(http_load "$@")
  fi
  after=$(cpu_ticks "${cpids[@]}")
  python3 -c "print('$t $p %.2f' % (($after - $before) / $tck * 1e6 / max(1.0, $t * $wall)))"
}

[[ $rate =~ ^[0-9]+$ ]] || { echo "--rate: checks per second, a whole number" >&2; exit 2; }
loads="rpc http"
((rate == 0)) || loads+=" fixed"
declare -A results
for r in $(seq 1 "$rounds"); do
  for load in $loads; do
    if [[ $load == rpc ]]; then
      read -r pt pp pc < <(measure rpc plain "$plain_rpc1")
      read -r st sp sc < <(measure rpc secure "$secure_rpc1" "${tls_flags[@]}")
    elif [[ $load == fixed ]]; then
      read -r pt pp pc < <(measure fixed plain "$plain_rpc1" --rate "$rate")
      read -r st sp sc < <(measure fixed secure "$secure_rpc1" --rate "$rate" "${tls_flags[@]}")
    else
      read -r pt pp pc < <(measure http plain "$plain_http1")
      read -r st sp sc < <(measure http secure "$secure_http1")
    fi
    ratio=$(python3 -c "print(f'{$st / $pt:.3f}')")
    results[$load]+="$ratio $pp $sp $pc $sc;"
    echo "round $r $load: plain ${pt}/s p99 ${pp} us ${pc} CPU-us/check," \
      "secured ${st}/s p99 ${sp} us ${sc} CPU-us/check, ratio ${ratio}"
  done
done
for load in $loads; do
  python3 - "$load" "${results[$load]}" <<'PY'
import statistics, sys
load, rows = sys.argv[1], [r.split() for r in sys.argv[2].split(";") if r]
med = lambda i: statistics.median(float(r[i]) for r in rows)
cpu = statistics.median(float(r[4]) / float(r[3]) for r in rows)
print(f"{load}: median throughput ratio (secured / plain) {med(0):.3f}; "
      f"median p99 plain {med(1):.0f} us, secured {med(2):.0f} us; "
      f"nodes' CPU per check plain {med(3):.2f} us, secured {med(4):.2f} us, "
      f"secured / plain {cpu:.3f} ({len(rows)} rounds)")
PY
done
