#!/usr/bin/env bash
# Chaos: a rolling restart of every node, with Redis, under a load that knows the right answers
# (issue 6). Needs root (network namespaces) and redis-server.
#
#   cluster/chaos/rolling_restart.sh [--keys 2000] [--limit 50] [--load-rate 2000]
#                                    [--before 4] [--after 3] [--stop-bound 20]
#                                    [--converge-bound 30]
#                                    [--nodes 5] [--prefix txrr] [--subnet 10.77.4] [--run-dir DIR]
#                                    [--max-errors 0]
#
# Brings up a namespace cluster with Redis and three gossip seeds (cluster/netns/cluster.sh up
# --redis --seeds 3) and starts
# cluster/chaos/exact_load.py from the root namespace against every node's HTTP API: KEYS keys,
# each with the inline limit LIMIT per day (token bucket: no refill to speak of during the run),
# batches of 50 random one-hit checks, LOAD_RATE checks/s, failover to the next node on any
# failure, 5 s per batch. After --before s it restarts the nodes one at a time, node-1 first:
#
#   SIGTERM (the node drains: hands its slots' state to the nodes that take them over, leaves)
#   -> wait until the process has exited (at most --stop-bound s)
#   -> start it again with the same command line (same node id and address)
#   -> wait until every node sees all NODES alive, steadily for 1 s (at most --converge-bound s)
#      and the restarted node answers /readyz 200;
#
# then --after s more load, then the loader's final sweep (every key checked until denied).
#
# PASS when all of:
#   errors_within_bound  client-visible errors (checks of batches that no node answered within
#                        5 s, and per-check errors) <= --max-errors (0): clients fail over.
#   exact                no key admitted beyond its limit (over-admitted = 0) and none denied
#                        before it (under-admitted = 0, among keys the sweep saw denied), which
#                        needs the drain's handoff, the restarted node's recovery (Redis, then
#                        the handoff back from the nodes that held its slots) and parking.
#                        Checks of batches that failed after they were sent (ambiguous: maybe
#                        decided) can only make keys look under-admitted: reported as a figure.
#   restarts_done        every node stopped within --stop-bound s and the cluster converged
#                        within --converge-bound s of every start.
#   load_ran             the loader answered checks and wrote its JSON.
# Figures: per restart the SIGTERM-to-exit and start-to-converged times (and their max), handoffs
# sent and received, checks, errors, ambiguous checks, failovers, routes, batch latency, allowed
# vs expected, over/under-admitted units and keys, the worst keys.
set -euo pipefail
# shellcheck source=cluster/chaos/lib.sh
source "$(dirname "$0")/lib.sh"
chaos_init rolling_restart txrr 10.77.4 0 "$@"

KEYS=2000 LIMIT=50 LOAD_RATE=2000 BEFORE=4 AFTER=3 STOP_BOUND=20 CONVERGE_BOUND=30
set -- "${CHAOS_ARGS[@]+"${CHAOS_ARGS[@]}"}"
while (($# > 0)); do
  case $1 in
    --keys) KEYS=$2; shift 2 ;;
    --limit) LIMIT=$2; shift 2 ;;
    --load-rate) LOAD_RATE=$2; shift 2 ;;
    --before) BEFORE=$2; shift 2 ;;
    --after) AFTER=$2; shift 2 ;;
    --stop-bound) STOP_BOUND=$2; shift 2 ;;
    --converge-bound) CONVERGE_BOUND=$2; shift 2 ;;
    *) chaos_log "unknown option $1"; exit 2 ;;
  esac
done
for v in "$KEYS" "$LIMIT" "$LOAD_RATE" "$BEFORE" "$AFTER" "$STOP_BOUND" "$CONVERGE_BOUND"; do
  [[ $v =~ ^[0-9]+$ ]] || { chaos_log "counts, rates and durations are whole numbers"; exit 2; }
done
# Longest the whole run may take: the loader's own bound (it is told to stop long before).
LOAD_BOUND=$((BEFORE + NODES * (STOP_BOUND + CONVERGE_BOUND + 5) + AFTER + 30))

# Every node joins through node-1, -2 and -3 (it skips itself): with node-1 as the only seed, a
# restarted node-1 would start a cluster of its own and split the ring in two.
CHAOS_REDIS=1 CHAOS_SEEDS=3 RATE=$LOAD_RATE
chaos_cluster_up
mapfile -t nodes < <(all_nodes)

node_exited() { ! kill -0 "$1" 2>/dev/null; }
ready() { curl -fsS --max-time 1 -o /dev/null "http://$(node_addr "$1"):$HTTP_PORT/readyz"; }

