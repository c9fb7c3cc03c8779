#!/usr/bin/env bash
# A local ThrottleX cluster where every node runs in its own Linux network namespace, so that
# partitions are real (for machines without Docker; issue 6). Needs root, iproute2 and curl.
#
#   cluster/netns/cluster.sh up     [--nodes 5] [--prefix tx] [--subnet 10.77.0] [--run-dir DIR]
#                                   [--redis] [--seeds 1] [--preset local] [--threads 1] [--timeout 30]
#                                   [-- extra throttlexd flags for every node]
#   cluster/netns/cluster.sh status [--prefix tx] [--run-dir DIR]
#   cluster/netns/cluster.sh down   [--prefix tx] [--run-dir DIR]
#   cluster/netns/cluster.sh kill   node-I|redis SIGNAL [--prefix tx] [--run-dir DIR]
#   cluster/netns/cluster.sh start  node-I|redis        [--prefix tx] [--run-dir DIR]
#
# Layout (prefix P, subnet S = the first three octets of a /24):
#
#   root namespace:  bridge P-br, address S.1/24 (the route to S.0/24 goes through it)
#   node i:          namespace P-ni, veth P-vi (root side, on the bridge) <-> eth0 (S.(10+i)/24);
#                    throttlexd --bind/--advertise S.(10+i), default ports (HTTP 8080, RPC 7400,
#                    metrics 9464, gossip 7946), --join S.11:7946, --node-id node-i; with --seeds K
#                    --join S.11:7946,...,S.(10+K):7946 (a node skips itself: a restarted node-1
#                    then rejoins through node-2 instead of starting a cluster of its own)
#   redis (--redis): namespace P-redis, veth P-vr <-> eth0 (S.2/24), redis-server on S.2:6379
#                    without persistence; every node gets --redis S.2:6379
#
# The run directory (default /tmp/throttlex-netns; env THROTTLEX_NETNS_RUN_DIR) holds node-i.log,
# node-i.pid, redis.log, redis.pid and cluster.env (the settings of `up`, which `status` and
# `down` read, so they need no options), and node-i.args (node i's command line, NUL-separated,
# for `start`). Binaries: $THROTTLEX_BIN (default build/bin).
#
# up      refuses to start when anything with the prefix exists already, when the subnet is on an
#         interface or has a route other than the default one, or when, once the bridge exists,
#         `ip route get S.11` does not go through it. It then waits (at most --timeout s) until
#         every node's /v1/cluster shows all nodes alive; on any failure it tears down what it
#         made and exits non-zero.
# status  prints each node's PID, whether it runs, and the members and states it reports.
# down    stops the processes whose PIDs it recorded (after checking that each is still the
#         throttlexd / redis-server it started, in its namespace): SIGTERM (and SIGCONT, for a
#         frozen one), SIGKILL after 15 s; then deletes the veths, the bridge and the namespaces
#         with the prefix — only those. Idempotent: what is already gone is skipped.
# kill    sends SIGNAL (TERM, KILL, STOP, CONT, ...) to the recorded PID of node I or of Redis,
#         after checking that it is still the process `up` started in its namespace; fails if not.
#         It does not wait: the chaos scenarios decide what to wait for.
# start   starts node I (with exactly the command line `up` gave it: same id, address, flags) or
#         Redis (same address and options, empty: it has no persistence) again in its namespace,
#         after a `kill`; refuses while the recorded process still runs. It does not wait either.
#
# Nothing outside the prefix is touched: no other interface, no route but the one the kernel
# adds for the bridge's address, no iptables rule in the root namespace.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
readonly REPO
BIN=${THROTTLEX_BIN:-$REPO/build/bin}
[[ $BIN == /* ]] || BIN=$REPO/$BIN

readonly STOP_TIMEOUT=15     # seconds a process gets after SIGTERM before SIGKILL
readonly MAX_NODES=40        # addresses S.11 .. S.50
readonly HTTP_PORT=8080 RPC_PORT=7400 METRICS_PORT=9464 GOSSIP_PORT=7946 REDIS_PORT=6379

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---- options -----------------------------------------------------------------------------------
cmd=${1:-}
[[ $cmd == up || $cmd == down || $cmd == status || $cmd == kill || $cmd == start ]] || usage
shift
target="" signal=""
if [[ $cmd == kill || $cmd == start ]]; then
  target=${1:-}
  [[ $target =~ ^(node-[0-9]+|redis)$ ]] || die "$cmd: say node-I or redis"
  shift
  if [[ $cmd == kill ]]; then
    signal=${1:-}
    [[ $signal =~ ^[A-Z]+[0-9]*$ ]] || die "kill: say which signal (TERM, KILL, STOP, CONT, ...)"
    shift
  fi
fi
opt_nodes="" opt_prefix="" opt_subnet="" opt_redis="" opt_seeds=1 opt_preset="" opt_threads="" opt_timeout=30
RUN_DIR=${THROTTLEX_NETNS_RUN_DIR:-/tmp/throttlex-netns}
extra=()
while (($# > 0)); do
  case $1 in
    --nodes) opt_nodes=$2; shift 2 ;;
    --prefix) opt_prefix=$2; shift 2 ;;
    --subnet) opt_subnet=$2; shift 2 ;;
    --run-dir) RUN_DIR=$2; shift 2 ;;
    --redis) opt_redis=1; shift ;;
    --seeds) opt_seeds=$2; shift 2 ;;
    --preset) opt_preset=$2; shift 2 ;;
    --threads) opt_threads=$2; shift 2 ;;
    --timeout) opt_timeout=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) usage ;;
    *) log "unknown option $1"; usage ;;
  esac
done
readonly STATE=$RUN_DIR/cluster.env

# Settings: options, else what `up` recorded, else defaults. `down`/`status` of another prefix
# than the recorded one use the defaults for the rest.
NODES=5 PREFIX=tx SUBNET=10.77.0 REDIS=0 PRESET=local THREADS=1
if [[ -f $STATE ]]; then
  # shellcheck disable=SC1090  # written by `up` below: plain NAME=value lines
  source <(grep -E '^(NODES|PREFIX|SUBNET|REDIS|PRESET|THREADS)=[A-Za-z0-9.]*$' "$STATE")
  if [[ -n $opt_prefix && $opt_prefix != "$PREFIX" && $cmd != up ]]; then
    NODES=5 SUBNET=10.77.0 REDIS=0
  fi
fi
[[ -z $opt_nodes ]] || NODES=$opt_nodes
[[ -z $opt_prefix ]] || PREFIX=$opt_prefix
[[ -z $opt_subnet ]] || SUBNET=$opt_subnet
[[ -z $opt_redis ]] || REDIS=1
[[ -z $opt_preset ]] || PRESET=$opt_preset
[[ -z $opt_threads ]] || THREADS=$opt_threads

# Names must fit IFNAMSIZ (15) and must not be mistaken for anything else on the machine.
[[ $PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--prefix must be 1-8 lowercase letters/digits, starting with a letter"
if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 1 || NODES > MAX_NODES)); then die "--nodes must be 1..$MAX_NODES"; fi
[[ $SUBNET =~ ^(10|192\.168|172\.(1[6-9]|2[0-9]|3[01]))(\.[0-9]{1,3}){1,2}$ ]] ||
  die "--subnet must be the first three octets of a private /24 (e.g. 10.77.0)"
[[ $(tr -cd . <<<"$SUBNET") == .. ]] || die "--subnet must have three octets (e.g. 10.77.0)"
[[ $opt_timeout =~ ^[0-9]+$ ]] || die "--timeout must be whole seconds"
if ! [[ $opt_seeds =~ ^[0-9]+$ ]] || ((opt_seeds < 1 || opt_seeds > NODES)); then die "--seeds must be 1..--nodes"; fi

bridge() { echo "$PREFIX-br"; }
node_ns() { echo "$PREFIX-n$1"; }
node_veth() { echo "$PREFIX-v$1"; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }
readonly REDIS_NS=$PREFIX-redis REDIS_VETH=$PREFIX-vr REDIS_ADDR=$SUBNET.2

# ---- safety ------------------------------------------------------------------------------------
need_root() {
  ((EUID == 0)) || die "needs root (network namespaces, veths, a bridge)"
  command -v ip >/dev/null || die "ip (iproute2) is missing"
  command -v curl >/dev/null || die "curl is missing"
}

# Everything we may have made: namespaces and links whose names are exactly ours.
our_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-(n[0-9]+|redis)\$" || true
}
our_links() {
  ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' |
    grep -E "^$PREFIX-(br|v[0-9]+|vr)\$" || true
}

# The subnet must be unused before `up`: on no interface, under no route but the default.
check_subnet_free() {
  local addrs routes
  addrs=$(ip -4 -o addr show | awk '{print $2, $4}' | grep -F " $SUBNET." || true)
  [[ -z $addrs ]] || die "the subnet $SUBNET.0/24 is already on an interface: $addrs"
  routes=$(ip -4 route show match "$(node_addr 1)" | grep -v '^default' || true)
  [[ -z $routes ]] || die "there is already a route for $SUBNET.x: $routes"
}

# Traffic from here to ADDR must leave through our bridge and nothing else.
check_route() {
  local got
  got=$(ip -4 route get "$1" 2>/dev/null || true)
  [[ $got == *" dev $(bridge) "* ]] || die "route to $1 does not go through $(bridge) ($got): refusing to send"
}

# PID is still the COMM we started, inside namespace NS.
is_ours() {
  local pid=$1 comm=$2 ns=$3
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
  [[ $(ip netns identify "$pid" 2>/dev/null) == "$ns" ]]
}

# ---- building the network ----------------------------------------------------------------------
# A namespace with lo up and eth0 (the inside of veth VETH, attached to the bridge) at ADDR/24.
add_namespace() {
  local ns=$1 veth=$2 addr=$3
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$(bridge)"
  ip link set "$veth" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}

make_network() {
  local i
  ip link add "$(bridge)" type bridge
  ip addr add "$SUBNET.1/24" dev "$(bridge)"
  ip link set "$(bridge)" up
  check_route "$(node_addr 1)"
  for ((i = 1; i <= NODES; i++)); do add_namespace "$(node_ns "$i")" "$(node_veth "$i")" "$(node_addr "$i")"; done
  if ((REDIS)); then add_namespace "$REDIS_NS" "$REDIS_VETH" "$REDIS_ADDR"; fi
  for ((i = 1; i <= NODES; i++)); do check_route "$(node_addr "$i")"; done
  if ((REDIS)); then check_route "$REDIS_ADDR"; fi
}

# ---- processes ---------------------------------------------------------------------------------
# Starts COMMAND... in namespace NS in its own session (it outlives this script), logging to LOG;
# prints its PID. `ip netns exec` execs in place, so the PID is the program's own.
start_in() {
  local ns=$1 log_file=$2
  shift 2
  setsid ip netns exec "$ns" "$@" </dev/null >"$log_file" 2>&1 &
  echo $!
}

start_redis() {
  command -v redis-server >/dev/null || die "--redis: redis-server is missing"
  local pid
  pid=$(start_in "$REDIS_NS" "$RUN_DIR/redis.log" redis-server --bind "$REDIS_ADDR" \
    --port "$REDIS_PORT" --save "" --appendonly no --protected-mode no --daemonize no)
  echo "$pid" >"$RUN_DIR/redis.pid"
}

# Node I's command line (throttlexd and its arguments), NUL-separated in node-I.args: `start`
# runs it again as it was.
start_node() {
  local i=$1 pid
  local -a argv=()
  mapfile -d '' -t argv <"$RUN_DIR/node-$i.args"
  ((${#argv[@]} > 0)) || die "$RUN_DIR/node-$i.args is empty"
  pid=$(start_in "$(node_ns "$i")" "$RUN_DIR/node-$i.log" "${argv[@]}")
  echo "$pid" >"$RUN_DIR/node-$i.pid"
}

start_nodes() {
  local i s args seeds
  seeds="$(node_addr 1):$GOSSIP_PORT"
  for ((s = 2; s <= opt_seeds; s++)); do seeds+=",$(node_addr "$s"):$GOSSIP_PORT"; done
  for ((i = 1; i <= NODES; i++)); do
    args=(--node-id "node-$i" --bind "$(node_addr "$i")" --advertise "$(node_addr "$i")"
          --join "$seeds" --cluster-name "throttlex-$PREFIX"
          --gossip-preset "$PRESET" --threads "$THREADS" --rules "$REPO/docs/examples/rules.yaml")
    if ((REDIS)); then args+=(--redis "$REDIS_ADDR:$REDIS_PORT"); fi
    printf '%s\0' "$BIN/throttlexd" "${args[@]}" "${extra[@]}" >"$RUN_DIR/node-$i.args"
    start_node "$i"
  done
}

node_pid() { cat "$RUN_DIR/node-$1.pid" 2>/dev/null || true; }

# The /v1/cluster body of node I ("" while it does not answer).
cluster_view() {
  curl -fsS --max-time 1 "http://$(node_addr "$1"):$HTTP_PORT/v1/cluster" 2>/dev/null || true
}

alive_seen_by() {
  cluster_view "$1" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["alive"])
except Exception: print(0)'
}

# SIGTERM (plus SIGCONT, in case it is frozen) to each PID, SIGKILL whatever is left after
# STOP_TIMEOUT. Arguments: PID COMM NS triples; PIDs that are no longer ours are skipped.
stop_pids() {
  local -a pids=()
  while (($# >= 3)); do
    if is_ours "$1" "$2" "$3"; then
      pids+=("$1")
    elif [[ -n $1 ]]; then
      log "pid $1 is no longer $2 in $3: left alone"
    fi
    shift 3
  done
  ((${#pids[@]} > 0)) || return 0
  log "stopping pids ${pids[*]} (SIGTERM)"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  kill -CONT "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT)) pid
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop within ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Our children only when started by this very shell (up's failure path); reap them if so.
  wait "${pids[@]}" 2>/dev/null || true
}

# ---- commands ----------------------------------------------------------------------------------
cmd_down() {
  need_root
  local -a triples=()
  local i f pid ns comm
  for f in "$RUN_DIR"/node-*.pid; do
    [[ -f $f ]] || continue
    i=${f##*/node-}; i=${i%.pid}
    triples+=("$(cat "$f")" throttlexd "$(node_ns "$i")")
  done
  [[ ! -f $RUN_DIR/redis.pid ]] || triples+=("$(cat "$RUN_DIR/redis.pid")" redis-server "$REDIS_NS")
  # Without PID files (a lost run dir): throttlexd / redis-server inside our own namespaces can
  # only have been started by this script.
  for ns in $(our_namespaces); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
      case $comm in
        throttlexd | redis-server) [[ " ${triples[*]} " == *" $pid "* ]] || triples+=("$pid" "$comm" "$ns") ;;
        *) log "pid $pid ($comm) runs in $ns and was not started here: left alone" ;;
      esac
    done
  done
  stop_pids "${triples[@]}"
  rm -f "$RUN_DIR"/node-*.pid "$RUN_DIR/redis.pid" "$RUN_DIR"/node-*.args
  local link
  for link in $(our_links); do
    [[ $link == "$(bridge)" ]] || ip link del "$link" 2>/dev/null || true
  done
  if [[ -n $(our_links) ]]; then ip link del "$(bridge)" 2>/dev/null || true; fi
  for ns in $(our_namespaces); do ip netns del "$ns" 2>/dev/null || true; done
  local left
  left="$(our_namespaces) $(our_links)"
  [[ -z ${left// /} ]] || die "could not remove: $left"
  rm -f "$STATE"
  log "down: nothing with prefix $PREFIX is left (logs stay in $RUN_DIR)"
}

cmd_status() {
  if [[ ! -f $STATE && -z $(our_namespaces) ]]; then
    echo "no cluster with prefix $PREFIX (run dir $RUN_DIR)"
    return 3
  fi
  echo "cluster prefix $PREFIX: $NODES nodes on $SUBNET.0/24, bridge $(bridge), run dir $RUN_DIR"
  local i pid state ok=0
  for ((i = 1; i <= NODES; i++)); do
    pid=$(node_pid "$i")
    state=stopped
    if is_ours "$pid" throttlexd "$(node_ns "$i")"; then
      state=running
      [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != T ]] || state=frozen
    fi
    check_route "$(node_addr "$i")"
    printf 'node-%-3s %-14s ns %-10s pid %-8s %-8s ' "$i" "$(node_addr "$i")" "$(node_ns "$i")" "${pid:--}" "$state"
    cluster_view "$i" | python3 -c 'import json,sys
try:
    v = json.load(sys.stdin)
    print("sees %d alive:" % v["alive"], " ".join("%s=%s" % (m["node_id"], m["state"]) for m in v["members"]))
except Exception:
    print("not answering")'
    [[ $state != running ]] || ((++ok))
  done
  if ((REDIS)); then
    pid=$(cat "$RUN_DIR/redis.pid" 2>/dev/null || true)
    state=stopped
    ! is_ours "$pid" redis-server "$REDIS_NS" || state=running
    printf 'redis    %-14s ns %-10s pid %-8s %s\n' "$REDIS_ADDR" "$REDIS_NS" "${pid:--}" "$state"
  fi
  ((ok == NODES))
}

cmd_up() {
  need_root
  [[ -x $BIN/throttlexd ]] || die "$BIN/throttlexd is missing: build first (or set THROTTLEX_BIN)"
  command -v python3 >/dev/null || die "python3 is missing"
  local existing
  existing=$(our_namespaces; our_links)
  existing=${existing//$'\n'/ }
  [[ -z ${existing// /} ]] || die "prefix $PREFIX is in use ($existing): run '$0 down --prefix $PREFIX' first"
  check_subnet_free
  mkdir -p "$RUN_DIR"
  [[ ! -f $STATE ]] || die "$STATE exists: another cluster uses run dir $RUN_DIR (down it first)"

  # From here on, a failure removes what was made.
  trap 'log "up failed: tearing down"; cmd_down || true' EXIT
  printf 'NODES=%s\nPREFIX=%s\nSUBNET=%s\nREDIS=%s\nPRESET=%s\nTHREADS=%s\n' \
    "$NODES" "$PREFIX" "$SUBNET" "$REDIS" "$PRESET" "$THREADS" >"$STATE"
  make_network
  if ((REDIS)); then start_redis; fi
  start_nodes

  local deadline=$((SECONDS + opt_timeout)) i all
  while :; do
    all=1
    for ((i = 1; i <= NODES; i++)); do
      is_ours "$(node_pid "$i")" throttlexd "$(node_ns "$i")" || {
        log "node-$i died; the end of $RUN_DIR/node-$i.log:"
        tail -n 20 "$RUN_DIR/node-$i.log" | sed 's/^/  | /' >&2
        exit 1
      }
      (($(alive_seen_by "$i") == NODES)) || { all=0; break; }
    done
    ((all == 0)) || break
    if ((SECONDS >= deadline)); then
      log "the nodes did not all see $NODES alive within ${opt_timeout}s:"
      for ((i = 1; i <= NODES; i++)); do log "  node-$i sees $(alive_seen_by "$i") alive"; done
      exit 1
    fi
    sleep 0.2
  done
  trap - EXIT
  log "up: $NODES nodes alive (prefix $PREFIX, logs in $RUN_DIR)"
  cmd_status || true
  cat <<MSG

  HTTP  http://$(node_addr 1):$HTTP_PORT/v1/cluster      RPC $(node_addr 1):$RPC_PORT      metrics http://$(node_addr 1):$METRICS_PORT/metrics
  e.g.  $BIN/throttlex-bench --node $(node_addr 1):$RPC_PORT --rate 5000 --duration 5s
        $BIN/throttlectl --node $(node_addr 1):$RPC_PORT members
  stop: $0 down${opt_prefix:+ --prefix $PREFIX}
MSG
}

# The recorded PID, process name and namespace of TARGET (node-I or redis), as "PID COMM NS".
target_process() {
  if [[ $target == redis ]]; then
    ((REDIS)) || die "this cluster has no Redis (up --redis)"
    echo "$(cat "$RUN_DIR/redis.pid" 2>/dev/null || echo none) redis-server $REDIS_NS"
  else
    local i=${target#node-}
    ((i >= 1 && i <= NODES)) || die "$target: the cluster has nodes 1..$NODES"
    echo "$(node_pid "$i") throttlexd $(node_ns "$i")"
  fi
}

cmd_kill() {
  need_root
  local pid comm ns
  read -r pid comm ns <<<"$(target_process)"
  is_ours "$pid" "$comm" "$ns" || die "$target: pid ${pid:-?} is not the $comm started in $ns"
  kill -s "$signal" "$pid"
  log "SIG$signal to $target (pid $pid)"
}

cmd_start() {
  need_root
  [[ -f $STATE ]] || die "no cluster in $RUN_DIR (up first)"
  local pid comm ns
  read -r pid comm ns <<<"$(target_process)"
  ! is_ours "$pid" "$comm" "$ns" || die "$target still runs (pid $pid)"
  # The old process may still be exiting outside our sight (a zombie of another shell): ours is
  # gone from the namespace once `ip netns pids` no longer lists a process of that name.
  local p
  for p in $(ip netns pids "$ns" 2>/dev/null); do
    [[ $(cat "/proc/$p/comm" 2>/dev/null) != "$comm" ]] || die "a $comm (pid $p) still runs in $ns"
  done
  if [[ $target == redis ]]; then
    start_redis
    log "started redis (pid $(cat "$RUN_DIR/redis.pid"))"
  else
    start_node "${target#node-}"
    log "started $target (pid $(node_pid "${target#node-}"))"
  fi
}

case $cmd in
  up) cmd_up ;;
  kill) cmd_kill ;;
  start) cmd_start ;;
  down) cmd_down ;;
  status) cmd_status ;;
esac
