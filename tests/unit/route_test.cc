// routeStep (daemon/routing/route.h): the one routing decision, as a table of every case the
// Router and the forwarder loop meet, and the rules that hold for every input.
#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <string>

#include "daemon/routing/route.h"

using namespace throttlex;

namespace {

constexpr std::uint8_t kAt = kMaxHops;         // at the hop limit
constexpr std::uint8_t kPast = kMaxHops + 1;   // past it: from a node that did not decide it
constexpr std::uint8_t kLast = kMaxRelayHops;  // past every relay

using M = SlotMode;
using S = RouteStep;

struct Row {
  const char* what;
  std::uint8_t hops;
  SlotMode mode;
  bool gate, forwarder, elsewhere, handed_over, owner_down;
  RouteStep expect;
  bool stand_in = false;  // a stand-in check routed again
};

// gate: slot ownership tracked; fwd: can send; elsewhere: the ring's owner is another member;
// handed: this node handed the slot over a moment ago; down: the owner's breaker is open.
//  what                                                    hops  mode         gate   fwd elsewhere
//  handed down   expect
constexpr std::array kTable = {
    // A single node, or a key this node owns.
    Row{"one node: decided here", 0, M::kOpen, false, false, false, false, false, S::kDecide},
    Row{"owned here", 0, M::kOpen, true, true, false, false, false, S::kDecide},
    Row{"owned here, past the limit", kPast, M::kOpen, true, true, false, false, false, S::kDecide},
    // Owned elsewhere: to the owner, or its stand-in while the owner is down.
    Row{"owned elsewhere, entering", 0, M::kOpen, false, true, true, false, false, S::kOwner},
    Row{"owned elsewhere, owner down", 0, M::kOpen, false, true, true, false, true, S::kStandIn},
    Row{"owned elsewhere, one hop in", 1, M::kOpen, true, true, true, false, false, S::kOwner},
    Row{"no forwarder: decided here", 0, M::kOpen, true, false, true, false, false, S::kDecide},
    // At the limit: once more to the ring's owner with slot ownership, else the last receiver.
    Row{"at the limit, with a gate", kAt, M::kOpen, true, true, true, false, false, S::kOwner},
    Row{"at the limit, owner down", kAt, M::kOpen, true, true, true, false, true, S::kStandIn},
    Row{"at the limit, no gate", kAt, M::kOpen, false, true, true, false, false, S::kDecide},
    Row{"at the limit, no gate, stand-in failed", kAt, M::kOpen, false, true, true, false, false,
        S::kOwner, true},
    Row{"at the limit, stand-in failed, owner down", kAt, M::kOpen, false, true, true, false, true,
        S::kStandIn, true},
    Row{"past the limit, no gate", kPast, M::kOpen, false, true, true, false, false, S::kDecide},
    // Past the limit, owned elsewhere: a stand-in decision (its state read first) unless this
    // node handed the slot over a moment ago; then it follows the state, a bounded number of hops.
    Row{"past: stand-in for an owner elsewhere", kPast, M::kOpen, true, true, true, false, false,
        S::kDecideStandIn},
    Row{"past: handed over, to the new owner", kPast, M::kOpen, true, true, true, true, false,
        S::kOwner},
    Row{"past: handed over, new owner down", kPast, M::kOpen, true, true, true, true, true,
        S::kStandIn},
    Row{"past every relay: stand-in here", kLast, M::kOpen, true, true, true, true, false,
        S::kDecideStandIn},
    // Parked: the slot's state is on the way here.
    Row{"parked, owned here", 0, M::kParked, true, true, false, false, false, S::kPark},
    Row{"parked, the ring says elsewhere", 0, M::kParked, true, true, true, false, false,
        S::kOwner},
    Row{"parked, at the limit", kAt, M::kParked, true, true, true, false, false, S::kPark},
    Row{"parked, past the limit", kPast, M::kParked, true, true, true, false, false, S::kPark},
    Row{"parked, no forwarder", 0, M::kParked, true, false, true, false, false, S::kPark},
    // Claimed: read from the snapshot store as a stand-in; this node decides it.
    Row{"claimed", 0, M::kClaimed, true, true, true, false, false, S::kDecide},
    Row{"claimed, past the limit", kPast, M::kClaimed, true, true, true, false, false, S::kDecide},
    // Moved (drained from here): the runner-up decides what this node owned.
    Row{"moved, owned here", 0, M::kMoved, true, true, false, false, false, S::kHandOver},
    Row{"moved, the ring says elsewhere", 0, M::kMoved, true, true, true, false, false, S::kOwner},
    Row{"moved, no forwarder", 0, M::kMoved, true, false, false, false, false, S::kPark},
    Row{"moved, past the limit", kPast, M::kMoved, true, true, false, false, false, S::kHandOver},
    Row{"moved, past, handed to the owner", kPast, M::kMoved, true, true, true, true, false,
        S::kOwner},
    Row{"moved, past, owner not told", kPast, M::kMoved, true, true, true, false, false,
        S::kDecide},
    Row{"moved, past every relay", kLast, M::kMoved, true, true, false, false, false, S::kDecide},
    // Proxy (gained here, still decided by the member it came from).
    Row{"proxy", 0, M::kProxy, true, true, false, false, false, S::kHandOver},
    Row{"proxy, owner down elsewhere", 1, M::kProxy, true, true, true, false, true, S::kHandOver},
    Row{"proxy, no forwarder", 0, M::kProxy, true, false, false, false, false, S::kPark},
    Row{"proxy, past the limit", kPast, M::kProxy, true, true, false, false, false, S::kPark},
};

RouteFacts factsOf(const Row& r) {
  RouteFacts f;
  f.hops = r.hops;
  f.mode = r.mode;
  f.gate = r.gate;
  f.forwarder = r.forwarder;
  f.owned_elsewhere = r.elsewhere;
  f.handed_over = r.handed_over;
  f.owner_down = r.owner_down;
  f.stand_in = r.stand_in;
  return f;
}

// Every input: hops 0..kMaxRelayHops+1, each mode (modes other than open only with a gate).
template <typename F>
void forEveryInput(F&& f) {
  constexpr std::array kModes = {M::kOpen, M::kParked, M::kClaimed, M::kMoved, M::kProxy};
  for (std::uint8_t hops = 0; hops <= kMaxRelayHops + 1; ++hops) {
    for (SlotMode mode : kModes) {
      for (int bits = 0; bits < 64; ++bits) {
        RouteFacts x;
        x.hops = hops;
        x.mode = mode;
        x.gate = (bits & 1) != 0;
        x.forwarder = (bits & 2) != 0;
        x.owned_elsewhere = (bits & 4) != 0;
        x.handed_over = (bits & 8) != 0;
        x.owner_down = (bits & 16) != 0;
        x.stand_in = (bits & 32) != 0;
        if (!x.gate && mode != M::kOpen) continue;
        f(x);
      }
    }
  }
}

}  // namespace

