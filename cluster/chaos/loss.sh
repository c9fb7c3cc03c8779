#!/usr/bin/env bash
# Chaos: random packet loss on every node for a while, then healed (issue 6). Needs root and
# iptables (its `statistic` match; there is no tc netem here).
#
#   cluster/chaos/loss.sh [--loss 0.05] [--traffic all|gossip] [--duration 20] [--before 3]
#                         [--after 5] [--converge-bound 30]
#                         [--nodes 5] [--prefix txl] [--subnet 10.77.4] [--run-dir DIR]
#                         [--rate 5000] [--max-errors 50]
#
# Brings up a namespace cluster (or drives one already up: THROTTLEX_NETNS_REUSE=1), loads it from
# the root namespace as kill.sh does, and after --before s adds one rule inside EVERY node's
# namespace (nothing outside them):
#
#   iptables -I INPUT -i eth0 [-p udp --dport 7946] -m statistic --mode random
#            --probability LOSS -m comment --comment throttlex-chaos-loss -j DROP
#
# so each packet arriving at a node is dropped with probability LOSS: all of them (--traffic all:
# node-to-node gossip, forwards and the client's requests, whose TCP retransmits) or only gossip
# UDP (--traffic gossip: probes, acks, indirect probes). Packets from a node to the client are not
# dropped (they arrive in the root namespace). After --duration s the rules are removed (also on
# any exit).
#
# PASS when all of:
#   no_false_death       no node logs any member dead, from the loss on until the end: every node
#                        is up the whole time, so a death is false (SWIM's indirect probes and
#                        suspicion timeout are there to ride out lost packets; suspicions that
#                        are refuted are allowed and counted)
#   errors_within_bound  client-visible errors (errors + fallbacks) <= --max-errors (default 50
#                        = 0.05% of the 100,000 checks: a request lost twice can miss the 1 s
#                        deadline; see docs/benchmarks.md for what runs gave)
#   converged            every node sees all NODES alive within --converge-bound s of the heal,
#                        steadily for STABLE_S s (default 3)
#   load_ran             the load completed checks and gave its JSON
# Figures: packets the rules dropped; suspect, back-alive and dead events the nodes logged from
# the loss on (log lines summed over the nodes) and the members declared dead; what each node saw
# alive just before the heal (-1: no answer within 1 s); the load's checks/errors/latency (it is
# open loop: a stalled TCP stream queues checks, which counts in their latency); decisions by
# route from /metrics.
set -euo pipefail
# shellcheck source=cluster/chaos/lib.sh
source "$(dirname "$0")/lib.sh"
chaos_init loss txl 10.77.4 50 "$@"

LOSS=0.05 TRAFFIC=all DURATION=20 BEFORE=3 AFTER=5 CONVERGE_BOUND=30
set -- "${CHAOS_ARGS[@]+"${CHAOS_ARGS[@]}"}"
while (($# > 0)); do
  case $1 in
    --loss) LOSS=$2; shift 2 ;;
    --traffic) TRAFFIC=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --before) BEFORE=$2; shift 2 ;;
    --after) AFTER=$2; shift 2 ;;
    --converge-bound) CONVERGE_BOUND=$2; shift 2 ;;
    *) chaos_log "unknown option $1"; exit 2 ;;
  esac
done
[[ $LOSS =~ ^0?\.[0-9]+$ ]] || { chaos_log "--loss must be a probability below 1 (e.g. 0.05)"; exit 2; }
[[ $TRAFFIC == all || $TRAFFIC == gossip ]] || { chaos_log "--traffic all|gossip"; exit 2; }
command -v iptables >/dev/null || { chaos_log "iptables is missing: skipped"; exit 77; }
readonly GOSSIP_PORT=7946 TAG=throttlex-chaos-loss

# The rule, as iptables arguments after -I/-D/-C.
rule() {
  local match=""
  [[ $TRAFFIC == all ]] || match="-p udp --dport $GOSSIP_PORT"
  echo "INPUT -i eth0 $match -m statistic --mode random --probability $LOSS -m comment --comment $TAG -j DROP"
}

