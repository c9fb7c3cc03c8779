#include "daemon/service/rules_doc.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "limiter/period.h"

namespace throttlex {
namespace {

constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;

void mix(std::uint64_t& h, std::string_view bytes) {
  // The length first, so ("ab","c") and ("a","bc") differ.
  for (std::size_t n = bytes.size(), i = 0; i < 8; ++i, n >>= 8) {
    h = (h ^ (n & 0xff)) * kFnvPrime;
  }
  for (const char c : bytes) h = (h ^ static_cast<unsigned char>(c)) * kFnvPrime;
}

// `v * scale` spelled so that the rules parser (which divides by `scale`) reads `v` back: the
// shortest spelling that does.
std::string number(double v, double scale = 1) {
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v * scale);
    if (std::strtod(buf, nullptr) / scale == v) break;
  }
  return buf;
}

std::string adaptiveYaml(const AdaptiveSpec& a) {
  std::string out = "{min: " + std::to_string(a.min) + ", max: " + std::to_string(a.max);
  if (a.latency_target.count() > 0) out += ", latency_target: " + formatPeriod(a.latency_target);
  out += ", percentile: " + number(a.percentile, 100);
  if (a.error_rate_max > 0) out += ", error_rate_max: " + number(a.error_rate_max);
  out += ", law: " + std::string(nameOf(a.law));
  out += ", interval: " + formatPeriod(a.interval);
  out += ", backoff: " + number(a.backoff);
  out += ", increase: " + std::to_string(a.increase);
  out += ", min_reports: " + std::to_string(a.min_reports) + "}";
  return out;
}

}  // namespace

std::string formatRulesVersion(const RulesVersion& v) {
  char digest[17];
  std::snprintf(digest, sizeof digest, "%016llx", static_cast<unsigned long long>(v.digest));
  return std::to_string(v.counter) + "." + digest;
}

std::uint64_t RulesDoc::contentDigest() const {
  std::uint64_t h = kFnvOffset;
  mix(h, std::to_string(sources.size()));
  for (const RulesSource& s : sources) {
    mix(h, s.name);
    mix(h, s.text);
  }
  mix(h, std::to_string(changes.size()));
  for (const RulesChange& c : changes) {
    mix(h, c.rule);
    mix(h, c.yaml);
  }
  return h;
}

std::size_t RulesDoc::bytes() const {
  std::size_t n = origin.size();
  for (const RulesSource& s : sources) n += s.name.size() + s.text.size();
  for (const RulesChange& c : changes) n += c.rule.size() + c.yaml.size();
  return n;
}

RulesDoc RulesDoc::with(RulesChange change) const {
  RulesDoc next = *this;
  std::erase_if(next.changes, [&](const RulesChange& c) { return c.rule == change.rule; });
  next.changes.push_back(std::move(change));
  next.version = {version.counter + 1, next.contentDigest()};
  return next;
}

Status RulesDoc::validate() const {
  if (sources.size() > kMaxSources) {
    return invalidArgument("rules: " + std::to_string(sources.size()) + " sources, at most " +
                           std::to_string(kMaxSources));
  }
  if (changes.size() > kMaxChanges) {
    return invalidArgument("rules: " + std::to_string(changes.size()) + " changes, at most " +
                           std::to_string(kMaxChanges));
  }
  if (bytes() > kMaxBytes) {
    return invalidArgument("rules: " + std::to_string(bytes()) + " bytes, at most " +
                           std::to_string(kMaxBytes));
  }
  if (version.counter > kMaxCounter) {
    return invalidArgument("rules version " + formatRulesVersion(version) +
                           ": the counter is beyond any that changes reach");
  }
  if (contentDigest() != version.digest) {
    return invalidArgument("rules version " + formatRulesVersion(version) +
                           ": the digest does not match the content");
  }
  return Ok{};
}

std::string ruleYaml(const Rule& rule) {
  const LimitSpec& s = rule.spec;
  std::string out = "{name: \"" + rule.name +
                    "\", algorithm: " + std::string(algorithmName(s.algorithm)) +
                    ", limit: " + std::to_string(s.limit) + ", period: " + formatPeriod(s.period);
  if (s.burst != 0) out += ", burst: " + std::to_string(s.burst);
  if (rule.shadow) out += ", shadow: true";
  if (rule.degraded != DegradedPolicy::kShare) {
    out += ", degraded: " + std::string(nameOf(rule.degraded));
  }
  if (rule.overload != OverloadPolicy::kAllow) {
    out += ", overload: " + std::string(nameOf(rule.overload));
  }
  if (rule.adaptive) out += ", adaptive: " + adaptiveYaml(*rule.adaptive);
  return out + "}";
}

std::string rulesYaml(const std::vector<Rule>& rules) {
  std::string out = "rules:\n";
  for (const Rule& r : rules) out += "  - " + ruleYaml(r) + "\n";
  return out;
}

}  // namespace throttlex
