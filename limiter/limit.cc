#include "limiter/limit.h"

#include <algorithm>
#include <array>

#include "limiter/lease.h"
#include "limiter/period.h"

namespace throttlex {
namespace {

constexpr std::array<std::string_view, kAlgorithmCount + 1> kNames = {
    "", "token_bucket", "leaky_bucket", "fixed_window", "sliding_window", "gcra", "concurrency"};

}  // namespace

std::string_view algorithmName(Algorithm a) {
  const auto i = static_cast<std::size_t>(a);
  return i < kNames.size() ? kNames[i] : std::string_view("unknown");
}

Result<Algorithm> parseAlgorithm(std::string_view name) {
  for (std::size_t i = 1; i < kNames.size(); ++i) {
    if (kNames[i] == name) return static_cast<Algorithm>(i);
  }
  return invalidArgument("unknown algorithm '" + std::string(name) +
                         "' (expected token_bucket, leaky_bucket, fixed_window, sliding_window, "
                         "gcra or concurrency)");
}

bool isBucketAlgorithm(Algorithm a) {
  return a == Algorithm::kTokenBucket || a == Algorithm::kLeakyBucket || a == Algorithm::kGcra;
}

Result<Limit> Limit::make(const LimitSpec& spec) {
  const auto a = static_cast<int>(spec.algorithm);
  if (a < 1 || a > kAlgorithmCount) return invalidArgument("unknown algorithm");
  if (spec.limit > kMaxLimit) {
    return invalidArgument("limit " + std::to_string(spec.limit) + " is above the maximum 2^40");
  }
  if (spec.period < kMinPeriod || spec.period > kMaxPeriod) {
    return invalidArgument("period must be between 1ms and 365d");
  }
  if (spec.period % std::chrono::milliseconds(1) != Duration(0)) {
    return invalidArgument("period must be a whole number of milliseconds");
  }
  if (spec.burst > kMaxLimit) {
    return invalidArgument("burst " + std::to_string(spec.burst) + " is above the maximum 2^40");
  }
  const bool bucket = isBucketAlgorithm(spec.algorithm);
  if (!bucket && spec.burst != 0 && spec.burst != spec.limit) {
    return invalidArgument(std::string("burst applies only to token_bucket, leaky_bucket and gcra, "
                                       "not to ") +
                           std::string(algorithmName(spec.algorithm)));
  }
  if (spec.algorithm == Algorithm::kConcurrency && spec.limit > kMaxConcurrency) {
    return invalidArgument("a concurrency limit of " + std::to_string(spec.limit) +
                           " is above the maximum 65535 leases held at once");
  }
  if (spec.limit == 0 && spec.burst != 0) {
    return invalidArgument("burst must be unset when limit is 0 (a limit of 0 denies everything)");
  }

  Limit l;
  l.algorithm_ = spec.algorithm;
  l.limit_ = spec.limit;
  l.burst_ = spec.burst != 0 ? spec.burst : spec.limit;
  l.period_ns_ = spec.period.count();
  l.capacity_scaled_ =
      static_cast<unsigned __int128>(l.burst_) * static_cast<unsigned __int128>(l.period_ns_);
  if (bucket && l.limit_ != 0) {
    // Refill time = burst * period / limit, compared without division.
    const auto horizon = static_cast<unsigned __int128>(kMaxRefillTime.count()) * l.limit_;
    if (l.capacity_scaled_ > horizon) {
      return invalidArgument(
          "burst * period / limit must be at most 10 years (the bucket would "
          "take longer than that to refill)");
    }
  }
  return l;
}

Limit Limit::withLimit(std::uint64_t limit) const {
  if (limit == limit_) return *this;
  Limit l = *this;
  l.limit_ = std::clamp<std::uint64_t>(
      limit, 1, algorithm_ == Algorithm::kConcurrency ? kMaxConcurrency : kMaxLimit);
  if (burst_ == limit_ || limit_ == 0) {
    l.burst_ = l.limit_;
  } else {
    const unsigned __int128 scaled = static_cast<unsigned __int128>(burst_) * l.limit_ / limit_;
    l.burst_ = static_cast<std::uint64_t>(
        std::clamp<unsigned __int128>(scaled, 1, static_cast<unsigned __int128>(kMaxLimit)));
  }
  l.capacity_scaled_ =
      static_cast<unsigned __int128>(l.burst_) * static_cast<unsigned __int128>(l.period_ns_);
  return l;
}

std::string Limit::describe() const {
  std::string s = std::to_string(limit_) + "/" + formatPeriod(period()) + " " +
                  std::string(algorithmName(algorithm_));
  if (isBucketAlgorithm(algorithm_)) s += " burst=" + std::to_string(burst_);
  return s;
}

}  // namespace throttlex
