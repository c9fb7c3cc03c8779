#include "daemon/base/log.h"

#include <atomic>
#include <chrono>
#include <ctime>

#include "limiter/clock.h"

namespace throttlex {
namespace {

std::atomic<const Clock*> g_clock{nullptr};

}  // namespace

void setLogClock(const Clock* clock) {
  g_clock.store(clock, std::memory_order_release);
}

void log(LogLevel level, const std::string& message) {
  const char* lvl = level == LogLevel::kInfo ? "INFO" : level == LogLevel::kWarn ? "WARN" : "ERROR";
  const Clock* clock = g_clock.load(std::memory_order_acquire);
  if (clock == nullptr) {
    std::fprintf(stderr, "- %s %s\n", lvl, message.c_str());
    return;
  }
  const auto since_epoch =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock->now().time_since_epoch());
  const auto secs = static_cast<std::time_t>(since_epoch.count() / 1000);
  const auto ms = since_epoch.count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  std::fprintf(stderr, "%s.%03dZ %s %s\n", ts, static_cast<int>(ms), lvl, message.c_str());
}

}  // namespace throttlex
