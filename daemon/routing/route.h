// Where a check goes next: one pure function of what a node knows about the check's slot when it
// routes it. The Router asks it where a check enters (or arrives from a peer), the forwarder loop
// asks it again when it sends the check (the slot's mode or the ring may have changed since, or
// an owner failed); both act on its answer and nothing else decides a route.
//
// Hops: every node that passes a check on adds one. Up to kMaxHops the ring routes it; at
// kMaxHops a node with slot ownership (a SlotGate) still sends it once to the ring's owner, where
// it arrives past the limit; past the limit a check is decided where its slot's state is, and
// follows that state (a slot just handed over or moved) at most until kMaxRelayHops. Views of the
// ring disagree for a moment during membership changes: the bound means a check never loops.
// tests/unit/route_test.cc is the table of every case.
#pragma once

#include <cstdint>
#include <string_view>

#include "daemon/routing/slot_gate.h"

namespace throttlex {

// A node forwards a check on only while it has passed fewer nodes than this; the last receiver
// decides it wherever the ring says it belongs (views of the ring disagree for a moment: never
// loop). Checks sent to a stand-in carry the limit already, so the stand-in decides them itself.
inline constexpr std::uint8_t kMaxHops = 2;
// Past the limit, a check still follows its slot's state (a slot moved or just handed over) while
// it has passed fewer nodes than this.
inline constexpr std::uint8_t kMaxRelayHops = kMaxHops + 3;

// What the routing node knows about one check's slot.
struct RouteFacts {
  std::uint8_t hops = 0;            // nodes the check passed before this one
  SlotMode mode = SlotMode::kOpen;  // the slot's mode here (always open without a gate)
  bool gate = false;                // slot ownership is tracked here (a SlotGate)
  bool forwarder = true;            // this node can send checks to others
  bool owned_elsewhere = false;     // this node's ring gives the slot to another member
  bool handed_over = false;         // this node handed the slot over a moment ago
  bool owner_down = false;          // the owner's breaker is open (unknown where checks enter)
  // The forwarder sent it to the slot's stand-in already, with its hops raised to the limit (so
  // that the stand-in decides it), and routes it again because that failed.
  bool stand_in = false;
};

enum class RouteStep : std::uint8_t {
  kDecide,         // decided here
  kDecideStandIn,  // decided here for an owner elsewhere, once the slot's state is here
                   // (SlotGate::standInNeedsRecovery(): park it while it is read)
  kPark,           // waits here until the slot's state is here (SlotGate::park())
  kOwner,          // to the slot's owner by the ring
  kStandIn,        // its owner is down: to the slot's runner-up (Forwarder's standIn)
  kHandOver,       // to the member holding the slot's state: the runner-up of a moved slot, the
                   // member still deciding a proxied one
};

RouteStep routeStep(const RouteFacts& facts);

// Whether a step sends the check to another node (the forwarder's work).
inline bool sendsOn(RouteStep s) {
  return s == RouteStep::kOwner || s == RouteStep::kStandIn || s == RouteStep::kHandOver;
}

std::string_view nameOf(RouteStep s);

}  // namespace throttlex
