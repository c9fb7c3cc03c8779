// The one clock of the process, always injected, with two readings:
//  - now(): wall-clock nanoseconds since the Unix epoch. Limiter state (a bucket's "full again
//    at", a window's start) is absolute wall-clock time so that every node of a cluster, and a
//    node that restarts from a snapshot, reads it the same way.
//  - monotonic(): an Instant that never steps back, for deadlines, timeouts, lags and latencies.
//    It has no relation to wall time; only differences between two readings mean something.
// Only main() constructs a SystemClock; everything else receives a Clock& and tests use
// ManualClock. This file is the only one that names the standard library's clocks: Instant is a
// steady_clock time point, so asio's steady timers take it as it is.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace throttlex {

using Duration = std::chrono::nanoseconds;
using Time = std::chrono::time_point<std::chrono::system_clock, Duration>;
using Instant = std::chrono::time_point<std::chrono::steady_clock, Duration>;

class Clock {
 public:
  virtual ~Clock() = default;
  // Both thread-safe; neither blocks.
  virtual Time now() const = 0;
  virtual Instant monotonic() const = 0;
};

// A clock that moves only when told to. Thread-safe, so concurrent tests can share one.
// advance() moves both readings; set() steps the wall clock only (as NTP would).
class ManualClock final : public Clock {
 public:
  explicit ManualClock(Time start = Time(std::chrono::seconds(1'700'000'000)))
      : ns_(start.time_since_epoch().count()) {}
  Time now() const override { return Time(Duration(ns_.load(std::memory_order_acquire))); }
  Instant monotonic() const override {
    return Instant(Duration(mono_ns_.load(std::memory_order_acquire)));
  }
  void set(Time t) { ns_.store(t.time_since_epoch().count(), std::memory_order_release); }
  void advance(Duration d) {
    mono_ns_.fetch_add(d.count(), std::memory_order_acq_rel);
    ns_.fetch_add(d.count(), std::memory_order_acq_rel);
  }

 private:
  std::atomic<std::int64_t> ns_;
  std::atomic<std::int64_t> mono_ns_{std::chrono::nanoseconds(std::chrono::hours(1)).count()};
};

// The real wall clock. It may step back (NTP); the algorithms never grant capacity because of
// that (see docs/algorithms.md, "Time"), so no shared "latest" value is kept here, which would
// put a contended atomic on every read.
class SystemClock final : public Clock {
 public:
  Time now() const override {
    return std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
  }
  Instant monotonic() const override {
    return std::chrono::time_point_cast<Duration>(std::chrono::steady_clock::now());
  }
};

}  // namespace throttlex
