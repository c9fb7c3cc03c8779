// Members of a gossip cluster and the events the membership reports about them.
#pragma once

#include <cstdint>
#include <string>

#include "limiter/clock.h"

namespace throttlex::gossip {

// Wire values (gossip.capnp MemberState): append only.
enum class MemberState : std::uint8_t {
  kAlive = 0,
  kSuspect = 1,
  kDead = 2,  // failed: declared after a suspicion timed out
  kLeft = 3,  // left on purpose; never reported as dead
};

const char* nameOf(MemberState state);

// What a node tells the cluster about itself besides its gossip address.
struct NodeMeta {
  std::string rpc_address;   // "host:port" of the Cap'n Proto RPC server
  std::string http_address;  // "host:port" of the HTTP API
  std::uint16_t protocol_version = 0;

  friend bool operator==(const NodeMeta&, const NodeMeta&) = default;
};

struct Member {
  std::string id;       // unique, stable node id
  std::string address;  // gossip "host:port"
  NodeMeta meta;
  std::uint64_t incarnation = 0;
  MemberState state = MemberState::kAlive;
  Time state_since{};  // local time of the last state change
};

enum class EventType : std::uint8_t {
  kJoined,   // first seen, or back after dead/left
  kUpdated,  // address or metadata changed, or a suspicion was refuted (state is alive again)
  kSuspect,
  kDead,
  kLeft,
};

const char* nameOf(EventType type);

struct Event {
  EventType type;
  Member member;  // the member after the change
};

}  // namespace throttlex::gossip
