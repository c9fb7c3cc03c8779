// Overload protection of the node itself (docs/overload.md): when a worker's event loop falls
// behind, checks are answered at once by their rule's overload policy ("shed") instead of waiting
// in the queue that grows behind the loop.
//
// The signal is the worker's loop lag: a probe timer on each worker thread is due every
// `probe` and notes how late it runs. Everything ready on that loop waited about as long, so the
// lag is the queueing a check meets there (HTTP, RPC and forwarding share the loop). As CoDel does
// with a packet queue's sojourn time, a lag above `target` for a whole `interval` is a standing
// queue (overload); a burst that drains within the interval is not.
//
// What is shed, by the check's priority:
//   sheddable  whenever the loop lags more than the target (first to go, even in a burst);
//   normal     while a standing queue lasts and the loop lags more than kNormalLagFactor targets
//              (what waited far too long: with `overload: allow` a shed check is not limited, so
//              a busy node must not stop limiting early);
//   critical   never for load; like every check, when its caller's deadline has passed.
//
// Threads: one OverloadDetector per worker thread, used only on it (no locks); current() is the
// calling thread's (null on threads without one: nothing is shed there).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "limiter/clock.h"
#include "limiter/result.h"

namespace throttlex {

// Wire values (proto Priority) equal these.
enum class Priority : std::uint8_t { kNormal = 0, kCritical = 1, kSheddable = 2 };
inline constexpr int kPriorityCount = 3;
std::string_view nameOf(Priority p);  // "normal", "critical", "sheddable"
Result<Priority> parsePriority(std::string_view text);

// Why a check was shed (wire values: proto ShedReason).
enum class ShedReason : std::uint8_t { kOverload = 1, kDeadline = 2 };
inline constexpr int kShedReasonCount = 2;
inline constexpr int kNormalLagFactor = 10;  // normal checks: shed beyond this many targets of lag
std::string_view nameOf(ShedReason r);       // "overload", "deadline"

struct OverloadOptions {
  Duration target = std::chrono::milliseconds(10);     // loop lag above this is queueing; 0: off
  Duration interval = std::chrono::milliseconds(100);  // how long it must last to be overload
};

class OverloadDetector {
 public:
  explicit OverloadDetector(const OverloadOptions& options) : options_(options) {}

  // How often the worker's probe should run: half the target, within 1 ms and 50 ms.
  Duration probePeriod() const;
  // The probe ran `lag` late at `now` (monotonic) and is due next at `next_due`.
  void sample(Instant now, Duration lag, Instant next_due);
  // The loop's lag as a check handled at `now` meets it: the largest sample of the last interval
  // (after a stall the probe runs on time again at once, while what queued behind the stall is
  // still being read), or more when the probe is overdue (the loop is that far behind, whatever
  // ran first in this turn).
  Duration lagAt(Instant now) const;
  // Whether a check of `priority`, handled at `now`, is shed, and why; `deadline` is the caller's
  // (monotonic), if it gave one. (Releases and refunds give capacity back: callers never ask.)
  std::optional<ShedReason> shed(Priority priority, Instant now,
                                 std::optional<Instant> deadline = std::nullopt) const;

  // A standing queue (overload) at `now`: the lag has been above the target for an interval, by
  // the samples or by how long the probe is overdue.
  bool standingAt(Instant now) const;
  Duration lag() const { return lag_; }  // the latest sample

  // The calling thread's detector (set by its worker for as long as it lives).
  static OverloadDetector* current();
  static void setCurrent(OverloadDetector* detector);

 private:
  const OverloadOptions options_;
  // The latest sample, or more when the probe is overdue.
  Duration currentLag(Instant now) const;

  Duration lag_{0};
  Duration peak_{0};  // the largest sample since peak_at_
  Instant peak_at_{};
  std::optional<Instant> next_due_;     // none before the first sample
  std::optional<Instant> above_since_;  // the lag has been above the target since
};

}  // namespace throttlex
