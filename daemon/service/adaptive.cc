#include "daemon/service/adaptive.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>

namespace throttlex {

std::string_view nameOf(ControlLaw law) {
  return law == ControlLaw::kAimd ? "aimd" : "gradient";
}

Result<ControlLaw> parseControlLaw(std::string_view text) {
  if (text == "aimd") return ControlLaw::kAimd;
  if (text == "gradient") return ControlLaw::kGradient;
  return invalidArgument("law must be aimd or gradient, not '" + std::string(text) + "'");
}

std::string_view nameOf(ReportOutcome outcome) {
  switch (outcome) {
    case ReportOutcome::kOk:
      return "ok";
    case ReportOutcome::kError:
      return "error";
    case ReportOutcome::kTimeout:
      return "timeout";
    case ReportOutcome::kOverloaded:
      return "overloaded";
  }
  return "ok";
}

Result<ReportOutcome> parseReportOutcome(std::string_view text) {
  for (auto o : {ReportOutcome::kOk, ReportOutcome::kError, ReportOutcome::kTimeout,
                 ReportOutcome::kOverloaded}) {
    if (text == nameOf(o)) return o;
  }
  return invalidArgument("outcome must be ok, error, timeout or overloaded, not '" +
                         std::string(text) + "'");
}

Status validate(const AdaptiveSpec& spec, std::uint64_t start) {
  if (spec.min < 1) return invalidArgument("adaptive: min must be at least 1");
  if (spec.max < spec.min) return invalidArgument("adaptive: max must be at least min");
  if (start < spec.min || start > spec.max) {
    return invalidArgument("adaptive: the starting limit " + std::to_string(start) +
                           " must lie within min " + std::to_string(spec.min) + " and max " +
                           std::to_string(spec.max));
  }
  if (spec.latency_target <= Duration(0) && spec.error_rate_max <= 0) {
    return invalidArgument("adaptive: needs a signal: latency_target and/or error_rate_max");
  }
  if (spec.latency_target > kMaxReportLatency) {
    return invalidArgument("adaptive: latency_target must be at most 1h");
  }
  if (!(spec.percentile > 0 && spec.percentile < 1)) {
    return invalidArgument("adaptive: percentile must lie strictly between 0 and 100");
  }
  if (!(spec.error_rate_max >= 0 && spec.error_rate_max < 1)) {
    return invalidArgument("adaptive: error_rate_max must lie within 0% and 100% (exclusive)");
  }
  if (spec.interval < std::chrono::milliseconds(100) || spec.interval > std::chrono::minutes(10)) {
    return invalidArgument("adaptive: interval must lie within 100ms and 10m");
  }
  if (!(spec.backoff >= 0.5 && spec.backoff < 1)) {
    return invalidArgument("adaptive: backoff must lie within 0.5 and 1 (exclusive)");
  }
  if (spec.increase > spec.max) return invalidArgument("adaptive: increase must be at most max");
  return Ok{};
}

// --- SignalDigest -----------------------------------------------------------------------------

int SignalDigest::bucketOf(std::uint64_t micros) {
  if (micros == 0) return 0;
  if (micros >= (std::uint64_t{1} << 32)) return kBuckets - 1;
  const int e = static_cast<int>(std::bit_width(micros)) - 1;  // 2^e <= micros < 2^(e+1)
  const std::uint64_t sub = ((micros - (std::uint64_t{1} << e)) * kSubBuckets) >> e;
  return 1 + e * kSubBuckets + static_cast<int>(sub);
}

std::uint64_t SignalDigest::upperMicros(int bucket) {
  if (bucket <= 0) return 0;
  const int e = (bucket - 1) / kSubBuckets;
  const std::uint64_t sub = static_cast<std::uint64_t>((bucket - 1) % kSubBuckets);
  const std::uint64_t base = std::uint64_t{1} << e;
  // The first value of the next bucket, less one: the bucket's largest member.
  return base + (((sub + 1) << e) + kSubBuckets - 1) / kSubBuckets - 1;
}

void SignalDigest::addLatency(Duration latency) {
  const Duration d = std::clamp(latency, Duration(0), kMaxReportLatency);
  const auto micros =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
  std::uint32_t& c = counts_[static_cast<std::size_t>(bucketOf(micros))];
  if (c != UINT32_MAX) ++c;
  ++latencies_;
}

void SignalDigest::addOutcome(ReportOutcome outcome, std::uint64_t n) {
  outcomes_[static_cast<std::size_t>(outcome)] += n;
}

void SignalDigest::addChecks(std::uint64_t admitted, std::uint64_t limited) {
  admitted_ += admitted;
  limited_ += limited;
}

void SignalDigest::merge(const SignalDigest& other) {
  for (std::size_t i = 0; i < counts_.size(); ++i) {
    const std::uint64_t sum = std::uint64_t{counts_[i]} + other.counts_[i];
    counts_[i] = static_cast<std::uint32_t>(std::min<std::uint64_t>(sum, UINT32_MAX));
  }
  for (std::size_t i = 0; i < outcomes_.size(); ++i) outcomes_[i] += other.outcomes_[i];
  latencies_ += other.latencies_;
  admitted_ += other.admitted_;
  limited_ += other.limited_;
}

std::uint64_t SignalDigest::reports() const {
  std::uint64_t n = 0;
  for (std::uint64_t c : outcomes_) n += c;
  return n;
}

std::optional<Duration> SignalDigest::quantile(double q) const {
  std::uint64_t total = 0;
  for (std::uint32_t c : counts_) total += c;
  if (total == 0) return std::nullopt;
  // The rank of the q-quantile (1-based), at least the first sample.
  const auto rank = std::max<std::uint64_t>(
      1,
      static_cast<std::uint64_t>(std::ceil(std::clamp(q, 0.0, 1.0) * static_cast<double>(total))));
  std::uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += counts_[static_cast<std::size_t>(b)];
    if (seen >= rank) return std::chrono::microseconds(upperMicros(b));
  }
  return std::chrono::microseconds(upperMicros(kBuckets - 1));
}

