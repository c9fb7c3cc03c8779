// How snapshot entries are laid out in Redis (docs/persistence.md, "Data layout"). Pure functions,
// shared by RedisStore and the tests that inspect or corrupt Redis directly.
//
// Per slot two keys that share a hash tag (so a Redis Cluster keeps them on one node and one script
// may touch both):
//   tx:{<cluster>:<slot>}:h   hash   field = key hash (16 bytes), value = encodeValue() (25 bytes)
//   tx:{<cluster>:<slot>}:z   zset   member = key hash, score = expiry (Unix ms)
// Both keys carry PEXPIREAT = the latest expiry among their entries + 1 ms, so a slot whose
// entries have all expired disappears by itself. Expired entries of a slot that still has live ones
// are removed by the write script (below) on the next write to that slot, and never returned by
// reads, which check each entry's expiry.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "limiter/key.h"
#include "limiter/state.h"

namespace throttlex::persistence::redis_layout {

inline constexpr std::uint8_t kValueVersion = 1;  // first byte of every value; bump on change
inline constexpr std::size_t kFieldSize = 16;
inline constexpr std::size_t kValueSize = 25;

// False for names that would break the key syntax: empty, longer than 64 bytes, or containing
// '{', '}' or whitespace.
bool validClusterName(std::string_view cluster);
std::string hashKey(std::string_view cluster, std::uint32_t slot);
std::string indexKey(std::string_view cluster, std::uint32_t slot);

std::string encodeField(const KeyHash& key);  // hi then lo, big-endian
std::optional<KeyHash> decodeField(std::string_view field);

struct Value {
  State state;
  std::int64_t expiry_ms = 0;
};
std::string encodeValue(const State& state,
                        std::int64_t expiry_ms);  // version, w0, w1, expiry (LE)
// nullopt for anything that is not a value this version wrote: wrong size or version, an empty
// state, or a negative expiry.
std::optional<Value> decodeValue(std::string_view value);

// The write script. KEYS[1] = hash key, KEYS[2] = index key; ARGV[1] = now (Unix ms), then one
// (field, value, expiry ms) triple per entry. Returns the number of foreign keys it replaced.
extern const char* const kWriteScript;
// Entries of expired keys the script removes per call at most, so one call's work stays bounded.
inline constexpr int kCleanupPerWrite = 256;

}  // namespace throttlex::persistence::redis_layout
