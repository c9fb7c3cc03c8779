// Minimal structured logging to stderr: one line per event, "ts level msg" (UTC, milliseconds).
// Thread-safe (one fprintf per line). Kept tiny on purpose; the daemon logs events, not requests.
#pragma once

#include <cstdio>
#include <string>

namespace throttlex {

enum class LogLevel { kInfo, kWarn, kError };

class Clock;
// Where lines take their timestamp from (main sets the system clock once, before any thread
// starts; it must outlive logging). Unset, lines carry "-" instead of a time.
void setLogClock(const Clock* clock);

void log(LogLevel level, const std::string& message);
inline void logInfo(const std::string& m) {
  log(LogLevel::kInfo, m);
}
inline void logWarn(const std::string& m) {
  log(LogLevel::kWarn, m);
}
inline void logError(const std::string& m) {
  log(LogLevel::kError, m);
}

}  // namespace throttlex
