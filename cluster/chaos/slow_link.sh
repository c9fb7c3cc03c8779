#!/usr/bin/env bash
# Chaos: one node behind a slow link for a while, then healed (issue 6). Needs root and iptables
# (nat table). There is no `tc netem` in this kernel: the delay comes from a user-space proxy,
# cluster/chaos/delay_proxy.py.
#
#   cluster/chaos/slow_link.sh [--victim 5] [--delay-ms 50] [--keys 2000] [--limit 50]
#                              [--load-rate 1000] [--before 5] [--duration 15] [--after 5]
#                              [--nodes 5] [--prefix txsl] [--subnet 10.77.4] [--run-dir DIR]
#                              [--max-errors 0]
#
# Brings up a namespace cluster, then, inside the victim's namespace only:
#
#   delay_proxy.py --listen 0.0.0.0:7401 --to VICTIM_ADDR:7400 --delay-ms DELAY
#   iptables -t nat -I PREROUTING -i eth0 -p tcp --dport 7400 -j REDIRECT --to-ports 7401
#
# so every RPC connection made to the victim from then on (the other nodes' forwards, opened when
# their first check for it comes) passes the proxy. Before any load runs, so every forward goes
# through it. The load is cluster/chaos/exact_load.py over HTTP, entering at every node in turn:
# about 4 in 5 checks are forwarded, a fifth of those to the victim. After --before s the proxy
# delays every chunk by DELAY ms each way (SIGUSR1), after --duration s more it stops (SIGUSR2),
# --after s more load, then the loader's final sweep.
#
# PASS when all of:
#   errors_within_bound  client-visible errors <= --max-errors (0)
#   exact                no key admitted beyond its limit or denied before it (a slow owner is
#                        still the owner: with DELAY x 2 below the forward deadline, 250 ms by
#                        default, nothing is decided anywhere else)
#   link_was_slow        the proxy carried the victim's forwards and delayed chunks, and the mean
#                        forward call (over all nodes) rose while slow by at least half of what the
#                        delay adds: (share of calls that go to the victim) x 2 x DELAY
#   load_ran             the loader answered checks and wrote its JSON
# Figures: mean forward call time over all nodes (sum/count of throttlex_forward_duration_seconds)
# before, during and after the slow phase, and slow/before as a ratio; the proxy's connections,
# bytes and delayed chunks; breakers opened; stand-in and degraded decisions; the load's checks,
# errors, batch latency (p50/p99 over the whole run) and allowed vs expected.
set -euo pipefail
# shellcheck source=cluster/chaos/lib.sh
source "$(dirname "$0")/lib.sh"
chaos_init slow_link txsl 10.77.4 0 "$@"

VICTIM=5 DELAY_MS=50 KEYS=2000 LIMIT=50 LOAD_RATE=1000 BEFORE=5 DURATION=15 AFTER=5
set -- "${CHAOS_ARGS[@]+"${CHAOS_ARGS[@]}"}"
while (($# > 0)); do
  case $1 in
    --victim) VICTIM=$2; shift 2 ;;
    --delay-ms) DELAY_MS=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --limit) LIMIT=$2; shift 2 ;;
    --load-rate) LOAD_RATE=$2; shift 2 ;;
    --before) BEFORE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --after) AFTER=$2; shift 2 ;;
    *) chaos_log "unknown option $1"; exit 2 ;;
  esac
done
for v in "$VICTIM" "$DELAY_MS" "$KEYS" "$LIMIT" "$LOAD_RATE" "$BEFORE" "$DURATION" "$AFTER"; do
  [[ $v =~ ^[0-9]+$ ]] || { chaos_log "counts, rates, delays and durations are whole numbers"; exit 2; }
done
((VICTIM >= 1 && VICTIM <= NODES)) || { chaos_log "--victim must be a node number from 1 to $NODES"; exit 2; }
command -v iptables >/dev/null || { chaos_log "iptables is missing: skipped"; exit 77; }
readonly PROXY_PORT=7401 TAG=throttlex-chaos-slow

