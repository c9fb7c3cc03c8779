// The decision functions against the reference models, plus the edge cases users run into.
#include <doctest/doctest.h>

#include <memory>
#include <random>

#include "limiter/state.h"
#include "tests/unit/reference_models.h"

using namespace throttlex;
using namespace std::chrono_literals;
using throttlex::testing::ReferenceModel;

namespace {

const Time kStart = Time(Duration(1'700'000'000'123'456'789));
// The algorithms that count units per period; concurrency limits have lease_test.cc.
constexpr int kRateAlgorithms = static_cast<int>(Algorithm::kGcra);

Limit mustMake(Algorithm a, std::uint64_t limit, Duration period, std::uint64_t burst = 0) {
  auto l = Limit::make({a, limit, period, burst});
  REQUIRE_MESSAGE(l.ok(), (l.ok() ? "" : l.error().message));
  return *l;
}

std::unique_ptr<ReferenceModel> modelFor(const Limit& l) {
  switch (l.algorithm()) {
    case Algorithm::kTokenBucket:
      return std::make_unique<throttlex::testing::TokenBucketModel>(l);
    case Algorithm::kLeakyBucket:
      return std::make_unique<throttlex::testing::LeakyBucketModel>(l);
    case Algorithm::kGcra:
      return std::make_unique<throttlex::testing::GcraModel>(l);
    case Algorithm::kFixedWindow:
      return std::make_unique<throttlex::testing::FixedWindowModel>(l);
    case Algorithm::kSlidingWindow:
      return std::make_unique<throttlex::testing::SlidingWindowModel>(l);
    case Algorithm::kConcurrency:
      break;
  }
  return nullptr;
}

std::string show(const Decision& d) {
  return "{allowed=" + std::to_string(d.allowed) + " remaining=" + std::to_string(d.remaining) +
         " reset=" + std::to_string(d.reset_after.count()) +
         " retry=" + std::to_string(d.retry_after.count()) + "}";
}

// A random limit in one of several regimes: tiny limits with short periods (lots of refills and
// window changes), realistic API limits, and huge limits / periods near the accepted bounds.
Limit randomLimit(std::mt19937_64& rng, Algorithm a) {
  const int regime = static_cast<int>(rng() % 3);
  std::uint64_t limit = 0;
  std::int64_t period_ms = 0;
  if (regime == 0) {
    limit = 1 + rng() % 10;
    period_ms = 1 + static_cast<std::int64_t>(rng() % 50);
  } else if (regime == 1) {
    limit = 1 + rng() % 5000;
    period_ms = 1 + static_cast<std::int64_t>(rng() % 3'600'000);
  } else {
    limit = 1 + rng() % kMaxLimit;
    period_ms = 1 + static_cast<std::int64_t>(rng() % (kMaxPeriod / 1ms));
  }
  std::uint64_t burst = 0;
  if (isBucketAlgorithm(a) && rng() % 2 == 0) {
    // Any burst whose refill time stays within the 10-year horizon.
    const auto max_burst = static_cast<std::uint64_t>(std::min<__int128>(
        kMaxLimit,
        static_cast<__int128>(kMaxRefillTime.count()) * limit / (period_ms * 1'000'000)));
    burst = 1 + rng() % std::max<std::uint64_t>(1, std::min<std::uint64_t>(max_burst, 3 * limit));
  }
  return mustMake(a, limit, std::chrono::milliseconds(period_ms), burst);
}

std::uint64_t randomCost(std::mt19937_64& rng, const Limit& l) {
  switch (rng() % 10) {
    case 0:
      return 0;  // read only
    case 1:
      return 1 + rng() % (l.burst() + 2);  // anything up to just above capacity
    case 2:
      return 1 + rng() % 3;
    default:
      return 1;
  }
}

std::int64_t randomStep(std::mt19937_64& rng, const Limit& l) {
  const std::int64_t P = l.periodNs();
  // About two emission intervals: the regime where decisions flip between allowed and denied.
  const auto interval = static_cast<std::uint64_t>(std::max<std::int64_t>(
      1, P / static_cast<std::int64_t>(std::max<std::uint64_t>(1, l.limit())) * 2));
  switch (rng() % 12) {
    case 0:
      return 0;  // same instant
    case 1:
      return static_cast<std::int64_t>(rng() % 1000);  // ns apart
    case 2:
      return static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(3 * P));  // idle gap
    case 3:
      return P - static_cast<std::int64_t>(rng() % 3);  // near a window boundary
    default:
      return static_cast<std::int64_t>(rng() % interval);
  }
}

