// What routing needs to know about slot ownership beyond the ring: a slot's mode, and a place for
// checks whose slot's state is on the way. Implemented by SlotKeeper (daemon/slots/slot_keeper.h);
// declared here so that routing does not depend on the slots layer above it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "daemon/base/quiescence.h"

namespace throttlex {

struct ForwardedCheck;
class ForwardSink;

enum class SlotMode : std::uint8_t { kOpen = 0, kParked = 1, kClaimed = 2, kMoved = 3, kProxy = 4 };

// Who routes a parked check again once its slot opens: the one that parked it (the Router where
// checks enter, the Forwarder for checks it was sending). Passed with each check, so the slot
// gate needs no pointer back to either (no cycle closed by setters).
class Rerouter {
 public:
  virtual ~Rerouter() = default;
  // Routes `check` again; its result goes to sink->deliver(index, ...), now or later.
  virtual void reroute(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
                       std::uint8_t hops) = 0;
};

class SlotGate {
 public:
  virtual ~SlotGate() = default;

  // Hot path (any thread), must not block. active(): some slot is not open (else mode() is
  // always kOpen).
  virtual bool active() const = 0;
  virtual SlotMode mode(std::uint32_t slot) const = 0;
  // Deciding threads hold a guard of this around the mode read and the decision.
  virtual Quiescence& quiescence() = 0;

  // A check whose slot is parked: held until the slot opens, then handed to `back` to be routed
  // again (on the thread that opens the slot). If the slot opened meanwhile, at once. `back` must
  // outlive the gate's stop(), which hands back whatever still waits.
  virtual void park(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
                    std::uint8_t hops, Rerouter& back) = 0;
  // This node is about to decide `slot` as a stand-in (its owner elsewhere): true when the slot
  // must be read from the snapshot store first (it is parked now; park() the check).
  virtual bool standInNeedsRecovery(std::uint32_t slot) = 0;
  // Proxied slots: the member that still decides `slot` (empty if it is not proxied). Locks.
  virtual std::string proxyTarget(std::uint32_t slot) const = 0;
  // This node handed `slot` over a moment ago (checks for it go to the new owner).
  virtual bool handedOver(std::uint32_t slot) const = 0;
};

}  // namespace throttlex
