# cluster/ tests that run real clusters (included at the end of tests/CMakeLists.txt).
#
# Chaos scenarios (cluster/chaos/*.sh) on a 5-node network-namespace cluster, each on its own
# prefix and subnet, one at a time (RESOURCE_LOCK netns_cluster: they share two cores and their
# timings are the verdict). They need root; without it, or without namespace support, the
# scripts exit 77 and CTest reports them skipped. Logs and summary.json: build dir, chaos/<name>/.
#
# A scenario cleans up after itself on every exit it sees; a CTest timeout kills it with SIGKILL,
# which it does not see, so cluster_chaos_cleanup (a fixture cleanup, run after them even when
# they fail or time out) brings down whatever is left under their prefixes — only those.

set(_tx_chaos_dir ${CMAKE_BINARY_DIR}/chaos)
set(_tx_cluster_env "THROTTLEX_BIN=${CMAKE_BINARY_DIR}/bin;PYTHONDONTWRITEBYTECODE=1")

# throttlex_chaos_test(<name> <script> <prefix> <subnet> <timeout> [script options...])
function(throttlex_chaos_test name script prefix subnet timeout)
  add_test(NAME ${name}
           COMMAND bash ${PROJECT_SOURCE_DIR}/cluster/chaos/${script} --prefix ${prefix}
                   --subnet ${subnet} --run-dir ${_tx_chaos_dir}/${prefix} ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "integration;chaos" TIMEOUT ${timeout} RUN_SERIAL TRUE
                       RESOURCE_LOCK netns_cluster SKIP_RETURN_CODE 77
                       FIXTURES_REQUIRED netns_cluster_cleanup
                       ENVIRONMENT "${_tx_cluster_env}")
  set_property(GLOBAL APPEND PROPERTY THROTTLEX_CHAOS_PREFIXES ${prefix})
endfunction()

# kill -9 of node-5 under load: ~45 s.
throttlex_chaos_test(cluster_chaos_kill kill.sh txck 10.77.11 150)
# node-5 cut off for 12 s (it is declared dead after ~5 s), then healed: ~50 s.
throttlex_chaos_test(cluster_chaos_partition partition.sh txcp 10.77.12 180
                     --duration 12 --seen-bound 10 --after 5)
# Redis (cluster.sh --redis) SIGKILLed for 10 s under load, then started again: no client error,
# no slower checks, every node sees it go and come back, snapshots resume and drain: ~45 s.
# Skipped (77) without redis-server too.
throttlex_chaos_test(cluster_chaos_redis_down redis_down.sh txcr 10.77.13 150)

get_property(_tx_prefixes GLOBAL PROPERTY THROTTLEX_CHAOS_PREFIXES)
set(_tx_down "((EUID == 0)) && command -v ip >/dev/null || exit 77\nstatus=0")
foreach(prefix IN LISTS _tx_prefixes)
  string(APPEND _tx_down "\n${PROJECT_SOURCE_DIR}/cluster/netns/cluster.sh down --prefix ${prefix}"
                         " --run-dir ${_tx_chaos_dir}/${prefix} || status=1")
endforeach()
add_test(NAME cluster_chaos_cleanup COMMAND bash -c "${_tx_down}\nexit $status")
set_tests_properties(cluster_chaos_cleanup PROPERTIES LABELS "integration;chaos" TIMEOUT 60
                     FIXTURES_CLEANUP netns_cluster_cleanup RESOURCE_LOCK netns_cluster
                     SKIP_RETURN_CODE 77)

# The Grafana dashboard's every PromQL expression through a real Prometheus (Debian package
# prometheus, from scripts/setup.sh) scraping three loopback throttlexd under load: a query that
# does not parse, or that selects exported metrics and returns nothing, fails. Skipped (77)
# without prometheus.
add_test(NAME cluster_dashboard_promql
         COMMAND ${Python3_EXECUTABLE} -u ${PROJECT_SOURCE_DIR}/cluster/checks/promql_check.py
                 --bin ${CMAKE_BINARY_DIR}/bin --work-dir ${CMAKE_BINARY_DIR}/promql-check)
set_tests_properties(cluster_dashboard_promql PROPERTIES LABELS "integration" TIMEOUT 120 RUN_SERIAL TRUE
                     SKIP_RETURN_CODE 77 ENVIRONMENT "${_tx_cluster_env}")
