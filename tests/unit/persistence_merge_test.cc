// moreConsumed(): merging two states of one key never grants a unit twice. Checked by playing the
// same limit forward from each input and from the merge: the merge admits no more than either.
#include <doctest/doctest.h>

#include "limiter/state.h"
#include "persistence/merge.h"

using namespace throttlex;
using namespace throttlex::persistence;
using namespace std::chrono_literals;

namespace {

const Time kStart = Time(Duration(1'700'000'000'123'456'789));

Limit mustMake(Algorithm a, std::uint64_t limit, Duration period) {
  auto l = Limit::make({a, limit, period, 0});
  REQUIRE(l.ok());
  return *l;
}

State consume(const Limit& limit, State s, int n, Time at) {
  for (int i = 0; i < n; ++i) decide(limit, s, 1, at);
  return s;
}

// Units a state still admits at `at` (cost-0 read: remaining).
std::uint64_t remaining(const Limit& limit, State s, Time at) {
  return decide(limit, s, 0, at).remaining;
}

}  // namespace

TEST_CASE("an empty state loses to any other") {
  const Limit l = mustMake(Algorithm::kTokenBucket, 10, 1s);
  const State s = consume(l, {}, 3, kStart);
  CHECK(moreConsumed(s, {}) == s);
  CHECK(moreConsumed({}, s) == s);
}

TEST_CASE("bucket algorithms keep the state with the later arrival time") {
  for (Algorithm a : {Algorithm::kTokenBucket, Algorithm::kLeakyBucket, Algorithm::kGcra}) {
    CAPTURE(static_cast<int>(a));
    const Limit l = mustMake(a, 7, 1s);  // 1/7 s per unit: fractions of a ns occur
    const State three = consume(l, {}, 3, kStart);
    const State five = consume(l, {}, 5, kStart + 10ms);
    CHECK(moreConsumed(three, five) == five);
    CHECK(moreConsumed(five, three) == five);
    // Differ only in the sub-ms part.
    const State a1 = consume(l, {}, 1, kStart);
    const State a2 = consume(l, {}, 1, kStart + 1ns);
    CHECK(moreConsumed(a1, a2) == a2);
    const Time later = kStart + 50ms;
    CHECK(remaining(l, moreConsumed(three, five), later) ==
          std::min(remaining(l, three, later), remaining(l, five, later)));
  }
}

TEST_CASE("fixed window: the later window, then the larger count") {
  const Limit l = mustMake(Algorithm::kFixedWindow, 10, 1s);
  const State early = consume(l, {}, 8, kStart);
  const State late = consume(l, {}, 2, kStart + 1s);
  CHECK(moreConsumed(early, late) == late);
  const State same = consume(l, {}, 5, kStart);
  CHECK(moreConsumed(early, same) == early);
  CHECK(moreConsumed(same, early) == early);
}

TEST_CASE(
    "sliding window: same window takes the larger counts; later window carries the earlier count") {
  const Limit l = mustMake(Algorithm::kSlidingWindow, 10, 1s);
  const State a = consume(l, {}, 4, kStart);
  const State b = consume(l, {}, 6, kStart);
  CHECK(moreConsumed(a, b) == b);

  // Node A saw 6 in window k; node B only saw 1 in window k+1 (and nothing of window k).
  const State prev_window = consume(l, {}, 6, kStart);
  const State next_window = consume(l, {}, 1, kStart + 1s);
  const State merged = moreConsumed(prev_window, next_window);
  CHECK(view(merged).count == 1);
  CHECK(view(merged).prev_count == 6);
  CHECK(view(merged).expiry_ms == view(next_window).expiry_ms);
  const Time at = kStart + 1s + 100ms;
  CHECK(remaining(l, merged, at) <= remaining(l, next_window, at));
  CHECK(remaining(l, merged, at) < remaining(l, next_window, at));  // B alone would over-admit
}
