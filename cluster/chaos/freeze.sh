#!/usr/bin/env bash
# Chaos: freeze one node (SIGSTOP) for a while, then thaw it (SIGCONT) (issue 6). Needs root.
#
#   cluster/chaos/freeze.sh [--victim N] [--duration 15] [--before 3] [--after 10]
#                           [--seen-bound 12] [--converge-bound 45]
#                           [--nodes 5] [--prefix txf] [--subnet 10.77.3] [--run-dir DIR]
#                           [--rate 5000] [--max-errors 0]
#
# Brings up a namespace cluster (or drives one already up: THROTTLEX_NETNS_REUSE=1), loads it
# from the root namespace as kill.sh does, and after --before s stops node N (default: the last)
# with SIGSTOP for --duration s. A frozen node is the nastiest crash to see: its kernel still
# accepts TCP connections and queues requests, nothing is refused, calls just never return. The
# client's calls to it time out (half the deadline) and fail over; the other nodes find it silent
# (no answer to batches or heartbeats for --owner-silence-ms, 500 ms), open the breaker and send
# its keys to the stand-in owner; batches it takes after their decide-by time it refuses. After
# SIGCONT (also sent on any exit) N finds itself suspected or dead and refutes with a higher
# incarnation.
#
# PASS when: errors_within_bound (client-visible errors <= --max-errors, default 0),
# others_saw_victim (every other node reports N suspect or dead within --seen-bound s),
# converged (all nodes see all alive within --converge-bound s of SIGCONT), no_false_deaths (no
# other node declared another one dead), victim_survived (N is still running after the thaw),
# load_ran. Figures as in partition.sh.
set -euo pipefail
# shellcheck source=cluster/chaos/lib.sh
source "$(dirname "$0")/lib.sh"
chaos_init freeze txf 10.77.3 0 "$@"

VICTIM="" DURATION=15 BEFORE=3 AFTER=10 SEEN_BOUND=12 CONVERGE_BOUND=45
set -- "${CHAOS_ARGS[@]+"${CHAOS_ARGS[@]}"}"
while (($# > 0)); do
  case $1 in
    --victim) VICTIM=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --before) BEFORE=$2; shift 2 ;;
    --after) AFTER=$2; shift 2 ;;
    --seen-bound) SEEN_BOUND=$2; shift 2 ;;
    --converge-bound) CONVERGE_BOUND=$2; shift 2 ;;
    *) chaos_log "unknown option $1"; exit 2 ;;
  esac
done
VICTIM=${VICTIM:-$NODES}
((VICTIM >= 1 && VICTIM <= NODES)) || { chaos_log "--victim must be 1..$NODES"; exit 2; }
((SEEN_BOUND <= DURATION)) || { chaos_log "--seen-bound must not exceed --duration"; exit 2; }

freeze() {
  VICTIM_PID=$(node_pid "$1")
  chaos_log "SIGSTOP node-$1 (pid $VICTIM_PID)"
  chaos_on_exit "kill -CONT $VICTIM_PID 2>/dev/null"
  kill -STOP "$VICTIM_PID"
}

thaw() {
  chaos_log "SIGCONT node-$1 (pid $VICTIM_PID)"
  kill -CONT "$VICTIM_PID"
  chaos_undone
}

chaos_cluster_up
fault_window "$VICTIM" "$BEFORE" "$DURATION" "$AFTER" "$SEEN_BOUND" "$CONVERGE_BOUND" freeze thaw
survived=0
[[ $(cat "/proc/$VICTIM_PID/comm" 2>/dev/null) == throttlexd ]] && survived=1
check victim_survived "$survived" "node-$VICTIM (pid $VICTIM_PID) still runs after SIGCONT"
chaos_finish