RATE=$LOAD_RATE
chaos_cluster_up
ns=$(node_ns "$VICTIM")
rule="PREROUTING -i eth0 -p tcp --dport $RPC_PORT -m comment --comment $TAG -j REDIRECT --to-ports $PROXY_PORT"

# ---- the proxy and the redirect (before any load) ------------------------------------------------
ip netns exec "$ns" python3 -u "$CHAOS_REPO/cluster/chaos/delay_proxy.py" \
  --listen "0.0.0.0:$PROXY_PORT" --to "$(node_addr "$VICTIM"):$RPC_PORT" --delay-ms "$DELAY_MS" \
  --stats "$WORK/proxy.json" --max-seconds $((BEFORE + DURATION + AFTER + 200)) 2>"$WORK/proxy.err" &
PROXY_PID=$!
# shellcheck disable=SC2016  # expanded when it runs
chaos_on_exit 'kill -TERM "$PROXY_PID" 2>/dev/null || true'
listening() { ip netns exec "$ns" ss -ltn "sport = :$PROXY_PORT" | grep -q LISTEN; }
wait_until 10 "the delay proxy to listen" listening >/dev/null ||
  { chaos_log "the delay proxy did not start:"; cat "$WORK/proxy.err" >&2; exit 1; }
# shellcheck disable=SC2086  # the rule is words
remove_redirect() { while ip netns exec "$ns" iptables -t nat -C $rule 2>/dev/null; do ip netns exec "$ns" iptables -t nat -D $rule; done; }
chaos_on_exit remove_redirect
# shellcheck disable=SC2086
ip netns exec "$ns" iptables -t nat -I $rule
chaos_log "node-$VICTIM's RPC port goes through the delay proxy (${DELAY_MS} ms each way when slow)"

# Over all nodes: "SUM COUNT OPENS VICTIM_CALLS": forward call time (s) and calls, breakers opened,
# forward calls to the victim.
forward_totals() {
  local i
  for i in $(all_nodes); do
    curl -fsS --max-time 2 "http://$(node_addr "$i"):$METRICS_PORT/metrics" 2>/dev/null || true
  done | awk -v victim="node-$VICTIM" '
    /^throttlex_forward_duration_seconds_sum / { s += $NF }
    /^throttlex_forward_duration_seconds_count / { c += $NF }
    /^throttlex_breaker_opens_total/ { o += $NF }
    /^throttlex_forward_calls_total\{/ && index($0, "peer=\"" victim "\"") { v += $NF }
    END { printf "%.6f %d %d %d\n", s, c, o, v }'
}
# mean_ms "BEFORE" "AFTER": mean forward call time between two forward_totals ("none": no calls).
mean_ms() {
  awk -v b="$1" -v a="$2" 'BEGIN { split(b, x, " "); split(a, y, " ");
    n = y[2] - x[2]; if (n <= 0) { print "none"; exit } printf "%.2f\n", (y[1] - x[1]) * 1000 / n }'
}
# victim_share "BEFORE" "AFTER": the fraction of forward calls that went to the victim.
victim_share() {
  awk -v b="$1" -v a="$2" 'BEGIN { split(b, x, " "); split(a, y, " ");
    n = y[2] - x[2]; printf "%.3f\n", (n > 0 ? (y[4] - x[4]) / n : 0) }'
}

mapfile -t nodes < <(all_nodes)
metrics0=$(metrics_totals "${nodes[@]}")
exact_start $((BEFORE + DURATION + AFTER + 60))
f0=$(forward_totals)
sleep "$BEFORE"
kill -0 "$EXACT_PID" 2>/dev/null || { chaos_log "the loader died:"; tail -5 "$WORK/exact.err" >&2; exit 1; }
f1=$(forward_totals)
chaos_log "slow: +${DELAY_MS} ms each way on node-$VICTIM's RPC"
kill -USR1 "$PROXY_PID"
sleep "$DURATION"
f2=$(forward_totals)
chaos_log "healed: the proxy passes chunks on at once again"
kill -USR2 "$PROXY_PID"
sleep "$AFTER"
f3=$(forward_totals)
exact_finish
metrics_delta "$metrics0" "$(metrics_totals "${nodes[@]}")"
kill -TERM "$PROXY_PID" 2>/dev/null || true
wait_until 10 "the proxy's figures" test -s "$WORK/proxy.json" >/dev/null || echo '{}' >"$WORK/proxy.json"

