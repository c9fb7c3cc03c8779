// Human-readable periods: "250ms", "1s", "60s", "5m", "1h", "1d", "365d". Used by the HTTP API, the
// rules file, the client library and throttlectl, so all of them accept exactly the same spellings.
#pragma once

#include <string>
#include <string_view>

#include "limiter/clock.h"
#include "limiter/result.h"

namespace throttlex {

// A positive integer followed by one unit: ms, s, m, h, d. A bare integer means milliseconds.
// Range checks against the algorithms' bounds happen in Limit::make.
Result<Duration> parsePeriod(std::string_view text);
// The shortest exact spelling: 60000ms -> "1m", 1500ms -> "1500ms".
std::string formatPeriod(Duration period);

}  // namespace throttlex
