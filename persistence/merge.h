// Merging two states of one key (handoff meets snapshot, two snapshots of a moved slot): the result
// is at least as consumed as each input, so merging never grants a unit twice.
//
// Limit-agnostic, because a State alone says how far it is from neutral in its own units:
//  - bucket algorithms (token, leaky, GCRA): the later "theoretical arrival time" (TAT) is the more
//    consumed state; TAT is (expiry ms, sub-ms ns, fraction over the limit), compared in that
//    order. The fraction compares exactly when both states were written under the same limit; if
//    the rule's limit changed in between, the order can be wrong by less than 1 ns of refill.
//  - fixed window: the later window is the current one (an earlier window has ended, or will never
//    be consulted again); in the same window the larger count wins.
//  - sliding window: the later window wins, and its previous-window count is raised to the other
//    state's current count when that one is exactly the window before; in the same window the
//    result takes the larger current and the larger previous count. This is the only case where the
//    result can be a state that neither input was.
// Different algorithms cannot occur for one key (the algorithm is part of KeyHash); if they do
// (corrupt data), the state with the later expiry wins. An empty state loses to any other.
#pragma once

#include "limiter/state.h"

namespace throttlex::persistence {

State moreConsumed(const State& a, const State& b);

}  // namespace throttlex::persistence