std::vector<std::uint64_t> SignalDigest::buckets() const {
  std::vector<std::uint64_t> out;
  for (std::size_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i] != 0) out.push_back(std::uint64_t{i} << 32 | counts_[i]);
  }
  return out;
}

bool SignalDigest::addBuckets(const std::vector<std::uint64_t>& encoded) {
  for (std::uint64_t e : encoded) {
    if ((e >> 32) >= static_cast<std::uint64_t>(kBuckets)) return false;
  }
  for (std::uint64_t e : encoded) {
    std::uint32_t& c = counts_[static_cast<std::size_t>(e >> 32)];
    const std::uint64_t n = e & 0xffffffffu;
    c = static_cast<std::uint32_t>(std::min<std::uint64_t>(std::uint64_t{c} + n, UINT32_MAX));
    latencies_ += n;
  }
  return true;
}

// --- Control laws -----------------------------------------------------------------------------

IntervalSignals signalsOf(const SignalDigest& digest, const AdaptiveSpec& spec) {
  IntervalSignals s;
  s.reports = digest.reports();
  s.latency = digest.quantile(spec.percentile);
  if (s.reports > 0) {
    const std::uint64_t bad = digest.outcome(ReportOutcome::kError) +
                              digest.outcome(ReportOutcome::kTimeout) +
                              digest.outcome(ReportOutcome::kOverloaded);
    s.error_rate = static_cast<double>(bad) / static_cast<double>(s.reports);
  }
  s.admitted = digest.admitted();
  s.limited = digest.limited();
  return s;
}

namespace {

std::string ms(Duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1fms", static_cast<double>(d.count()) / 1e6);
  return buf;
}

std::string percent(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", v * 100);
  return buf;
}

std::string percentileName(double p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "p%g", p * 100);
  return buf;
}

std::uint64_t clampLimit(double v, const AdaptiveSpec& spec) {
  if (!(v >= static_cast<double>(spec.min))) return spec.min;
  if (v >= static_cast<double>(spec.max)) return spec.max;
  return static_cast<std::uint64_t>(v);
}

}  // namespace

