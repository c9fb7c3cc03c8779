# throttlex-bench: the RPC load generator (bench/throttlex_bench.cc; usage in docs/throttlectl.md).
# Included from bench/CMakeLists.txt.
find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)

add_executable(throttlex-bench
  ${CMAKE_CURRENT_LIST_DIR}/throttlex_bench.cc
  ${CMAKE_CURRENT_LIST_DIR}/load_connection.cc
)
# throttlex_limiter for parsePeriod/parseAlgorithm (the spellings the node accepts).
target_link_libraries(throttlex-bench PRIVATE throttlex_client throttlex_limiter CLI11::CLI11
                      nlohmann_json::nlohmann_json Threads::Threads)
target_include_directories(throttlex-bench PRIVATE ${PROJECT_SOURCE_DIR})

# Its histogram and key distributions have a unit test (tests/ is configured before bench/, so
# the helper exists unless tests are left out).
if(COMMAND throttlex_unit_test)
  find_package(doctest REQUIRED)  # imported targets are per directory
  throttlex_unit_test(latency_histogram_test ${PROJECT_SOURCE_DIR}/tests/unit/latency_histogram_test.cc)
endif()
