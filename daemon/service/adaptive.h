// Adaptive limits (docs/adaptive.md): a rule whose limit follows what the protected service can
// take. Applications report how admitted work went (latency, outcome); every node folds the
// reports it receives into a SignalDigest per rule; the rule's controller (one node, by the ring:
// daemon/adaptive/) merges the nodes' digests once per interval and moves the effective limit
// with a control law; every node applies the effective limit to every key of the rule.
//
// This file holds what the limiter service needs: the adaptive block of a rule, the digest, the
// control laws (pure functions, unit-tested on recorded signal sequences), and the per-rule cell
// that carries the effective limit and the node's digest between the check path, the report path
// and the exchange thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "limiter/clock.h"
#include "limiter/mutex.h"
#include "limiter/result.h"

namespace throttlex {

enum class ControlLaw : std::uint8_t { kAimd = 0, kGradient = 1 };
std::string_view nameOf(ControlLaw law);
Result<ControlLaw> parseControlLaw(std::string_view text);

// What happened to one admitted call. Wire values (proto ReportOutcome) equal these.
enum class ReportOutcome : std::uint8_t { kOk = 0, kError = 1, kTimeout = 2, kOverloaded = 3 };
inline constexpr std::size_t kReportOutcomes = 4;
std::string_view nameOf(ReportOutcome outcome);
Result<ReportOutcome> parseReportOutcome(std::string_view text);

// The longest latency a report may carry; longer is a client bug, refused (400).
inline constexpr Duration kMaxReportLatency = std::chrono::hours(1);

// A rule's `adaptive:` block. Limits are per the rule's period, like `limit`.
struct AdaptiveSpec {
  std::uint64_t min = 1;
  std::uint64_t max = 0;       // required, >= min
  Duration latency_target{0};  // 0: no latency signal
  double percentile = 0.9;     // of the latency distribution compared with the target
  double error_rate_max = 0;   // 0: no error signal; else the highest acceptable share (0..1)
                               // of reports that are error, timeout or overloaded
  ControlLaw law = ControlLaw::kGradient;
  Duration interval = std::chrono::seconds(1);  // how often the limit moves
  double backoff = 0.9;                         // AIMD: the factor applied on a breach
  std::uint64_t increase = 0;      // AIMD: units added per interval; 0: max(1, max / 100)
  std::uint64_t min_reports = 10;  // fewer reports in an interval: the limit holds

  friend bool operator==(const AdaptiveSpec&, const AdaptiveSpec&) = default;
};

// Validates the block against the rule's starting limit (which must lie within min..max).
Status validate(const AdaptiveSpec& spec, std::uint64_t start);

// Latency histogram plus outcome and check counts for one rule over one interval. Mergeable
// (merging two digests equals the digest of both sets of reports), fixed size (O(1) per rule
// however many reports arrive), encodable as (bucket, count) pairs.
//
// Buckets: log-linear over microseconds, 16 per power of two (relative error below 1/16); 0 us has
// its own bucket, and everything above 2^32 us (71 minutes) falls into the last.
class SignalDigest {
 public:
  static constexpr int kSubBuckets = 16;
  static constexpr int kBuckets = 1 + 32 * kSubBuckets;

  void addLatency(Duration latency);  // clamped to [0, kMaxReportLatency]
  void addOutcome(ReportOutcome outcome, std::uint64_t n = 1);
  void addChecks(std::uint64_t admitted, std::uint64_t limited);
  void merge(const SignalDigest& other);

  std::uint64_t reports() const;  // outcomes counted
  std::uint64_t outcome(ReportOutcome o) const { return outcomes_[static_cast<std::size_t>(o)]; }
  std::uint64_t latencies() const { return latencies_; }
  std::uint64_t admitted() const { return admitted_; }
  std::uint64_t limited() const { return limited_; }
  // The latency at quantile q in (0, 1]: the upper edge of the bucket that holds it; nullopt
  // when no latency was reported.
  std::optional<Duration> quantile(double q) const;

  // Wire form: the non-empty buckets as (index << 32 | count) and the counters.
  std::vector<std::uint64_t> buckets() const;
  // Adds encoded buckets; false (nothing added) when an index is out of range.
  bool addBuckets(const std::vector<std::uint64_t>& encoded);

  static int bucketOf(std::uint64_t micros);
  static std::uint64_t upperMicros(int bucket);

