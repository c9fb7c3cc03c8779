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
//   normal     a share of them, once a standing queue formed: the share follows a PI law on the
//              standing queue (as PIE's drop probability does on queue delay) that holds it at the
//              target, so the node sheds about its excess and keeps deciding what it can (with
//              `overload: allow` a shed check is not limited, so a busy node must not stop
//              limiting); and all of them while a standing queue lags more than kNormalLagFactor
//              targets (a stalled loop);
//   critical   never for load; like every check, when its caller's deadline has passed.
//
// The share is drawn once per message entering (a single check or a whole batch: draw()), so a
// batch is shed or decided as one; the draws are spaced evenly (a credit that grows by the share
// per message and sheds one message each time it reaches 1), not random.
//
// Threads: one OverloadDetector per worker thread, used only on it (no locks); current() is the
// calling thread's (null on threads without one: nothing is shed there).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string_view>
#include <utility>

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

// The normal checks' share controller, per probe sample, on the standing queue: the smallest lag
// sampled in the last interval (as CoDel judges a queue by its minimum sojourn time), so that a
// stall the loop did not cause (a CPU quota's throttling, a noisy neighbour) moves nothing while
// a queue that lasts does. The
// share grows by kShareGain for each target that floor is above the target, and by kShareDamping
// for each target it grew since the last sample (it shrinks alike). Their ratio is PIE's (RFC
// 8033); the gains are larger, as shedding relieves the loop at once, where PIE waits on TCP
// senders to slow down.
inline constexpr double kShareGain = 0.02;
inline constexpr double kShareDamping = 0.2;

struct OverloadOptions {
  Duration target = std::chrono::milliseconds(10);     // loop lag above this is queueing; 0: off
  Duration interval = std::chrono::milliseconds(100);  // how long it must last to be overload
};

class OverloadDetector;

// A message entering a worker thread (a single check or a batch): when it is handled, and whether
// it falls in the normal checks' shed share — drawn from `detector` (OverloadDetector::draw()) at
// most once, when a check that the share could shed first asks, so that a message of releases,
// refunds or critical checks draws nothing. One per message; not shared between threads.
class Admission {
 public:
  Admission(Instant now, OverloadDetector* detector) : now_(now), detector_(detector) {}
  Instant now() const { return now_; }
  bool inShare();

 private:
  Instant now_;
  OverloadDetector* detector_;  // null: never in the share
  std::optional<bool> drawn_;
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
  // One message entering (a single check or a batch): whether it falls in the normal checks'
  // shed share (Admission draws it, once per message).
  bool draw();
  // Whether a check of `priority` in the message `entry` is shed, and why; `deadline` is the
  // caller's (monotonic), if it gave one. Only a normal check that no deadline sheds draws the
  // message's share. (Releases and refunds give capacity back: callers never ask.)
  std::optional<ShedReason> shed(Priority priority, Admission& entry,
                                 std::optional<Instant> deadline = std::nullopt) const;

  // A standing queue (overload) at `now`: the lag has been above the target for an interval, by
  // the samples or by how long the probe is overdue.
  bool standingAt(Instant now) const;
  Duration lag() const { return lag_; }  // the latest sample
  Duration standingLag() const;  // the standing queue: the smallest sample of the last interval
  double share() const { return share_; }  // of normal messages shed, 0..1

  // The calling thread's detector (set by its worker for as long as it lives).
  static OverloadDetector* current();
  static void setCurrent(OverloadDetector* detector);

 private:
  const OverloadOptions options_;
  // The latest sample, or more when the probe is overdue.
  Duration currentLag(Instant now) const;
  void steerShare(Instant now);

  Duration lag_{0};
  Duration peak_{0};  // the largest sample since peak_at_
  Instant peak_at_{};
  std::optional<Instant> next_due_;     // none before the first sample
  std::optional<Instant> above_since_;  // the lag has been above the target since
  double share_ = 0;   // of normal messages shed; above 0 only once a standing queue formed
  double credit_ = 0;  // draw(): sheds a message each time this reaches 1
  // The last interval's samples that a later one is not below (the front is the smallest).
  std::deque<std::pair<Instant, Duration>> floor_;
  Duration prev_floor_{0};  // standingLag() at the sample before
};

}  // namespace throttlex