void runAgainstModel(Algorithm a, std::uint64_t seed, int scenarios, int steps) {
  std::mt19937_64 rng(seed);
  for (int s = 0; s < scenarios; ++s) {
    const Limit limit = randomLimit(rng, a);
    auto model = modelFor(limit);
    State state;
    Time now = kStart + Duration(static_cast<std::int64_t>(rng() % 1'000'000'000'000));
    for (int i = 0; i < steps; ++i) {
      now += Duration(randomStep(rng, limit));
      const std::uint64_t cost = randomCost(rng, limit);
      const Decision got = decide(limit, state, cost, now);
      const Decision want = model->request(cost, now.time_since_epoch().count());
      if (got != want) {
        FAIL("scenario " << s << " step " << i << " limit " << limit.describe() << " cost " << cost
                         << " at " << now.time_since_epoch().count() << ": got " << show(got)
                         << " want " << show(want));
      }
    }
  }
}

}  // namespace

TEST_CASE("every algorithm agrees exactly with its reference model over random sequences") {
  // Random costs, random time steps, bursts, idle gaps, limits from 1 to 2^40 and periods from 1ms
  // to a year; every field of every decision must match.
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const auto algo = static_cast<Algorithm>(a);
    CAPTURE(algorithmName(algo));
    runAgainstModel(algo, 0xC0FFEE + static_cast<std::uint64_t>(a), 300, 400);
  }
}

TEST_CASE("token bucket, leaky bucket and GCRA make the same decisions for the same limit") {
  std::mt19937_64 rng(7);
  for (int s = 0; s < 200; ++s) {
    const Limit tb = randomLimit(rng, Algorithm::kTokenBucket);
    const Limit lb = mustMake(Algorithm::kLeakyBucket, tb.limit(), tb.period(), tb.burst());
    const Limit gc = mustMake(Algorithm::kGcra, tb.limit(), tb.period(), tb.burst());
    State s1, s2, s3;
    Time now = kStart;
    for (int i = 0; i < 200; ++i) {
      now += Duration(randomStep(rng, tb));
      const std::uint64_t cost = randomCost(rng, tb);
      const Decision d1 = decide(tb, s1, cost, now);
      REQUIRE(d1 == decide(lb, s2, cost, now));
      REQUIRE(d1 == decide(gc, s3, cost, now));
    }
  }
}

TEST_CASE("a limit of 100 per minute admits exactly 100 of 150 requests at once") {
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const Limit l = mustMake(static_cast<Algorithm>(a), 100, 60s);
    State s;
    int allowed = 0;
    // Aligned to a window start, so the window algorithms see one window.
    const Time t0 = Time(std::chrono::duration_cast<Duration>(std::chrono::minutes(28'333'333)));
    for (int i = 0; i < 150; ++i) allowed += decide(l, s, 1, t0).allowed ? 1 : 0;
    CHECK_MESSAGE(allowed == 100, algorithmName(l.algorithm()));
  }
}

TEST_CASE("a denied request consumes nothing") {
  const Limit l = mustMake(Algorithm::kTokenBucket, 10, 1s);
  State s;
  CHECK(decide(l, s, 8, kStart).allowed);
  const State before = s;
  const Decision d = decide(l, s, 5, kStart);
  CHECK_FALSE(d.allowed);
  CHECK(d.remaining == 2);
  CHECK(s == before);
  CHECK(decide(l, s, 2, kStart).allowed);
}

TEST_CASE("a cost of 0 reads the state without consuming") {
  const Limit l = mustMake(Algorithm::kSlidingWindow, 3, 1s);
  State s;
  for (int i = 0; i < 5; ++i) {
    const Decision d = decide(l, s, 0, kStart);
    CHECK(d.allowed);
    CHECK(d.remaining == 3);
  }
  CHECK(s.empty());
  for (int i = 0; i < 3; ++i) CHECK(decide(l, s, 1, kStart).allowed);
  const Decision d = decide(l, s, 0, kStart);
  CHECK_FALSE(d.allowed);
  CHECK(d.remaining == 0);
  CHECK(d.retry_after > Duration(0));
}

