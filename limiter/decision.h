// The answer to "may this key spend `cost` units now?".
#pragma once

#include <cstdint>

#include "limiter/clock.h"

namespace throttlex {

// retry_after when the request can never be admitted (cost above the capacity, or limit 0).
inline constexpr Duration kRetryNever = Duration(-1);

struct Decision {
  bool allowed = false;
  std::uint64_t limit = 0;      // the configured limit (units per period)
  std::uint64_t remaining = 0;  // units a request could take right now, after this one
  Duration reset_after{0};      // until the key is back to its neutral state (nothing consumed)
  Duration retry_after{0};      // 0 when allowed; until the same request would be allowed, or
                                // kRetryNever
  bool refused = false;         // a new key while the store was full of keys in use: not admitted,
                                // nothing recorded (not a limit decision; see Store)
  friend bool operator==(const Decision&, const Decision&) = default;
};

}  // namespace throttlex
