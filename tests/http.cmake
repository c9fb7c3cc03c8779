# HTTP server tests: the server library alone (daemon/http/CMakeLists.txt, throttlex_http).
throttlex_unit_test(http_server_test unit/http_server_test.cc LIBS throttlex_http LABELS concurrency)
