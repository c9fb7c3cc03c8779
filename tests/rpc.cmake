# RPC server and client library tests (in-process: a Store + LimiterService + RpcServer on port 0).
throttlex_unit_test(rpc_server_test unit/rpc_server_test.cc LIBS throttlex_daemon)
throttlex_unit_test(client_test unit/client_test.cc LIBS throttlex_daemon throttlex_client
                    LABELS concurrency)
