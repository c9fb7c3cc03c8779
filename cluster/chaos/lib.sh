# shellcheck shell=bash
# Shared by the chaos scenarios (cluster/chaos/*.sh); sourced, not run. They drive a network-
# namespace cluster (cluster/netns/cluster.sh), load it from the root namespace with
# throttlex-bench, and end with a verdict:
#
#   chaos: <figure lines ...>
#   chaos: check <name>: ok|FAILED (<what>)
#   VERDICT <scenario>: PASS|FAIL
#   CHAOS_SUMMARY {"scenario": ..., "verdict": ..., <figures>}      (one JSON line)
#
# Exit status: 0 PASS, 1 FAIL, 2 usage, 77 cannot run here (not root, no netns): CTest's skip.
#
# Options every scenario takes (after its own; defaults in the scenario's header):
#   --nodes N --prefix P --subnet A.B.C --run-dir DIR   the cluster (cluster.sh's options)
#   --rate R         offered checks/s of the load (open loop; default 5000)
#   --max-errors E   client-visible errors (errors + fallbacks) allowed during the scenario
# A scenario that sets CHAOS_REDIS=1 before chaos_cluster_up gets Redis too (cluster.sh --redis),
# one that sets CHAOS_SEEDS=K gets K gossip seeds (cluster.sh --seeds; default 1, node-1).
# Environment: THROTTLEX_BIN (default build/bin); THROTTLEX_NETNS_REUSE=1 drives the cluster
# already up under --prefix/--run-dir instead of bringing one up (it is left running, but every
# fault the scenario injects is undone).
#
# Every wait is bounded in time (wait_until); every process started here is stopped by its PID.

