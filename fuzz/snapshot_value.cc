// Fuzz target: what the snapshot store reads back from Redis (persistence/redis_layout.h): a hash
// field (a key hash) and a value (a state). Anything may be in a Redis others can write to; what
// decodes is range-checked as recovery does (plausibleAt) and must encode to the same bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "limiter/state.h"
#include "persistence/redis_layout.h"

using namespace throttlex;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const std::size_t split = size == 0 ? 0 : data[0] % (size + 1);
  if (auto key = persistence::redis_layout::decodeField(bytes.substr(0, split))) {
    if (persistence::redis_layout::encodeField(*key) != bytes.substr(0, split)) __builtin_trap();
  }
  if (auto value = persistence::redis_layout::decodeValue(bytes.substr(split))) {
    (void)plausibleAt(value->state, 1'700'000'000'000);
    if (persistence::redis_layout::encodeValue(value->state, value->expiry_ms) !=
        bytes.substr(split)) {
      __builtin_trap();
    }
  }
  return 0;
}
