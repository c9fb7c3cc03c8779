#include "daemon/metrics/metrics.h"

#include <unistd.h>
#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include <prometheus/collectable.h>
#include <prometheus/text_serializer.h>

#include "daemon/http/http_server.h"
#include "limiter/mutex.h"
#include "limiter/store.h"

namespace throttlex {
namespace {

constexpr int kApis = 3, kRoutes = 3, kOutcomes = 4;
constexpr const char* kApiNames[kApis] = {"http", "rpc", "rls"};
constexpr const char* kRouteNames[kRoutes] = {"local", "forwarded", "degraded"};
constexpr const char* kOutcomeNames[kOutcomes] = {"allowed", "limited", "error", "shed"};
constexpr std::size_t kBuckets = kLatencyBounds.size() + 1;  // the last is +Inf

// Per rule: checks by decision, near the limit, shadow decisions that would have limited.
struct RuleCounters {
  std::uint64_t allowed = 0, limited = 0, near_limit = 0, shadow_limited = 0;
};

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// One thread's counters. Only the owning thread writes (relaxed load + store, no lock prefix);
// scrapes read with relaxed loads. alignas keeps two threads' slots off one cache line. The rule
// map takes an uncontended lock of its own (a scrape reads it while the thread may insert).
struct alignas(64) Slot {
  std::atomic<std::uint64_t> requests[kApis][kRoutes][kOutcomes] = {};
  std::atomic<std::uint64_t> buckets[kApis][kBuckets] = {};
  std::atomic<std::uint64_t> latency_ns[kApis] = {};
  std::atomic<std::uint64_t> shadow_limited = {};
  std::atomic<std::uint64_t> shed[kShedReasonCount][kPriorityCount] = {};
  std::atomic<std::int64_t> loop_lag_ns = {};
  std::atomic<double> shed_share = {};
  mutable Mutex rules_mu;
  std::unordered_map<std::string, RuleCounters, StringHash, std::equal_to<>> rules
      GUARDED_BY(rules_mu);
};

void bump(std::atomic<std::uint64_t>& c, std::uint64_t by = 1) {
  c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

std::atomic<std::uint64_t> next_id{1};

struct SlotCache {
  std::uint64_t owner = 0;
  Slot* slot = nullptr;
};
thread_local SlotCache tls_slot;

double residentBytes() {
  std::ifstream statm("/proc/self/statm");
  double pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return pages_resident * static_cast<double>(sysconf(_SC_PAGESIZE));
}

prometheus::ClientMetric valued(double v,
                                std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = v;
  m.gauge.value = v;
  return m;
}

}  // namespace

struct Metrics::Impl final : prometheus::Collectable {
  explicit Impl(Options o) : options(std::move(o)), id(next_id.fetch_add(1)) {}

  Slot& slot() {
    if (tls_slot.owner != id) {
      MutexLock guard(mu);
      slots.push_back(std::make_unique<Slot>());
      tls_slot = {id, slots.back().get()};
    }
    return *tls_slot.slot;
  }

  std::vector<prometheus::MetricFamily> Collect() const override;
  void collectRequests(std::vector<prometheus::MetricFamily>& out) const;
  // throttlex_shed_total, throttlex_loop_lag_seconds, throttlex_shed_share.
  void collectOverload(std::vector<prometheus::MetricFamily>& out) const;
  void collectRules(std::vector<prometheus::MetricFamily>& out) const;

