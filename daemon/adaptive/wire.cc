#include "daemon/adaptive/wire.h"

namespace throttlex {
namespace {

std::string_view view(capnp::Text::Reader t) {
  return {t.cStr(), t.size()};
}

}  // namespace

void encode(const RuleDigest& d, proto::AdaptiveDigest::Builder out) {
  out.setRule(kj::StringPtr(d.rule.c_str()));
  const std::vector<std::uint64_t> buckets = d.digest.buckets();
  auto b = out.initBuckets(static_cast<unsigned>(buckets.size()));
  for (unsigned i = 0; i < buckets.size(); ++i) b.set(i, buckets[i]);
  auto o = out.initOutcomes(kReportOutcomes);
  for (unsigned i = 0; i < kReportOutcomes; ++i) {
    o.set(i, d.digest.outcome(static_cast<ReportOutcome>(i)));
  }
  out.setAdmitted(d.digest.admitted());
  out.setLimited(d.digest.limited());
  out.setKnownLimit(d.known_limit);
}

Result<std::vector<RuleDigest>> decodeDigests(capnp::List<proto::AdaptiveDigest>::Reader in) {
  if (in.size() > kMaxExchangeDigests) {
    return invalidArgument("at most " + std::to_string(kMaxExchangeDigests) + " digests per call");
  }
  std::vector<RuleDigest> out;
  out.reserve(in.size());
  for (auto d : in) {
    RuleDigest r;
    r.rule = std::string(view(d.getRule()));
    if (Status s = validateRuleName(r.rule); !s) return s.error();
    if (d.getBuckets().size() > static_cast<unsigned>(SignalDigest::kBuckets) ||
        d.getOutcomes().size() > kReportOutcomes) {
      return invalidArgument("digest of '" + r.rule + "': too many buckets or outcomes");
    }
    std::vector<std::uint64_t> buckets;
    buckets.reserve(d.getBuckets().size());
    for (std::uint64_t b : d.getBuckets()) buckets.push_back(b);
    if (!r.digest.addBuckets(buckets)) {
      return invalidArgument("digest of '" + r.rule + "': a bucket index is out of range");
    }
    unsigned i = 0;
    for (std::uint64_t n : d.getOutcomes()) r.digest.addOutcome(static_cast<ReportOutcome>(i++), n);
    r.digest.addChecks(d.getAdmitted(), d.getLimited());
    r.known_limit = d.getKnownLimit();
    out.push_back(std::move(r));
  }
  return out;
}

void encode(const RuleVerdict& v, proto::AdaptiveVerdict::Builder out) {
  out.setRule(kj::StringPtr(v.rule.c_str()));
  out.setControlled(v.controlled);
  out.setLimit(v.verdict.limit);
  out.setReason(kj::StringPtr(v.verdict.reason.c_str()));
  out.setReports(v.verdict.signals.reports);
  out.setLatencyNs(v.verdict.signals.latency ? v.verdict.signals.latency->count() : -1);
  out.setErrorRate(v.verdict.signals.error_rate);
}

Result<std::vector<RuleVerdict>> decodeVerdicts(capnp::List<proto::AdaptiveVerdict>::Reader in) {
  std::vector<RuleVerdict> out;
  out.reserve(in.size());
  for (auto v : in) {
    RuleVerdict r;
    r.rule = std::string(view(v.getRule()));
    r.controlled = v.getControlled();
    if (r.controlled && v.getLimit() == 0) {
      return invalidArgument("verdict of '" + r.rule + "': a limit of 0");
    }
    r.verdict.limit = v.getLimit();
    r.verdict.reason = std::string(view(v.getReason()));
    r.verdict.signals.reports = v.getReports();
    if (v.getLatencyNs() >= 0) r.verdict.signals.latency = Duration(v.getLatencyNs());
    r.verdict.signals.error_rate = v.getErrorRate();
    out.push_back(std::move(r));
  }
  return out;
}

void encodeAdaptive(const AdaptiveSpec& spec, const AdaptiveCell& cell, bool controlled_here,
                    proto::Rule::Builder out) {
  using std::chrono::duration_cast;
  using std::chrono::milliseconds;
  auto a = out.initAdaptive();
  a.setMin(spec.min);
  a.setMax(spec.max);
  a.setLatencyTargetMs(
      static_cast<std::uint64_t>(duration_cast<milliseconds>(spec.latency_target).count()));
  a.setPercentile(spec.percentile);
  a.setErrorRateMax(spec.error_rate_max);
  a.setLaw(static_cast<proto::ControlLaw>(spec.law));
  a.setIntervalMs(static_cast<std::uint64_t>(duration_cast<milliseconds>(spec.interval).count()));
  a.setBackoff(spec.backoff);
  a.setIncrease(spec.increase);
  a.setMinReports(spec.min_reports);
  auto st = out.initAdaptiveState();
  const AdaptiveVerdict v = cell.verdict();
  st.setLimit(cell.limit());
  st.setReason(kj::StringPtr(v.reason.c_str()));
  st.setReports(v.signals.reports);
  st.setLatencyNs(v.signals.latency ? v.signals.latency->count() : -1);
  st.setErrorRate(v.signals.error_rate);
  st.setControlledHere(controlled_here);
  const std::vector<LimitChange> history = cell.history();
  auto h = st.initHistory(static_cast<unsigned>(history.size()));
  for (unsigned i = 0; i < history.size(); ++i) {
    h[i].setAtMs(duration_cast<milliseconds>(history[i].at.time_since_epoch()).count());
    h[i].setLimit(history[i].limit);
    h[i].setReason(kj::StringPtr(history[i].reason.c_str()));
  }
  const auto reported = cell.reported();
  auto r = st.initReported(kReportOutcomes);
  for (unsigned i = 0; i < kReportOutcomes; ++i) r.set(i, reported[i]);
}

Result<std::vector<ReportArgs>> decodeReports(capnp::List<proto::Report>::Reader in) {
  if (in.size() > kMaxBatchReports) {
    return invalidArgument("at most " + std::to_string(kMaxBatchReports) + " reports per call");
  }
  std::vector<ReportArgs> out;
  out.reserve(in.size());
  for (auto r : in) {
    ReportArgs a;
    a.rule = view(r.getRule());
    const std::int64_t ns = r.getLatencyNs();
    if (ns < -1 || ns > kMaxReportLatency.count()) {
      return invalidArgument("report #" + std::to_string(out.size()) +
                             ": latencyNs must be -1 (none) or within 0 and 1 hour");
    }
    if (ns >= 0) a.latency = Duration(ns);
    const auto outcome = static_cast<unsigned>(r.getOutcome());
    if (outcome >= kReportOutcomes) {
      return invalidArgument("report #" + std::to_string(out.size()) + ": unknown outcome " +
                             std::to_string(outcome));
    }
    a.outcome = static_cast<ReportOutcome>(outcome);
    out.push_back(a);
  }
  return out;
}

}  // namespace throttlex
