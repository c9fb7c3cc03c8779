// Encoding and decoding of gossip packets (Cap'n Proto, packed; see gossip.capnp).
//
// decode() is the trust boundary: any byte string gives a status, never a crash or an assertion.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gossip/message.h"

namespace throttlex::gossip {

enum class DecodeStatus : std::uint8_t {
  kOk,
  kTooLarge,        // longer than the bound for its channel
  kMalformed,       // not a valid envelope/body, or a value out of range
  kVersion,         // an envelope version this node does not speak
  kForeignCluster,  // another cluster's packet
  kUnknownType,     // a message type from a newer protocol
};

const char* nameOf(DecodeStatus status);

std::vector<std::uint8_t> encode(const Message& message, std::string_view cluster);

// `out` is valid only when kOk is returned. `max_bytes` bounds the input before any parsing.
DecodeStatus decode(std::span<const std::uint8_t> bytes, std::string_view cluster,
                    std::size_t max_bytes, Message& out);

}  // namespace throttlex::gossip