  const Options options;
  const std::uint64_t id;
  mutable Mutex mu;
  std::vector<std::unique_ptr<Slot>> slots GUARDED_BY(mu);  // slots are never removed
};

Metrics::Metrics(Options options) : impl_(std::make_shared<Impl>(std::move(options))) {}
Metrics::~Metrics() = default;

void Metrics::recordRequest(Api api, RouteKind route, Outcome outcome, Duration latency,
                            std::uint64_t count) {
  Slot& s = impl_->slot();
  const auto a = static_cast<std::size_t>(api);
  bump(s.requests[a][static_cast<std::size_t>(route)][static_cast<std::size_t>(outcome)], count);
  const double seconds = std::chrono::duration<double>(latency).count();
  std::size_t b = 0;
  while (b < kLatencyBounds.size() && seconds > kLatencyBounds[b]) ++b;
  bump(s.buckets[a][b], count);
  bump(s.latency_ns[a],
       count * static_cast<std::uint64_t>(std::max<std::int64_t>(0, latency.count())));
}

void Metrics::recordShed(ShedReason reason, Priority priority, std::uint64_t count) {
  bump(impl_->slot().shed[static_cast<std::size_t>(reason) - 1][static_cast<std::size_t>(priority)],
       count);
}

void Metrics::recordLoop(Duration standing_lag, double share) {
  Slot& s = impl_->slot();
  s.loop_lag_ns.store(standing_lag.count(), std::memory_order_relaxed);
  s.shed_share.store(share, std::memory_order_relaxed);
}

void Metrics::recordCheck(Api api, const Result<CheckOutcome>& outcome, Duration latency,
                          std::uint64_t count) {
  if (!outcome) return recordRequest(api, RouteKind::kLocal, Outcome::kError, latency, count);
  Outcome kind = outcome->allowed ? Outcome::kAllowed : Outcome::kLimited;
  if (outcome->shed) {
    kind = Outcome::kShed;
    recordShed(*outcome->shed, outcome->priority, count);
  } else {
    recordRule(outcome->policy, outcome->decision, outcome->shadow, count);
  }
  recordRequest(api, outcome->route, kind, latency, count);
}

void Metrics::recordRule(std::string_view rule, const Decision& decision, bool shadow,
                         std::uint64_t count) {
  Slot& s = impl_->slot();
  if (shadow && !decision.allowed) bump(s.shadow_limited, count);
  MutexLock guard(s.rules_mu);
  auto it = s.rules.find(rule);
  if (it == s.rules.end()) {
    // Bounded: rules are configuration, but a thread never keeps more than kMaxRuleSeries.
    const bool room = s.rules.size() < kMaxRuleSeries;
    it = s.rules.try_emplace(std::string(room ? rule : std::string_view(kOtherRules))).first;
  }
  RuleCounters& c = it->second;
  (decision.allowed ? c.allowed : c.limited) += count;
  if (shadow && !decision.allowed) c.shadow_limited += count;
  // 80% or more of the limit used once this check is counted.
  if (decision.allowed && decision.limit > 0 && decision.remaining * 5 <= decision.limit) {
    c.near_limit += count;
  }
}

namespace {

template <std::size_t N, typename Bound>
prometheus::ClientMetric histogram(const std::array<std::uint64_t, N + 1>& counts,
                                   const std::array<Bound, N>& bounds, double sum) {
  prometheus::ClientMetric m;
  std::uint64_t cumulative = 0;
  for (std::size_t b = 0; b <= N; ++b) {
    cumulative += counts[b];
    m.histogram.bucket.push_back({cumulative, b < N ? static_cast<double>(bounds[b])
                                                    : std::numeric_limits<double>::infinity()});
  }
  m.histogram.sample_count = cumulative;
  m.histogram.sample_sum = sum;
  return m;
}

void collectForwarding(const ForwarderStats& f, std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  prometheus::MetricFamily calls{"throttlex_forward_calls_total",
                                 "Batches of checks forwarded to their owners, by peer",
                                 MetricType::Counter,
                                 {}};
  prometheus::MetricFamily checks{"throttlex_forward_checks_total",
                                  "Checks forwarded to their owners, by peer",
                                  MetricType::Counter,
                                  {}};
  prometheus::MetricFamily failures{"throttlex_forward_failures_total",
                                    "Failed connects and forward calls, by peer",
                                    MetricType::Counter,
                                    {}};
  prometheus::MetricFamily breaker{
      "throttlex_breaker_state",
      "Circuit breaker per peer: 1 for the state it is in (closed, open, half_open)",
      MetricType::Gauge,
      {}};
  prometheus::MetricFamily opens{
      "throttlex_breaker_opens_total", "Times a peer's breaker opened", MetricType::Counter, {}};
  for (const PeerStats& p : f.peers) {
    calls.metric.push_back(valued(static_cast<double>(p.calls), {{"peer", p.node_id}}));
    checks.metric.push_back(valued(static_cast<double>(p.checks), {{"peer", p.node_id}}));
    failures.metric.push_back(valued(static_cast<double>(p.failures), {{"peer", p.node_id}}));
    opens.metric.push_back(valued(static_cast<double>(p.breaker_opens), {{"peer", p.node_id}}));
    for (auto s : {BreakerState::kClosed, BreakerState::kOpen, BreakerState::kHalfOpen}) {
      breaker.metric.push_back(
          valued(p.breaker == s ? 1 : 0, {{"peer", p.node_id}, {"state", std::string(nameOf(s))}}));
    }
  }
  out.push_back(std::move(calls));
  out.push_back(std::move(checks));
  out.push_back(std::move(failures));
  out.push_back(std::move(breaker));
  out.push_back(std::move(opens));
  out.push_back({"throttlex_forward_batch_size",
                 "Checks per forwarded batch",
                 MetricType::Histogram,
                 {histogram<kBatchSizeBounds.size()>(f.batch_sizes, kBatchSizeBounds,
                                                     static_cast<double>(f.batch_size_sum))}});
  out.push_back({"throttlex_forward_duration_seconds",
                 "Time from sending a forwarded batch to its owner's answer",
                 MetricType::Histogram,
                 {histogram<kForwardLatencyBounds.size()>(f.latency, kForwardLatencyBounds,
                                                          f.latency_sum_seconds)}});
  const struct {
    const char* name;
    const char* help;
    std::uint64_t value;
  } counters[] = {
      {"throttlex_degraded_total",
       "Checks decided here by their rule's degraded policy: owner and stand-in unreachable",
       f.degraded},
      {"throttlex_forward_standin_total",
       "Checks of an unreachable owner sent to its stand-in (the slot's runner-up)", f.standin},
      {"throttlex_forward_rerouted_total",
       "Forwarded checks sent on to another owner after a failure or a ring change", f.rerouted},
      {"throttlex_forward_not_decided_total",
       "Forwarded checks an owner did not decide because they reached it after their decide-by "
       "time (sent again)",
       f.not_decided},
      {"throttlex_forward_silences_total",
       "Times a peer answered nothing (batches, heartbeats) for the owner-silence time T and its "
       "breaker opened",
       f.silences},
      {"throttlex_thread_handoffs_total",
       "Checks handed from one thread of this process to another on their way (0 on the check "
       "path: each worker thread forwards its own; parked checks released later count)",
       f.handoffs},
  };
  for (const auto& c : counters) {
    out.push_back({c.name, c.help, MetricType::Counter, {valued(static_cast<double>(c.value))}});
  }
}

prometheus::MetricFamily single(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  return {name, help, type, {valued(value)}};
}

void collectStore(const StoreStats& st, std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  out.push_back({"throttlex_keys",
                 "Live keys in the store",
                 MetricType::Gauge,
                 {valued(static_cast<double>(st.entries))}});
  out.push_back({"throttlex_evictions_total",
                 "Restored states (snapshot, handoff) not kept because the store was full",
                 MetricType::Counter,
                 {valued(static_cast<double>(st.evictions))}});
  out.push_back({"throttlex_store_refused_total",
                 "Checks of new keys refused (503) because the store was full of keys in use",
                 MetricType::Counter,
                 {valued(static_cast<double>(st.refused))}});
  out.push_back({"throttlex_store_bytes",
                 "Memory held by the store's tables",
                 MetricType::Gauge,
                 {valued(static_cast<double>(st.table_bytes))}});
}

// The primary key's id as `throttlectl keyring list` prints it (8 hex digits), or "".
std::string keyIdLabel(const ClusterStats& c) {
  if (!c.keyring) return "";
  std::array<char, 9> out{};
  std::snprintf(out.data(), out.size(), "%08x", c.primary_key_id);
  return std::string(out.data(), 8);
}

void collectCluster(const ClusterStats& c, std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  out.push_back({"throttlex_members",
                 "Cluster members this node knows, by state",
                 MetricType::Gauge,
                 {valued(static_cast<double>(c.alive), {{"state", "alive"}}),
                  valued(static_cast<double>(c.suspect), {{"state", "suspect"}}),
                  valued(static_cast<double>(c.dead), {{"state", "dead"}}),
                  valued(static_cast<double>(c.left), {{"state", "left"}})}});
  out.push_back({"throttlex_gossip_packets_total",
                 "Gossip packets, by direction",
                 MetricType::Counter,
                 {valued(static_cast<double>(c.packets_sent), {{"direction", "sent"}}),
                  valued(static_cast<double>(c.packets_received), {{"direction", "received"}})}});
  out.push_back(
      {"throttlex_gossip_dropped_total",
       "Gossip packets received and dropped, by reason",
       MetricType::Counter,
       {valued(static_cast<double>(c.dropped_malformed), {{"reason", "malformed"}}),
        valued(static_cast<double>(c.dropped_foreign_cluster), {{"reason", "foreign_cluster"}}),
        valued(static_cast<double>(c.dropped_version), {{"reason", "version"}}),
        valued(static_cast<double>(c.dropped_misdirected), {{"reason", "misdirected"}}),
        valued(static_cast<double>(c.dropped_member_cap), {{"reason", "member_cap"}}),
        valued(static_cast<double>(c.dropped_unauthenticated), {{"reason", "unauthenticated"}}),
        valued(static_cast<double>(c.dropped_oversized), {{"reason", "oversized"}}),
        valued(static_cast<double>(c.dropped_stream_limit), {{"reason", "stream_limit"}})}});
  out.push_back({"throttlex_gossip_encrypted",
                 "1 when gossip is sealed with a keyring (--gossip-keyring); key_id: the primary",
                 MetricType::Gauge,
                 {valued(c.keyring ? 1.0 : 0.0, {{"key_id", keyIdLabel(c)}})}});
  out.push_back({"throttlex_gossip_send_failures_total",
                 "Gossip sends that failed (unresolvable, refused, timed out)",
                 MetricType::Counter,
                 {valued(static_cast<double>(c.send_failures))}});
  out.push_back({"throttlex_gossip_accept_errors_total",
                 "Failed accepts of gossip streams (out of descriptors, ...), retried after 100 ms",
                 MetricType::Counter,
                 {valued(static_cast<double>(c.accept_errors))}});
}

void collectRedis(const persistence::SnapshotStoreStats& st,
                  std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  const auto d = [](std::uint64_t v) { return static_cast<double>(v); };
  std::array<double, persistence::CommandLatency::kBoundsUs.size()> bounds{};
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    bounds[i] = static_cast<double>(persistence::CommandLatency::kBoundsUs[i]) / 1e6;
  }
  out.push_back({"throttlex_redis_duration_seconds",
                 "Redis command latency, send to reply (snapshot writes and reads)",
                 MetricType::Histogram,
                 {histogram<bounds.size()>(st.latency.counts, bounds,
                                           static_cast<double>(st.latency.sum_us) / 1e6)}});
  out.push_back(single("throttlex_redis_connected", "1 while the snapshot store is reachable",
                       MetricType::Gauge, st.connected ? 1 : 0));
  out.push_back(single("throttlex_redis_commands_total", "Redis commands answered",
                       MetricType::Counter, d(st.commands)));
  out.push_back(single("throttlex_redis_errors_total",
                       "Failed Redis commands: refused, error replies, timeouts, I/O",
                       MetricType::Counter, d(st.errors)));
  out.push_back(single("throttlex_redis_timeouts_total", "Redis commands past their deadline",
                       MetricType::Counter, d(st.timeouts)));
  out.push_back(single("throttlex_redis_reconnects_total", "Redis connections re-established",
                       MetricType::Counter, d(st.reconnects)));
  out.push_back(
      single("throttlex_snapshot_malformed_total",
             "Snapshot entries or keys in Redis skipped because they could not be decoded",
             MetricType::Counter, d(st.malformed)));
}

void collectSnapshots(const persistence::SnapshotWriterStats& w,
                      std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  const auto d = [](std::uint64_t v) { return static_cast<double>(v); };
  out.push_back(single("throttlex_snapshot_pending", "Changed entries waiting to be written",
                       MetricType::Gauge, d(w.pending)));
  out.push_back(single("throttlex_snapshot_pending_bytes",
                       "Memory held by the pending tables, empty places included",
                       MetricType::Gauge, d(w.pending_bytes)));
  out.push_back(single("throttlex_snapshot_wave",
                       "Snapshot batches the next flush keeps in flight at most (halved after "
                       "a failed wave, up to 16)",
                       MetricType::Gauge, d(w.wave)));
  out.push_back(single("throttlex_snapshot_lag_seconds",
                       "Age of the oldest change not yet confirmed by the snapshot store",
                       MetricType::Gauge, std::chrono::duration<double>(w.lag).count()));
  out.push_back(single("throttlex_snapshot_dropped_total",
                       "Changed entries not queued because the pending set was full",
                       MetricType::Counter, d(w.dropped)));
  out.push_back(single("throttlex_snapshot_entries_written_total",
                       "Entries the snapshot store confirmed", MetricType::Counter,
                       d(w.entries_written)));
  prometheus::MetricFamily flushes{"throttlex_snapshot_flushes_total",
                                   "Snapshot flushes by result (ok, failed, skipped while "
                                   "disconnected)",
                                   MetricType::Counter,
                                   {}};
  flushes.metric.push_back(valued(d(w.flushes), {{"result", "ok"}}));
  flushes.metric.push_back(valued(d(w.failed_flushes), {{"result", "failed"}}));
  flushes.metric.push_back(valued(d(w.skipped_flushes), {{"result", "skipped"}}));
  out.push_back(std::move(flushes));
}

// Every row of THROTTLEX_SLOT_STATS (daemon/base/slot_stats.h); rows sharing a name form one
// family, told apart by their label.
void collectSlots(const SlotKeeperStats& k, std::vector<prometheus::MetricFamily>& out) {
  const std::size_t first = out.size();
  const auto add = [&](const char* name, StatKind kind, const char* help, const char* label,
                       const char* label_value, std::uint64_t value) {
    auto family = std::find_if(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
                               [&](const prometheus::MetricFamily& f) { return f.name == name; });
    if (family == out.end()) {
      out.push_back({name,
                     help,
                     kind == StatKind::kGauge ? prometheus::MetricType::Gauge
                                              : prometheus::MetricType::Counter,
                     {}});
      family = out.end() - 1;
    }
    std::vector<prometheus::ClientMetric::Label> labels;
    if (*label != '\0') labels.push_back({label, label_value});
    family->metric.push_back(valued(static_cast<double>(value), std::move(labels)));
  };
#define THROTTLEX_SLOT_METRIC(field, name, kind, help, label, label_value) \
  add(name, StatKind::kind, help, label, label_value, k.field);
  THROTTLEX_SLOT_STATS(THROTTLEX_SLOT_METRIC)
#undef THROTTLEX_SLOT_METRIC
}

void collectAdaptive(const std::vector<AdaptiveRuleStats>& rules, const ExchangeStats& x,
                     std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  prometheus::MetricFamily limit{"throttlex_adaptive_limit",
                                 "The effective limit of an adaptive rule, as this node applies it",
                                 MetricType::Gauge,
                                 {}};
  prometheus::MetricFamily start{"throttlex_adaptive_start_limit",
                                 "An adaptive rule's own limit (where it starts)",
                                 MetricType::Gauge,
                                 {}};
  prometheus::MetricFamily reports{"throttlex_adaptive_reports_total",
                                   "Reports received by this node, by rule and outcome",
                                   MetricType::Counter,
                                   {}};
  prometheus::MetricFamily latency{
      "throttlex_adaptive_signal_latency_seconds",
      "The latency (at the rule's percentile) the rule's last step read, cluster-wide",
      MetricType::Gauge,
      {}};
  prometheus::MetricFamily errors{"throttlex_adaptive_signal_error_ratio",
                                  "The share of bad outcomes the rule's last step read",
                                  MetricType::Gauge,
                                  {}};
  prometheus::MetricFamily controlled{"throttlex_adaptive_controller",
                                      "1 on the node that controls the rule (the ring's owner of "
                                      "its controller slot), else 0",
                                      MetricType::Gauge,
                                      {}};
  prometheus::MetricFamily rate{"throttlex_adaptive_signal_reports",
                                "Reports cluster-wide in the interval the rule's last step read",
                                MetricType::Gauge,
                                {}};
  for (const AdaptiveRuleStats& r : rules) {
    const IntervalSignals& sig = r.verdict.signals;
    limit.metric.push_back(valued(static_cast<double>(r.verdict.limit), {{"rule", r.rule}}));
    start.metric.push_back(valued(static_cast<double>(r.start), {{"rule", r.rule}}));
    for (std::size_t o = 0; o < kReportOutcomes; ++o) {
      reports.metric.push_back(valued(
          static_cast<double>(r.reported[o]),
          {{"rule", r.rule}, {"outcome", std::string(nameOf(static_cast<ReportOutcome>(o)))}}));
    }
    if (sig.latency) {
      latency.metric.push_back(
          valued(std::chrono::duration<double>(*sig.latency).count(), {{"rule", r.rule}}));
    }
    errors.metric.push_back(valued(sig.error_rate, {{"rule", r.rule}}));
    rate.metric.push_back(valued(static_cast<double>(sig.reports), {{"rule", r.rule}}));
    controlled.metric.push_back(valued(r.controlled_here ? 1 : 0, {{"rule", r.rule}}));
  }
  out.push_back(std::move(limit));
  out.push_back(std::move(start));
  out.push_back(std::move(reports));
  out.push_back(std::move(latency));
  out.push_back(std::move(errors));
  out.push_back(std::move(rate));
  out.push_back(std::move(controlled));
  out.push_back({"throttlex_adaptive_exchange_calls_total",
                 "Digest exchanges with other nodes' adaptive controllers",
                 MetricType::Counter,
                 {valued(static_cast<double>(x.calls))}});
  out.push_back({"throttlex_adaptive_exchange_failures_total",
                 "Digest exchanges that failed (the digests went with the next round)",
                 MetricType::Counter,
                 {valued(static_cast<double>(x.failures))}});
}

void collectPersistence(const PersistenceStats& p, std::vector<prometheus::MetricFamily>& out) {
  if (p.has_store) {
    collectRedis(p.store, out);
    collectSnapshots(p.writer, out);
  }
  collectSlots(p.slots, out);
}

}  // namespace

// Sums the threads' slots: checks by API, route and decision, their latency histogram, and
// shadow-mode limits.
void Metrics::Impl::collectRules(std::vector<prometheus::MetricFamily>& out) const {
  using prometheus::MetricType;
  std::map<std::string, RuleCounters, std::less<>> sum;
  {
    MutexLock guard(mu);
    for (const auto& s : slots) {
      MutexLock rules_guard(s->rules_mu);
      for (const auto& [name, c] : s->rules) {
        RuleCounters& t = sum[name];
        t.allowed += c.allowed;
        t.limited += c.limited;
        t.near_limit += c.near_limit;
        t.shadow_limited += c.shadow_limited;
      }
    }
  }
  prometheus::MetricFamily checks{"throttlex_rule_checks_total",
                                  "Checks answered at this node, by rule (\"default\": inline "
                                  "limits) and the limiter's decision",
                                  MetricType::Counter,
                                  {}};
  prometheus::MetricFamily near{"throttlex_rule_near_limit_total",
                                "Allowed checks that left their key with 20% of its limit or less",
                                MetricType::Counter,
                                {}};
  prometheus::MetricFamily shadow{"throttlex_rule_shadow_limited_total",
                                  "Checks of a shadow-mode rule that it would have limited",
                                  MetricType::Counter,
                                  {}};
  for (const auto& [name, c] : sum) {
    checks.metric.push_back(
        valued(static_cast<double>(c.allowed), {{"rule", name}, {"decision", "allowed"}}));
    checks.metric.push_back(
        valued(static_cast<double>(c.limited), {{"rule", name}, {"decision", "limited"}}));
    near.metric.push_back(valued(static_cast<double>(c.near_limit), {{"rule", name}}));
    shadow.metric.push_back(valued(static_cast<double>(c.shadow_limited), {{"rule", name}}));
  }
  out.push_back(std::move(checks));
  out.push_back(std::move(near));
  out.push_back(std::move(shadow));
}

void Metrics::Impl::collectRequests(std::vector<prometheus::MetricFamily>& out) const {
  using prometheus::MetricType;
  std::uint64_t requests[kApis][kRoutes][kOutcomes] = {};
  std::uint64_t buckets[kApis][kBuckets] = {};
  std::uint64_t latency_ns[kApis] = {};
  std::uint64_t shadow_limited = 0;
  {
    MutexLock guard(mu);
    for (const auto& s : slots) {
      for (int a = 0; a < kApis; ++a) {
        for (int r = 0; r < kRoutes; ++r)
          for (int o = 0; o < kOutcomes; ++o)
            requests[a][r][o] += s->requests[a][r][o].load(std::memory_order_relaxed);
        for (std::size_t b = 0; b < kBuckets; ++b)
          buckets[a][b] += s->buckets[a][b].load(std::memory_order_relaxed);
        latency_ns[a] += s->latency_ns[a].load(std::memory_order_relaxed);
      }
      shadow_limited += s->shadow_limited.load(std::memory_order_relaxed);
    }
  }

  collectRules(out);
  prometheus::MetricFamily req{"throttlex_requests_total",
                               "Checks answered, by decision, route and API",
                               MetricType::Counter,
                               {}};
  for (int a = 0; a < kApis; ++a)
    for (int r = 0; r < kRoutes; ++r)
      for (int o = 0; o < kOutcomes; ++o)
        req.metric.push_back(valued(
            static_cast<double>(requests[a][r][o]),
            {{"decision", kOutcomeNames[o]}, {"route", kRouteNames[r]}, {"api", kApiNames[a]}}));
  out.push_back(std::move(req));

  prometheus::MetricFamily lat{"throttlex_request_duration_seconds",
                               "Time from a check's arrival to its answer",
                               MetricType::Histogram,
                               {}};
  for (int a = 0; a < kApis; ++a) {
    prometheus::ClientMetric m;
    m.label = {{"api", kApiNames[a]}};
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
      cumulative += buckets[a][b];
      m.histogram.bucket.push_back({cumulative, b < kLatencyBounds.size()
                                                    ? kLatencyBounds[b]
                                                    : std::numeric_limits<double>::infinity()});
    }
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = static_cast<double>(latency_ns[a]) / 1e9;
    lat.metric.push_back(std::move(m));
  }
  out.push_back(std::move(lat));

