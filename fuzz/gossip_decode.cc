// Fuzz target: the gossip codec (gossip/codec.h) on whatever a datagram or stream may carry.
// Every input is decoded three ways: as a plain packet, as a packet to a node that holds a key
// (sealed packets are opened first; a forged one must fail authentication, never be parsed),
// and with the stream bound. A packet that decodes must encode again without trouble.
#include <cstddef>
#include <cstdint>
#include <span>

#include "gossip/codec.h"
#include "gossip/keyring.h"

using namespace throttlex::gossip;

namespace {

const Keyring& keyring() {
  static Keyring* k = [] {
    auto* ring = new Keyring();
    Key key{};
    for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i * 7 + 1);
    (void)ring->install(key);
    return ring;
  }();
  return *k;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  Message m;
  if (decode(bytes, "fuzz", 1400, m) == DecodeStatus::kOk) (void)encode(m, "fuzz");
  Message streamed;
  (void)decode(bytes, "fuzz", 4u << 20, streamed);
  Security keyed;
  keyed.keyring = &keyring();
  Message sealed;
  if (decode(bytes, "fuzz", 1400, sealed, keyed) == DecodeStatus::kOk) {
    (void)encode(sealed, "fuzz", keyed);
  }
  return 0;
}