# ---- verdict -------------------------------------------------------------------------------------
exact_figures
FIG[delay_ms]=$DELAY_MS FIG[victim]=node-$VICTIM FIG[slow_s]=$DURATION
FIG[forward_mean_ms_before]=$(mean_ms "$f0" "$f1")
FIG[forward_mean_ms_slow]=$(mean_ms "$f1" "$f2")
FIG[forward_mean_ms_after]=$(mean_ms "$f2" "$f3")
FIG[forward_slow_over_before]=$(awk -v s="${FIG[forward_mean_ms_slow]}" -v b="${FIG[forward_mean_ms_before]}" \
  'BEGIN { if (s == "none" || b == "none" || b <= 0) print "none"; else printf "%.1f\n", s / b }')
read -ra o0 <<<"$f0"
read -ra o3 <<<"$f3"
FIG[breaker_opens]=$((o3[2] - o0[2]))
while IFS='=' read -r k v; do FIG[$k]=$v; done < <(python3 - "$WORK/proxy.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("connections", "failed_connects", "bytes_to_target", "bytes_from_target", "chunks_delayed"):
    print(f"proxy_{k}={r.get(k, -1)}")
PY
)

errors=${FIG[client_visible_errors]}
over=${FIG[load_over_admitted]} under=${FIG[load_under_admitted]}
# Calls to the victim take 2 x DELAY longer (the request and the answer pass the proxy): the mean
# over all calls must rise by at least half of SHARE x 2 x DELAY.
FIG[victim_share_of_forwards]=$(victim_share "$f1" "$f2")
FIG[forward_mean_rise_expected_ms]=$(awk -v p="${FIG[victim_share_of_forwards]}" -v d="$DELAY_MS" 'BEGIN { printf "%.2f\n", p * 2 * d }')
slow_enough=$(awk -v s="${FIG[forward_mean_ms_slow]}" -v b="${FIG[forward_mean_ms_before]}" \
  -v e="${FIG[forward_mean_rise_expected_ms]}" 'BEGIN { print (s != "none" && b != "none" && e > 0 && s - b >= e / 2) ? 1 : 0 }')
check errors_within_bound "$((errors >= 0 && errors <= MAX_ERRORS))" \
  "client-visible errors $errors <= $MAX_ERRORS (failovers ${FIG[load_failovers]})"
check exact "$((over == 0 && under == 0 && FIG[load_sweep_not_denied] == 0))" \
  "over-admitted $over units, under-admitted $under units, allowed ${FIG[load_allowed]} of ${FIG[load_expected_allowed]} (stand-in ${FIG[node_standin_decisions]}, degraded ${FIG[node_degraded_policy_decisions]}, breakers opened ${FIG[breaker_opens]})"
check link_was_slow "$((FIG[proxy_connections] > 0 && FIG[proxy_chunks_delayed] > 0 && slow_enough))" \
  "proxy: ${FIG[proxy_connections]} connections, ${FIG[proxy_chunks_delayed]} chunks delayed; mean forward ${FIG[forward_mean_ms_before]} ms before, ${FIG[forward_mean_ms_slow]} ms slow (expected +${FIG[forward_mean_rise_expected_ms]}: ${FIG[victim_share_of_forwards]} of the calls x 2 x ${DELAY_MS} ms), ${FIG[forward_mean_ms_after]} ms after"
check load_ran "$((FIG[load_checks] > 0))" "${FIG[load_checks]} checks answered"
chaos_finish
