# The Cap'n Proto RPC front (daemon/rpc_server.h), part of throttlex_daemon.
target_sources(throttlex_daemon PRIVATE ${CMAKE_CURRENT_LIST_DIR}/rpc_server.cc)
target_sources(throttlex_daemon PRIVATE ${CMAKE_CURRENT_LIST_DIR}/rpc_service.cc)
