// Slow, obviously-correct models of each algorithm, written straight from the definitions in
// docs/algorithms.md with a different representation than limiter/state.cc (token counts and water
// levels instead of a TAT; a map of per-window counts instead of a packed state). "Until when"
// answers (reset_after, retry_after) are found by binary search over a monotone predicate, not by a
// formula. Time must not go backwards for these models.
#pragma once

#include <cstdint>
#include <functional>
#include <map>

#include "limiter/decision.h"
#include "limiter/limit.h"

namespace throttlex::testing {

using i128 = __int128;

// Smallest t in [0, hi] with pred(t); pred must be monotone (false...false true...true).
inline std::int64_t firstTrue(std::int64_t hi, const std::function<bool(std::int64_t)>& pred) {
  std::int64_t lo = 0;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (pred(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

class ReferenceModel {
 public:
  virtual ~ReferenceModel() = default;
  virtual Decision request(std::uint64_t cost, std::int64_t now) = 0;
};

// Token bucket: holds `tokens` (exactly: tokens_times_period / period), refills continuously at
// limit/period per ns up to burst; a request of n tokens is admitted iff n <= tokens.
class TokenBucketModel : public ReferenceModel {
 public:
  explicit TokenBucketModel(const Limit& l)
      : L_(l.limit()), P_(l.periodNs()), C_(l.burst()), tokens_x_p_(i128(C_) * P_) {}

  Decision request(std::uint64_t cost, std::int64_t now) override {
    if (started_ && now > last_) {
      tokens_x_p_ = std::min<i128>(i128(C_) * P_, tokens_x_p_ + i128(now - last_) * L_);
    }
    started_ = true;
    last_ = now;
    const std::uint64_t want = cost == 0 ? 1 : cost;
    const bool allowed = L_ > 0 && i128(want) * P_ <= tokens_x_p_;
    if (allowed && cost > 0) tokens_x_p_ -= i128(cost) * P_;
    Decision d{allowed, L_, static_cast<std::uint64_t>(tokens_x_p_ / P_), Duration(0), Duration(0)};
    if (L_ == 0) {
      d.retry_after = kRetryNever;
      return d;
    }
    const i128 full = i128(C_) * P_;
    const std::int64_t horizon = static_cast<std::int64_t>(full / L_) + 2;
    d.reset_after = Duration(
        firstTrue(horizon, [&](std::int64_t t) { return tokens_x_p_ + i128(t) * L_ >= full; }));
    if (!allowed) {
      d.retry_after = want > C_ ? kRetryNever : Duration(firstTrue(horizon, [&](std::int64_t t) {
        return tokens_x_p_ + i128(t) * L_ >= i128(want) * P_;
      }));
    }
    return d;
  }

 private:
  std::uint64_t L_;
  std::int64_t P_;
  std::uint64_t C_;
  i128 tokens_x_p_;
  bool started_ = false;
  std::int64_t last_ = 0;
};

// Leaky bucket as a meter (nginx limit_req with nodelay): each admitted request pours its cost
// into the bucket, which leaks limit/period per ns; admitted iff the water then fits in burst.
class LeakyBucketModel : public ReferenceModel {
 public:
  explicit LeakyBucketModel(const Limit& l) : L_(l.limit()), P_(l.periodNs()), C_(l.burst()) {}

  Decision request(std::uint64_t cost, std::int64_t now) override {
    if (started_ && now > last_)
      water_x_p_ = std::max<i128>(0, water_x_p_ - i128(now - last_) * L_);
    started_ = true;
    last_ = now;
    const std::uint64_t want = cost == 0 ? 1 : cost;
    const i128 cap = i128(C_) * P_;
    const bool allowed = L_ > 0 && water_x_p_ + i128(want) * P_ <= cap;
    if (allowed && cost > 0) water_x_p_ += i128(cost) * P_;
    Decision d{allowed, L_, static_cast<std::uint64_t>((cap - water_x_p_) / P_), Duration(0),
               Duration(0)};
    if (L_ == 0) {
      d.retry_after = kRetryNever;
      return d;
    }
    const std::int64_t horizon = static_cast<std::int64_t>(cap / L_) + 2;
    d.reset_after = Duration(
        firstTrue(horizon, [&](std::int64_t t) { return water_x_p_ - i128(t) * L_ <= 0; }));
    if (!allowed) {
      d.retry_after = want > C_ ? kRetryNever : Duration(firstTrue(horizon, [&](std::int64_t t) {
        return std::max<i128>(0, water_x_p_ - i128(t) * L_) + i128(want) * P_ <= cap;
      }));
    }
    return d;
  }

 private:
  std::uint64_t L_;
  std::int64_t P_;
  std::uint64_t C_;
  i128 water_x_p_ = 0;
  bool started_ = false;
  std::int64_t last_ = 0;
};

// GCRA as in redis-cell's CL.THROTTLE, with emission interval T = period/limit and delay variation
// tolerance burst*T. Times are kept exactly as multiples of 1/limit ns.
class GcraModel : public ReferenceModel {
 public:
  explicit GcraModel(const Limit& l) : L_(l.limit()), P_(l.periodNs()), C_(l.burst()) {}

  Decision request(std::uint64_t cost, std::int64_t now_ns) override {
    const i128 now = i128(now_ns) * L_;  // in 1/L ns
    const i128 T = P_;                   // emission interval, in 1/L ns
    const i128 dvt = i128(C_) * T;
    const std::uint64_t want = cost == 0 ? 1 : cost;
    const i128 tat = std::max(tat_, now);
    const i128 new_tat = tat + i128(want) * T;
    const i128 allow_at = new_tat - dvt;
    const bool allowed = L_ > 0 && now >= allow_at;
    if (allowed && cost > 0) tat_ = new_tat;
    const i128 kept_tat = std::max(tat_, now);
    const i128 next = dvt - (kept_tat - now);
    Decision d{allowed, L_, static_cast<std::uint64_t>(next > 0 ? next / T : 0), Duration(0),
               Duration(0)};
    if (L_ == 0) {
      d.retry_after = kRetryNever;
      return d;
    }
    auto ceil_ns = [&](i128 scaled) {
      return Duration(static_cast<std::int64_t>((scaled + L_ - 1) / L_));
    };
    d.reset_after = ceil_ns(kept_tat - now);
    if (!allowed) d.retry_after = want > C_ ? kRetryNever : ceil_ns(allow_at - now);
    return d;
  }

 private:
  std::uint64_t L_;
  std::int64_t P_;
  std::uint64_t C_;
  i128 tat_ = 0;
};

// Fixed window: a counter per window [k*period, (k+1)*period); admitted iff count + n <= limit.
class FixedWindowModel : public ReferenceModel {
 public:
  explicit FixedWindowModel(const Limit& l) : L_(l.limit()), P_(l.periodNs()) {}

  Decision request(std::uint64_t cost, std::int64_t now) override {
    const std::uint64_t want = cost == 0 ? 1 : cost;
    auto count_at = [&](std::int64_t t) {
      auto it = counts_.find(t / P_);
      return it == counts_.end() ? 0 : it->second;
    };
    const bool allowed = count_at(now) + want <= L_;
    if (allowed && cost > 0) counts_[now / P_] += cost;
    const std::uint64_t used = count_at(now);
    Decision d{allowed, L_, L_ - used, Duration(0), Duration(0)};
    if (L_ == 0) {
      d.retry_after = kRetryNever;
      return d;
    }
    d.reset_after =
        Duration(firstTrue(2 * P_, [&](std::int64_t t) { return count_at(now + t) == 0; }));
    if (!allowed) {
      d.retry_after = want > L_ ? kRetryNever : Duration(firstTrue(2 * P_, [&](std::int64_t t) {
        return count_at(now + t) + want <= L_;
      }));
    }
    return d;
  }

 private:
  std::uint64_t L_;
  std::int64_t P_;
  std::map<std::int64_t, std::uint64_t> counts_;
};

// Sliding window (Cloudflare): estimated rate = prev * (period - elapsed) / period + current.
class SlidingWindowModel : public ReferenceModel {
 public:
  explicit SlidingWindowModel(const Limit& l) : L_(l.limit()), P_(l.periodNs()) {}

  Decision request(std::uint64_t cost, std::int64_t now) override {
    const std::uint64_t want = cost == 0 ? 1 : cost;
    const i128 quota = i128(L_) * P_;
    const bool allowed = usedTimesP(now) + i128(want) * P_ <= quota;
    if (allowed && cost > 0) counts_[now / P_] += cost;
    const i128 used = usedTimesP(now);
    Decision d{allowed, L_, static_cast<std::uint64_t>(used >= quota ? 0 : (quota - used) / P_),
               Duration(0), Duration(0)};
    if (L_ == 0) {
      d.retry_after = kRetryNever;
      return d;
    }
    d.reset_after =
        Duration(firstTrue(3 * P_, [&](std::int64_t t) { return usedTimesP(now + t) == 0; }));
    if (!allowed) {
      d.retry_after = want > L_ ? kRetryNever : Duration(firstTrue(3 * P_, [&](std::int64_t t) {
        return usedTimesP(now + t) + i128(want) * P_ <= quota;
      }));
    }
    return d;
  }

 private:
  std::uint64_t count(std::int64_t window) const {
    auto it = counts_.find(window);
    return it == counts_.end() ? 0 : it->second;
  }
  // The estimated rate at time t, multiplied by period to stay an integer.
  i128 usedTimesP(std::int64_t t) const {
    const std::int64_t w = t / P_;
    const std::int64_t elapsed = t - w * P_;
    return i128(count(w - 1)) * (P_ - elapsed) + i128(count(w)) * P_;
  }

  std::uint64_t L_;
  std::int64_t P_;
  std::map<std::int64_t, std::uint64_t> counts_;
};

}  // namespace throttlex::testing
