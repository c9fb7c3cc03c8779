throttlex_unit_test(membership_test unit/membership_test.cc LIBS throttlex_gossip)
throttlex_unit_test(keyring_test unit/keyring_test.cc LIBS throttlex_gossip)
throttlex_unit_test(ring_test unit/ring_test.cc LIBS throttlex_gossip)
throttlex_unit_test(net_transport_test unit/net_transport_test.cc LIBS throttlex_gossip)

# Test tools for the integration tests of docs/security.md.
# gossip-forge: one forged gossip datagram.
find_package(CLI11 CONFIG REQUIRED)
add_executable(gossip-forge tools/gossip_forge.cc)
target_include_directories(gossip-forge PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(gossip-forge PRIVATE throttlex_gossip CLI11::CLI11)

# rpc-forge: peer-only RPC calls (forwarded checks, handoffs) with a chosen certificate.
add_executable(rpc-forge tools/rpc_forge.cc)
target_include_directories(rpc-forge PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(rpc-forge PRIVATE throttlex_rpc_tls throttlex_proto CLI11::CLI11)
