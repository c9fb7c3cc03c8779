#include "client/src/convert.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>

#include "proto/text.h"

namespace throttlex::client::detail {
namespace {

// The public enums carry the wire values, so conversion is a cast (after a range check).
static_assert(static_cast<int>(proto::Algorithm::TOKEN_BUCKET) ==
              static_cast<int>(Algorithm::kTokenBucket));
static_assert(static_cast<int>(proto::Algorithm::LEAKY_BUCKET) ==
              static_cast<int>(Algorithm::kLeakyBucket));
static_assert(static_cast<int>(proto::Algorithm::FIXED_WINDOW) ==
              static_cast<int>(Algorithm::kFixedWindow));
static_assert(static_cast<int>(proto::Algorithm::SLIDING_WINDOW) ==
              static_cast<int>(Algorithm::kSlidingWindow));
static_assert(static_cast<int>(proto::Algorithm::GCRA) == static_cast<int>(Algorithm::kGcra));
static_assert(static_cast<int>(proto::Algorithm::CONCURRENCY) ==
              static_cast<int>(Algorithm::kConcurrency));
static_assert(static_cast<int>(proto::LeaseRelease::ALREADY_RELEASED) ==
              static_cast<int>(LeaseRelease::kAlreadyReleased));
static_assert(static_cast<int>(proto::Priority::SHEDDABLE) ==
              static_cast<int>(CheckSpec::Priority::kSheddable));
static_assert(static_cast<int>(proto::ShedReason::DEADLINE) ==
              static_cast<int>(ShedReason::kDeadline));
static_assert(static_cast<int>(proto::ErrorCode::INVALID_ARGUMENT) ==
              static_cast<int>(ErrorCode::kInvalidArgument));
static_assert(static_cast<int>(proto::ErrorCode::UNAVAILABLE) ==
              static_cast<int>(ErrorCode::kUnavailable));
static_assert(static_cast<int>(proto::ErrorCode::INTERNAL) ==
              static_cast<int>(ErrorCode::kInternal));
static_assert(static_cast<int>(proto::ErrorCode::UNSUPPORTED_VERSION) ==
              static_cast<int>(ErrorCode::kUnsupportedVersion));
static_assert(static_cast<int>(proto::ErrorCode::PERMISSION_DENIED) ==
              static_cast<int>(ErrorCode::kPermissionDenied));

using proto::kjText;
std::string text(capnp::Text::Reader t) {
  return std::string(proto::view(t));
}

std::uint64_t wireMs(std::chrono::milliseconds ms) {
  return static_cast<std::uint64_t>(std::max<std::int64_t>(0, ms.count()));
}
std::chrono::milliseconds fromWireMs(std::uint64_t ms) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::min(ms, kMax)));
}

void toProto(Algorithm a, std::uint64_t limit, std::chrono::milliseconds period,
             std::uint64_t burst, proto::LimitSpec::Builder out) {
  out.setAlgorithm(static_cast<proto::Algorithm>(a));
  out.setLimit(limit);
  out.setPeriodMs(wireMs(period));
  out.setBurst(burst);
}

std::optional<Algorithm> fromProto(proto::Algorithm a) {
  const auto v = static_cast<int>(a);
  if (v < 1 || v > static_cast<int>(Algorithm::kConcurrency)) return std::nullopt;
  return static_cast<Algorithm>(v);
}

// With a rule, inline numbers are an error the node reports ("not both"); the algorithm always has
// a value in CheckSpec, so it is left unset rather than turned into that error.
bool hasInlineLimit(const CheckSpec& spec) {
  return spec.rule.empty() || spec.limit != 0 || spec.period.count() != 0 || spec.burst != 0;
}

template <typename Struct>
constexpr std::uint64_t structWords() {
  return Struct::_capnpPrivate::dataWordSize + Struct::_capnpPrivate::pointerCount;
}

std::uint64_t textWords(std::size_t bytes) {
  return (bytes + 1 + 7) / 8;  // NUL-terminated, word-padded
}

}  // namespace

void toProto(const CheckSpec& spec, proto::CheckRequest::Builder out) {
  out.setKey(kjText(spec.key));
  out.setPriority(static_cast<proto::Priority>(spec.priority));
  if (spec.release != 0 || spec.renew != 0) {
    out.setHits(0);  // a node that predates `release` or `renew` only reads the key
    out.setRelease(spec.release);
    out.setRenew(spec.renew);
  } else if (spec.refund) {
    // hits 0 too: a node that predates hitsSigned only reads the key instead of spending.
    constexpr std::uint64_t kOverMax = (std::uint64_t{1} << 40) + 1;  // refused by the node
    out.setHits(0);
    out.setHitsSigned(-static_cast<std::int64_t>(std::min(spec.hits, kOverMax)));
  } else {
    out.setHits(spec.hits);
  }
  if (spec.rule.empty()) {
    toProto(spec.algorithm, spec.limit, spec.period, spec.burst, out.initLimit());
    return;
  }
  out.setRule(kjText(spec.rule));
  if (hasInlineLimit(spec)) {
    auto limit = out.initLimit();
    limit.setLimit(spec.limit);
    limit.setPeriodMs(wireMs(spec.period));
    limit.setBurst(spec.burst);
  }
}

