throttlex_unit_test(membership_test unit/membership_test.cc LIBS throttlex_gossip)
throttlex_unit_test(ring_test unit/ring_test.cc LIBS throttlex_gossip)
