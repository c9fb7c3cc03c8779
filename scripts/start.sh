#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): install what is needed, build, and start a
# LOCAL 5-NODE CLUSTER on this machine, in the foreground until Ctrl-C or SIGTERM.
#
#   scripts/start.sh [extra throttlexd flags, given to every node]
#
#   node     HTTP   RPC    metrics  gossip
#   node-1   8080   7400   9464     7946    (the seed: the others start with --join 127.0.0.1:7946)
#   node-2   8081   7401   9465     7947
#   ...
#   node-5   8084   7404   9468     7950
#
# Every node binds 127.0.0.1, uses the example rules, the `local` gossip timing and
# --threads $THROTTLEX_THREADS (default 1: five nodes share this machine's cores; with 0 each
# node would start one worker per core per API). Logs go to $THROTTLEX_RUN_DIR (default
# /tmp/throttlex-cluster), one file per node.
#
# The script checks that all 20 ports are free, starts the nodes, waits (at most
# $THROTTLEX_START_TIMEOUT s, default 30) until every node's /v1/cluster shows 5 alive members,
# prints how to reach them, and then waits. Ctrl-C or SIGTERM stops every node with SIGTERM (each
# leaves the cluster gracefully) and exits 0. A node that dies, on startup or later, stops the
# others and the script exits non-zero with the end of that node's log; a node that drains
# (`throttlectl drain`, exit 0) just leaves.
# THROTTLEX_NO_BUILD=1 skips setup.sh and the build (a quick restart of what is already built).
#
# Secured by default (docs/security.md): on first start scripts/cluster-init.sh creates a gossip
# key, a CA and node, admin and client certificates in $RUN_DIR/keys (later starts reuse them);
# every node seals gossip with its own copy of the keyring ($RUN_DIR/keys/node-N.keyring, which
# `throttlectl keyring` rewrites) and serves RPC over TLS. throttlectl and throttlex-bench then
# need the THROTTLEX_TLS_* variables the script prints. THROTTLEX_INSECURE=1: neither.
#
# Snapshots: a redis-server of its own on 127.0.0.1:$THROTTLEX_REDIS_PORT (default 6390; no disk
# persistence, data in $RUN_DIR/redis) that every node writes its state to (--redis), stopped after
# the nodes. Restarting the cluster keeps the limits' state as long as that Redis runs; it stops
# with the script. THROTTLEX_NO_REDIS=1: memory only.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly NODES=5
readonly RUN_DIR=${THROTTLEX_RUN_DIR:-/tmp/throttlex-cluster}
readonly THREADS=${THROTTLEX_THREADS:-1}
readonly START_TIMEOUT=${THROTTLEX_START_TIMEOUT:-30}
readonly STOP_TIMEOUT=15  # seconds a node gets to leave and stop after SIGTERM
readonly BIN=build/bin
readonly REDIS_PORT=${THROTTLEX_REDIS_PORT:-6390}
readonly WITH_REDIS=$([[ ${THROTTLEX_NO_REDIS:-0} == 1 ]] && echo 0 || echo 1)
redis_pid=""

http_port() { echo $((8079 + $1)); }
rpc_port() { echo $((7399 + $1)); }
metrics_port() { echo $((9463 + $1)); }
gossip_port() { echo $((7945 + $1)); }

log() { echo "start.sh: $*" >&2; }

declare -a pids=()   # node number (1..5) -> PID, only for nodes started and not yet reaped
stop_requested=0

# ---- build -----------------------------------------------------------------------------------
if [[ ${THROTTLEX_NO_BUILD:-0} != 1 ]]; then
  ./scripts/setup.sh
  cmake --preset release >/dev/null
  cmake --build build
fi
[[ -x $BIN/throttlexd ]] || { log "$BIN/throttlexd is missing: build first"; exit 1; }

