#!/usr/bin/env bash
# HTTP throughput of throttlexd's /v1/check against a trivial Asio "200 OK" server with the same
# threading model (build/bin/http_baseline), with the same wrk command, in the same run.
#
#   bench/http_compare.sh [-t THREADS] [-c CONNECTIONS] [-d SECONDS] [--rounds N]
#
# Defaults fit a 2-core machine where wrk shares the cores with the server. The seed plan's command
# (wrk -t12 -c400 -d30s) works too: bench/http_compare.sh -t 12 -c 400 -d 30
# Prints one line per round and the median ratio. Every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${THROTTLEX_BIN:-build/bin}
threads=2 conns=64 secs=10 rounds=3 server_threads=1
while [ $# -gt 0 ]; do
  case "$1" in
    -t) threads=$2; shift 2 ;;
    -c) conns=$2; shift 2 ;;
    -d) secs=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --server-threads) server_threads=$2; shift 2 ;;
    *) echo "usage: $0 [-t THREADS] [-c CONNECTIONS] [-d SECONDS] [--rounds N] [--server-threads N]" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is not installed (scripts/setup.sh installs it)" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
}
rps() { awk '/Requests\/sec/ {print $2}'; }

base_port=$(free_port)
"$BIN/http_baseline" --port "$base_port" --threads "$server_threads" >/dev/null 2>&1 &
pids+=($!)
tx_port=$(free_port)
"$BIN/throttlexd" --bind 127.0.0.1 --http-port "$tx_port" --rpc-port 0 --metrics-port 0 \
  --threads "$server_threads" 2>/dev/null &
pids+=($!)
wait_port "$base_port"; wait_port "$tx_port"

ratios=()
for r in $(seq 1 "$rounds"); do
  # The same command for both, script included (generating URLs costs wrk CPU on shared cores).
  base=$(wrk -t"$threads" -c"$conns" -d"${secs}s" -s bench/wrk/random_keys.lua "http://127.0.0.1:$base_port" | rps)
  tx=$(wrk -t"$threads" -c"$conns" -d"${secs}s" -s bench/wrk/random_keys.lua "http://127.0.0.1:$tx_port" | rps)
  ratio=$(python3 -c "print(f'{$tx / $base:.3f}')")
  ratios+=("$ratio")
  echo "round $r: baseline ${base} req/s, throttlexd /v1/check ${tx} req/s, ratio ${ratio}"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median ratio (throttlexd / baseline): ${median}"