  out.push_back({"throttlex_shadow_limited_total",
                 "Checks of shadow-mode rules that would have been limited",
                 MetricType::Counter,
                 {valued(static_cast<double>(shadow_limited))}});
  collectOverload(out);
}

void Metrics::Impl::collectOverload(std::vector<prometheus::MetricFamily>& out) const {
  using prometheus::MetricType;
  std::uint64_t shed[kShedReasonCount][kPriorityCount] = {};
  std::int64_t loop_lag_ns = 0;
  double shed_share = 0;
  {
    MutexLock guard(mu);
    for (const auto& s : slots) {
      for (int r = 0; r < kShedReasonCount; ++r)
        for (int p = 0; p < kPriorityCount; ++p)
          shed[r][p] += s->shed[r][p].load(std::memory_order_relaxed);
      loop_lag_ns = std::max(loop_lag_ns, s->loop_lag_ns.load(std::memory_order_relaxed));
      shed_share = std::max(shed_share, s->shed_share.load(std::memory_order_relaxed));
    }
  }
  prometheus::MetricFamily sheds{
      "throttlex_shed_total",
      "Checks answered by their rule's overload policy instead of "
      "decided: the node was overloaded, or the caller's deadline passed",
      MetricType::Counter,
      {}};
  for (int r = 0; r < kShedReasonCount; ++r)
    for (int p = 0; p < kPriorityCount; ++p)
      sheds.metric.push_back(
          valued(static_cast<double>(shed[r][p]),
                 {{"reason", std::string(nameOf(static_cast<ShedReason>(r + 1)))},
                  {"priority", std::string(nameOf(static_cast<Priority>(p)))}}));
  out.push_back(std::move(sheds));
  out.push_back({"throttlex_loop_lag_seconds",
                 "The standing queue of the busiest worker loop: the smallest lag its probe "
                 "measured in the last overload interval",
                 MetricType::Gauge,
                 {valued(static_cast<double>(loop_lag_ns) / 1e9)}});
  out.push_back({"throttlex_shed_share",
                 "The largest share of normal checks a worker loop sheds now (0 to 1)",
                 MetricType::Gauge,
                 {valued(shed_share)}});
}

