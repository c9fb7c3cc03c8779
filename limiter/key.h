// Key identity: a 128-bit hash of (namespace, key, algorithm, period), of which 12 bits are the
// key's slot (below). No key strings are kept on
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

// Slot of a key for ownership (the ring maps slots to nodes). A slot depends on the namespace and
// the key only, not on the limit: a client that knows a rule's name but not its algorithm or period
// (and a node whose copy of the rule differs for a moment) still finds the same owner. hashKey()
// puts slotOf(ns, key) into the top 12 bits of `lo`, bits the store does not use to pick its shard,
// so a node's slots spread over all shards; the other 116 bits identify the key and its limit.
inline constexpr std::uint32_t kSlotCount = 4096;
inline constexpr int kSlotShift = 52;  // 64 - log2(kSlotCount)
std::uint32_t slotOf(std::string_view ns, std::string_view key);
inline std::uint32_t slotOf(const KeyHash& k) {
  return static_cast<std::uint32_t>(k.lo >> kSlotShift);
}

}  // namespace throttlex
