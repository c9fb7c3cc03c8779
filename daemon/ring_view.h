// The ring as the request threads see it: who owns each slot right now, and how to reach them.
//
// The cluster thread publishes a new RingView whenever the set of alive members (or an address)
// changes; request threads read it through a per-thread cache that is refreshed only when the
// version changes, so routing a check costs no lock and no shared reference count.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

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

class RingHolder {
 public:
  RingHolder();  // starts with no view: everything is local
  // Any thread. `view` replaces the current one.
  void publish(std::shared_ptr<const RingView> view);
  // The calling thread's current view (may be null: not clustered yet). Valid until this thread
  // calls current() again; copy the shared_ptr to keep it longer.
  const std::shared_ptr<const RingView>& current() const;
  std::shared_ptr<const RingView> snapshot() const;  // a copy, any thread

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const RingView> view_;  // guarded by mu_
  std::atomic<std::uint64_t> version_{1};
  const std::uint64_t instance_;
};

}  // namespace throttlex
