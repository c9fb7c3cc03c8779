// The decoded form of gossip messages (gossip.capnp is the wire form; codec.h converts).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gossip/member.h"

namespace throttlex::gossip {

// One fact about one member, disseminated by piggy-back and carried in push/pull.
struct Update {
  MemberState state = MemberState::kAlive;
  std::string id;
  std::string address;
  std::uint64_t incarnation = 0;
  NodeMeta meta;
  std::string from;  // suspect/dead: the node that raised it
};

enum class MessageType : std::uint8_t {
  kGossip,    // updates only
  kPing,      // seq, target_id
  kPingReq,   // seq, target_id, target_address: ping the target for me
  kAck,       // seq
  kPushPull,  // join, reply, members
};

struct Message {
  std::string sender_id;
  std::string sender_address;
  MessageType type = MessageType::kGossip;
  std::uint32_t seq = 0;
  std::string target_id;
  std::string target_address;
  bool join = false;
  bool reply = false;
  std::vector<Update> members;  // push/pull: the sender's full state
  std::vector<Update> updates;  // piggy-backed
};

// Rough upper bound of an update's encoded size, for filling a datagram's budget.
inline std::size_t estimatedSize(const Update& u) {
  return 48 + u.id.size() + u.address.size() + u.meta.rpc_address.size() +
         u.meta.http_address.size() + u.from.size();
}

}  // namespace throttlex::gossip
