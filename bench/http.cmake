# The baseline for HTTP throughput: a trivial Asio server with HttpServer's threading model.
# Compare `wrk` against it and against the daemon's /v1/check (target: within 80%).
find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)

add_executable(http_baseline http_baseline.cc)
target_include_directories(http_baseline SYSTEM PRIVATE ${ASIO_INCLUDE_DIR})
target_link_libraries(http_baseline PRIVATE Threads::Threads)
