#!/usr/bin/env bash
# Chaos: kill -9 one node under load (issue 6). Needs root (network namespaces).
#
#   cluster/chaos/kill.sh [--victim N] [--before 3] [--detect-bound 15] [--after 3]
#                         [--nodes 5] [--prefix txk] [--subnet 10.77.1] [--run-dir DIR]
#                         [--rate 5000] [--max-errors 0]
#
# Brings up a namespace cluster (cluster/netns/cluster.sh; or drives one already up with
# THROTTLEX_NETNS_REUSE=1), starts throttlex-bench from the root namespace against every node's
# RPC address (--route owner, --on-unavailable error, 1 s deadline, $RATE checks/s), and after
# --before s sends SIGKILL to node N (default: the last; never the seed unless asked).
#
# PASS when all of:
#   errors_within_bound  client-visible errors (errors + fallbacks) <= --max-errors. Default 0:
#                        a check sent to the dead node fails over to another node (connection
#                        refused/reset, at once), which decides it through the stand-in owner or
#                        the new owner; nothing should reach the application as an error.
#   detected             every survivor logs the victim `dead` within --detect-bound s of the
#                        kill (local gossip preset: 4-10 s in simulation, docs/gossip.md), and
#                        reports it dead in /v1/cluster (polled, bound + 10 s).
#   survivors_alive      afterwards every survivor sees the N-1 survivors alive (no false death).
#   load_ran             the load completed at least one check and gave its JSON.
# Figures: time until the first / every survivor logged the victim suspect and dead (from the
# daemons' log timestamps), checks, errors, client-side degraded answers, throughput, latency,
# and the survivors' decisions by route (degraded = stand-in + policy) from /metrics.
set -euo pipefail
# shellcheck source=cluster/chaos/lib.sh
source "$(dirname "$0")/lib.sh"
chaos_init kill txk 10.77.1 0 "$@"

VICTIM="" BEFORE=3 DETECT_BOUND=15 AFTER=3
set -- "${CHAOS_ARGS[@]+"${CHAOS_ARGS[@]}"}"
while (($# > 0)); do
  case $1 in
    --victim) VICTIM=$2; shift 2 ;;
    --before) BEFORE=$2; shift 2 ;;
    --detect-bound) DETECT_BOUND=$2; shift 2 ;;
    --after) AFTER=$2; shift 2 ;;
    *) chaos_log "unknown option $1"; exit 2 ;;
  esac
done
VICTIM=${VICTIM:-$NODES}
((VICTIM >= 1 && VICTIM <= NODES)) || { chaos_log "--victim must be 1..$NODES"; exit 2; }

chaos_cluster_up
survivors=()
for ((i = 1; i <= NODES; i++)); do ((i == VICTIM)) || survivors+=("$i"); done
victim_id=node-$VICTIM
victim_pid=$(node_pid "$VICTIM")

before=$(metrics_totals "${survivors[@]}")
load_start $((BEFORE + DETECT_BOUND + AFTER))
sleep "$BEFORE"

t0=$(now)
chaos_log "SIGKILL $victim_id (pid $victim_pid)"
kill -KILL "$victim_pid"
# Polled with some slack over the bound; the verdict uses the daemons' own log timestamps.
FIG[detect_polled_s]=$(wait_state $((DETECT_BOUND + 10)) "$victim_id" dead "${survivors[@]}" || echo none)

load_wait
after=$(metrics_totals "${survivors[@]}")
metrics_delta "$before" "$after"

dead_times=() suspect_times=()
for i in "${survivors[@]}"; do
  dead_times+=("$(log_time_after "$i" "member $victim_id dead" "$t0")")
  suspect_times+=("$(log_time_after "$i" "member $victim_id (suspect|dead)" "$t0")")
done
FIG[first_suspect_s]=$(min_of "${suspect_times[@]}")
FIG[all_dead_s]=$(max_of "${dead_times[@]}")
FIG[first_dead_s]=$(min_of "${dead_times[@]}")
FIG[victim]=$victim_id

alive_ok=0
wait_alive 5 $((NODES - 1)) "${survivors[@]}" >/dev/null && alive_ok=1
detected=0
if [[ ${FIG[detect_polled_s]} != none ]] && (($(count_of "${dead_times[@]}") == ${#survivors[@]})) &&
   at_most "${FIG[all_dead_s]}" "$DETECT_BOUND"; then
  detected=1
fi

errors=${FIG[client_visible_errors]}
check errors_within_bound "$((errors >= 0 && errors <= MAX_ERRORS))" "client-visible errors $errors <= $MAX_ERRORS"
check detected "$detected" "every survivor sees $victim_id dead within ${DETECT_BOUND}s (last after ${FIG[all_dead_s]:-?}s)"
check survivors_alive "$alive_ok" "every survivor sees $((NODES - 1)) alive"
check load_ran "$((FIG[load_checks] > 0))" "${FIG[load_checks]} checks completed"
chaos_finish