std::uint64_t wireWords(const CheckSpec& spec) {
  return structWords<proto::CheckRequest>() + textWords(spec.key.size()) +
         (spec.rule.empty() ? 0 : textWords(spec.rule.size())) +
         (hasInlineLimit(spec) ? structWords<proto::LimitSpec>() : 0);
}

void toProto(const Rule& rule, proto::Rule::Builder out) {
  out.setName(kjText(rule.name));
  toProto(rule.algorithm, rule.limit, rule.period, rule.burst, out.initLimit());
  out.setShadow(rule.shadow);
  out.setDegraded(static_cast<proto::DegradedPolicy>(rule.degraded));
  out.setOverload(static_cast<proto::OverloadPolicy>(rule.overload));
}

void toProto(const Report& report, proto::Report::Builder out) {
  out.setRule(kjText(report.rule));
  out.setLatencyNs(report.latency ? report.latency->count() : -1);
  out.setOutcome(static_cast<proto::ReportOutcome>(report.outcome));
}

namespace {

AdaptiveInfo fromProto(proto::AdaptiveSpec::Reader spec, proto::AdaptiveState::Reader state) {
  AdaptiveInfo a;
  a.min = spec.getMin();
  a.max = spec.getMax();
  a.latency_target = std::chrono::milliseconds(spec.getLatencyTargetMs());
  a.percentile = spec.getPercentile();
  a.error_rate_max = spec.getErrorRateMax();
  a.law = spec.getLaw() == proto::ControlLaw::AIMD ? "aimd" : "gradient";
  a.interval = std::chrono::milliseconds(spec.getIntervalMs());
  a.limit = state.getLimit();
  a.reason = text(state.getReason());
  a.reports = state.getReports();
  if (state.getLatencyNs() >= 0) a.latency = std::chrono::nanoseconds(state.getLatencyNs());
  a.error_rate = state.getErrorRate();
  a.controlled_here = state.getControlledHere();
  for (auto c : state.getHistory()) {
    a.history.push_back({c.getAtMs(), c.getLimit(), text(c.getReason())});
  }
  return a;
}

}  // namespace

Error fromProto(proto::Error::Reader error) {
  const auto code = static_cast<int>(error.getCode());
  if (code == static_cast<int>(ErrorCode::kPermissionDenied)) {
    return {ErrorCode::kPermissionDenied, text(error.getMessage())};
  }
  if (code > static_cast<int>(ErrorCode::kUnsupportedVersion)) {
    return {ErrorCode::kInternal,
            "error code " + std::to_string(code) + " from the node: " + text(error.getMessage())};
  }
  return {static_cast<ErrorCode>(code), text(error.getMessage())};
}

CheckResult fromProto(proto::CheckResult::Reader result) {
  CheckResult r;
  r.error = fromProto(result.getError());
  if (!r.ok()) return r;
  r.allowed = result.getAllowed();
  r.decided_allowed = result.getDecidedAllowed();
  r.shadow = result.getShadow();
  r.limit = result.getLimit();
  r.remaining = result.getRemaining();
  r.reset_after = std::chrono::nanoseconds(result.getResetAfterNs());
  r.retry_after = std::chrono::nanoseconds(result.getRetryAfterNs());
  r.period = fromWireMs(result.getPeriodMs());
  r.policy = text(result.getPolicy());
  r.refunded = result.getRefunded();
  r.lease_id = result.getLeaseId();
  r.lease_expiry_ms = result.getLeaseExpiryMs();
  if (const auto rel = static_cast<int>(result.getReleased());
      rel <= static_cast<int>(LeaseRelease::kAlreadyReleased)) {
    r.released = static_cast<LeaseRelease>(rel);
  }
  if (const auto ren = static_cast<int>(result.getRenewed());
      ren <= static_cast<int>(LeaseRenewal::kReleased)) {
    r.renewed = static_cast<LeaseRenewal>(ren);
  }
  if (const auto shed = static_cast<int>(result.getShed());
      shed <= static_cast<int>(ShedReason::kDeadline)) {
    r.shed = static_cast<ShedReason>(shed);
  }
  switch (result.getRoute()) {
    case proto::Route::FORWARDED:
      r.route = Route::kForwarded;
      break;
    case proto::Route::DEGRADED:
      r.route = Route::kDegraded;
      break;
    default:
      r.route = Route::kLocal;
      break;
  }
  return r;
}

