#include "gossip/timing.h"

namespace throttlex::gossip {

using std::chrono::milliseconds;
using std::chrono::seconds;

Timing Timing::local() {
  Timing t{};
  t.protocol_period = seconds(1);
  t.probe_timeout = milliseconds(200);
  t.indirect_checks = 3;
  t.suspicion_mult = 3;
  t.suspicion_max_mult = 6;
  t.retransmit_mult = 6;  // memberlist: 2; see docs/gossip.md (a join missed at n = 6)
  t.gossip_interval = milliseconds(100);
  t.gossip_nodes = 3;
  t.gossip_to_the_dead = seconds(15);
  t.push_pull_interval = seconds(15);
  return t;
}

Timing Timing::lan() {
  Timing t{};
  t.protocol_period = seconds(1);
  t.probe_timeout = milliseconds(500);
  t.indirect_checks = 3;
  t.suspicion_mult = 4;
  t.suspicion_max_mult = 6;
  t.retransmit_mult = 6;  // memberlist: 4; see docs/gossip.md (refutations under loss)
  t.gossip_interval = milliseconds(200);
  t.gossip_nodes = 3;
  t.gossip_to_the_dead = seconds(30);
  t.push_pull_interval = seconds(30);
  return t;
}

Timing Timing::wan() {
  Timing t{};
  t.protocol_period = seconds(5);
  t.probe_timeout = seconds(3);
  t.indirect_checks = 3;
  t.suspicion_mult = 6;
  t.suspicion_max_mult = 6;
  t.retransmit_mult = 4;
  t.gossip_interval = milliseconds(500);
  t.gossip_nodes = 4;
  t.gossip_to_the_dead = seconds(60);
  t.push_pull_interval = seconds(60);
  return t;
}

}  // namespace throttlex::gossip