TEST_CASE("a refund gives units back: spend 10 of 10, refund 4 -> 4 left; refund 100 -> full") {
  // Aligned to a window start, so the window algorithms see one window.
  const Time t0 = Time(std::chrono::duration_cast<Duration>(std::chrono::minutes(28'333'333)));
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const Limit l = mustMake(static_cast<Algorithm>(a), 10, 60s);
    INFO(algorithmName(l.algorithm()));
    State s;
    CHECK(decide(l, s, 10, t0).allowed);
    CHECK_FALSE(decide(l, s, 1, t0).allowed);
    Decision d = refund(l, s, 4, t0);
    CHECK(d.allowed);
    CHECK(d.remaining == 4);
    CHECK(decide(l, s, 0, t0).remaining == 4);  // a read sees what the refund left
    CHECK(decide(l, s, 4, t0).allowed);
    CHECK_FALSE(decide(l, s, 1, t0).allowed);
    d = refund(l, s, 100, t0);  // capped: never more than the limit
    CHECK(d.remaining == 10);
    CHECK(d.reset_after == Duration(0));
    CHECK(decide(l, s, 10, t0).allowed);
    CHECK_FALSE(decide(l, s, 1, t0).allowed);
  }
}

TEST_CASE("a refund of a key with no state keeps none, and a window's refund stays in its window") {
  const Limit fixed = mustMake(Algorithm::kFixedWindow, 5, 1s);
  State s;
  CHECK(refund(fixed, s, 3, kStart).remaining == 5);
  CHECK(s.empty());
  // Units of a window that has ended are back already: a refund after it gives nothing extra.
  const Time w0 = Time(std::chrono::duration_cast<Duration>(std::chrono::seconds(1'700'000'000)));
  CHECK(decide(fixed, s, 5, w0).allowed);
  const Time w1 = w0 + 1s;
  CHECK(decide(fixed, s, 5, w1).allowed);
  CHECK(refund(fixed, s, 5, w1 + 1s).remaining == 5);
  CHECK(decide(fixed, s, 5, w1 + 1s).allowed);
  CHECK_FALSE(decide(fixed, s, 1, w1 + 1s).allowed);
  // Sliding: units spent at the end of one window and refunded early in the next come off the
  // previous window's count, which still weighs on the estimate.
  const Limit sliding = mustMake(Algorithm::kSlidingWindow, 10, 1s);
  State t;
  CHECK(decide(sliding, t, 10, w0 + 900ms).allowed);
  CHECK(decide(sliding, t, 0, w1).remaining == 0);  // prev 10 at full weight
  CHECK(refund(sliding, t, 10, w1).remaining == 10);
  CHECK(decide(sliding, t, 10, w1).allowed);
}

TEST_CASE("a cost above the capacity is denied with retry_after 'never'") {
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const Limit l = mustMake(static_cast<Algorithm>(a), 10, 1s);
    State s;
    const Decision d = decide(l, s, 11, kStart);
    CHECK_FALSE(d.allowed);
    CHECK(d.retry_after == kRetryNever);
    CHECK(d.remaining == 10);
    CHECK(s.empty());
  }
}

TEST_CASE("a limit of 0 denies everything and stores nothing") {
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const Limit l = mustMake(static_cast<Algorithm>(a), 0, 1s);
    State s;
    for (std::uint64_t cost : {0u, 1u, 5u}) {
      const Decision d = decide(l, s, cost, kStart);
      CHECK_FALSE(d.allowed);
      CHECK(d.retry_after == kRetryNever);
    }
    CHECK(s.empty());
  }
}

TEST_CASE("the largest limits and periods do not overflow") {
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const auto algo = static_cast<Algorithm>(a);
    CAPTURE(algorithmName(algo));
    const Limit l = mustMake(algo, kMaxLimit, kMaxPeriod);
    State s;
    Decision d = decide(l, s, kMaxCost, kStart);
    CHECK(d.allowed);
    CHECK(d.remaining == 0);
    d = decide(l, s, 1, kStart + 1ns);
    CHECK_FALSE(d.allowed);
    CHECK(d.retry_after > Duration(0));
    CHECK(d.retry_after <= kMaxPeriod * 2);
    // A year later everything is available again.
    d = decide(l, s, 0, kStart + kMaxPeriod * 2);
    CHECK(d.remaining == kMaxLimit);
  }
}