# Counters of node I that the verdict sums ("0" for what it does not answer): handoffs sent and
# received, handoff failures, parked checks, recovery timeouts. They restart with the node, so
# each node's are read just before it stops and, for the last life, at the end.
readonly COUNTERS=('throttlex_handoffs_total{direction="sent"}' 'throttlex_handoffs_total{direction="received"}'
                   throttlex_handoff_failures_total throttlex_parked_checks_total
                   throttlex_recovery_timeouts_total)
readonly COUNTER_FIGS=(handoffs_sent handoffs_received handoff_failures parked_checks recovery_timeouts)
declare -a TOTALS=(0 0 0 0 0)
add_counters() {
  local c v
  for c in "${!COUNTERS[@]}"; do
    v=$(metric_of "$1" "${COUNTERS[$c]}")
    [[ $v =~ ^[0-9]+(\.0+)?$ ]] || v=0
    TOTALS[c]=$((TOTALS[c] + ${v%%.*}))
  done
}

# ---- the restarts --------------------------------------------------------------------------------
exact_start "$LOAD_BOUND"
sleep "$BEFORE"
kill -0 "$EXACT_PID" 2>/dev/null || { chaos_log "the loader died:"; tail -5 "$WORK/exact.err" >&2; exit 1; }

restarts_ok=1 stop_times=() converge_times=()
t_roll=$(now)
for i in "${nodes[@]}"; do
  pid=$(node_pid "$i")
  add_counters "$i"  # its drain's handoffs are counted by the nodes that receive them
  t=$(now)
  cluster_cmd kill "node-$i" TERM
  stop_s=$(wait_until "$STOP_BOUND" "node-$i (pid $pid) to exit" node_exited "$pid" || echo none)
  if [[ $stop_s == none ]]; then restarts_ok=0; cluster_cmd kill "node-$i" KILL || true; sleep 0.5; fi
  # What it handed over while draining counts too: its log says how many slots.
  handed=$(log_count_after "$i" "handed [0-9]+ slots over" "$t")
  stop_times+=("$stop_s")
  cluster_cmd start "node-$i"
  t=$(now)
  # shellcheck disable=SC2046
  conv_s=$(STABLE_S=1 wait_alive "$CONVERGE_BOUND" "$NODES" $(all_nodes) || echo none)
  wait_until 10 "node-$i ready" ready "$i" >/dev/null || conv_s=none
  [[ $conv_s != none ]] && conv_s=$(elapsed_since "$t")
  [[ $conv_s != none ]] || restarts_ok=0
  converge_times+=("$conv_s")
  chaos_log "node-$i: exit after ${stop_s}s (drain logged $handed time(s)), back and converged after ${conv_s}s"
done
FIG[rolling_s]=$(elapsed_since "$t_roll")
FIG[stop_s]=$(IFS=,; echo "${stop_times[*]}")
FIG[converge_s]=$(IFS=,; echo "${converge_times[*]}")
FIG[max_stop_s]=$(max_of "${stop_times[@]}")
FIG[max_converge_s]=$(max_of "${converge_times[@]}")
sleep "$AFTER"
for i in "${nodes[@]}"; do add_counters "$i"; done
for c in "${!COUNTER_FIGS[@]}"; do FIG[${COUNTER_FIGS[$c]}]=${TOTALS[$c]}; done
exact_finish

# ---- verdict -------------------------------------------------------------------------------------
exact_figures

errors=${FIG[client_visible_errors]}
over=${FIG[load_over_admitted]} under=${FIG[load_under_admitted]}
check errors_within_bound "$((errors >= 0 && errors <= MAX_ERRORS))" \
  "client-visible errors $errors <= $MAX_ERRORS (failovers ${FIG[load_failovers]})"
check exact "$((over == 0 && under == 0 && FIG[load_sweep_not_denied] == 0))" \
  "over-admitted $over units (${FIG[load_over_admitted_keys]} keys), under-admitted $under units (${FIG[load_under_admitted_keys]} keys; ambiguous checks ${FIG[load_ambiguous_checks]}), allowed ${FIG[load_allowed]} of ${FIG[load_expected_allowed]}"
check restarts_done "$restarts_ok" \
  "every node exited within ${STOP_BOUND}s (max ${FIG[max_stop_s]}s) and the cluster converged within ${CONVERGE_BOUND}s (max ${FIG[max_converge_s]}s)"
check load_ran "$((FIG[load_checks] > 0))" "${FIG[load_checks]} checks answered"
chaos_finish
