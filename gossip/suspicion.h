// Lifeguard's suspicion timer: it starts at a maximum and shrinks towards a minimum as other
// members independently confirm the suspicion (memberlist suspicion.go; Lifeguard paper §IV-B).
#pragma once

#include <set>
#include <string>

#include "limiter/clock.h"

namespace throttlex::gossip {

class Suspicion {
 public:
  // `expected_confirmations` (k): confirmations that bring the timeout down to `min`; 0 → min.
  Suspicion(Time start, Duration min, Duration max, int expected_confirmations,
            const std::string& first_from);

  // Records a confirmation from a distinct member; true if it was new (worth re-broadcasting).
  bool confirm(const std::string& from);
  Time deadline() const { return deadline_; }

 private:
  void recompute();

  Time start_;
  Duration min_;
  Duration max_;
  int k_;
  std::set<std::string> confirmed_by_;  // includes the first suspecter
  Time deadline_;
};

// The minimum suspicion timeout: mult * max(1, log10(n)) * period.
Duration suspicionTimeout(int mult, std::size_t cluster_size, Duration period);

}  // namespace throttlex::gossip
