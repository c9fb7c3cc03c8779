# The HTTP/1.1 server (daemon/http_server.h) as its own library, so tests and benchmarks can use it
# without the rest of the daemon. Included by daemon/CMakeLists.txt; tests/http.cmake includes it
# too while the daemon directory is not part of the build yet (hence the guards).
if(NOT TARGET throttlex_http)
  find_path(HTTP_PARSER_INCLUDE_DIR http_parser.h REQUIRED)
  find_library(HTTP_PARSER_LIBRARY http_parser REQUIRED)
  find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)

  add_library(throttlex_http STATIC
    ${CMAKE_CURRENT_LIST_DIR}/http_server.cc
    ${CMAKE_CURRENT_LIST_DIR}/http_server_connection.cc
    ${CMAKE_CURRENT_LIST_DIR}/http_server_parser.cc
    ${CMAKE_CURRENT_LIST_DIR}/http_server_wire.cc
  )
  target_include_directories(throttlex_http PUBLIC ${PROJECT_SOURCE_DIR})
  target_include_directories(throttlex_http SYSTEM PRIVATE ${HTTP_PARSER_INCLUDE_DIR} ${ASIO_INCLUDE_DIR})
  target_link_libraries(throttlex_http PUBLIC Threads::Threads PRIVATE ${HTTP_PARSER_LIBRARY})
endif()

if(TARGET throttlex_daemon)
  target_link_libraries(throttlex_daemon PUBLIC throttlex_http)
endif()

