// Key identity: a 128-bit hash of (namespace, key, algorithm, period). No key strings are kept on
// the hot path. The namespace is the rule name for named rules and empty for inline limits. The
// algorithm and period are part of the identity (as in Envoy's ratelimit cache keys), so changing a
// rule's period or algorithm starts fresh state instead of misreading old state; changing its limit
// or burst keeps the state (docs/algorithms.md, "Changing a limit").
#pragma once

#include <cstdint>
#include <string_view>

#include "limiter/clock.h"
#include "limiter/limit.h"

namespace throttlex {

struct KeyHash {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;  // never both zero: all-zero marks an empty slot in the store
  friend bool operator==(const KeyHash&, const KeyHash&) = default;
};

KeyHash hashKey(std::string_view ns, std::string_view key, Algorithm algorithm, Duration period);
inline KeyHash hashKey(std::string_view ns, std::string_view key, const Limit& limit) {
  return hashKey(ns, key, limit.algorithm(), limit.period());
}

// Slot of a key for ownership (the ring maps slots to nodes). Uses bits the store does not use to
// pick its shard, so a node's slots spread over all shards.
inline constexpr std::uint32_t kSlotCount = 4096;
inline std::uint32_t slotOf(const KeyHash& k) { return static_cast<std::uint32_t>(k.lo >> 52); }

}  // namespace throttlex
