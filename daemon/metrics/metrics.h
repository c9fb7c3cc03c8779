// Request metrics for Prometheus, aggregated per thread: recording a request touches only the
// calling thread's own cache line (no shared atomic per request); a scrape sums the threads.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/adaptive/exchange.h"
#include "daemon/base/node_info.h"
#include "daemon/base/route.h"
#include "daemon/routing/forwarder.h"
#include "daemon/service/limiter_service.h"
#include "daemon/service/overload.h"
#include "daemon/slots/slot_keeper.h"
#include "limiter/clock.h"
#include "limiter/decision.h"
#include "limiter/result.h"
#include "persistence/snapshot_writer.h"

namespace throttlex {

enum class Api : std::uint8_t { kHttp = 0, kRpc = 1, kRls = 2 };
// kShed: answered by the rule's overload policy without a decision (daemon/service/overload.h).
enum class Outcome : std::uint8_t { kAllowed = 0, kLimited = 1, kError = 2, kShed = 3 };

class HttpServer;
class Store;

// Snapshots, recovery and handoffs (docs/persistence.md), for /metrics.
struct PersistenceStats {
  bool has_store = false;  // a snapshot store is configured: the redis/snapshot families exist
  persistence::SnapshotStoreStats store;
  persistence::SnapshotWriterStats writer;
  SlotKeeperStats slots;
};

// Latency histogram bounds in seconds (throttlex_request_duration_seconds).
inline constexpr std::array<double, 12> kLatencyBounds = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1};

class Metrics {
 public:
  struct Options {
    std::string node_id;
    std::string version;
    const Store* store = nullptr;                // for throttlex_keys and throttlex_evictions_total
    ClusterStatsProvider cluster;                // may be empty: no gossip metrics
    std::function<ForwarderStats()> forwarding;  // may be empty: no forwarding metrics
    std::function<PersistenceStats()> persistence;  // may be empty: no persistence metrics
    // May be empty: no adaptive metrics (docs/adaptive.md).
    std::function<std::vector<AdaptiveRuleStats>()> adaptive_rules = {};
    std::function<ExchangeStats()> adaptive_exchange = {};
    std::function<RulesSyncStats()> rules_sync = {};  // may be empty: no rules sync metrics
  };
  explicit Metrics(Options options);
  ~Metrics();

  // Thread-safe and wait-free: each thread writes its own slot (assigned on first use). `count`:
  // that many requests alike, each with this latency (here and below).
  void recordRequest(Api api, RouteKind route, Outcome outcome, Duration latency,
                     std::uint64_t count = 1);
  // One decided check of `rule` ("default" for inline limits), where it entered: the
  // throttlex_rule_* families, and throttlex_shadow_limited_total. At most kMaxRuleSeries rules per
  // thread; more count as "_other". Thread-safe (each thread's map behind a lock of its own,
  // uncontended but for scrapes).
  void recordRule(std::string_view rule, const Decision& decision, bool shadow,
                  std::uint64_t count = 1);
  static constexpr std::size_t kMaxRuleSeries = 1000;
  // One check shed (throttlex_shed_total{reason,priority}). Thread-safe and wait-free.
  void recordShed(ShedReason reason, Priority priority, std::uint64_t count = 1);
  // The calling worker loop's standing lag and shed share of normal checks, at its latest probe
  // (OverloadDetector::standingLag(), share()): throttlex_loop_lag_seconds and
  // throttlex_shed_share, the largest over the loops. Thread-safe and wait-free.
  void recordLoop(Duration standing_lag, double share);
  // One answered check where it entered: recordRequest() with its kind (allowed, limited, shed,
  // error), and recordRule() for a decision or recordShed() for a shed one.
  void recordCheck(Api api, const Result<CheckOutcome>& outcome, Duration latency,
                   std::uint64_t count = 1);
  static constexpr const char* kOtherRules = "_other";

  // The Prometheus text exposition of everything (for tests and the /metrics endpoint).
  std::string render() const;

  // Starts serving GET /metrics on bind_address:port, on a thread of its own (our Asio HTTP
  // server: idle or slow connections cost a socket each and never hold up a scrape). port 0: any.
  // Returns the bound port, or an error (address in use, bad address). `clock` must outlive this.
  Result<int> serve(const std::string& bind_address, std::uint16_t port, const Clock& clock);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace throttlex
