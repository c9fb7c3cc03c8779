// Encoding and decoding of gossip packets (Cap'n Proto, packed; see gossip.capnp).
//
// decode() is the trust boundary: any byte string gives a status, never a crash or an assertion.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gossip/keyring.h"
#include "gossip/message.h"

namespace throttlex::gossip {

enum class DecodeStatus : std::uint8_t {
  kOk,
  kTooLarge,         // longer than the bound for its channel
  kMalformed,        // not a valid envelope/body, or a value out of range
  kVersion,          // an envelope version this node does not speak
  kForeignCluster,   // another cluster's packet
  kUnknownType,      // a message type from a newer protocol
  kUnauthenticated,  // not sealed while keys are required, or sealed while we hold no keys
  kAuthFailed,       // sealed with a key we do not hold, or the tag does not verify
};

const char* nameOf(DecodeStatus status);

// Bounds a decoded message must keep (more: kMalformed), checked before anything is copied out
// of the packet: a list's length is read from the packet, so without a bound a few bytes could
// claim a million members. Far above a real cluster's needs.
inline constexpr std::size_t kMaxListEntries = 4096;  // members of a push/pull, updates
inline constexpr std::size_t kMaxIdBytes = 255;       // a node id
inline constexpr std::size_t kMaxAddressBytes = 255;  // host:port (gossip, RPC, HTTP)

// How packets are authenticated. Without a keyring (or with an empty one) packets are plain
// (keyId 0), as before keys existed. With keys, the body is sealed with AES-256-GCM under the
// primary key; the envelope's version, keyId and cluster name are authenticated with it. The two
// switches exist for turning keys on in a running cluster (docs/security.md): install keys with
// both off, then turn outgoing on at every node, then incoming.
struct Security {
  const Keyring* keyring = nullptr;
  bool verify_incoming = true;  // with keys: a plain packet is refused (kUnauthenticated)
  bool verify_outgoing = true;  // with keys: packets are sealed

  bool keyed() const { return keyring != nullptr && !keyring->empty(); }
};

std::vector<std::uint8_t> encode(const Message& message, std::string_view cluster,
                                 const Security& security = {});

// `out` is valid only when kOk is returned. `max_bytes` bounds the input before any parsing; a
// sealed body is opened (and so authenticated) before it is parsed.
DecodeStatus decode(std::span<const std::uint8_t> bytes, std::string_view cluster,
                    std::size_t max_bytes, Message& out, const Security& security = {});

}  // namespace throttlex::gossip
