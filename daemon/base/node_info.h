// What a node says about itself (admin nodeInfo, throttlectl status, /v1/info).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "daemon/base/slot_stats.h"

namespace throttlex {

inline constexpr const char* kVersion = "0.1.0";

// One member of the cluster as this node sees it (/v1/cluster).
struct MemberInfo {
  std::string node_id;
  std::string gossip_address;
  std::string rpc_address;
  std::string http_address;
  std::string state;  // alive, suspect, dead, left
  std::uint64_t incarnation = 0;
};
struct PersistenceInfo {
  std::string redis;  // empty: memory only
  bool connected = false;
  std::uint64_t pending = 0, lag_ms = 0, written = 0, write_errors = 0;
  SlotKeeperStats slots;  // recovery, parked checks, handoffs (daemon/base/slot_stats.h)
};

struct NodeInfo {
  std::string node_id;
  std::string version = kVersion;
  std::string http_address;
  std::string rpc_address;
  std::string metrics_address;
  std::uint64_t uptime_ms = 0;
  std::uint64_t keys = 0;
  std::uint64_t evictions = 0;
  std::uint32_t rules = 0;
  // The rules version the node runs (daemon/service/rules_doc.h).
  std::uint64_t rules_counter = 0, rules_digest = 0;
  std::string rules_origin;  // the node that made it; empty: a rules file as loaded
  std::int64_t rules_made_ms = 0;
  std::vector<MemberInfo> members;  // empty when the node is not in a cluster
  PersistenceInfo persistence;
};

using NodeInfoProvider = std::function<NodeInfo()>;

// Rules across the cluster (daemon/rules_sync/rules_sync.h): RulesSync::stats(), for /metrics.
struct RulesSyncStats {
  std::uint64_t counter = 0;   // of the version the node runs
  std::uint64_t calls = 0;     // syncRules calls made to other members
  std::uint64_t failures = 0;  // of those, failed
  std::uint64_t adopted = 0;   // newer versions taken from other members
  std::uint64_t refused = 0;   // versions that failed their checks or did not load here
};

using MembersProvider = std::function<std::vector<MemberInfo>()>;

// Gossip counters for /metrics.
struct ClusterStats {
  std::uint64_t alive = 0, suspect = 0, dead = 0,
                left = 0;  // members by state (this node included)
  std::uint64_t packets_sent = 0, packets_received = 0;
  std::uint64_t dropped_malformed = 0, dropped_foreign_cluster = 0, dropped_version = 0,
                dropped_misdirected = 0;
  std::uint64_t dropped_member_cap = 0;       // news of members past the member cap (1024)
  std::uint64_t dropped_unauthenticated = 0;  // not sealed, or not by a key in the keyring
  bool keyring = false;                       // gossip sealed and verified (--gossip-keyring)
  std::uint32_t primary_key_id = 0;           // the key that seals (0: none)
  std::uint64_t dropped_oversized = 0;        // push/pull streams over the size bound
  std::uint64_t dropped_stream_limit = 0;     // push/pull streams over the concurrent-stream bound
  std::uint64_t send_failures = 0;
  std::uint64_t accept_errors = 0;  // failed accepts of push/pull streams (retried after 100 ms)
};
using ClusterStatsProvider = std::function<ClusterStats()>;

}  // namespace throttlex
