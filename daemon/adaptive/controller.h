// The controller side of adaptive rules (docs/adaptive.md): for each adaptive rule the ring gives
// to this node (adaptiveSlot()), the nodes' digests are merged over one interval, and at the end
// of the interval the rule's control law moves the effective limit. Every node learns the limit in
// the answer to its next digest (daemon/adaptive/exchange.h).
//
// Intervals are aligned to wall-clock multiples of the rule's interval, and a controller steps half
// an interval after each boundary, so that the digests of one interval (sent 10% and 60% into
// each interval by every node) are all merged before the step that reads them.
//
// Thread-safe: absorb() comes from RPC threads and the exchange thread, step() from the exchange
// thread.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "daemon/service/limiter_service.h"
#include "limiter/clock.h"
#include "limiter/mutex.h"

namespace throttlex {

// The ring slot that places a rule's controller (slotOf in limiter/key.h, in a namespace of its
// own so it does not follow any key of the rule).
std::uint32_t adaptiveSlot(std::string_view rule);

// Where `interval`-long periods aligned to the epoch put the next point at `phase` (0..1) of an
// interval strictly after `now`.
Time nextAligned(Time now, Duration interval, double phase);

struct RuleDigest {
  std::string rule;
  SignalDigest digest;
  std::uint64_t known_limit = 0;  // the effective limit the sender applies; 0: none
};

struct RuleVerdict {
  std::string rule;
  bool controlled = false;  // false: not an adaptive rule here (unknown, or not adaptive)
  AdaptiveVerdict verdict;
};

class AdaptiveController {
 public:
  AdaptiveController(LimiterService& service, const Clock& clock);

  // Merges digests into the rules' current intervals; answers each rule's effective limit. A rule
  // this node has not controlled so far starts from the limit its first digest says the nodes
  // apply (an owner change keeps the limit), else from the rule's own limit.
  std::vector<RuleVerdict> absorb(std::span<const RuleDigest> digests);

  // Steps every rule whose interval ended; forgets rules it has not heard of for three intervals
  // (another node controls them now) and rules no longer adaptive.
  void step();

  std::size_t controlled() const;  // rules with state here
  bool controls(std::string_view rule) const;
  std::optional<Time> nextStep() const;  // the earliest step due; none without rules here

 private:
  struct State {
    AdaptiveVerdict verdict;
    LawMemory memory;
    bool warm = false;  // a full interval merged: the first step only starts the interval count
    SignalDigest merged;
    Time next_step{};
    Time heard{};
  };

  LimiterService& service_;
  const Clock& clock_;
  mutable Mutex mu_;
  std::map<std::string, State, std::less<>> states_ GUARDED_BY(mu_);
};

}  // namespace throttlex
