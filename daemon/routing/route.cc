#include "daemon/routing/route.h"

namespace throttlex {
namespace {

RouteStep toOwner(const RouteFacts& f) {
  return f.owner_down ? RouteStep::kStandIn : RouteStep::kOwner;
}

// Past the hop limit: sent on by a node that did not own the slot, or by one whose owner was
// unreachable (a stand-in check). Decided where the slot's state is, once it is here; a check
// follows a slot that moved or was just handed over a bounded number of times.
RouteStep pastLimit(const RouteFacts& f) {
  if (!f.gate) return RouteStep::kDecide;
  const bool relay = f.forwarder && f.hops < kMaxRelayHops;
  switch (f.mode) {
    case SlotMode::kParked:
    case SlotMode::kProxy:
      return RouteStep::kPark;  // its state is on the way here
    case SlotMode::kClaimed:
      return RouteStep::kDecide;
    case SlotMode::kMoved:  // drained from here: to the member the slot went to
      if (!relay) return RouteStep::kDecide;
      if (!f.owned_elsewhere) return RouteStep::kHandOver;
      return f.handed_over ? toOwner(f) : RouteStep::kDecide;
    case SlotMode::kOpen:
      break;
  }
  if (!f.owned_elsewhere) return RouteStep::kDecide;
  // Handed over a moment ago: the new owner has the state (or it is on the way there).
  if (f.handed_over && relay) return toOwner(f);
  return RouteStep::kDecideStandIn;
}

}  // namespace

RouteStep routeStep(const RouteFacts& f) {
  if (f.hops > kMaxHops) return pastLimit(f);
  switch (f.mode) {
    case SlotMode::kParked:  // its state is on the way here, unless the ring sends it elsewhere
      return f.forwarder && f.owned_elsewhere && f.hops < kMaxHops ? toOwner(f) : RouteStep::kPark;
    case SlotMode::kClaimed:  // read from the snapshot store as a stand-in: decided here
      return RouteStep::kDecide;
    case SlotMode::kMoved:  // drained from here: the runner-up decides what this node owned
      if (!f.forwarder) return RouteStep::kPark;
      return f.owned_elsewhere ? toOwner(f) : RouteStep::kHandOver;
    case SlotMode::kProxy:  // gained here, still decided by the member it came from
      return f.forwarder ? RouteStep::kHandOver : RouteStep::kPark;
    case SlotMode::kOpen:
      break;
  }
  if (!f.forwarder || !f.owned_elsewhere) return RouteStep::kDecide;
  // At the limit, a slot this node does not own goes to its owner by this ring, once more and
  // past the limit, where it is decided: a node that handed the slot over, or a node that a
  // newcomer with a partial view took for the previous owner, never decides it. Without slot
  // ownership (no gate) the last receiver decides; a failed stand-in check was not received at
  // the limit, its hops were raised there: it goes to its owner, or its stand-in fails it over.
  if (f.hops < kMaxHops || f.gate || f.stand_in) return toOwner(f);
  return RouteStep::kDecide;
}

std::string_view nameOf(RouteStep s) {
  switch (s) {
    case RouteStep::kDecide:
      return "decide";
    case RouteStep::kDecideStandIn:
      return "decide_stand_in";
    case RouteStep::kPark:
      return "park";
    case RouteStep::kOwner:
      return "owner";
    case RouteStep::kStandIn:
      return "stand_in";
    case RouteStep::kHandOver:
      return "hand_over";
  }
  return "decide";
}

}  // namespace throttlex
