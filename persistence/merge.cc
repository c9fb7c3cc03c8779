#include "persistence/merge.h"

#include "limiter/lease.h"

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace throttlex::persistence {
namespace {

constexpr std::uint64_t kFracMask = (std::uint64_t{1} << 40) - 1;
constexpr std::uint64_t kCountMask = (std::uint64_t{1} << 41) - 1;
constexpr std::uint64_t kPrevLowMask = (std::uint64_t{1} << 23) - 1;
constexpr std::uint64_t kPrevHighMask = (std::uint64_t{1} << 18) - 1;

// The header bits of w0 (tag and expiry) with the payload bits cleared.
std::uint64_t headerOf(const State& s) {
  return s.w0 & ~kPrevHighMask;
}

State sliding(const State& base, std::uint64_t cur, std::uint64_t prev) {
  State s;
  s.w0 = headerOf(base) | ((prev >> 23) & kPrevHighMask);
  s.w1 = (cur & kCountMask) | ((prev & kPrevLowMask) << 41);
  return s;
}

State mergeSliding(const State& a, const State& b) {
  const StateView va = view(a);
  const StateView vb = view(b);
  if (va.expiry_ms == vb.expiry_ms) {
    return sliding(a, std::max(va.count, vb.count), std::max(va.prev_count, vb.prev_count));
  }
  const bool a_later = va.expiry_ms > vb.expiry_ms;
  const State& later = a_later ? a : b;
  const StateView& vl = a_later ? va : vb;
  const StateView& ve = a_later ? vb : va;
  // Windows are [expiry - 2P, expiry - P), and P is not in the state, so whether the earlier
  // state's window is the one just before the later one's cannot be told. Raising prev to the
  // earlier current count is right when it is, and when it is older only over-counts (denies a
  // little early), which never grants twice.
  return sliding(later, vl.count, std::max(vl.prev_count, ve.count));
}

}  // namespace

State moreConsumed(const State& a, const State& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  if (a.tag() != b.tag()) return a.expiryMs() >= b.expiryMs() ? a : b;
  const Algorithm alg = a.tag();
  if (isBucketAlgorithm(alg)) {
    // (expiry ms, sub-ms ns, fraction): w1 = sub_ns << 40 | frac orders like (sub_ns, frac).
    const auto ka = std::make_tuple(a.expiryMs(), a.w1 >> 40, a.w1 & kFracMask);
    const auto kb = std::make_tuple(b.expiryMs(), b.w1 >> 40, b.w1 & kFracMask);
    return ka >= kb ? a : b;
  }
  if (alg == Algorithm::kSlidingWindow) return mergeSliding(a, b);
  if (alg == Algorithm::kConcurrency) return mergeLease(a, b);
  // Fixed window.
  if (a.expiryMs() != b.expiryMs()) return a.expiryMs() > b.expiryMs() ? a : b;
  return (a.w1 & kCountMask) >= (b.w1 & kCountMask) ? a : b;
}

}  // namespace throttlex::persistence