namespace {

void collectRulesSync(const RulesSyncStats& r, std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  out.push_back({"throttlex_rules_version",
                 "The counter of the rules version this node runs (every member runs the newest)",
                 MetricType::Gauge,
                 {valued(static_cast<double>(r.counter))}});
  out.push_back({"throttlex_rules_sync_calls_total",
                 "syncRules calls this node made to other members",
                 MetricType::Counter,
                 {valued(static_cast<double>(r.calls))}});
  out.push_back({"throttlex_rules_sync_failures_total",
                 "syncRules calls to other members that failed",
                 MetricType::Counter,
                 {valued(static_cast<double>(r.failures))}});
  out.push_back({"throttlex_rules_adopted_total",
                 "Newer rules versions this node took from other members",
                 MetricType::Counter,
                 {valued(static_cast<double>(r.adopted))}});
  out.push_back({"throttlex_rules_refused_total",
                 "Rules versions from other members that failed their checks or did not load here",
                 MetricType::Counter,
                 {valued(static_cast<double>(r.refused))}});
}

}  // namespace

std::vector<prometheus::MetricFamily> Metrics::Impl::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  collectRequests(out);
  if (options.store != nullptr) collectStore(options.store->stats(), out);
  if (options.cluster) collectCluster(options.cluster(), out);
  if (options.forwarding) collectForwarding(options.forwarding(), out);
  if (options.persistence) collectPersistence(options.persistence(), out);
  if (options.adaptive_rules) {
    collectAdaptive(options.adaptive_rules(),
                    options.adaptive_exchange ? options.adaptive_exchange() : ExchangeStats{}, out);
  }
  if (options.rules_sync) collectRulesSync(options.rules_sync(), out);
  out.push_back({"process_resident_memory_bytes",
                 "Resident memory of the process",
                 MetricType::Gauge,
                 {valued(residentBytes())}});
  out.push_back({"throttlex_build_info",
                 "Version and node id (always 1)",
                 MetricType::Gauge,
                 {valued(1, {{"version", options.version}, {"node_id", options.node_id}})}});
  return out;
}

