// Exact integer decisions. No floating point anywhere: every quantity is an integer in a unit
// chosen so that the arithmetic is exact for every accepted Limit (docs/algorithms.md).
#include "limiter/state.h"

#include <algorithm>
#include <cassert>

#include "limiter/lease.h"

namespace throttlex {
namespace {

using u128 = unsigned __int128;
using i128 = __int128;
constexpr std::int64_t kNsPerMs = 1'000'000;
constexpr std::uint64_t kCountMask = (std::uint64_t{1} << 41) - 1;
constexpr std::uint64_t kFracMask = (std::uint64_t{1} << 40) - 1;

// Division that takes the cheap 64-bit instruction whenever the operands allow.
inline u128 div(u128 a, std::uint64_t b) {
  if ((a >> 64) == 0) return static_cast<std::uint64_t>(a) / b;
  return a / b;
}
inline u128 ceilDiv(u128 a, std::uint64_t b) {
  const u128 q = div(a, b);
  return q * b == a ? q : q + 1;
}
inline Duration ns(u128 v) {
  return Duration(static_cast<std::int64_t>(v));
}
inline std::uint64_t u64(u128 v) {
  return static_cast<std::uint64_t>(v);
}

std::uint64_t header(Algorithm a, std::int64_t expiry_ms) {
  assert(expiry_ms >= 0 && static_cast<std::uint64_t>(expiry_ms) <= State::kExpiryMask);
  return (std::uint64_t{static_cast<std::uint8_t>(a)} << 61) |
         (static_cast<std::uint64_t>(expiry_ms) << 18);
}

Decision never(const Limit& limit, std::uint64_t remaining, Duration reset_after) {
  return {false, limit.limit(), remaining, reset_after, kRetryNever};
}

// --- Bucket algorithms (token bucket, leaky bucket, GCRA) --------------------------------------
//
// One engine for all three: they make the same decisions for the same (limit, period, burst) and
// differ in how users know them (docs/algorithms.md). Work in "scaled time": 1 unit = 1/limit ns,
// so one unit of cost takes exactly `period_ns` scaled units to refill and nothing is fractional.
// D = (TAT - now) * limit is how far the bucket is from full; capacity is burst * period_ns.
// D of `state` at `now`: 0 for an empty or full bucket.
u128 bucketDebt(const Limit& limit, const State& state, std::int64_t now) {
  if (state.empty()) return 0;
  const std::uint64_t L = limit.limit();
  const std::int64_t tat_ns =
      state.expiryMs() * kNsPerMs + static_cast<std::int64_t>(state.w1 >> 40);
  // The fraction is stored over `limit`; if the rule's limit has since been lowered it can be
  // out of range, and rounding it up to a whole ns never grants extra.
  const std::uint64_t frac = state.w1 & kFracMask;
  const bool round_up = frac >= L;
  const std::int64_t whole = tat_ns + (round_up ? 1 : 0);
  if (whole > now || (whole == now && !round_up && frac > 0)) {
    return static_cast<u128>(whole - now) * L + (round_up ? 0 : frac);
  }
  return 0;
}

// Stores TAT = now + debt / L exactly: whole ns plus a fraction over L.
void storeBucket(const Limit& limit, State& state, u128 debt, std::int64_t now) {
  const std::uint64_t L = limit.limit();
  const u128 whole = div(debt, L);
  const std::uint64_t frac = u64(debt - whole * L);
  const std::int64_t tat_ns = now + static_cast<std::int64_t>(whole);
  const std::int64_t tat_ms = tat_ns / kNsPerMs;
  state.w0 = header(limit.algorithm(), tat_ms);
  state.w1 = (static_cast<std::uint64_t>(tat_ns - tat_ms * kNsPerMs) << 40) | frac;
}

std::uint64_t bucketRemaining(const Limit& limit, u128 debt) {
  const u128 capacity = limit.capacityScaled();
  return debt >= capacity ? 0
                          : u64(div(capacity - debt, static_cast<std::uint64_t>(limit.periodNs())));
}

Decision decideBucket(const Limit& limit, State& state, std::uint64_t cost, std::int64_t now) {
  const std::uint64_t L = limit.limit();
  const auto P = static_cast<std::uint64_t>(limit.periodNs());
  const u128 capacity = limit.capacityScaled();
  u128 debt = bucketDebt(limit, state, now);  // D

  // A cost-0 read answers for a request of 1 unit but consumes nothing.
  const u128 need = static_cast<u128>(cost == 0 ? 1 : cost) * P;
  const bool allowed = debt + need <= capacity;
  if (cost != 0 && allowed) debt += need;

  const std::uint64_t remaining = bucketRemaining(limit, debt);
  const Duration reset_after = ns(ceilDiv(debt, L));
  if (!allowed) {
    if (need > capacity) return never(limit, remaining, reset_after);
    return {false, L, remaining, reset_after, ns(ceilDiv(debt + need - capacity, L))};
  }
  if (cost != 0) storeBucket(limit, state, debt, now);
  return {true, L, remaining, reset_after, Duration(0)};
}

// A refund refills by `units`, up to full (D = 0; the state then says "full since now").
Decision refundBucket(const Limit& limit, State& state, std::uint64_t units, std::int64_t now) {
  u128 debt = bucketDebt(limit, state, now);
  if (state.empty())
    return {true, limit.limit(), bucketRemaining(limit, 0), Duration(0), Duration(0)};
  const u128 back = static_cast<u128>(units) * static_cast<std::uint64_t>(limit.periodNs());
  debt = debt > back ? debt - back : 0;
  storeBucket(limit, state, debt, now);
  return {true, limit.limit(), bucketRemaining(limit, debt), ns(ceilDiv(debt, limit.limit())),
          Duration(0)};
}

// --- Fixed window ------------------------------------------------------------------------------
// Windows are [k * period, (k + 1) * period) since the Unix epoch, the same on every node.
Decision decideFixed(const Limit& limit, State& state, std::uint64_t cost, std::int64_t now) {
  const std::uint64_t L = limit.limit();
  const std::int64_t P = limit.periodNs();
  std::int64_t start = now - now % P;
  std::uint64_t count = 0;
  if (!state.empty()) {
    const std::int64_t stored_start = state.expiryMs() * kNsPerMs - P;
    if (stored_start >= start) {  // same window, or the clock went back: keep the stored window
      start = stored_start;
      count = state.w1 & kCountMask;
    }
  }
  const std::int64_t end = start + P;
  const std::uint64_t need = cost == 0 ? 1 : cost;  // a cost-0 read answers for 1 unit
  const bool allowed = count + need <= L;
  if (cost != 0 && allowed) {
    count += cost;
    state.w0 = header(limit.algorithm(), end / kNsPerMs);
    state.w1 = count;
  }
  // count can exceed L when the limit was lowered after it was counted (docs/algorithms.md).
  const std::uint64_t remaining = count >= L ? 0 : L - count;
  const Duration reset_after = count == 0 ? Duration(0) : Duration(end - now);
  if (allowed) return {true, L, remaining, reset_after, Duration(0)};
  if (need > L) return never(limit, remaining, reset_after);
  return {false, L, remaining, reset_after, Duration(end - now)};
}

// A refund takes `units` off the current window's count, down to 0; an earlier window's units
// are already back.
Decision refundFixed(const Limit& limit, State& state, std::uint64_t units, std::int64_t now) {
  const std::uint64_t L = limit.limit();
  const std::int64_t P = limit.periodNs();
  const std::int64_t start = now - now % P;
  std::uint64_t count = 0;
  std::int64_t end = start + P;
  if (!state.empty() && state.expiryMs() * kNsPerMs - P >= start) {
    end = state.expiryMs() * kNsPerMs;
    count = state.w1 & kCountMask;
    count = count > units ? count - units : 0;
    state.w1 = count;
  }
  const std::uint64_t remaining = count >= L ? 0 : L - count;
  return {true, L, remaining, count == 0 ? Duration(0) : Duration(end - now), Duration(0)};
}

// --- Sliding window ----------------------------------------------------------------------------
// Cloudflare's estimate: rate = prev * (period - elapsed) / period + current, where elapsed is the
// time since the current window started. Multiplied through by period so it stays an integer.
Decision decideSliding(const Limit& limit, State& state, std::uint64_t cost, std::int64_t now) {
  const std::uint64_t L = limit.limit();
  const std::int64_t P = limit.periodNs();
  std::int64_t start = now - now % P;
  std::uint64_t cur = 0;
  std::uint64_t prev = 0;
  if (!state.empty()) {
    const std::int64_t stored_start = state.expiryMs() * kNsPerMs - 2 * P;
    const std::uint64_t stored_cur = state.w1 & kCountMask;
    const std::uint64_t stored_prev = (state.w1 >> 41) | ((state.w0 & ((1u << 18) - 1)) << 23);
    if (stored_start >= start) {  // same window, or the clock went back: keep the stored window
      start = stored_start;
      cur = stored_cur;
      prev = stored_prev;
    } else if (stored_start == start - P) {
      prev = stored_cur;
    }
  }
  const auto elapsed = static_cast<std::uint64_t>(std::max<std::int64_t>(0, now - start));
  const auto p = static_cast<std::uint64_t>(P);
  // used = prev * (P - elapsed) + cur * P, in units of 1/P of a request.
  const u128 prev_weight = static_cast<u128>(prev) * (p - elapsed);
  const u128 quota = static_cast<u128>(L) * p;
  const u128 used = prev_weight + static_cast<u128>(cur) * p;
  const std::uint64_t units = cost == 0 ? 1 : cost;  // a cost-0 read answers for 1 unit
  const u128 need = static_cast<u128>(units) * p;
  const bool allowed = used + need <= quota;
  if (cost != 0 && allowed) {
    cur += cost;
    state.w0 = header(limit.algorithm(), (start + 2 * P) / kNsPerMs) | (prev >> 23);
    state.w1 = cur | ((prev & ((1u << 23) - 1)) << 41);
  }
  const u128 used_after = prev_weight + static_cast<u128>(cur) * p;
  const std::uint64_t remaining = used_after >= quota ? 0 : u64(div(quota - used_after, p));
  const std::int64_t end = start + P;
  const Duration reset_after = cur > 0    ? Duration(end + P - now)
                               : prev > 0 ? Duration(end - now)
                                          : Duration(0);
  if (allowed) return {true, L, remaining, reset_after, Duration(0)};
  if (units > L) return never(limit, remaining, reset_after);

  // Earliest t at which the same request fits. Within this window only prev's weight decays.
  const std::int64_t to_end = end - now;
  if (cur + units <= L) {
    // prev * (P - elapsed - t) <= (L - cur - units) * P
    const u128 slack = div(static_cast<u128>(L - cur - units) * p, prev);
    return {false, L, remaining, reset_after, Duration(to_end - static_cast<std::int64_t>(slack))};
  }
  // Next window: prev' = cur, and cur * (P - t') + units * P <= L * P.
  const u128 slack = div(static_cast<u128>(L - units) * p, cur);
  const std::int64_t wait = slack >= p ? 0 : static_cast<std::int64_t>(p - u64(slack));
  return {false, L, remaining, reset_after, Duration(to_end + wait)};
}

// A refund takes `units` off the current window's count and what that lacks off the previous
// window's (units reserved before the window turned and settled after).
Decision refundSliding(const Limit& limit, State& state, std::uint64_t units, std::int64_t now) {
  const std::int64_t P = limit.periodNs();
  const std::int64_t start = now - now % P;
  if (!state.empty()) {
    std::int64_t base = state.expiryMs() * kNsPerMs - 2 * P;  // the stored current window
    std::uint64_t cur = state.w1 & kCountMask;
    std::uint64_t prev = (state.w1 >> 41) | ((state.w0 & ((1u << 18) - 1)) << 23);
    if (base < start) {  // the window turned: re-base so the stored one is the previous
      prev = base == start - P ? cur : 0;
      cur = 0;
      base = start;
    }
    if (cur + prev > 0) {  // else nothing is counted any more: the state stays as it is
      const std::uint64_t from_cur = std::min(cur, units);
      cur -= from_cur;
      prev -= std::min(prev, units - from_cur);
      state.w0 = header(limit.algorithm(), (base + 2 * P) / kNsPerMs) | (prev >> 23);
      state.w1 = cur | ((prev & ((1u << 23) - 1)) << 41);
    }
  }
  State probe = state;
  Decision d = decideSliding(limit, probe, 0, now);  // remaining and reset as a read sees them
  d.allowed = true;
  d.retry_after = Duration(0);
  return d;
}

}  // namespace

bool plausibleAt(const State& state, std::int64_t now_ms) {
  if (state.empty()) return false;
  const auto tag = static_cast<int>(state.tag());
  if (tag < 1 || tag > kAlgorithmCount) return false;
  constexpr std::int64_t kSkewMs = 60'000;
  // A concurrency state lives at most a period and a third of one: counted with the windows.
  const bool window = state.tag() == Algorithm::kFixedWindow ||
                      state.tag() == Algorithm::kSlidingWindow ||
                      state.tag() == Algorithm::kConcurrency;
  const std::int64_t reach_ms =
      (window ? 2 * kMaxPeriod.count() : kMaxRefillTime.count()) / kNsPerMs;
  return state.expiryMs() <= now_ms + reach_ms + kSkewMs;
}

Decision decide(const Limit& limit, State& state, std::uint64_t cost, Time now_tp) {
  const std::int64_t now =
      std::clamp<std::int64_t>(now_tp.time_since_epoch().count(), 0, kMaxTimeNs);
  if (!state.empty() && state.tag() != limit.algorithm()) state = State{};  // foreign state
  if (limit.limit() == 0) return never(limit, 0, Duration(0));
  switch (limit.algorithm()) {
    case Algorithm::kTokenBucket:
    case Algorithm::kLeakyBucket:
    case Algorithm::kGcra:
      return decideBucket(limit, state, cost, now);
    case Algorithm::kFixedWindow:
      return decideFixed(limit, state, cost, now);
    case Algorithm::kSlidingWindow:
      return decideSliding(limit, state, cost, now);
    case Algorithm::kConcurrency:
      return acquireUnits(limit, state, cost, now);
  }
  assert(false && "Limit::make admits only known algorithms");
  return never(limit, 0, Duration(0));
}

Decision refund(const Limit& limit, State& state, std::uint64_t units, Time now_tp) {
  const std::int64_t now =
      std::clamp<std::int64_t>(now_tp.time_since_epoch().count(), 0, kMaxTimeNs);
  if (!state.empty() && state.tag() != limit.algorithm()) state = State{};  // foreign state
  if (limit.limit() == 0) return {true, 0, 0, Duration(0), Duration(0)};
  switch (limit.algorithm()) {
    case Algorithm::kTokenBucket:
    case Algorithm::kLeakyBucket:
    case Algorithm::kGcra:
      return refundBucket(limit, state, units, now);
    case Algorithm::kFixedWindow:
      return refundFixed(limit, state, units, now);
    case Algorithm::kSlidingWindow:
      return refundSliding(limit, state, units, now);
    case Algorithm::kConcurrency: {
      // Leases come back by release (Store::release), never by a count: a refund only reads.
      State probe = state;
      Decision d = acquireUnits(limit, probe, 0, now);
      d.allowed = true;
      d.retry_after = Duration(0);
      return d;
    }
  }
  assert(false && "Limit::make admits only known algorithms");
  return {true, 0, 0, Duration(0), Duration(0)};
}

StateView view(const State& state) {
  StateView v;
  v.algorithm = state.tag();
  v.expiry_ms = state.expiryMs();
  if (state.empty()) return v;
  if (v.algorithm == Algorithm::kConcurrency) {
    const LeaseCounts c = leaseCounts(state);
    for (const std::uint64_t n : c.counts) v.count += n;  // units held (a lease entry: 0)
    return v;
  }
  if (isBucketAlgorithm(v.algorithm)) {
    v.tat_ns = v.expiry_ms * kNsPerMs + static_cast<std::int64_t>(state.w1 >> 40);
    v.tat_frac = state.w1 & kFracMask;
  } else {
    v.count = state.w1 & kCountMask;
    if (v.algorithm == Algorithm::kSlidingWindow) {
      v.prev_count = (state.w1 >> 41) | ((state.w0 & ((1u << 18) - 1)) << 23);
    }
  }
  return v;
}

}  // namespace throttlex