# ---- the ports must be free ------------------------------------------------------------------
# HTTP, RPC and metrics are TCP; gossip uses TCP and UDP on the same port number.
check_ports_free() {
  local i p busy=()
  for ((i = 1; i <= NODES; i++)); do
    for p in "$(http_port "$i")" "$(rpc_port "$i")" "$(metrics_port "$i")" "$(gossip_port "$i")"; do
      [[ -z $(ss -Hltn "sport = :$p") ]] || busy+=("tcp/$p: $(ss -Hltnp "sport = :$p" | head -1)")
    done
    p=$(gossip_port "$i")
    [[ -z $(ss -Hlun "sport = :$p") ]] || busy+=("udp/$p: $(ss -Hlunp "sport = :$p" | head -1)")
  done
  if ((WITH_REDIS)) && [[ -n $(ss -Hltn "sport = :$REDIS_PORT") ]]; then
    busy+=("tcp/$REDIS_PORT (Redis): $(ss -Hltnp "sport = :$REDIS_PORT" | head -1)")
  fi
  if ((${#busy[@]} > 0)); then
    log "these ports are in use, so the cluster cannot start (is another one running?):"
    printf '  %s\n' "${busy[@]}" >&2
    exit 1
  fi
}
check_ports_free

# ---- stopping --------------------------------------------------------------------------------
node_running() { kill -0 "${pids[$1]}" 2>/dev/null; }

# SIGTERM to every node still running, then wait for them (bounded); SIGKILL what is left.
# Returns non-zero if a node had to be killed or did not exit 0.
stop_nodes() {
  local i status failed=0
  ((${#pids[@]} > 0)) || return 0
  log "stopping ${#pids[@]} node(s) with SIGTERM"
  for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  local deadline=$((SECONDS + STOP_TIMEOUT))
  for i in "${!pids[@]}"; do
    while node_running "$i" && ((SECONDS < deadline)); do sleep 0.1; done
    if node_running "$i"; then
      log "node-$i (pid ${pids[$i]}) did not stop within ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
      failed=1
    fi
    status=0
    wait "${pids[$i]}" 2>/dev/null || status=$?
    ((status == 0)) || { log "node-$i exited with status $status"; failed=1; }
    unset "pids[$i]"
  done
  return "$failed"
}

stop_redis() {
  [[ -n $redis_pid ]] || return 0
  kill -TERM "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=""
}

# Any way out (an error under set -e included) stops what was started.
trap 'stop_nodes || true; stop_redis' EXIT
trap 'stop_requested=1' INT TERM HUP

# A node that is gone: say so with the end of its log, stop the others, exit non-zero.
#   fail_node_died NODE [EXIT-STATUS]   (the status, when a `wait` has already collected it)
fail_node_died() {
  local i=$1 status=${2:-}
  if [[ -z $status ]]; then
    status=0
    wait "${pids[$i]}" 2>/dev/null || status=$?
  fi
  unset "pids[$i]"
  log "node-$i died (exit status $status); the end of $RUN_DIR/node-$i.log:"
  tail -n 20 "$RUN_DIR/node-$i.log" | sed 's/^/  | /' >&2
  stop_nodes || true
  exit 1
}

first_dead_node() {
  local i
  for i in "${!pids[@]}"; do node_running "$i" || { echo "$i"; return 0; }; done
  return 1
}

# ---- start -----------------------------------------------------------------------------------
mkdir -p "$RUN_DIR"
redis_args=()
if ((WITH_REDIS)); then
  mkdir -p "$RUN_DIR/redis"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$RUN_DIR/redis" >"$RUN_DIR/redis.log" 2>&1 &
  redis_pid=$!
  deadline=$((SECONDS + 10))
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    kill -0 "$redis_pid" 2>/dev/null || { log "redis-server did not start:"; tail -5 "$RUN_DIR/redis.log" >&2; exit 1; }
    ((SECONDS < deadline)) || { log "redis-server did not answer within 10 s"; exit 1; }
    sleep 0.1
  done
  redis_args=(--redis "127.0.0.1:$REDIS_PORT")
  log "redis-server on 127.0.0.1:$REDIS_PORT (pid $redis_pid) for snapshots"
fi
readonly KEYS=$RUN_DIR/keys
secure=$([[ ${THROTTLEX_INSECURE:-0} == 1 ]] && echo 0 || echo 1)
if ((secure)); then
  ./scripts/cluster-init.sh "$KEYS" "$NODES" | sed 's/^/start.sh: /' >&2
  for ((i = 1; i <= NODES; i++)); do
    [[ -s $RUN_DIR/keys/node-$i.keyring ]] ||
      (umask 077 && cp "$RUN_DIR/keys/keyring" "$RUN_DIR/keys/node-$i.keyring")
  done
fi
for ((i = 1; i <= NODES; i++)); do
  args=()
  if ((secure)); then
    args+=(--gossip-keyring "$KEYS/node-$i.keyring" --tls-ca "$KEYS/ca.crt"
           --tls-cert "$KEYS/node-$i.crt" --tls-key "$KEYS/node-$i.key")
  fi
  args+=(--node-id "node-$i" --bind 127.0.0.1 --cluster-name throttlex-local --gossip-preset local
        --http-port "$(http_port "$i")" --rpc-port "$(rpc_port "$i")"
        --metrics-port "$(metrics_port "$i")" --gossip-port "$(gossip_port "$i")"
        --threads "$THREADS" --rules docs/examples/rules.yaml)
  ((i == 1)) || args+=(--join "127.0.0.1:$(gossip_port 1)")
  "$BIN/throttlexd" "${args[@]}" "${redis_args[@]+"${redis_args[@]}"}" "$@" \
    >"$RUN_DIR/node-$i.log" 2>&1 &
  pids[i]=$!
done
log "started $NODES nodes (pids ${pids[*]}), logs in $RUN_DIR/node-{1..$NODES}.log"

# ---- wait until every node sees all five alive ----------------------------------------------
alive_seen_by() {  # how many members node $1 reports alive (0 while it is not answering)
  curl -fsS --max-time 1 "http://127.0.0.1:$(http_port "$1")/v1/cluster" 2>/dev/null |
    grep -o '"state":"alive"' | wc -l
}

cluster_converged() {
  local i
  for ((i = 1; i <= NODES; i++)); do
    (($(alive_seen_by "$i") == NODES)) || return 1
  done
}

deadline=$((SECONDS + START_TIMEOUT))
until cluster_converged; do
  ((stop_requested == 0)) || { log "interrupted while starting"; exit 130; }
  if dead=$(first_dead_node); then fail_node_died "$dead"; fi
  if ((SECONDS >= deadline)); then
    log "the nodes did not all see $NODES alive members within ${START_TIMEOUT}s:"
    for ((i = 1; i <= NODES; i++)); do log "  node-$i sees $(alive_seen_by "$i") alive"; done
    exit 1
  fi
  sleep 0.2
done

cat <<MSG

A local $NODES-node ThrottleX cluster is running (cluster name throttlex-local, logs in $RUN_DIR).

  node     HTTP                    RPC              metrics                         gossip
MSG
for ((i = 1; i <= NODES; i++)); do
  printf '  node-%d   http://127.0.0.1:%d   127.0.0.1:%d   http://127.0.0.1:%d/metrics   127.0.0.1:%d\n' \
    "$i" "$(http_port "$i")" "$(rpc_port "$i")" "$(metrics_port "$i")" "$(gossip_port "$i")"
done
if ((secure)); then
  cat <<MSG

RPC is TLS with client certificates and gossip is sealed (docs/security.md). For throttlectl
and throttlex-bench, first (admin may change things; client.crt/key may only check):
  export THROTTLEX_TLS_CA=$KEYS/ca.crt THROTTLEX_TLS_CERT=$KEYS/admin.crt THROTTLEX_TLS_KEY=$KEYS/admin.key
MSG
fi
cat <<MSG

Try (any node answers for any key):
  curl -s http://127.0.0.1:8080/v1/cluster
  curl -i 'http://127.0.0.1:8081/v1/check?key=user:1&limit=5&period=1m'
  curl -i 'http://127.0.0.1:8082/v1/check?key=user:1&rule=api-per-user'
  $BIN/throttlectl --node 127.0.0.1:7400 members
  $BIN/throttlectl --node 127.0.0.1:7400 ring
  $BIN/throttlectl --node 127.0.0.1:7400 owner user:1 --rule login
  $BIN/throttlectl --node 127.0.0.1:7403 check user:1 --rule login
  $BIN/throttlex-bench --node 127.0.0.1:7400 --duration 5s
  curl -s http://127.0.0.1:9464/metrics | grep throttlex_members
  $BIN/throttlectl --node 127.0.0.1:7400 status      # snapshots, handoffs
  $BIN/throttlectl --node 127.0.0.1:7400 snapshot    # write every node's state to Redis now
  $BIN/throttlectl --node 127.0.0.1:7400 drain node-5  # hand node-5's keys over; it leaves
  $BIN/throttlectl --node 127.0.0.1:7400 keyring list  # gossip keys (docs/security.md)
Stop with Ctrl-C (or SIGTERM to pid $$).

MSG

# ---- run until a signal, or until a node dies -----------------------------------------------
while ((stop_requested == 0)); do
  # Returns when a node exits (its PID in $exited), or early when a trapped signal arrives.
  exited="" status=0
  wait -n -p exited "${pids[@]}" || status=$?
  ((stop_requested == 0)) || break
  [[ -n $exited ]] || continue
  for i in "${!pids[@]}"; do
    [[ ${pids[$i]} == "$exited" ]] || continue
    if ((status == 0)); then  # it drained and left (throttlectl drain): the others go on
      log "node-$i left the cluster (exit 0; drained)"
      unset "pids[$i]"
    else
      fail_node_died "$i" "$status"
    fi
  done
  ((${#pids[@]} > 0)) || { log "every node has left"; break; }
done

trap - EXIT
if stop_nodes; then
  stop_redis
  log "all nodes stopped"
  exit 0
fi
stop_redis
exit 1
