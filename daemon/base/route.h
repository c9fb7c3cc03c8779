// How a check's answer was reached (metrics label `route`, the `route` field of answers).
#pragma once

#include <cstdint>
#include <string_view>

namespace throttlex {

enum class RouteKind : std::uint8_t {
  kLocal = 0,      // this node owns the key and decided it
  kForwarded = 1,  // the key's owner decided it (one hop away)
  kDegraded = 2,   // the owner could not be reached: decided here by the rule's degraded policy
};

inline std::string_view nameOf(RouteKind r) {
  switch (r) {
    case RouteKind::kLocal:
      return "local";
    case RouteKind::kForwarded:
      return "forwarded";
    case RouteKind::kDegraded:
      return "degraded";
  }
  return "local";
}

}  // namespace throttlex
