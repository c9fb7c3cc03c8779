// Limits: which algorithm, how many units per period, how large a burst. Validated once, then
// immutable and cheap to pass around; the hot path never re-validates a Limit.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "limiter/clock.h"
#include "limiter/result.h"

namespace throttlex {

// Wire values: part of the RPC protocol and of snapshots. ONLY APPEND. 0 means "no state".
enum class Algorithm : std::uint8_t {
  kTokenBucket = 1,
  kLeakyBucket = 2,
  kFixedWindow = 3,
  kSlidingWindow = 4,
  kGcra = 5,
  kConcurrency = 6,  // leases held at once, not units per period (limiter/lease.h)
};
inline constexpr int kAlgorithmCount = 6;

std::string_view algorithmName(Algorithm a);
// Accepts the names algorithmName() returns ("token_bucket", "leaky_bucket", "fixed_window",
// "sliding_window", "gcra", "concurrency").
Result<Algorithm> parseAlgorithm(std::string_view name);
bool isBucketAlgorithm(Algorithm a);  // token bucket, leaky bucket, GCRA

// Accepted ranges (docs/algorithms.md, "Ranges"). Anything outside is rejected, never clamped.
inline constexpr std::uint64_t kMaxLimit = std::uint64_t{1} << 40;
inline constexpr std::uint64_t kMaxCost = kMaxLimit;
inline constexpr Duration kMinPeriod = std::chrono::milliseconds(1);
inline constexpr Duration kMaxPeriod = std::chrono::hours(24 * 365);
// A bucket must refill from empty to full (burst * period / limit) within this horizon; it bounds
// how far ahead of now any stored time can lie.
inline constexpr Duration kMaxRefillTime = std::chrono::hours(24 * 365 * 10);

struct LimitSpec {
  Algorithm algorithm = Algorithm::kTokenBucket;
  std::uint64_t limit = 0;  // units per period (concurrency: held at once); 0 denies everything
  Duration period{0};       // a whole number of milliseconds in [kMinPeriod, kMaxPeriod];
                            // concurrency: a lease's time to live
  std::uint64_t burst = 0;  // bucket capacity for the bucket algorithms; 0 = same as limit
};

class Limit {
 public:
  static Result<Limit> make(const LimitSpec& spec);

  Algorithm algorithm() const { return algorithm_; }
  std::uint64_t limit() const { return limit_; }
  // Capacity: the most units admitted back to back after a long idle period.
  std::uint64_t burst() const { return burst_; }
  Duration period() const { return Duration(period_ns_); }
  std::int64_t periodNs() const { return period_ns_; }
  // burst * period in ns, the bucket's capacity in "scaled time" (see algorithms.cc).
  unsigned __int128 capacityScaled() const { return capacity_scaled_; }

  std::string describe() const;  // "100/60s token_bucket burst=100", for logs and errors

  // The same limit with `limit` units per period (an adaptive rule's effective limit): a burst
  // equal to the limit follows it, a larger one keeps its ratio to the limit, so the refill time
  // stays as validated. `limit` is clamped to 1..kMaxLimit; no validation on this path.
  Limit withLimit(std::uint64_t limit) const;

 private:
  Limit() = default;
  Algorithm algorithm_ = Algorithm::kTokenBucket;
  std::uint64_t limit_ = 0;
  std::uint64_t burst_ = 0;
  std::int64_t period_ns_ = 0;
  unsigned __int128 capacity_scaled_ = 0;
};

}  // namespace throttlex