TEST_CASE("1ms periods refill or roll over after exactly 1ms") {
  const Limit tb = mustMake(Algorithm::kTokenBucket, 1, 1ms);
  State s;
  CHECK(decide(tb, s, 1, kStart).allowed);
  Decision d = decide(tb, s, 1, kStart + 999'999ns);
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_after == 1ns);
  CHECK(decide(tb, s, 1, kStart + 1ms).allowed);

  const Limit fw = mustMake(Algorithm::kFixedWindow, 1, 1ms);
  const Time aligned = Time(std::chrono::milliseconds(1'700'000'000'000));
  State f;
  CHECK(decide(fw, f, 1, aligned + 500us).allowed);
  d = decide(fw, f, 1, aligned + 999'999ns);
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_after == 1ns);
  CHECK(decide(fw, f, 1, aligned + 1ms).allowed);
}

TEST_CASE("a rate that is not a whole number of ns per unit does not drift") {
  // 3 per second: 333,333,333.33 ns per token. Checked every 1/12 s, after 3,000 seconds exactly
  // 9,000 tokens have been granted on top of the initial burst of 3, not one more or less. (The
  // burst of 3 lets the bucket bank a token between checks, so no refill time is lost.)
  const Limit l = mustMake(Algorithm::kTokenBucket, 3, 1s, 3);
  State s;
  int granted = 0;
  Time now = kStart;
  for (int i = 0; i <= 3 * 3000 * 4; ++i) {  // the last check lands at exactly 3000 s
    granted += decide(l, s, 1, now).allowed ? 1 : 0;
    now += 83'333'333ns + Duration(i % 3 == 0 ? 1 : 0);  // 1/12 s, exactly on average
  }
  CHECK(granted == 3 + 9000);
}

TEST_CASE("time going backwards never grants extra capacity") {
  std::mt19937_64 rng(99);
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const auto algo = static_cast<Algorithm>(a);
    CAPTURE(algorithmName(algo));
    for (int sc = 0; sc < 100; ++sc) {
      const Limit l = randomLimit(rng, algo);
      State s;
      Time latest = kStart;
      Time now = kStart;
      for (int i = 0; i < 100; ++i) {
        if (rng() % 4 == 0) {
          now -= Duration(
              static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(2 * l.periodNs())));
        } else {
          now = latest + Duration(randomStep(rng, l));
        }
        latest = std::max(latest, now);
        const std::uint64_t cost = randomCost(rng, l);
        // What the same state grants at the latest time seen: going back must not beat it.
        State at_latest = s, peek_now = s, peek_latest = s;
        CHECK(decide(l, peek_now, 0, now).remaining <= decide(l, peek_latest, 0, latest).remaining);
        const Decision ref = decide(l, at_latest, cost, latest);
        const Decision got = decide(l, s, cost, now);
        if (got.allowed) CHECK(ref.allowed);
      }
    }
  }
}

TEST_CASE("state of one algorithm is never read as another") {
  const Limit fw = mustMake(Algorithm::kFixedWindow, 5, 1s);
  const Limit tb = mustMake(Algorithm::kTokenBucket, 5, 1s);
  State s;
  for (int i = 0; i < 5; ++i) CHECK(decide(fw, s, 1, kStart).allowed);
  const Decision d = decide(tb, s, 1, kStart);
  CHECK(d.allowed);
  CHECK(d.remaining == 4);
  CHECK(s.tag() == Algorithm::kTokenBucket);
}

TEST_CASE("lowering a limit keeps the consumed state and grants nothing extra") {
  const Limit big = mustMake(Algorithm::kTokenBucket, 7, 1s);
  const Limit small = mustMake(Algorithm::kTokenBucket, 3, 1s);
  State s;
  for (int i = 0; i < 7; ++i) CHECK(decide(big, s, 1, kStart).allowed);
  // Bucket empty; with the new limit it refills at 3/s and is still empty now.
  CHECK_FALSE(decide(small, s, 1, kStart).allowed);
  CHECK(decide(small, s, 1, kStart + 334ms).allowed);
}

