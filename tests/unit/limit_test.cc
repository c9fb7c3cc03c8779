#include <doctest/doctest.h>

#include "limiter/limit.h"

using namespace throttlex;
using namespace std::chrono_literals;

TEST_CASE("algorithm names round-trip and unknown names are rejected with the list") {
  for (int a = 1; a <= kAlgorithmCount; ++a) {
    const auto algo = static_cast<Algorithm>(a);
    auto parsed = parseAlgorithm(algorithmName(algo));
    REQUIRE(parsed.ok());
    CHECK(*parsed == algo);
  }
  auto bad = parseAlgorithm("token-bucket");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == ErrorCode::kInvalidArgument);
  CHECK(bad.error().message.find("token_bucket") != std::string::npos);
}

TEST_CASE("burst defaults to the limit") {
  auto l = Limit::make({Algorithm::kTokenBucket, 100, 60s});
  REQUIRE(l.ok());
  CHECK(l->burst() == 100);
  CHECK(l->describe() == "100/1m token_bucket burst=100");
}

TEST_CASE("out-of-range limits are rejected with a message, not clamped") {
  struct Case {
    LimitSpec spec;
    const char* needle;
  };
  const Case cases[] = {
      {{Algorithm::kTokenBucket, kMaxLimit + 1, 1s}, "limit"},
      {{Algorithm::kTokenBucket, 10, 0ms}, "period"},
      {{Algorithm::kTokenBucket, 10, 999us}, "period"},
      {{Algorithm::kTokenBucket, 10, 1500us}, "whole number of milliseconds"},
      {{Algorithm::kTokenBucket, 10, kMaxPeriod + 1ms}, "period"},
      {{Algorithm::kTokenBucket, 10, 1s, kMaxLimit + 1}, "burst"},
      {{Algorithm::kFixedWindow, 10, 1s, 20}, "burst applies only"},
      {{Algorithm::kSlidingWindow, 10, 1s, 5}, "burst applies only"},
      {{Algorithm::kTokenBucket, 0, 1s, 5}, "limit is 0"},
      {{Algorithm::kTokenBucket, 1, kMaxPeriod, 11}, "10 years"},
      {{static_cast<Algorithm>(0), 1, 1s}, "unknown algorithm"},
      {{static_cast<Algorithm>(9), 1, 1s}, "unknown algorithm"},
  };
  for (const Case& c : cases) {
    auto l = Limit::make(c.spec);
    REQUIRE_FALSE(l.ok());
    CHECK(l.error().code == ErrorCode::kInvalidArgument);
    CHECK_MESSAGE(l.error().message.find(c.needle) != std::string::npos, l.error().message);
  }
}

TEST_CASE("the bounds themselves are accepted") {
  CHECK(Limit::make({Algorithm::kTokenBucket, kMaxLimit, kMinPeriod}).ok());
  CHECK(Limit::make({Algorithm::kGcra, 1, kMaxPeriod, 10}).ok());
  CHECK(Limit::make({Algorithm::kSlidingWindow, kMaxLimit, kMaxPeriod}).ok());
  CHECK(Limit::make({Algorithm::kFixedWindow, 10, 1s, 10}).ok());  // burst == limit is harmless
  CHECK(Limit::make({Algorithm::kLeakyBucket, 0, 1s}).ok());       // 0 denies everything
}
