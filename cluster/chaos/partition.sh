#!/usr/bin/env bash
# Chaos: cut one node off the network for a while, then heal (issue 6). Needs root.
#
#   cluster/chaos/partition.sh [--victim N] [--duration 20] [--method iptables|link]
#                              [--before 3] [--after 10] [--seen-bound 15] [--converge-bound 45]
#                              [--nodes 5] [--prefix txp] [--subnet 10.77.2] [--run-dir DIR]
#                              [--rate 5000] [--max-errors 0]
#
# Brings up a namespace cluster (or drives one already up: THROTTLEX_NETNS_REUSE=1), loads it from
# the root namespace (throttlex-bench against every node's RPC address, --route owner,
# --on-unavailable error, 1 s deadline), and after --before s isolates node N (default: the last):
#
#   iptables (default)  DROP rules inside node N's namespace on eth0, in and out (tagged with the
#                       comment throttlex-chaos): packets vanish silently, as in a real partition;
#                       loopback inside the namespace still works, so node N can be asked what it
#                       sees. Nothing is added outside that namespace.
#   link                the root-side veth of node N set down (the bridge port goes away).
#
# The client cannot reach node N either: its checks to N time out (half the deadline), fail over,
# and the majority decides them through the stand-in owner. After --duration s the rules are
# removed (also on any exit), and the scenario waits for the cluster to merge again: the majority
# push/pulls with a member it thinks dead every 15 s (local preset), and N refutes.
#
# PASS when: errors_within_bound (client-visible errors <= --max-errors; default 0: every check
# has a majority node to answer it within the deadline), others_saw_victim (every majority node
# reports N suspect or dead within --seen-bound s), converged (every node sees all alive within
# --converge-bound s of the heal), no_false_deaths (no majority node declared another majority
# node dead), load_ran. Figures: detection times from the daemons' logs
# (first/last suspect, last dead), what N saw just before the heal, heal-to-converged time, load
# and /metrics figures as in kill.sh.
set -euo pipefail
# shellcheck source=cluster/chaos/lib.sh
source "$(dirname "$0")/lib.sh"
chaos_init partition txp 10.77.2 0 "$@"

VICTIM="" DURATION=20 METHOD="" BEFORE=3 AFTER=10 SEEN_BOUND=15 CONVERGE_BOUND=45
set -- "${CHAOS_ARGS[@]+"${CHAOS_ARGS[@]}"}"
while (($# > 0)); do
  case $1 in
    --victim) VICTIM=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --method) METHOD=$2; shift 2 ;;
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
if [[ -z $METHOD ]]; then
  METHOD="link"
  ! command -v iptables >/dev/null || METHOD=iptables
fi
[[ $METHOD == iptables || $METHOD == link ]] || { chaos_log "--method iptables|link"; exit 2; }
FIG[method]=$METHOD

readonly TAG=throttlex-chaos
# The two rules, as iptables arguments after -I/-D/-C CHAIN.
rule_in() { echo "INPUT -i eth0 -m comment --comment $TAG -j DROP"; }
rule_out() { echo "OUTPUT -o eth0 -m comment --comment $TAG -j DROP"; }

isolate() {
  local ns
  ns=$(node_ns "$1")
  chaos_log "isolating node-$1 ($METHOD)"
  if [[ $METHOD == iptables ]]; then
    chaos_on_exit "heal_rules $1"
    # shellcheck disable=SC2046  # the rule is words
    ip netns exec "$ns" iptables -I $(rule_in)
    # shellcheck disable=SC2046
    ip netns exec "$ns" iptables -I $(rule_out)
  else
    chaos_on_exit "ip link set $(node_veth "$1") up"
    ip link set "$(node_veth "$1")" down
  fi
}

# Deletes our rules in node N's namespace, as many times as they are there (bounded).
heal_rules() {
  local ns r n
  ns=$(node_ns "$1")
  for r in "$(rule_in)" "$(rule_out)"; do
    for ((n = 0; n < 10; n++)); do
      # shellcheck disable=SC2086
      ip netns exec "$ns" iptables -C $r 2>/dev/null || break
      # shellcheck disable=SC2086
      ip netns exec "$ns" iptables -D $r
    done
  done
}

heal() {
  chaos_log "healing node-$1"
  if [[ $METHOD == iptables ]]; then heal_rules "$1"; else ip link set "$(node_veth "$1")" up; fi
  chaos_undone
}

chaos_cluster_up
fault_window "$VICTIM" "$BEFORE" "$DURATION" "$AFTER" "$SEEN_BOUND" "$CONVERGE_BOUND" isolate heal
chaos_finish