 private:
  std::array<std::uint32_t, kBuckets> counts_{};
  std::array<std::uint64_t, kReportOutcomes> outcomes_{};
  std::uint64_t latencies_ = 0;
  std::uint64_t admitted_ = 0;
  std::uint64_t limited_ = 0;
};

// One interval's signals as the control laws read them.
struct IntervalSignals {
  std::uint64_t reports = 0;
  std::optional<Duration> latency;  // at the spec's percentile
  double error_rate = 0;            // (error + timeout + overloaded) / reports
  std::uint64_t admitted = 0;       // checks on the rule, cluster-wide, in the interval
  std::uint64_t limited = 0;
};
IntervalSignals signalsOf(const SignalDigest& digest, const AdaptiveSpec& spec);

struct LimitStep {
  std::uint64_t limit = 0;
  std::string reason;  // the signal that moved (or held) it, for operators
};

// What a law remembers between steps (the controller keeps it per rule; an owner change starts it
// afresh).
struct LawMemory {
  // The highest rate (per period) the service completed in the last run of consecutive breaches
  // (the interval in which a queue empties completes less); 0: none yet.
  double capacity = 0;
  bool breached = false;  // the last step was a breach
};

// One step of the rule's control law from `current` (docs/adaptive.md has the laws and why).
// `period` is the rule's: the limit is per period, the signals per interval. `memory` may be null.
LimitStep nextLimit(const AdaptiveSpec& spec, std::uint64_t current, Duration period,
                    const IntervalSignals& signals, LawMemory* memory = nullptr);

// The `period` nextLimit() takes for a concurrency rule (leases held at once). By Little's law the
// calls in flight are the rate times the time a call takes, so a concurrency limit is a rate limit
// whose period is that time: the latency target (where the laws steer the latency), or, without
// one, the latency measured; `lease_ttl` when neither is known.
Duration concurrencyPeriod(const AdaptiveSpec& spec, const IntervalSignals& signals,
                           Duration lease_ttl);

// What the controller decided last for a rule, as every node learns it.
struct AdaptiveVerdict {
  std::uint64_t limit = 0;
  std::string reason;       // the signal that moved (or held) it
  IntervalSignals signals;  // of the interval it was decided on
};

// For /metrics and `throttlectl rules show`.
struct AdaptiveRuleStats {
  std::string rule;
  std::uint64_t start = 0;  // the rule's own limit
  AdaptiveVerdict verdict;
  std::array<std::uint64_t, kReportOutcomes>
      reported{};                // reports received by this node, per ReportOutcome
  bool controlled_here = false;  // this node is the rule's controller (set by the node's wiring)
};

// One change of a rule's effective limit, as every node learns it.
struct LimitChange {
  Time at{};
  std::uint64_t limit = 0;
  std::string reason;
};

// The state of one adaptive rule on one node, shared by every RuleSet version that has the rule
// (carried over on reloads). Thread-safe.
class AdaptiveCell {
 public:
  static constexpr std::size_t kHistory = 10;

  explicit AdaptiveCell(std::uint64_t start);

  std::uint64_t limit() const { return limit_.load(std::memory_order_relaxed); }
  // Takes the controller's answer; a change of the limit goes into the history.
  void apply(const AdaptiveVerdict& verdict, Time at);
  void clamp(std::uint64_t min, std::uint64_t max, Time at);  // after a rule change

  // Check path: one relaxed add.
  void countCheck(bool allowed) {
    (allowed ? admitted_ : limited_).fetch_add(1, std::memory_order_relaxed);
  }
  // Report path.
  void report(std::optional<Duration> latency, ReportOutcome outcome);
  // Exchange thread: this node's digest since the last take (checks included), reset.
  SignalDigest take();
  // Gives back a digest that could not be delivered, to go with the next one.
  void putBack(const SignalDigest& digest);

  std::vector<LimitChange> history() const;  // the last kHistory changes, oldest first
  AdaptiveVerdict verdict() const;           // the last answer taken (limit() may be newer)
  std::array<std::uint64_t, kReportOutcomes> reported() const;  // since start, per outcome

 private:
  std::atomic<std::uint64_t> limit_;
  std::atomic<std::uint64_t> admitted_{0};
  std::atomic<std::uint64_t> limited_{0};
  mutable Mutex mu_;
  SignalDigest digest_ GUARDED_BY(mu_);
  std::array<std::uint64_t, kReportOutcomes> reported_ GUARDED_BY(mu_){};
  std::deque<LimitChange> history_ GUARDED_BY(mu_);
  AdaptiveVerdict verdict_ GUARDED_BY(mu_);
};

}  // namespace throttlex
