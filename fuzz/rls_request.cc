// Fuzz target: what Envoy sends the RLS server (daemon/rls/): a protobuf RateLimitRequest, planned
// against envoyproxy/ratelimit's README rules (descriptor matching, `replaces`, limit overrides,
// hits_addend) and answered with every check decided. Any bytes are either a malformed message
// (INVALID_ARGUMENT), a refused request (an error naming why) or an answer with one status per
// descriptor: never a crash, a hang or an unbounded allocation.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "daemon/rls/rls_plan.h"
#include "daemon/service/rules.h"
#include "daemon/service/rules_doc.h"
#include "envoy/service/ratelimit/v3/rls.pb.h"

namespace {

using throttlex::CheckOutcome;
using throttlex::Result;
using throttlex::RuleSet;

const char* const kRules[] = {
    R"(domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit: {unit: second, requests_per_unit: 500}
  - key: database
    value: default
    rate_limit: {unit: second, requests_per_unit: 500}
)",
    R"(domain: messaging
atomic: true
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: ldap
    rate_limit: {unlimited: true}
  - key: key1
    value: value*
    rate_limit: {unit: minute, requests_per_unit: 20, name: wild}
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 10
      replaces: [{name: wild}]
    shadow_mode: true
)"};

std::shared_ptr<const RuleSet> rules() {
  static const std::shared_ptr<const RuleSet> set = [] {
    throttlex::RulesDoc doc;
    for (const char* text : kRules) doc.sources.push_back({"", text});
    auto parsed = RuleSet::fromDoc(doc);
    if (!parsed) __builtin_trap();  // the fixture itself must load
    return std::make_shared<const RuleSet>(std::move(*parsed));
  }();
  return set;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  envoy::service::ratelimit::v3::RateLimitRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto plan = throttlex::planRls(request, rules());
  if (!plan) return 0;
  // Every check decided as the limiter would: allowed, with a remaining count from the input.
  std::vector<Result<CheckOutcome>> outcomes;
  for (std::size_t i = 0; i < plan->args.size(); ++i) {
    CheckOutcome o;
    o.decision.allowed = (i + size) % 3 != 0;
    o.decision.limit = 10;
    o.decision.remaining = (i * 7 + size) % 11;
    o.allowed = o.decision.allowed;
    o.policy = std::string(plan->args[i].rule);
    outcomes.emplace_back(std::move(o));
  }
  envoy::service::ratelimit::v3::RateLimitResponse response;
  const throttlex::Time now{std::chrono::seconds(1'700'000'000)};
  if (throttlex::answerRls(*plan, outcomes, now, size % 2 == 0, response)) {
    if (response.statuses_size() != request.descriptors_size()) __builtin_trap();
  }
  return 0;
}
