// Updates waiting to be piggy-backed, each sent a bounded number of times.
//
// Invariants: at most one queued update per member id (a newer one replaces the older, which is
// then stale); take() hands out the least-transmitted updates first, newest first among equals, so
// fresh news spreads before old news is repeated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gossip/message.h"

namespace throttlex::gossip {

class BroadcastQueue {
 public:
  void enqueue(Update update);
  // Updates whose estimated sizes fit in `byte_budget`; each taken update counts one transmission
  // and is dropped once it has been transmitted `transmit_limit` times.
  std::vector<Update> take(std::size_t byte_budget, int transmit_limit);
  std::size_t size() const { return items_.size(); }
  void clear() { items_.clear(); }

 private:
  struct Item {
    Update update;
    int transmits = 0;
    std::uint64_t order = 0;  // larger = newer
  };
  std::vector<Item> items_;
  std::uint64_t next_order_ = 0;
};

// retransmit_mult * ceil(log10(n + 1)), the bound of SWIM's infection-style dissemination.
int retransmitLimit(int retransmit_mult, std::size_t cluster_size);

}  // namespace throttlex::gossip