std::string Metrics::render() const {
  return prometheus::TextSerializer().Serialize(impl_->Collect());
}

Result<int> Metrics::serve(const std::string& bind_address, std::uint16_t port,
                           const Clock& clock) {
  HttpServerOptions o;
  o.bind_address = bind_address;
  o.port = port;
  o.threads = 1;            // scrapes are rare; the hot path never waits for this thread
  o.max_body_bytes = 0;     // a scrape has no body
  o.max_connections = 256;  // well below the descriptor limit
  o.idle_timeout = std::chrono::seconds(30);
  o.request_timeout = std::chrono::seconds(5);
  auto started = HttpServer::start(o, clock, [impl = impl_](HttpRequest& req, HttpRespond respond) {
    if (req.path != "/metrics") {
      respond(problemResponse(404, "Not Found", "only /metrics is served here"));
      return;
    }
    if (req.method != "GET" && req.method != "HEAD") {
      HttpResponse r = problemResponse(405, "Method Not Allowed", "use GET /metrics");
      r.headers.emplace_back("Allow", "GET, HEAD");
      respond(std::move(r));
      return;
    }
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = prometheus::TextSerializer().Serialize(impl->Collect());
    respond(std::move(r));
  });
  if (!started) {
    return Error{started.error().code, "cannot serve metrics on " + bind_address + ":" +
                                           std::to_string(port) + ": " + started.error().message};
  }
  server_ = std::move(*started);
  return server_->port();
}

}  // namespace throttlex
