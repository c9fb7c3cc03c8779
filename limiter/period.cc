#include "limiter/period.h"

#include <array>
#include <charconv>

namespace throttlex {
namespace {

struct Unit {
  std::string_view suffix;
  std::int64_t ms;
};
// Longest suffixes first so "ms" is not read as "m" + "s".
constexpr std::array<Unit, 5> kUnits = {
    {{"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}}};

}  // namespace

Result<Duration> parsePeriod(std::string_view text) {
  const auto bad = [&] {
    return invalidArgument(
        "invalid period '" + std::string(text) +
        "' (expected a positive integer with a unit: ms, s, m, h or d, e.g. 60s)");
  };
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 12) return bad();
  std::int64_t value = 0;
  std::from_chars(text.data(), text.data() + digits, value);
  const std::string_view suffix = text.substr(digits);
  std::int64_t unit_ms = 0;
  if (suffix.empty()) unit_ms = 1;
  for (const Unit& u : kUnits) {
    if (suffix == u.suffix) unit_ms = u.ms;
  }
  if (unit_ms == 0 || value <= 0) return bad();
  // Far beyond any accepted period, and it keeps value * unit_ms and the ns conversion in range.
  constexpr std::int64_t kCeilingMs = std::int64_t{1} << 40;  // about 35 years
  if (value > kCeilingMs / unit_ms) {
    return invalidArgument("period '" + std::string(text) + "' is too long (at most 365d)");
  }
  return std::chrono::duration_cast<Duration>(std::chrono::milliseconds(value * unit_ms));
}

std::string formatPeriod(Duration period) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(period).count();
  for (auto it = kUnits.rbegin(); it != kUnits.rend(); ++it) {
    if (ms != 0 && ms % it->ms == 0) return std::to_string(ms / it->ms) + std::string(it->suffix);
  }
  return std::to_string(ms) + "ms";
}

}  // namespace throttlex