CHAOS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly CHAOS_REPO
CLUSTER_SH=$CHAOS_REPO/cluster/netns/cluster.sh
BIN=${THROTTLEX_BIN:-$CHAOS_REPO/build/bin}
[[ $BIN == /* ]] || BIN=$CHAOS_REPO/$BIN
readonly HTTP_PORT=8080 RPC_PORT=7400 METRICS_PORT=9464

chaos_log() { echo "chaos: $*" >&2; }

# The interpreter itself rather than a version manager's shim: a pyenv shim costs ~0.5 s per call
# (seconds on loaded cores), which polls and timings cannot afford. Every `python3` below (and
# in the scenarios) is this function.
CHAOS_PYTHON=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)
if [[ -x $CHAOS_PYTHON ]]; then python3() { "$CHAOS_PYTHON" "$@"; }; fi

# ---- options and the cluster -------------------------------------------------------------------
# chaos_init SCENARIO DEFAULT_PREFIX DEFAULT_SUBNET DEFAULT_MAX_ERRORS ARGS...
# Parses the common options; the scenario's own options are left in CHAOS_ARGS.
chaos_init() {
  SCENARIO=$1 PREFIX=$2 SUBNET=$3 MAX_ERRORS=$4
  shift 4
  NODES=5 RATE=5000 RUN_DIR=/tmp/throttlex-chaos-$SCENARIO
  CHAOS_ARGS=()
  while (($# > 0)); do
    case $1 in
      --nodes) NODES=$2; shift 2 ;;
      --prefix) PREFIX=$2; shift 2 ;;
      --subnet) SUBNET=$2; shift 2 ;;
      --run-dir) RUN_DIR=$2; shift 2 ;;
      --rate) RATE=$2; shift 2 ;;
      --max-errors) MAX_ERRORS=$2; shift 2 ;;
      *) CHAOS_ARGS+=("$1"); shift ;;
    esac
  done
  if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 3)); then chaos_log "--nodes must be at least 3"; exit 2; fi
  [[ $MAX_ERRORS =~ ^[0-9]+$ ]] || { chaos_log "--max-errors must be a count"; exit 2; }
  if ((EUID != 0)) || ! command -v ip >/dev/null || ! command -v python3 >/dev/null ||
     ! command -v curl >/dev/null; then
    chaos_log "needs root, ip (iproute2), curl and python3: skipped"
    exit 77
  fi
  # Root in a container without CAP_SYS_ADMIN / CAP_NET_ADMIN, or a kernel without veth or
  # bridge support, cannot build the cluster. Probed in a throwaway namespace (gone when unshare
  # exits), so nothing is made or left outside it.
  if ! command -v unshare >/dev/null ||
     ! unshare --net sh -c 'ip link add chaos-probe type bridge &&
                            ip link add chaos-pa type veth peer name chaos-pb' 2>/dev/null; then
    chaos_log "cannot make a network namespace with a bridge and veths here: skipped"
    exit 77
  fi
  [[ -x $BIN/throttlex-bench && -x $BIN/throttlexd ]] || { chaos_log "no binaries in $BIN"; exit 2; }
  WORK=$RUN_DIR/$SCENARIO
  CHAOS_CHECKS=() CHAOS_FAILED=0 CHAOS_UNDO=() LOAD_PID="" CREATED_CLUSTER=0
  declare -gA FIG=()
  mkdir -p "$RUN_DIR"
  trap chaos_cleanup EXIT
  trap 'exit 130' INT TERM
}

chaos_cluster_up() {
  if [[ ${THROTTLEX_NETNS_REUSE:-0} == 1 ]]; then
    [[ -f $RUN_DIR/cluster.env ]] || { chaos_log "THROTTLEX_NETNS_REUSE=1 but no $RUN_DIR/cluster.env"; exit 2; }
    # shellcheck disable=SC1090  # written by cluster.sh up: plain NAME=value lines
    source <(grep -E '^(NODES|PREFIX|SUBNET)=[A-Za-z0-9.]*$' "$RUN_DIR/cluster.env")
  else
    local -a redis=()
    if ((${CHAOS_REDIS:-0})); then
      command -v redis-server >/dev/null || { chaos_log "redis-server is missing: skipped"; exit 77; }
      redis=(--redis)
    fi
    THROTTLEX_NETNS_RUN_DIR=$RUN_DIR "$CLUSTER_SH" up --nodes "$NODES" --prefix "$PREFIX" \
      --subnet "$SUBNET" --run-dir "$RUN_DIR" --seeds "${CHAOS_SEEDS:-1}" "${redis[@]}" >&2 ||
      { chaos_log "cluster did not come up"; exit 1; }
    CREATED_CLUSTER=1
  fi
  mkdir -p "$WORK"
  local i
  for ((i = 1; i <= NODES; i++)); do check_route "$(node_addr "$i")"; done
  if ((${CHAOS_REDIS:-0})); then
    grep -qx 'REDIS=1' "$RUN_DIR/cluster.env" || { chaos_log "the cluster has no Redis"; exit 2; }
    check_route "$(redis_addr)"
  fi
  # shellcheck disable=SC2046
  wait_alive 30 "$NODES" $(all_nodes) >/dev/null ||
    { chaos_log "the cluster is not converged at the start"; exit 1; }
}

# Undo registered faults, stop the load, bring the cluster down if we brought it up.
chaos_cleanup() {
  local status=$? i
  trap - EXIT INT TERM
  for ((i = ${#CHAOS_UNDO[@]} - 1; i >= 0; i--)); do eval "${CHAOS_UNDO[$i]}" || true; done
  load_stop
  if ((CREATED_CLUSTER)) && [[ ${CHAOS_KEEP:-0} != 1 ]]; then
    "$CLUSTER_SH" down --prefix "$PREFIX" --run-dir "$RUN_DIR" >&2 || status=1
  fi
  exit "$status"
}

# A command run at exit, whatever happens (undo a fault); chaos_undone removes the last one.
chaos_on_exit() { CHAOS_UNDO+=("$1"); }
chaos_undone() { unset 'CHAOS_UNDO[${#CHAOS_UNDO[@]}-1]'; }

node_addr() { echo "$SUBNET.$((10 + $1))"; }
node_ns() { echo "$PREFIX-n$1"; }
node_veth() { echo "$PREFIX-v$1"; }
node_pid() { cat "$RUN_DIR/node-$1.pid"; }
node_log() { echo "$RUN_DIR/node-$1.log"; }
redis_addr() { echo "$SUBNET.2"; }
# cluster_cmd kill|start TARGET [SIGNAL]: cluster.sh's PID-checked signal / restart of node-I or
# redis in this scenario's cluster.
cluster_cmd() { "$CLUSTER_SH" "$@" --prefix "$PREFIX" --run-dir "$RUN_DIR" 2>&1 | sed 's/^/  /' >&2; return "${PIPESTATUS[0]}"; }

# Nothing is sent from here to a namespace address unless it leaves through our bridge.
check_route() {
  local got
  got=$(ip -4 route get "$1" 2>/dev/null || true)
  [[ $got == *" dev $PREFIX-br "* ]] || { chaos_log "route to $1 is not through $PREFIX-br ($got): abort"; exit 1; }
}

now() { echo "$EPOCHREALTIME"; }
# Seconds since T (an epoch from now), read before anything is started (no interpreter's start-up
# in the figure).
elapsed_since() { awk -v now="$EPOCHREALTIME" -v t="$1" 'BEGIN { printf "%.2f\n", now - t }'; }

# wait_until TIMEOUT_S WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds; prints the
# seconds it took. Returns 1 (and prints nothing) after TIMEOUT_S.
wait_until() {
  local timeout=$1 what=$2 start
  shift 2
  start=$(now)
  local deadline=$((SECONDS + timeout))
  while ! "$@"; do
    if ((SECONDS >= deadline)); then
      chaos_log "timed out after ${timeout}s waiting for: $what"
      return 1
    fi
    sleep 0.2
  done
  elapsed_since "$start"
}

# ---- cluster views (views.py: one process polls every node) -----------------------------------
VIEWS=$CHAOS_REPO/cluster/chaos/views.py
http_addrs() { local i; for i in "$@"; do echo "$(node_addr "$i"):$HTTP_PORT"; done; }

# alive_seen_by I: the number of members node I reports alive (-1: it does not answer).
alive_seen_by() { python3 "$VIEWS" alive "$(http_addrs "$1")"; }
# state_seen_by I ID: the state node I reports for member ID ("none", "unreachable").
state_seen_by() { python3 "$VIEWS" state "$2" "$(http_addrs "$1")"; }
# The members node I sees in STATE, asked from inside I's own namespace (it answers there even
# when it is cut off from the bridge).
members_in_state_inside() {
  ip netns exec "$(node_ns "$1")" "${CHAOS_PYTHON:-python3}" "$VIEWS" members "$2" "$(http_addrs "$1")"
}
# wait_state TIMEOUT ID STATES I...: until every node I reports ID in one of STATES; prints the
# seconds it took, returns 1 after TIMEOUT.
wait_state() {
  local timeout=$1 id=$2 states=$3
  shift 3
  # shellcheck disable=SC2046  # one address per word
  VIEWS_T0=$(now) python3 "$VIEWS" wait-state "$timeout" "$id" "$states" $(http_addrs "$@") ||
    { chaos_log "timed out after ${timeout}s: not every node in [$*] sees $id in {$states}"; return 1; }
}
# wait_alive TIMEOUT COUNT I...: until every node I reports COUNT alive, steadily for
# $STABLE_S s (default 3); prints when that began.
wait_alive() {
  local timeout=$1 count=$2
  shift 2
  # shellcheck disable=SC2046
  VIEWS_T0=$(now) python3 "$VIEWS" wait-alive "$timeout" "$count" "${STABLE_S:-3}" $(http_addrs "$@") ||
    { chaos_log "timed out after ${timeout}s: not every node in [$*] sees $count alive"; return 1; }
}
all_nodes() { seq 1 "$NODES"; }

# Seconds from T0 (epoch) to the first line of node I's log matching REGEX stamped at or after T0
# ("" if none): the daemons log member events with millisecond UTC timestamps.
log_time_after() {
  python3 - "$(node_log "$1")" "$2" "$3" <<'PY'
import datetime, re, sys
path, pattern, t0 = sys.argv[1], re.compile(sys.argv[2]), float(sys.argv[3])
stamp = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z")
for line in open(path, errors="replace"):
    m = stamp.match(line)
    if not m or not pattern.search(line):
        continue
    t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
    if t >= t0 - 0.0005:
        print("%.2f" % (t - t0))
        break
PY
}

# How many lines of node I's log match REGEX stamped at or after T0.
log_count_after() {
  python3 - "$(node_log "$1")" "$2" "$3" <<'PY'
import datetime, re, sys
path, pattern, t0 = sys.argv[1], re.compile(sys.argv[2]), float(sys.argv[3])
stamp = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z")
n = 0
for line in open(path, errors="replace"):
    m = stamp.match(line)
    if m and pattern.search(line) and datetime.datetime.fromisoformat(m.group(1)).replace(
            tzinfo=datetime.timezone.utc).timestamp() >= t0 - 0.0005:
        n += 1
print(n)
PY
}

# max / min over the arguments that are numbers ("" if none)
max_of() { printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g | tail -1; }
min_of() { printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g | head -1; }
count_of() { printf '%s\n' "$@" | grep -cE '^[0-9.]+$' || true; }
at_most() { [[ -n $1 && $1 != none ]] && python3 -c 'import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))' "$1" "$2"; }

# ---- metrics -----------------------------------------------------------------------------------
# metrics_totals NODE...: "degraded_route standin by_policy forwarded local" summed over NODEs'
# /metrics (a node that does not answer counts 0).
metrics_totals() {
  local i
  for i in "$@"; do
    curl -fsS --max-time 2 "http://$(node_addr "$i"):$METRICS_PORT/metrics" 2>/dev/null || true
  done | awk '
    /^throttlex_requests_total\{/ && /route="degraded"/ { d += $NF }
    /^throttlex_requests_total\{/ && /route="forwarded"/ { f += $NF }
    /^throttlex_requests_total\{/ && /route="local"/ { l += $NF }
    /^throttlex_forward_standin_total / { s += $NF }
    /^throttlex_degraded_total / { p += $NF }
    END { printf "%d %d %d %d %d\n", d, s, p, f, l }'
}

# metric_of I NAME: the value of the unlabelled sample NAME in node I's /metrics ("" if the node
# does not answer or has no such sample).
metric_of() {
  curl -fsS --max-time 2 "http://$(node_addr "$1"):$METRICS_PORT/metrics" 2>/dev/null |
    awk -v name="$2" '$1 == name { print $2; exit }' || true
}
# metric_on_all NAME I...: NAME of every node I, space-separated ("-" where it has none).
metric_on_all() {
  local name=$1 i v
  local -a vals=()
  shift
  for i in "$@"; do v=$(metric_of "$i" "$name"); vals+=("${v:--}"); done
  echo "${vals[*]}"
}
# metric_all_equal NAME VALUE I...: true when every node I reports NAME == VALUE.
metric_all_equal() {
  local name=$1 want=$2 i
  shift 2
  for i in "$@"; do
    awk -v v="$(metric_of "$i" "$name")" -v want="$want" 'BEGIN { exit !(v != "" && v + 0 == want + 0) }' ||
      return 1
  done
}
# metric_sum NAME I...: NAME summed over nodes I (one that does not answer counts 0).
metric_sum() {
  local name=$1
  shift
  metric_on_all "$name" "$@" | awk '{ for (i = 1; i <= NF; i++) if ($i != "-") s += $i } END { printf "%.0f\n", s }' 
}

# metrics_delta "BEFORE" "AFTER": sets FIG[node_*] from two metrics_totals lines.
metrics_delta() {
  local -a b a
  read -ra b <<<"$1"
  read -ra a <<<"$2"
  FIG[node_degraded_decisions]=$((a[0] - b[0]))
  FIG[node_standin_decisions]=$((a[1] - b[1]))
  FIG[node_degraded_policy_decisions]=$((a[2] - b[2]))
  FIG[node_forwarded_decisions]=$((a[3] - b[3]))
  FIG[node_local_decisions]=$((a[4] - b[4]))
}

# ---- load --------------------------------------------------------------------------------------
# load_start DURATION_S: throttlex-bench from the root namespace against every node's RPC
# address, open loop at $RATE checks/s, the client routing to owners and failing over, a limit
# so high that nothing is limited (errors are what is measured), deadline 1 s per check.
load_start() {
  local -a cmd=("$BIN/throttlex-bench" --json --route owner --rate "$RATE" --duration "${1}s"
                --warmup 0 --keys 100000 --limit 1000000000 --period 1s --connections 2
                --concurrency 64 --deadline 1s --on-unavailable error)
  local i
  for ((i = 1; i <= NODES; i++)); do cmd+=(--node "$(node_addr "$i"):$RPC_PORT"); done
  LOAD_DURATION=$1
  # SIGTERM to the load if this script dies without its EXIT trap (SIGKILL, a CTest timeout):
  # the nodes are brought down by cluster_chaos_cleanup, the load must not outlive them either.
  if setpriv --help 2>/dev/null | grep -q -- --pdeathsig; then cmd=(setpriv --pdeathsig TERM -- "${cmd[@]}"); fi
  "${cmd[@]}" >"$WORK/load.json" 2>"$WORK/load.err" &
  LOAD_PID=$!
  chaos_log "load: $RATE checks/s for ${1}s (pid $LOAD_PID)"
}

# Waits for the load to end (bounded: its duration + 30 s, then SIGKILL); sets FIG[load_*].
load_wait() {
  [[ -n $LOAD_PID ]] || return 0
  local deadline=$((SECONDS + LOAD_DURATION + 30)) status=0
  while kill -0 "$LOAD_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$LOAD_PID" 2>/dev/null; then
    chaos_log "the load did not finish in time: SIGKILL"
    kill -KILL "$LOAD_PID" 2>/dev/null || true
  fi
  wait "$LOAD_PID" || status=$?
  LOAD_PID=""
  FIG[load_exit]=$status
  local line
  line=$(python3 - "$WORK/load.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print("-1 -1 -1 -1 0 0 0 0 none"); sys.exit()
lat = r.get("latency_us", {})
print(r["checks"], r["errors"], r["fallbacks"], r.get("degraded", 0), "%.0f" % r["throughput"],
      "%.0f" % lat.get("p50", 0), "%.0f" % lat.get("p99", 0), "%.0f" % lat.get("max", 0),
      (r.get("first_error") or "none").replace(" ", "_"))
PY
)
  local -a v
  read -ra v <<<"$line"
  FIG[load_checks]=${v[0]} FIG[load_errors]=${v[1]} FIG[load_fallbacks]=${v[2]} FIG[load_degraded]=${v[3]}
  FIG[load_throughput]=${v[4]} FIG[load_p50_us]=${v[5]} FIG[load_p99_us]=${v[6]} FIG[load_max_us]=${v[7]}
  FIG[load_first_error]=${v[8]}
  FIG[client_visible_errors]=$((FIG[load_errors] + FIG[load_fallbacks]))
  if ((FIG[load_checks] < 0)); then
    chaos_log "throttlex-bench gave no JSON (exit $status); its stderr:"
    tail -n 5 "$WORK/load.err" | sed 's/^/  | /' >&2
  fi
}

load_stop() {
  [[ -n ${LOAD_PID:-} ]] || return 0
  kill -TERM "$LOAD_PID" 2>/dev/null || true
  local deadline=$((SECONDS + 5))
  while kill -0 "$LOAD_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -KILL "$LOAD_PID" 2>/dev/null || true
  wait "$LOAD_PID" 2>/dev/null || true
  LOAD_PID=""
}

# ---- verdict -----------------------------------------------------------------------------------
# check NAME CONDITION-STATUS WHAT: record one pass/fail criterion. Use as
#   check errors_within_bound "$((errors <= MAX_ERRORS))" "errors $errors <= $MAX_ERRORS"
check() {
  local name=$1 ok=$2 what=$3
  if ((ok)); then
    CHAOS_CHECKS+=("$name:ok")
    chaos_log "check $name: ok ($what)"
  else
    CHAOS_CHECKS+=("$name:FAILED")
    CHAOS_FAILED=1
    chaos_log "check $name: FAILED ($what)"
  fi
}

# Prints the figures, the verdict line and the JSON summary line (also kept in
# $WORK/summary.json); returns 0 on PASS, 1 on FAIL.
chaos_finish() {
  local verdict=PASS key
  ((CHAOS_FAILED == 0)) || verdict=FAIL
  FIG[nodes]=$NODES FIG[rate]=$RATE FIG[max_errors]=$MAX_ERRORS
  for key in $(printf '%s\n' "${!FIG[@]}" | sort); do echo "  $key: ${FIG[$key]}"; done
  echo "VERDICT $SCENARIO: $verdict"
  local -a kv=()
  for key in "${!FIG[@]}"; do kv+=("$key=${FIG[$key]}"); done
  (python3 - "$SCENARIO" "$verdict" "${CHAOS_CHECKS[*]}" "${kv[@]}" <<'PY'
import json, sys
out = {"scenario": sys.argv[1], "verdict": sys.argv[2],
       "checks": dict(c.split(":", 1) for c in sys.argv[3].split())}
for kv in sys.argv[4:]:
    k, v = kv.split("=", 1)
    try:
        out[k] = int(v)
    except ValueError:
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
print("CHAOS_SUMMARY " + json.dumps(out, sort_keys=True))
PY
  ) | tee "$WORK/summary.line"
  sed 's/^CHAOS_SUMMARY //' "$WORK/summary.line" >"$WORK/summary.json"
  rm -f "$WORK/summary.line"
  [[ $verdict == PASS ]]
}

# ---- a fault for a while, then healed (partition.sh, freeze.sh) --------------------------------
# fault_window VICTIM BEFORE DURATION AFTER SEEN_BOUND CONVERGE_BOUND INJECT HEAL
# Under load ($BEFORE + $DURATION + $AFTER s, from the root namespace to every node): after BEFORE
# s runs the function INJECT (it gets VICTIM; it registers its undo with chaos_on_exit), keeps
# the fault for DURATION s, runs HEAL VICTIM, then waits (at most CONVERGE_BOUND s) until every
# node sees all NODES alive. Records the figures and these checks:
#   errors_within_bound  client-visible errors <= $MAX_ERRORS
#   others_saw_victim    every other node reported the victim suspect or dead within SEEN_BOUND
#                        s of the fault (polled /v1/cluster; SEEN_BOUND < DURATION)
#   converged            every node sees NODES alive within CONVERGE_BOUND s of the heal, and
#                        keeps seeing that for STABLE_S s (default 3)
#   no_false_deaths      no node other than the victim declared another such node dead (their
#                        logs, from the fault on): a false death moves slots between healthy nodes
#   load_ran             the load completed checks and gave its JSON
fault_window() {
  local victim=$1 before=$2 duration=$3 after=$4 seen_bound=$5 converge_bound=$6 inject=$7 heal=$8
  local -a others=()
  local i id=node-$victim t0 t1 seen metrics0 metrics1
  for ((i = 1; i <= NODES; i++)); do ((i == victim)) || others+=("$i"); done
  FIG[victim]=$id FIG[fault_s]=$duration

  metrics0=$(metrics_totals "${others[@]}")
  load_start $((before + duration + after))
  sleep "$before"

  t0=$(now)
  "$inject" "$victim"
  seen=$(wait_state "$seen_bound" "$id" suspect,dead "${others[@]}" || echo none)
  FIG[others_saw_victim_polled_s]=$seen
  # Hold the fault until DURATION s after it began (the wait above took part of it).
  sleep "$(python3 -c 'import sys,time; print(max(0.0, float(sys.argv[1]) + float(sys.argv[2]) - time.time()))' "$t0" "$duration")"
  FIG[victim_view_at_heal]=$(fault_victim_view "$victim")
  t1=$(now)
  "$heal" "$victim"
  # shellcheck disable=SC2046  # one node number per word
  FIG[converge_s]=$(wait_alive "$converge_bound" "$NODES" $(all_nodes) || echo none)

  load_wait
  metrics1=$(metrics_totals "${others[@]}")
  metrics_delta "$metrics0" "$metrics1"

  local -a suspect=() dead=()
  for i in "${others[@]}"; do
    suspect+=("$(log_time_after "$i" "member $id (suspect|dead)" "$t0")")
    dead+=("$(log_time_after "$i" "member $id dead" "$t0")")
  done
  FIG[first_suspect_s]=$(min_of "${suspect[@]}")
  FIG[all_suspect_s]=$(max_of "${suspect[@]}")
  FIG[others_declared_dead]=$(count_of "${dead[@]}")
  FIG[all_dead_s]=$( (($(count_of "${dead[@]}") == ${#others[@]})) && max_of "${dead[@]}" || echo none)
  FIG[heal_to_converged_s]=${FIG[converge_s]}
  local -a back=()
  for i in "${others[@]}"; do back+=("$(log_time_after "$i" "member $id [a-z]+ \\(alive" "$t1")"); done
  FIG[others_saw_victim_alive_again_s]=$(max_of "${back[@]}")
  # After the heal the victim may suspect the others for a moment (its timers ran while it was
  # cut off or frozen): events it logged about others being suspect or dead.
  FIG[victim_suspicions_after_heal]=$(log_count_after "$victim" "member node-[0-9]+ (suspect|dead)" "$t1")
  # Members declared dead by anyone after the heal: a false death (the victim is back by then).
  local deaths=0
  for ((i = 1; i <= NODES; i++)); do
    deaths=$((deaths + $(log_count_after "$i" "member node-[0-9]+ dead" "$t1")))
  done
  FIG[deaths_after_heal]=$deaths
  # Healthy members declared dead by healthy members, from the fault on: false deaths that
  # move slots between the nodes that never had a fault.
  deaths=0
  for i in "${others[@]}"; do
    deaths=$((deaths + $(log_count_after "$i" "member node-([0-9]+) dead" "$t0") -
              $(log_count_after "$i" "member $id dead" "$t0")))
  done
  FIG[majority_false_deaths]=$deaths
  unset 'FIG[converge_s]'

  local errors=${FIG[client_visible_errors]}
  check errors_within_bound "$((errors >= 0 && errors <= MAX_ERRORS))" "client-visible errors $errors <= $MAX_ERRORS"
  check others_saw_victim "$([[ $seen != none ]] && echo 1 || echo 0)" \
    "every other node saw $id suspect/dead within ${seen_bound}s (after ${seen}s)"
  check converged "$([[ ${FIG[heal_to_converged_s]} != none ]] && echo 1 || echo 0)" \
    "all see $NODES alive within ${converge_bound}s of the heal (after ${FIG[heal_to_converged_s]}s)"
  check no_false_deaths "$((FIG[majority_false_deaths] == 0))" \
    "no node without a fault declared another one dead (${FIG[majority_false_deaths]} such deaths)"
  check load_ran "$((FIG[load_checks] > 0))" "${FIG[load_checks]} checks completed"
}

# What the victim saw just before the heal, from inside its namespace: "dead:node-1,node-2
# suspect:... alive:..." or "unreachable" (a frozen node does not answer).
fault_victim_view() {
  local s out="" m
  for s in alive suspect dead; do
    m=$(members_in_state_inside "$1" "$s" 2>/dev/null || true)
    [[ -z $m ]] || out+="$s:${m// /,};"
  done
  echo "${out:-unreachable}"
}

# ---- a load that knows the right answers (rolling_restart.sh, slow_link.sh) ----------------------
# exact_start BOUND_S: cluster/chaos/exact_load.py from the root namespace against every node's HTTP
# API (KEYS keys x LIMIT per day, LOAD_RATE checks/s, batches of 50, failover, 5 s per batch) for
# at most BOUND_S s; exact_finish stops it (its final sweep), exact_figures reads its JSON into
# FIG[load_*] and FIG[client_visible_errors].
exact_start() {
  local -a cmd=(python3 -u "$CHAOS_REPO/cluster/chaos/exact_load.py" --out "$WORK/exact.json"
                --keys "$KEYS" --limit "$LIMIT" --period 1d --rate "$LOAD_RATE" --threads 4
                --batch 50 --deadline 5 --duration "$1")
  local i
  for i in $(all_nodes); do cmd+=(--node "$(node_addr "$i"):$HTTP_PORT"); done
  if setpriv --help 2>/dev/null | grep -q -- --pdeathsig; then cmd=(setpriv --pdeathsig TERM -- "${cmd[@]}"); fi
  rm -f "$WORK/exact.json"
  "${cmd[@]}" 2>"$WORK/exact.err" &
  EXACT_PID=$!
  # shellcheck disable=SC2016  # expanded when it runs
  chaos_on_exit 'kill -KILL "$EXACT_PID" 2>/dev/null || true'
  chaos_log "exact load: $KEYS keys x $LIMIT/day, $LOAD_RATE checks/s (pid $EXACT_PID)"
}

# SIGTERM: the loader stops sending, sweeps (bounded: 60 s) and writes its JSON.
exact_finish() {
  kill -TERM "$EXACT_PID" 2>/dev/null || true
  local deadline=$((SECONDS + 90))
  while kill -0 "$EXACT_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -KILL "$EXACT_PID" 2>/dev/null || true
  wait "$EXACT_PID" || FIG[exact_exit]=$?
  chaos_undone
}

exact_figures() {
  if ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$WORK/exact.json" 2>/dev/null; then
    chaos_log "the loader wrote no JSON; its stderr:"
    tail -n 5 "$WORK/exact.err" | sed 's/^/  | /' >&2
    echo '{}' >"$WORK/exact.json"
  fi
  while IFS='=' read -r k v; do FIG[$k]=$v; done < <(python3 - "$WORK/exact.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
get = lambda k, d=-1: r.get(k, d)
for k in ("checks", "errors", "error_batches", "check_errors", "ambiguous_checks", "failovers",
          "allowed", "expected_allowed", "over_admitted", "over_admitted_keys", "under_admitted",
          "under_admitted_keys", "sweep_rounds", "sweep_not_denied", "load_seconds", "keys", "limit"):
    print(f"load_{k}={get(k)}")
print("load_routes=" + ",".join(f"{k}:{v}" for k, v in sorted(r.get("routes", {}).items())) or "none")
b = r.get("batch_ms", {})
print(f"load_batch_p50_ms={b.get('p50')}")
print(f"load_batch_p99_ms={b.get('p99')}")
print(f"load_batch_max_ms={b.get('max')}")
print("load_worst_over=" + (";".join(f"{k}:+{v}" for k, v in r.get("worst_over", [])) or "none"))
print("load_worst_under=" + (";".join(f"{k}:-{v}" for k, v in r.get("worst_under", [])) or "none"))
print("load_first_error=" + ((r.get("first_errors") or ["none"])[0].replace(" ", "_").replace("=", ":")[:200]))
PY
  )
  FIG[client_visible_errors]=${FIG[load_errors]}
}
