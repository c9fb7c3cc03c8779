# The baseline for HTTP throughput: a trivial Asio server with HttpServer's threading model.
# Compare `wrk` against it and against the daemon's /v1/check (target: within 80%).
find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)

add_executable(http_baseline http_baseline.cc)
target_include_directories(http_baseline SYSTEM PRIVATE ${ASIO_INCLUDE_DIR})
target_link_libraries(http_baseline PRIVATE Threads::Threads)

# http-paced: HTTP load at a fixed offered rate, latency from each request's due time (no
# coordinated omission); what bench/peers_report.py measures latency with.
find_path(HTTP_PARSER_INCLUDE_DIR http_parser.h REQUIRED)
find_library(HTTP_PARSER_LIBRARY http_parser REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
add_executable(http-paced http_paced.cc)
target_include_directories(http-paced PRIVATE ${PROJECT_SOURCE_DIR})
target_include_directories(http-paced SYSTEM PRIVATE ${ASIO_INCLUDE_DIR} ${HTTP_PARSER_INCLUDE_DIR})
target_link_libraries(http-paced PRIVATE ${HTTP_PARSER_LIBRARY} CLI11::CLI11
                      nlohmann_json::nlohmann_json Threads::Threads)

# rls-bench: closed-loop load on a node's Envoy rate limit service port (bench/rls_report.py).
add_executable(rls-bench rls_bench.cc)
target_include_directories(rls-bench PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(rls-bench PRIVATE throttlex_envoy_proto CLI11::CLI11 Threads::Threads)
