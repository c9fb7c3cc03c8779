// The 16 bytes of state kept per key, and the pure decision functions over it.
//
// Layout (w0, w1 = 128 bits), chosen so that every algorithm fits in 16 bytes and the store can
// tell from the state alone whether it still carries information (the expiry):
//   w0[61..63] tag       the Algorithm, 0 = empty / neutral
//   w0[18..60] expiry_ms ms since the Unix epoch at which the state is neutral at the latest
//                        (43 bits: good until the year 2248)
//   w0[0..17], w1        algorithm payload (82 bits):
//     bucket algorithms: w1 = sub_ns (20 bits) << 40 | frac (40 bits). The "theoretical arrival
//                        time" TAT = expiry_ms * 1e6 + sub_ns + frac / limit nanoseconds, exactly.
//     fixed window:      w1 = count (41 bits); the window is [expiry - period, expiry).
//     sliding window:    w1 = current count (41 bits) | prev count low 23 bits << 41,
//                        w0[0..17] = prev count high 18 bits; the current window is
//                        [expiry - 2 * period, expiry - period).
//     concurrency:       limiter/lease.h (a key's counter, and one entry per lease).
#pragma once

#include <cstdint>

#include "limiter/clock.h"
#include "limiter/decision.h"
#include "limiter/limit.h"

namespace throttlex {

struct State {
  std::uint64_t w0 = 0;
  std::uint64_t w1 = 0;

  Algorithm tag() const { return static_cast<Algorithm>(w0 >> 61); }
  std::int64_t expiryMs() const { return static_cast<std::int64_t>((w0 >> 18) & kExpiryMask); }
  bool empty() const { return (w0 >> 61) == 0; }
  // True when the state certainly carries no information any more at `now_ms` (conservative by at
  // most 1 ms). Needs no Limit, so the store can sweep without knowing the rules.
  bool expiredAt(std::int64_t now_ms) const { return empty() || expiryMs() < now_ms; }

  static constexpr std::uint64_t kExpiryMask = (std::uint64_t{1} << 43) - 1;
  friend bool operator==(const State&, const State&) = default;
};

// Clamp bounds for `now`: wall-clock times outside [0, kMaxTime] are treated as the nearest bound.
inline constexpr std::int64_t kMaxTimeNs =
    static_cast<std::int64_t>(State::kExpiryMask) * 1'000'000 - kMaxRefillTime.count() -
    2 * kMaxPeriod.count();

// Whether `state`, read from outside (a snapshot, a handoff), could have been written by decide()
// at or before `now_ms` under some valid limit: a known algorithm tag, and an expiry no later than
// the longest a limit allows (a bucket: kMaxRefillTime; windows: two periods of kMaxPeriod) plus a
// minute for clocks that disagree. Without the rule it cannot be narrower: a key's rule is not
// known where states are restored.
bool plausibleAt(const State& state, std::int64_t now_ms);

// Decides one request. `state` must be empty or hold state of limit.algorithm() written by this
// function. When the request is admitted, `state` is updated; a denied request or a cost-0 read
// changes nothing that matters (the state may be normalised). Cost 0 reads: allowed = remaining >
// 0. Pure: no clock, no allocation, no locks.
Decision decide(const Limit& limit, State& state, std::uint64_t cost, Time now);

// Gives `units` back to the key (a refund: the caller reserved more than it used, or gave up
// the work). A bucket refills by `units`, up to full; a fixed window's count drops by `units`, to
// 0 at least; a sliding window takes them off its current count and what that lacks off the
// previous one. Always allowed; remaining and reset_after are after the refund. A key with no
// state has nothing to give back and keeps none. Pure like decide().
Decision refund(const Limit& limit, State& state, std::uint64_t units, Time now);

// Decoded view of a state, for inspection (throttlectl inspect) and tests.
struct StateView {
  Algorithm algorithm{};
  std::int64_t expiry_ms = 0;
  std::int64_t tat_ns = 0;       // bucket algorithms: TAT, whole ns ...
  std::uint64_t tat_frac = 0;    // ... plus tat_frac / limit ns
  std::uint64_t count = 0;       // windows: current window; concurrency: units held
  std::uint64_t prev_count = 0;  // sliding window: previous window
};
StateView view(const State& state);

}  // namespace throttlex
