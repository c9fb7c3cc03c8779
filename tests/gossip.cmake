throttlex_unit_test(membership_test unit/membership_test.cc LIBS throttlex_gossip)
throttlex_unit_test(keyring_test unit/keyring_test.cc LIBS throttlex_gossip)
throttlex_unit_test(ring_test unit/ring_test.cc LIBS throttlex_gossip)
throttlex_unit_test(net_transport_test unit/net_transport_test.cc LIBS throttlex_gossip)

# gossip-forge: one forged gossip datagram, for the integration tests of docs/security.md.
find_package(CLI11 CONFIG REQUIRED)
add_executable(gossip-forge tools/gossip_forge.cc)
target_include_directories(gossip-forge PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(gossip-forge PRIVATE throttlex_gossip CLI11::CLI11)
