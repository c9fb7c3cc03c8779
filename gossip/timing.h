// Timing presets for the SWIM protocol: local (one machine), LAN, WAN.
//
// The numbers follow hashicorp/memberlist's DefaultLocalConfig / DefaultLANConfig /
// DefaultWANConfig, which are proven in Consul and Serf; see docs/gossip.md for what each preset
// guarantees (detection time of a crash, tolerance of packet loss).
#pragma once

#include <cstddef>

#include "limiter/clock.h"

namespace throttlex::gossip {

struct Timing {
  // One probe per period: each period a node pings one member (round-robin over a shuffled list).
  Duration protocol_period;
  // Direct ack wait; after it, indirect pings through `indirect_checks` members. The probe fails
  // (→ suspect) when no ack, direct or indirect, arrives by the end of the period.
  Duration probe_timeout;
  int indirect_checks;
  // Suspicion timeout = suspicion_mult * max(1, log10(n)) * protocol_period (the minimum, reached
  // with enough independent confirmations); it starts at suspicion_max_mult times that (Lifeguard).
  int suspicion_mult;
  int suspicion_max_mult;
  // An update is piggy-backed at most retransmit_mult * ceil(log10(n + 1)) times.
  int retransmit_mult;
  // Every gossip_interval, queued updates go to gossip_nodes random members.
  Duration gossip_interval;
  int gossip_nodes;
  // Members declared dead keep receiving gossip this long, so that one wrongly declared dead learns
  // of it and refutes (its refutation may have been lost).
  Duration gossip_to_the_dead;
  // Full-state exchange with one random member (heals partitions, speeds up joins); also used
  // towards one dead member to find partitions that healed.
  Duration push_pull_interval;
  // Dead and left members are forgotten this long after their last change (until then, dead ones
  // get a push/pull now and then in case a partition healed; left ones block stale "alive" news).
  Duration reap_after = std::chrono::hours(24);
  // Bounds: a datagram (probe + piggy-back) and a stream message (push/pull).
  std::size_t max_datagram_bytes = 1400;
  std::size_t max_stream_bytes = 4u << 20;

  static Timing local();
  static Timing lan();
  static Timing wan();
};

}  // namespace throttlex::gossip