// On a breach both laws set the limit from what the protected service actually completed in the
// interval (the reports, as a rate per period) rather than from the limit, as TCP sets its
// threshold from the data in flight rather than from its window: a saturated service completes at
// its capacity, so the limit lands below capacity however far above it the limit was. While the
// queue drains, the service keeps completing at capacity and the latency stays above the target
// for a while: a limit already below what that rate says holds instead of being cut again, and
// once the latency is back the gradient law climbs back towards the capacity the breach measured.
// This needs a report for every admitted call (docs/adaptive.md). Neither law ever raises the
// limit on a breach, and they raise it only while demand reached it (checks were limited, or
// admitted at 90% of it), so an idle rule does not drift to max.
namespace {

// What a breach was: for the reason a step gives.
std::string breachText(const AdaptiveSpec& spec, const IntervalSignals& signals, bool slow) {
  if (slow) {
    return percentileName(spec.percentile) + " latency " + ms(*signals.latency) + " above the " +
           ms(spec.latency_target) + " target";
  }
  return "error rate " + percent(signals.error_rate) + " above " + percent(spec.error_rate_max);
}

std::string healthyText(const AdaptiveSpec& spec, const IntervalSignals& signals) {
  if (spec.latency_target > Duration(0) && signals.latency) {
    return percentileName(spec.percentile) + " latency " + ms(*signals.latency) + " within the " +
           ms(spec.latency_target) + " target";
  }
  return "error rate " + percent(signals.error_rate) + " within " + percent(spec.error_rate_max);
}

// A breach: `delivered` is what the service completed in the interval, per period.
LimitStep breachStep(const AdaptiveSpec& spec, std::uint64_t current, double delivered,
                     const IntervalSignals& signals, bool slow, LawMemory* memory) {
  const bool failing = spec.error_rate_max > 0 && signals.error_rate > spec.error_rate_max;
  const std::string why = breachText(spec, signals, slow);
  double factor = spec.backoff;
  if (spec.law == ControlLaw::kGradient) {
    // Proportional to the excess: the queue the excess latency stands for drains over two
    // intervals, and at least 10% below what was delivered, so the queue drains within about an
    // interval; an error rate above the ceiling cuts by the excess share.
    double excess = 0;
    if (slow) {
      excess = static_cast<double>((*signals.latency - spec.latency_target).count()) /
               (2.0 * static_cast<double>(spec.interval.count()));
    }
    if (failing) excess = std::max(excess, signals.error_rate - spec.error_rate_max);
    factor = std::clamp(1.0 - excess, 0.5, 0.9);
  }
  if (memory != nullptr) {
    memory->capacity = memory->breached ? std::max(memory->capacity, delivered) : delivered;
    memory->breached = true;
  }
  if (delivered * factor >= static_cast<double>(current)) {
    // The limit is already below what would drain the queue (it was cut, and the service still
    // works off what came before): cutting again would compound.
    return {current, why + ", the limit already below what the service completes: holding"};
  }
  return {clampLimit(delivered * factor, spec), why + ": lowering"};
}

// No breach, and demand reached the limit.
LimitStep raiseStep(const AdaptiveSpec& spec, std::uint64_t current, const IntervalSignals& signals,
                    const LawMemory* memory) {
  const std::string within = healthyText(spec, signals);
  const double cur = static_cast<double>(current);
  if (current >= spec.max) return {spec.max, within + ", at max"};
  if (spec.law == ControlLaw::kAimd) {
    const std::uint64_t inc =
        spec.increase > 0 ? spec.increase : std::max<std::uint64_t>(1, spec.max / 100);
    return {clampLimit(cur + static_cast<double>(inc), spec), within + ": raising"};
  }
  // Gradient: 10% an interval when the latency is half the target or less, less as it nears the
  // target, and nothing within 80% of it: a limit that keeps the latency just under the target is
  // where it should stay, and probing further only builds a queue. At least one unit. Without a
  // latency signal, 10%.
  double headroom = 2;
  if (spec.latency_target > Duration(0) && signals.latency && signals.latency->count() > 0) {
    headroom = static_cast<double>(spec.latency_target.count()) /
               static_cast<double>(signals.latency->count());
  }
  if (headroom < 1.25) return {current, within + ", close to it: holding"};
  // Far below the capacity the last breach measured (after draining a queue), back towards 90%
  // of it by up to 25% an interval, as TCP's slow start climbs back to its threshold.
  if (memory != nullptr && cur < 0.8 * memory->capacity) {
    const double next = std::min(cur * 1.25, 0.9 * memory->capacity);
    return {clampLimit(std::max(cur + 1, next), spec), within + ": recovering"};
  }
  const double growth = 1 + 0.1 * std::min(1.0, (headroom - 1.25) / 0.75);
  return {clampLimit(std::max(cur + 1, cur * growth), spec), within + ": raising"};
}

}  // namespace