TEST_CASE("lowering a window limit below what was already counted denies and reports 0 left") {
  for (Algorithm a : {Algorithm::kFixedWindow, Algorithm::kSlidingWindow}) {
    CAPTURE(algorithmName(a));
    const Limit big = mustMake(a, 100, 60s);
    const Limit small = mustMake(a, 10, 60s);
    const Time aligned = Time(std::chrono::minutes(28'333'333));
    State s;
    for (int i = 0; i < 50; ++i) REQUIRE(decide(big, s, 1, aligned).allowed);
    const Decision d = decide(small, s, 1, aligned + 1s);
    CHECK_FALSE(d.allowed);
    CHECK(d.remaining == 0);
    CHECK(d.retry_after > Duration(0));
    CHECK(decide(small, s, 0, aligned + 1s).remaining == 0);
  }
}

TEST_CASE("the expiry in the state bounds when it carries information") {
  std::mt19937_64 rng(5);
  for (int a = 1; a <= kRateAlgorithms; ++a) {
    const auto algo = static_cast<Algorithm>(a);
    for (int sc = 0; sc < 200; ++sc) {
      const Limit l = randomLimit(rng, algo);
      State s;
      Time now = kStart;
      for (int i = 0; i < 20; ++i) {
        now += Duration(randomStep(rng, l));
        decide(l, s, randomCost(rng, l), now);
      }
      if (s.empty()) continue;
      // Once expired, a read sees a neutral state: everything available.
      const Time after = Time(std::chrono::milliseconds(s.expiryMs() + 1));
      CHECK(s.expiredAt(s.expiryMs() + 1));
      State copy = s;
      const Decision d = decide(l, copy, 0, std::max(after, now));
      CHECK(d.remaining == (isBucketAlgorithm(algo) ? l.burst() : l.limit()));
      CHECK(d.reset_after == Duration(0));
    }
  }
}

TEST_CASE("view decodes what decide stored") {
  const Limit sw = mustMake(Algorithm::kSlidingWindow, kMaxLimit, 1s);
  const Time aligned = Time(std::chrono::seconds(1'700'000'000));
  State s;
  CHECK(decide(sw, s, kMaxLimit - 5, aligned).allowed);
  CHECK(decide(sw, s, 3, aligned + 1s).allowed);
  const StateView v = view(s);
  CHECK(v.algorithm == Algorithm::kSlidingWindow);
  CHECK(v.prev_count == kMaxLimit - 5);
  CHECK(v.count == 3);
  CHECK(v.expiry_ms == (aligned + 3s).time_since_epoch() / 1ms);
}

TEST_CASE("restored states are checked: what decide() writes is plausible, forgeries are not") {
  const std::int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(kStart.time_since_epoch()).count();
  for (Algorithm a : {Algorithm::kTokenBucket, Algorithm::kLeakyBucket, Algorithm::kGcra,
                      Algorithm::kFixedWindow, Algorithm::kSlidingWindow}) {
    State s;
    const bool bucket = a != Algorithm::kFixedWindow && a != Algorithm::kSlidingWindow;
    // Near the longest a real state can reach: a year-long period, a bucket of 10 years' refill.
    const Limit l = mustMake(a, 10, kMaxPeriod, bucket ? 100 : 0);
    REQUIRE(decide(l, s, bucket ? 100 : 10, kStart).allowed);
    CHECK(plausibleAt(s, now_ms));
  }
  CHECK_FALSE(plausibleAt(State{}, now_ms));
  State forged;
  forged.w0 = (std::uint64_t{7} << 61) | (static_cast<std::uint64_t>(now_ms) << 18);  // no tag 7
  CHECK_FALSE(plausibleAt(forged, now_ms));
  // A fixed window whose end is 3 years away: no period is that long.
  const auto three_years_ms = std::int64_t{3} * 365 * 24 * 3600 * 1000;
  forged.w0 = (std::uint64_t{static_cast<std::uint8_t>(Algorithm::kFixedWindow)} << 61) |
              (static_cast<std::uint64_t>(now_ms + three_years_ms) << 18);
  forged.w1 = 5;
  CHECK_FALSE(plausibleAt(forged, now_ms));
}
