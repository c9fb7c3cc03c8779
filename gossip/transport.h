// How the membership core reaches the network: an interface with a real implementation (UDP for
// datagrams, TCP for streams; not built yet) and an in-memory one (sim_network.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace throttlex::gossip {

enum class Channel : std::uint8_t {
  kDatagram,  // probes and gossip: unreliable, small (Timing::max_datagram_bytes)
  kStream,    // push/pull full state: reliable, larger (Timing::max_stream_bytes)
};

struct Packet {
  std::string from;  // the sender's address as the transport saw it
  Channel channel = Channel::kDatagram;
  std::vector<std::uint8_t> bytes;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Fire and forget; failures are silent (the protocol tolerates loss). Must not block: called
  // from inside Membership::tick()/receive().
  virtual void send(const std::string& to, Channel channel, std::vector<std::uint8_t> bytes) = 0;
};

}  // namespace throttlex::gossip
