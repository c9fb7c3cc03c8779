// The ring as the request threads see it: who owns each slot right now, and how to reach them.
//
// The cluster thread publishes a new RingView whenever the set of owning members (or an address)
// changes; request threads read it through Published's per-thread cache, so routing a check costs
// no lock and no shared reference count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "daemon/base/published.h"
#include "gossip/ring.h"

namespace throttlex {

struct RingView {
  Ring ring;                             // over alive and suspect members, this node included
  std::vector<std::string> rpc_address;  // per ring.members() index
  std::uint32_t self = 0;                // this node's index in ring.members()

  static constexpr std::uint32_t kNoPeer = ~std::uint32_t{0};
  // The member index owning `slot`, or kNoPeer when it is this node (or there is no one else).
  std::uint32_t peerFor(std::uint32_t slot) const {
    if (ring.members().size() <= 1) return kNoPeer;
    const std::uint32_t owner = ring.ownerIndex(slot);
    return owner == self ? kNoPeer : owner;
  }
  std::size_t alive() const { return ring.members().empty() ? 1 : ring.members().size(); }
};

// Published by the cluster thread, read by request threads (daemon/base/published.h). Starts empty:
// no view means everything is local.
using RingHolder = Published<RingView>;

}  // namespace throttlex
