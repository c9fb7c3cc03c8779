// Time for the limiter: wall-clock nanoseconds since the Unix epoch, always injected.
//
// Limiter state (a bucket's "full again at", a window's start) is absolute wall-clock time so that
// every node of a cluster, and a node that restarts from a snapshot, reads it the same way. Only
// main() constructs a SystemClock; everything else receives a Clock& and tests use ManualClock.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace throttlex {

using Duration = std::chrono::nanoseconds;
using Time = std::chrono::time_point<std::chrono::system_clock, Duration>;

class Clock {
 public:
  virtual ~Clock() = default;
  // Thread-safe; must not block.
  virtual Time now() const = 0;
};

// A clock that moves only when told to. Thread-safe, so concurrent tests can share one.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(Time start = Time(std::chrono::seconds(1'700'000'000)))
      : ns_(count(start)) {}
  Time now() const override { return Time(Duration(ns_.load(std::memory_order_acquire))); }
  void set(Time t) { ns_.store(count(t), std::memory_order_release); }
  void advance(Duration d) { ns_.fetch_add(d.count(), std::memory_order_acq_rel); }

 private:
  static std::int64_t count(Time t) { return t.time_since_epoch().count(); }
  std::atomic<std::int64_t> ns_;
};

// The real wall clock. It may step back (NTP); the algorithms never grant capacity because of
// that (see docs/algorithms.md, "Time"), so no shared "latest" value is kept here, which would
// put a contended atomic on every read.
class SystemClock final : public Clock {
 public:
  Time now() const override {
    return std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
  }
};

}  // namespace throttlex