Rule fromProto(proto::Rule::Reader rule) {
  Rule r;
  r.name = text(rule.getName());
  const auto limit = rule.getLimit();
  r.algorithm = fromProto(limit.getAlgorithm()).value_or(Algorithm::kTokenBucket);
  r.limit = limit.getLimit();
  r.period = fromWireMs(limit.getPeriodMs());
  r.burst = limit.getBurst();
  r.shadow = rule.getShadow();
  // An enumerant a newer node knows and this client does not reads as the default.
  const auto degraded = static_cast<unsigned>(rule.getDegraded());
  r.degraded = degraded <= 2 ? static_cast<DegradedPolicy>(degraded) : DegradedPolicy::kShare;
  r.overload = rule.getOverload() == proto::OverloadPolicy::DENY ? OverloadPolicy::kDeny
                                                                 : OverloadPolicy::kAllow;
  if (rule.hasAdaptive()) r.adaptive = fromProto(rule.getAdaptive(), rule.getAdaptiveState());
  return r;
}

NodeInfo fromProto(proto::NodeInfo::Reader info) {
  NodeInfo n;
  n.node_id = text(info.getNodeId());
  n.version = text(info.getVersion());
  n.protocol_version = info.getProtocolVersion();
  n.http_address = text(info.getHttpAddress());
  n.rpc_address = text(info.getRpcAddress());
  n.metrics_address = text(info.getMetricsAddress());
  n.uptime = fromWireMs(info.getUptimeMs());
  n.keys = info.getKeys();
  n.evictions = info.getEvictions();
  n.rules = info.getRules();
  n.rules_version = {info.getRulesVersion().getCounter(), info.getRulesVersion().getDigest()};
  n.rules_origin = text(info.getRulesOrigin());
  n.rules_made_unix_ms = info.getRulesMadeMs();
  for (const auto m : info.getMembers()) {
    n.members.push_back({text(m.getNodeId()), text(m.getState()), text(m.getGossipAddress()),
                         text(m.getRpcAddress()), text(m.getHttpAddress()), m.getIncarnation()});
  }
  const auto p = info.getPersistence();
  PersistenceInfo& o = n.persistence;
  o.redis = text(p.getRedis());
  o.connected = p.getConnected();
  o.pending = p.getPending();
  o.lag = fromWireMs(p.getLagMs());
  o.written = p.getWritten();
  o.write_errors = p.getWriteErrors();
  o.slots_waiting = p.getSlotsWaiting();
  o.parked = p.getParked();
  o.handoffs_sent = p.getHandoffsSent();
  o.handoffs_received = p.getHandoffsReceived();
  o.handoff_entries_sent = p.getHandoffEntriesSent();
  o.handoff_entries_received = p.getHandoffEntriesReceived();
  o.handoff_failures = p.getHandoffFailures();
  o.recovery_timeouts = p.getRecoveryTimeouts();
  o.draining = p.getDraining();
  o.drained = p.getDrained();
  return n;
}

KeyInspection fromProto(proto::KeyInspection::Reader inspection) {
  KeyInspection k;
  k.found = inspection.getFound();
  if (k.found) k.algorithm = fromProto(inspection.getAlgorithm());
  k.limit = inspection.getLimit();
  k.remaining = inspection.getRemaining();
  k.reset_after = std::chrono::nanoseconds(inspection.getResetAfterNs());
  k.expiry_unix_ms = inspection.getExpiryMs();
  k.count = inspection.getCount();
  k.previous_count = inspection.getPreviousCount();
  return k;
}

CheckResult unavailableResult(OnUnavailable policy, ErrorCode code, std::string why) {
  CheckResult r;
  switch (policy) {
    case OnUnavailable::kFailOpen:
      r.allowed = r.decided_allowed = true;
      r.fallback = true;
      break;
    case OnUnavailable::kFailClosed:
      r.fallback = true;
      break;
    case OnUnavailable::kReturnError:
      r.error = {code, std::move(why)};
      break;
  }
  return r;
}

CheckResult errorResult(ErrorCode code, std::string message) {
  CheckResult r;
  r.error = {code, std::move(message)};
  return r;
}

bool validNodeAddress(const std::string& address) {
  const std::size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) return false;
  if (address.front() == '[' && address[colon - 1] != ']') return false;
  unsigned port = 0;
  const char* first = address.data() + colon + 1;
  const char* last = address.data() + address.size();
  const auto [end, ec] = std::from_chars(first, last, port);
  return ec == std::errc() && end == last && port >= 1 && port <= 65535;
}

}  // namespace throttlex::client::detail
