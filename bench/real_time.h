// The load tools' real time, read through the clock adapter (limiter/clock.h, the one file that
// names the standard library's clocks). A load tool is a program of its own; this is its clock,
// made once. RealTime has the shape of a standard clock, so timers and sleep_until take its
// time points as they are (an Instant is the standard steady clock's time point).
#pragma once

#include "limiter/clock.h"

namespace throttlex::bench {

struct RealTime {
  using duration = Duration;
  using time_point = Instant;
  static Instant now() { return clock().monotonic(); }
  static Time wallNow() { return clock().now(); }

 private:
  static const SystemClock& clock() {
    static const SystemClock real;
    return real;
  }
};

}  // namespace throttlex::bench