LimitStep nextLimit(const AdaptiveSpec& spec, std::uint64_t current, Duration period,
                    const IntervalSignals& signals, LawMemory* memory) {
  if (signals.reports < spec.min_reports) {
    return {current, std::to_string(signals.reports) + " reports in the interval, fewer than " +
                         std::to_string(spec.min_reports) + ": holding"};
  }
  const double per_period =
      static_cast<double>(period.count()) / static_cast<double>(spec.interval.count());
  const bool slow = spec.latency_target > Duration(0) && signals.latency &&
                    *signals.latency > spec.latency_target;
  const bool failing = spec.error_rate_max > 0 && signals.error_rate > spec.error_rate_max;
  if (slow || failing) {
    const double delivered = static_cast<double>(signals.reports) * per_period;
    return breachStep(spec, current, delivered, signals, slow, memory);
  }
  if (memory != nullptr) memory->breached = false;
  // Demand reached the limit: checks were limited, or admitted at 90% of the limit.
  const double limit_per_interval = static_cast<double>(current) / per_period;
  if (signals.limited == 0 && static_cast<double>(signals.admitted) < 0.9 * limit_per_interval) {
    return {current, healthyText(spec, signals) + ", demand below the limit: holding"};
  }
  return raiseStep(spec, current, signals, memory);
}

Duration concurrencyPeriod(const AdaptiveSpec& spec, const IntervalSignals& signals,
                           Duration lease_ttl) {
  if (spec.latency_target > Duration(0)) return spec.latency_target;
  if (signals.latency && *signals.latency > Duration(0)) return *signals.latency;
  return lease_ttl;
}

// --- AdaptiveCell -----------------------------------------------------------------------------

AdaptiveCell::AdaptiveCell(std::uint64_t start) : limit_(start) {
  verdict_.limit = start;
  verdict_.reason = "the rule's starting limit";
}

void AdaptiveCell::apply(const AdaptiveVerdict& verdict, Time at) {
  const std::uint64_t before = limit_.exchange(verdict.limit, std::memory_order_relaxed);
  MutexLock lock(mu_);
  verdict_ = verdict;
  if (before == verdict.limit) return;
  history_.push_back({at, verdict.limit, verdict.reason});
  if (history_.size() > kHistory) history_.pop_front();
}

void AdaptiveCell::clamp(std::uint64_t min, std::uint64_t max, Time at) {
  AdaptiveVerdict v = verdict();
  const std::uint64_t clamped = std::clamp(limit(), min, max);
  if (clamped == limit()) return;
  v.limit = clamped;
  v.reason = "rule changed: clamped to its bounds";
  apply(v, at);
}

void AdaptiveCell::report(std::optional<Duration> latency, ReportOutcome outcome) {
  MutexLock lock(mu_);
  if (latency) digest_.addLatency(*latency);
  digest_.addOutcome(outcome);
  ++reported_[static_cast<std::size_t>(outcome)];
}

SignalDigest AdaptiveCell::take() {
  const std::uint64_t admitted = admitted_.exchange(0, std::memory_order_relaxed);
  const std::uint64_t limited = limited_.exchange(0, std::memory_order_relaxed);
  MutexLock lock(mu_);
  SignalDigest out = digest_;
  digest_ = SignalDigest{};
  out.addChecks(admitted, limited);
  return out;
}

void AdaptiveCell::putBack(const SignalDigest& digest) {
  MutexLock lock(mu_);
  digest_.merge(digest);
}

std::vector<LimitChange> AdaptiveCell::history() const {
  MutexLock lock(mu_);
  return {history_.begin(), history_.end()};
}

AdaptiveVerdict AdaptiveCell::verdict() const {
  MutexLock lock(mu_);
  return verdict_;
}

std::array<std::uint64_t, kReportOutcomes> AdaptiveCell::reported() const {
  MutexLock lock(mu_);
  return reported_;
}

}  // namespace throttlex
