#include "limiter/key.h"

#include <array>
#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace throttlex {
namespace {

// Fields are length-prefixed, so ("ab", "c") and ("a", "bc") differ.
struct Header {
  std::uint32_t ns_len;
  std::uint32_t key_len;
  std::int64_t period_ns;
  std::uint8_t algorithm;
};

// Copies `s` to `at` and returns the end. An empty view may hold a null pointer, which memcpy must
// not be given, even for 0 bytes (UBSan reports it).
char* append(char* at, std::string_view s) {
  if (!s.empty()) std::memcpy(at, s.data(), s.size());
  return at + s.size();
}

// Length-prefixed like Header, so ("ab", "c") and ("a", "bc") land apart.
std::uint64_t slotHash(std::string_view ns, std::string_view key) {
  const auto ns_len = static_cast<std::uint32_t>(ns.size());
  std::array<char, 256> buf;
  if (4 + ns.size() + key.size() <= buf.size()) {
    std::memcpy(buf.data(), &ns_len, 4);
    append(append(buf.data() + 4, ns), key);
    return XXH3_64bits(buf.data(), 4 + ns.size() + key.size());
  }
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, &ns_len, 4);
  XXH3_64bits_update(&st, ns.data(), ns.size());
  XXH3_64bits_update(&st, key.data(), key.size());
  return XXH3_64bits_digest(&st);
}

KeyHash finish(XXH128_hash_t h, std::uint32_t slot) {
  constexpr std::uint64_t kLowBits = (std::uint64_t{1} << kSlotShift) - 1;
  KeyHash k{h.high64, (h.low64 & kLowBits) | (std::uint64_t{slot} << kSlotShift)};
  if (k.hi == 0 && k.lo == 0) k.lo = 1;  // slot 0 either way
  return k;
}

}  // namespace

std::uint32_t slotOf(std::string_view ns, std::string_view key) {
  return static_cast<std::uint32_t>(slotHash(ns, key) >> kSlotShift);
}

KeyHash hashKey(std::string_view ns, std::string_view key, Algorithm algorithm, Duration period) {
  const std::uint32_t slot = slotOf(ns, key);
  const Header hdr{static_cast<std::uint32_t>(ns.size()), static_cast<std::uint32_t>(key.size()),
                   period.count(), static_cast<std::uint8_t>(algorithm)};
  constexpr std::size_t kHdr = 17;  // the packed size of Header's fields
  std::array<char, 256> buf;
  if (kHdr + ns.size() + key.size() <= buf.size()) {  // the common case: one shot, no state
    std::memcpy(buf.data(), &hdr.ns_len, 4);
    std::memcpy(buf.data() + 4, &hdr.key_len, 4);
    std::memcpy(buf.data() + 8, &hdr.period_ns, 8);
    std::memcpy(buf.data() + 16, &hdr.algorithm, 1);
    append(append(buf.data() + kHdr, ns), key);
    return finish(XXH3_128bits(buf.data(), kHdr + ns.size() + key.size()), slot);
  }
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  XXH3_128bits_update(&st, &hdr.ns_len, 4);
  XXH3_128bits_update(&st, &hdr.key_len, 4);
  XXH3_128bits_update(&st, &hdr.period_ns, 8);
  XXH3_128bits_update(&st, &hdr.algorithm, 1);
  XXH3_128bits_update(&st, ns.data(), ns.size());
  XXH3_128bits_update(&st, key.data(), key.size());
  return finish(XXH3_128bits_digest(&st), slot);
}

}  // namespace throttlex
