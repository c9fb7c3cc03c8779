# HTTP server tests. The server library is defined in daemon/http_server.cmake; include it here if
# the daemon directory has not been added (yet) so this test builds on its own.
if(NOT TARGET throttlex_http)
  include(${PROJECT_SOURCE_DIR}/daemon/http_server.cmake)
endif()

throttlex_unit_test(http_server_test unit/http_server_test.cc LIBS throttlex_http LABELS concurrency)