TEST_CASE("every routing case of the table") {
  for (const Row& r : kTable) {
    CAPTURE(std::string(r.what));
    CHECK(nameOf(routeStep(factsOf(r))) == nameOf(r.expect));
  }
}

TEST_CASE("a check never loops: past every relay it is decided or waits where it is") {
  forEveryInput([](const RouteFacts& x) {
    if (x.hops < kMaxRelayHops) return;
    CAPTURE(static_cast<int>(x.hops));
    CAPTURE(static_cast<int>(x.mode));
    CHECK_FALSE(sendsOn(routeStep(x)));
  });
}

TEST_CASE("nothing is sent on without a forwarder, nor parked or read without a gate") {
  forEveryInput([](const RouteFacts& x) {
    const RouteStep s = routeStep(x);
    CAPTURE(static_cast<int>(x.hops));
    CAPTURE(static_cast<int>(x.mode));
    if (!x.forwarder) CHECK_FALSE(sendsOn(s));
    if (!x.gate) CHECK((s != S::kPark && s != S::kDecideStandIn));
  });
}

TEST_CASE("a down owner is never sent a check; an owner up is never stood in for") {
  forEveryInput([](const RouteFacts& x) {
    const RouteStep s = routeStep(x);
    CAPTURE(static_cast<int>(x.hops));
    CAPTURE(static_cast<int>(x.mode));
    if (x.owner_down) CHECK(s != S::kOwner);
    if (!x.owner_down || !x.owned_elsewhere) CHECK(s != S::kStandIn);
  });
}

TEST_CASE("a slot owned here and open is decided here at any hop") {
  forEveryInput([](const RouteFacts& x) {
    if (x.mode != M::kOpen || x.owned_elsewhere) return;
    CAPTURE(static_cast<int>(x.hops));
    CHECK(routeStep(x) == S::kDecide);
  });
}

TEST_CASE("before the limit, a key owned elsewhere in an open slot always leaves this node") {
  forEveryInput([](const RouteFacts& x) {
    if (x.mode != M::kOpen || !x.owned_elsewhere || !x.forwarder || x.hops >= kMaxHops) return;
    CHECK(sendsOn(routeStep(x)));
  });
}
