// The daemon's configuration: read once in main() from, in rising precedence, a config file
// (--config, TOML "key = value" lines with the long option names), THROTTLEX_* environment
// variables (and REDIS_HOST), and command-line flags. Passed down by value; nothing below main
// reads flags or the environment.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "gossip/timing.h"

namespace throttlex {

struct Config {
  std::string node_id;           // default: <hostname>:<http port>
  std::string bind = "0.0.0.0";  // address every listener binds
  std::string advertise;         // address peers and clients use; default: bind, or hostname
  std::uint16_t http_port = 8080;
  std::uint16_t rpc_port = 7400;
  std::uint16_t gossip_port = 7946;
  std::uint16_t metrics_port = 9464;
  int rls_port = -1;  // Envoy's rate limit service (gRPC; docs/envoy.md); -1: off, 0: any port
  bool rls_response_headers = false;  // RateLimit headers in every RLS answer
  // Open connections per API (HTTP, RPC); 0: derived from the descriptor limit (daemon/node).
  std::size_t max_connections = 0;
  // Address /metrics binds (e.g. an internal network only, or 127.0.0.1 beside a local agent);
  // default: bind.
  std::string metrics_bind;
  std::string metrics_advertise;  // host others scrape /metrics at: advertise, or metrics_bind
  std::vector<std::string> join;  // seed host:port list (gossip)
  std::string cluster_name = "throttlex";  // gossip packets of other clusters are dropped
  std::string gossip_preset = "lan";       // local | lan | wan timing, as given
  gossip::Timing gossip_timing = gossip::Timing::lan();  // the preset's timing
  std::string gossip_keyring;  // keyring file (docs/security.md); empty: gossip unauthenticated
  bool gossip_verify_incoming = true;  // with a keyring: refuse unsealed packets
  bool gossip_verify_outgoing = true;  // with a keyring: seal every packet
  // TLS on the RPC port, to peers and for handoffs (docs/security.md); all three or none.
  std::string tls_ca, tls_cert, tls_key;
  // Turning TLS on in a running cluster (docs/security.md): accept plain connections too
  // (incoming optional), and connect to peers in plain TCP (outgoing off), until every node has
  // its certificate.
  bool tls_incoming_required = true;
  bool tls_outgoing = true;
  std::string redis;                // host:port of the snapshot store; empty: memory only
  std::string redis_host;           // parsed from `redis` (validated)
  std::string redis_user;           // ACL user for AUTH; empty: the default user
  std::string redis_password_file;  // AUTH password, read from this file; empty: no AUTH
  std::uint16_t redis_port = 0;
  std::string rules;          // rules file (YAML)
  bool inline_limits = true;  // off: checks entering here must name a rule (docs/security.md)
  int threads = 0;            // worker threads per API; 0: one per core
  std::uint64_t max_keys = 10'000'000;  // hard cap on live keys in the store
  int rpc_idle_timeout_s = 600;         // RPC connections silent this long are closed (0: never)
  int owner_silence_ms = 500;           // T: owners silent for less are never decided for elsewhere
  int overload_target_ms = 10;          // loop lag above this is queueing (0: never shed)
  int overload_interval_ms = 100;       // queueing that lasts this long is overload
  int snapshot_interval_ms = 100;       // between snapshot flushes to Redis
  int recovery_timeout_ms = 1000;       // longest wait for a slot's state (Redis, handoff)
  std::string recovery = "eager";       // start-up reads: eager (every slot) | lazy (on demand)
  bool lazy_recovery = false;           // recovery == "lazy"
  std::string config_file;
};

using GetEnv = std::function<const char*(const char*)>;

// The parsed configuration, or the exit code to end with (0 after --help/--version; 2 after a
// usage error, whose message names the option and has been printed to stderr).
std::variant<Config, int> loadConfig(int argc, const char* const* argv, const GetEnv& getenv);

}  // namespace throttlex
