#!/usr/bin/env bash
# RPC throughput of one throttlexd through the client library (throttlex-bench), for
# docs/benchmarks.md: several configurations, each repeated, medians printed as a Markdown table.
#   bench/rpc_report.sh [--rounds N] [--duration 5s] [--keys 1000000] [--server-threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${THROTTLEX_BIN:-build/bin}
rounds=3 duration=5s keys=1000000 server_threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --server-threads) server_threads=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--duration 5s] [--keys N] [--server-threads N]" >&2; exit 2 ;;
  esac
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/throttlexd" --bind 127.0.0.1 --http-port 0 --rpc-port "$port" --metrics-port 0 \
  --threads "$server_threads" 2>/dev/null &
pid=$!
tmp=$(mktemp -d)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done

configs=("--batch 500 --connections 2" "--batch 100 --connections 2" "--concurrency 256 --connections 2"
         "--concurrency 16 --connections 2")
echo "| client configuration | median checks/s | p50 µs | p99 µs | avg batch |"
echo "| --- | --- | --- | --- | --- |"
for cfg in "${configs[@]}"; do
  runs=()
  for r in $(seq 1 "$rounds"); do
    # shellcheck disable=SC2086
    "$BIN/throttlex-bench" --node "127.0.0.1:$port" $cfg --keys "$keys" --limit 1000000 \
      --period 1s --duration "$duration" --warmup 1s --json >"$tmp/run$r.json" 2>/dev/null
    runs+=("$tmp/run$r.json")
  done
  python3 bench/rpc_report_row.py "$cfg" "${runs[@]}"
done