add_loss() {
  local i
  chaos_log "dropping $LOSS of the packets ($TRAFFIC) arriving at every node"
  chaos_on_exit remove_loss
  for ((i = 1; i <= NODES; i++)); do
    # shellcheck disable=SC2046  # the rule is words
    ip netns exec "$(node_ns "$i")" iptables -I $(rule)
  done
}

# Packets our rules dropped, over every node (read before they are removed).
dropped_packets() {
  local i
  for ((i = 1; i <= NODES; i++)); do
    ip netns exec "$(node_ns "$i")" iptables -L INPUT -v -x -n 2>/dev/null || true
  done | awk -v tag="$TAG" '$0 ~ tag { n += $1 } END { print n + 0 }'
}

# Deletes our rule in every node's namespace, as many times as it is there (bounded).
remove_loss() {
  local i n ns
  for ((i = 1; i <= NODES; i++)); do
    ns=$(node_ns "$i")
    for ((n = 0; n < 10; n++)); do
      # shellcheck disable=SC2046
      ip netns exec "$ns" iptables -C $(rule) 2>/dev/null || break
      # shellcheck disable=SC2046
      ip netns exec "$ns" iptables -D $(rule)
    done
  done
}

chaos_cluster_up
mapfile -t nodes < <(all_nodes)
FIG[loss]=$LOSS FIG[traffic]=$TRAFFIC FIG[fault_s]=$DURATION

metrics0=$(metrics_totals "${nodes[@]}")
load_start $((BEFORE + DURATION + AFTER))
sleep "$BEFORE"
t0=$(now)
add_loss
sleep "$DURATION"
FIG[dropped_packets]=$(dropped_packets)
# shellcheck disable=SC2046  # one address per word
FIG[alive_views_at_heal]=$(python3 "$VIEWS" alive $(http_addrs "${nodes[@]}") | tr ' ' ,)
t1=$(now)
chaos_log "healing: removing the loss rules"
remove_loss
chaos_undone
# shellcheck disable=SC2046  # one node number per word
FIG[heal_to_converged_s]=$(wait_alive "$CONVERGE_BOUND" "$NODES" $(all_nodes) || echo none)
load_wait
metrics1=$(metrics_totals "${nodes[@]}")
metrics_delta "$metrics0" "$metrics1"

suspicions=0 refutations=0 deaths=0
for ((i = 1; i <= NODES; i++)); do
  suspicions=$((suspicions + $(log_count_after "$i" "member node-[0-9]+ suspect" "$t0")))
  refutations=$((refutations + $(log_count_after "$i" "member node-[0-9]+ [a-z]+ \\(alive" "$t0")))
  deaths=$((deaths + $(log_count_after "$i" "member node-[0-9]+ dead" "$t0")))
done
# Event counts are log lines summed over the nodes (one suspicion seen by four nodes is 4).
FIG[suspect_events]=$suspicions FIG[back_alive_events]=$refutations FIG[dead_events]=$deaths
dead_members=()
for ((j = 1; j <= NODES && deaths > 0; j++)); do
  for ((i = 1; i <= NODES; i++)); do
    if ((i != j)) && [[ -n $(log_time_after "$i" "member node-$j dead" "$t0") ]]; then
      dead_members+=("node-$j")
      break
    fi
  done
done
FIG[members_declared_dead]=$(IFS=,; echo "${dead_members[*]:-none}")

errors=${FIG[client_visible_errors]}
check no_false_death "$((deaths == 0))" \
  "members declared dead while every node was up: ${FIG[members_declared_dead]} ($deaths events)"
check errors_within_bound "$((errors >= 0 && errors <= MAX_ERRORS))" "client-visible errors $errors <= $MAX_ERRORS"
check converged "$([[ ${FIG[heal_to_converged_s]} != none ]] && echo 1 || echo 0)" \
  "all see $NODES alive within ${CONVERGE_BOUND}s of the heal (after ${FIG[heal_to_converged_s]}s)"
check load_ran "$((FIG[load_checks] > 0))" "${FIG[load_checks]} checks completed"
chaos_finish
