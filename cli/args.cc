#include "cli/args.h"

#include <string>
#include <tuple>

#include "limiter/lease.h"
#include "limiter/limit.h"
#include "limiter/period.h"

namespace throttlex::cli {
namespace {

// The client's Algorithm and the limiter's carry the same wire values (proto/throttlex.capnp).
client::Algorithm toClient(throttlex::Algorithm a) {
  return static_cast<client::Algorithm>(static_cast<std::uint8_t>(a));
}

throttlex::Result<client::Algorithm> algorithmOrDefault(std::string_view text) {
  if (text.empty()) return client::Algorithm::kTokenBucket;
  auto parsed = throttlex::parseAlgorithm(text);
  if (!parsed) return parsed.error();
  return toClient(*parsed);
}

}  // namespace

throttlex::Result<std::chrono::milliseconds> parseMillis(std::string_view text) {
  auto parsed = throttlex::parsePeriod(text);
  if (!parsed) return parsed.error();
  return std::chrono::duration_cast<std::chrono::milliseconds>(*parsed);
}

std::string periodProblem(std::string_view text) {
  auto parsed = throttlex::parsePeriod(text);
  return parsed ? std::string() : parsed.error().message;
}

std::string algorithmProblem(std::string_view text) {
  auto parsed = throttlex::parseAlgorithm(text);
  return parsed ? std::string() : parsed.error().message;
}

std::string_view nameOf(client::DegradedPolicy policy) {
  switch (policy) {
    case client::DegradedPolicy::kAllow:
      return "allow";
    case client::DegradedPolicy::kDeny:
      return "deny";
    case client::DegradedPolicy::kShare:
      break;
  }
  return "share";
}

std::string_view nameOf(client::OverloadPolicy policy) {
  return policy == client::OverloadPolicy::kDeny ? "deny" : "allow";
}

std::string_view nameOf(client::Algorithm algorithm) {
  return throttlex::algorithmName(static_cast<throttlex::Algorithm>(algorithm));
}

throttlex::Result<client::CheckSpec> makeCheckSpec(const TargetArgs& args) {
  if (args.key.empty() || args.key.size() > client::kMaxKeyBytes) {
    return throttlex::invalidArgument("KEY must be 1 to " + std::to_string(client::kMaxKeyBytes) +
                                      " bytes");
  }
  client::CheckSpec spec;
  spec.key = args.key;
  spec.refund = args.hits < 0;
  spec.hits = args.hits < 0 ? 0 - static_cast<std::uint64_t>(args.hits)
                            : static_cast<std::uint64_t>(args.hits);
  for (const auto& [text, field, flag] : {std::tuple{&args.release, &spec.release, "--release"},
                                          std::tuple{&args.renew, &spec.renew, "--renew"}}) {
    if (text->empty()) continue;
    const auto id = throttlex::parseLeaseId(*text);
    if (!id) {
      return throttlex::invalidArgument(std::string(flag) +
                                        " takes a lease id: up to 16 hex digits, as an "
                                        "acquire printed it");
    }
    *field = *id;
  }
  if (!args.rule.empty()) {
    spec.rule = args.rule;
    return spec;
  }
  if (!args.limit || args.period.empty()) {
    return throttlex::invalidArgument("give --rule NAME, or an inline limit: --limit N --period P");
  }
  auto period = parseMillis(args.period);
  if (!period) return period.error();
  auto algorithm = algorithmOrDefault(args.algorithm);
  if (!algorithm) return algorithm.error();
  spec.limit = *args.limit;
  spec.period = *period;
  spec.algorithm = *algorithm;
  spec.burst = args.burst;
  return spec;
}

throttlex::Result<client::Rule> makeRule(const RuleArgs& args) {
  auto period = parseMillis(args.period);
  if (!period) return period.error();
  auto algorithm = algorithmOrDefault(args.algorithm);
  if (!algorithm) return algorithm.error();
  client::Rule rule;
  rule.name = args.name;
  rule.algorithm = *algorithm;
  rule.limit = args.limit;
  rule.period = *period;
  rule.burst = args.burst;
  rule.shadow = args.shadow;
  rule.degraded = args.degraded == "allow"  ? client::DegradedPolicy::kAllow
                  : args.degraded == "deny" ? client::DegradedPolicy::kDeny
                                            : client::DegradedPolicy::kShare;
  rule.overload =
      args.overload == "deny" ? client::OverloadPolicy::kDeny : client::OverloadPolicy::kAllow;
  return rule;
}

throttlex::Result<std::vector<client::CheckSpec>> makeAtomicSpecs(const AtomicArgs& args) {
  std::vector<client::CheckSpec> specs;
  for (const std::string& check : args.checks) {
    const auto eq = check.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == check.size()) {
      return throttlex::invalidArgument("a check is RULE=KEY, got '" + check + "'");
    }
    client::CheckSpec spec;
    spec.rule = check.substr(0, eq);
    spec.key = check.substr(eq + 1);
    spec.hits = args.hits;
    specs.push_back(std::move(spec));
  }
  return specs;
}

client::Report makeReport(const ReportArgs& args) {
  client::Report r;
  r.rule = args.rule;
  if (args.latency_ms) {
    r.latency = std::chrono::nanoseconds(static_cast<std::int64_t>(*args.latency_ms * 1e6));
  }
  r.outcome = args.outcome == "error"        ? client::ReportOutcome::kError
              : args.outcome == "timeout"    ? client::ReportOutcome::kTimeout
              : args.outcome == "overloaded" ? client::ReportOutcome::kOverloaded
                                             : client::ReportOutcome::kOk;
  return r;
}

}  // namespace throttlex::cli
