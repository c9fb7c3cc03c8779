#include "daemon/rls/rls_plan.h"

#include <algorithm>
#include <unordered_set>

#include "daemon/http/http_api.h"

namespace throttlex {
namespace {

namespace rls = envoy::service::ratelimit::v3;
using RlsLimit = rls::RateLimitResponse::RateLimit;
using RlsStatus = rls::RateLimitResponse::DescriptorStatus;
using DescriptorProto = envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
using Plan = RlsPlan;

Result<std::uint64_t> hitsOf(const rls::RateLimitRequest& request, const DescriptorProto& d) {
  // Envoy: 0 (unset) means 1; a descriptor's own hits_addend overrides the request's. A peek (0)
  // is only for ThrottleX's own APIs.
  std::uint64_t hits = d.has_hits_addend() ? d.hits_addend().value() : request.hits_addend();
  if (hits == 0) hits = 1;
  if (hits > kMaxCost) {
    return invalidArgument("hits_addend " + std::to_string(hits) +
                           " is beyond any limit (at most " + std::to_string(kMaxCost) + ")");
  }
  return hits;
}

Status checkShape(const rls::RateLimitRequest& request) {
  if (request.domain().empty()) return invalidArgument("rate limit domain must not be empty");
  if (request.descriptors().empty()) {
    return invalidArgument("rate limit descriptor list must not be empty");
  }
  if (static_cast<std::size_t>(request.descriptors_size()) > kMaxRlsDescriptors) {
    return invalidArgument("at most " + std::to_string(kMaxRlsDescriptors) +
                           " descriptors per request");
  }
  for (const auto& d : request.descriptors()) {
    if (d.entries().empty()) return invalidArgument("a descriptor has no entries");
    if (static_cast<std::size_t>(d.entries_size()) > kMaxRlsEntries) {
      return invalidArgument("at most " + std::to_string(kMaxRlsEntries) +
                             " entries per descriptor");
    }
  }
  return Ok{};
}

// One check of the plan; its key goes into plan.keys (reserved: the views stay valid).
void addCheck(Plan& plan, Plan::Item& item, std::string key, CheckArgs args) {
  plan.keys.push_back(std::move(key));
  args.key = plan.keys.back();
  item.kind = Plan::Kind::kCheck;
  item.check = plan.args.size();
  plan.args.push_back(args);
}

// A descriptor that brings its own limit (RateLimitOverride): an inline fixed window, keyed in
// its domain. Refused like any inline limit when the node takes named rules only.
Status planOverride(const rls::RateLimitRequest& request, const DescriptorProto& d, Plan& plan,
                    Plan::Item& item, std::string key) {
  const auto unit = static_cast<RateUnit>(d.limit().unit());
  if (unitSeconds(unit) == 0) return invalidArgument("descriptor limit override: unknown unit");
  auto hits = hitsOf(request, d);
  if (!hits) return hits.error();
  CheckArgs args;
  args.limit.algorithm = Algorithm::kFixedWindow;
  args.limit.limit = d.limit().requests_per_unit();
  args.limit.period = std::chrono::seconds(unitSeconds(unit));
  args.hits = *hits;
  item.limit.set_requests_per_unit(d.limit().requests_per_unit());
  item.limit.set_unit(static_cast<RlsLimit::Unit>(unit));
  addCheck(plan, item, request.domain() + ":" + key, args);
  return Ok{};
}

Status planMatched(const rls::RateLimitRequest& request, const DescriptorProto& d,
                   const DescriptorLimit& m, Plan& plan, Plan::Item& item, std::string key) {
  if (m.unlimited) {
    item.kind = Plan::Kind::kUnlimited;
    return Ok{};
  }
  auto hits = hitsOf(request, d);
  if (!hits) return hits.error();
  CheckArgs args;
  args.rule = m.rule;
  args.hits = *hits;
  item.limit.set_requests_per_unit(m.requests_per_unit);
  item.limit.set_unit(static_cast<RlsLimit::Unit>(m.unit));
  item.limit.set_name(m.name);
  addCheck(plan, item, std::move(key), args);
  return Ok{};
}

}  // namespace

// Matches every descriptor, applies `replaces`, and lists the checks to make.
Result<RlsPlan> planRls(const rls::RateLimitRequest& request,
                        std::shared_ptr<const RuleSet> rules) {
  if (auto st = checkShape(request); !st) return st.error();
  const Domain* domain = rules->findDomain(request.domain());
  if (domain == nullptr) {
    return Error{ErrorCode::kNotFound, "unknown domain '" + request.domain() + "'"};
  }
  const auto n = static_cast<std::size_t>(request.descriptors_size());
  std::vector<std::string> keys(n);
  std::vector<const DescriptorLimit*> matched(n, nullptr);
  std::unordered_set<std::string_view> replaced;
  std::vector<DescriptorEntry> entries;
  for (std::size_t i = 0; i < n; ++i) {
    const DescriptorProto& d = request.descriptors(static_cast<int>(i));
    entries.clear();
    for (const auto& e : d.entries()) entries.push_back({e.key(), e.value()});
    keys[i] = descriptorKey(entries);
    if (keys[i].size() + request.domain().size() + 1 > kMaxKeyBytes) {
      return invalidArgument("descriptor " + std::to_string(i) + " is longer than " +
                             std::to_string(kMaxKeyBytes) + " bytes");
    }
    if (d.has_limit()) continue;
    matched[i] = domain->match(entries);
    if (matched[i] != nullptr) {
      for (const std::string& r : matched[i]->replaces) replaced.insert(r);
    }
  }
  Plan plan;
  plan.rules = std::move(rules);
  plan.atomic = domain->atomic();
  plan.items.resize(n);
  plan.keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const DescriptorProto& d = request.descriptors(static_cast<int>(i));
    Status st = Ok{};
    if (d.has_limit()) {
      st = planOverride(request, d, plan, plan.items[i], std::move(keys[i]));
    } else if (matched[i] != nullptr &&
               (matched[i]->name.empty() || !replaced.contains(matched[i]->name))) {
      st = planMatched(request, d, *matched[i], plan, plan.items[i], std::move(keys[i]));
    }
    if (!st) return st.error();
  }
  return plan;
}

namespace {

// Seconds to the end of the fixed window `unit` that holds `now`, as envoyproxy/ratelimit counts.
std::int64_t untilReset(Time now, RateUnit unit) {
  const std::int64_t divider = unitSeconds(unit);
  const std::int64_t seconds =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  return divider - seconds % divider;
}

// The status of a check that was decided. An error fails the whole call.
Result<RlsStatus> statusOf(const Plan::Item& item, const Result<CheckOutcome>& outcome, Time now) {
  if (!outcome) return outcome.error();
  if (outcome->decision.refused) {
    return Error{ErrorCode::kUnavailable, "the owner's store is full of keys in use"};
  }
  RlsStatus s;
  s.set_code(outcome->allowed ? rls::RateLimitResponse::OK : rls::RateLimitResponse::OVER_LIMIT);
  *s.mutable_current_limit() = item.limit;
  const std::uint64_t remaining = outcome->decision.allowed ? outcome->decision.remaining : 0;
  s.set_limit_remaining(static_cast<std::uint32_t>(std::min<std::uint64_t>(remaining, UINT32_MAX)));
  s.mutable_duration_until_reset()->set_seconds(
      untilReset(now, static_cast<RateUnit>(item.limit.unit())));
  return s;
}

// The descriptor the RateLimit headers describe, as envoyproxy/ratelimit picks it: the last one
// over its limit, else the first with the least remaining.
std::optional<std::size_t> headerDescriptor(const rls::RateLimitResponse& response,
                                            const Plan& plan) {
  std::optional<std::size_t> pick;
  std::uint32_t least = UINT32_MAX;
  for (std::size_t i = 0; i < plan.items.size(); ++i) {
    if (plan.items[i].kind != Plan::Kind::kCheck) continue;
    const RlsStatus& s = response.statuses(static_cast<int>(i));
    if (s.code() == rls::RateLimitResponse::OVER_LIMIT) {
      pick = i;
      least = 0;
    } else if (s.limit_remaining() < least) {
      pick = i;
      least = s.limit_remaining();
    }
  }
  return pick;
}

void addHeader(rls::RateLimitResponse& response, const char* key, std::string value) {
  auto* h = response.add_response_headers_to_add();
  h->set_key(key);
  h->set_value(std::move(value));
}

}  // namespace

Status answerRls(const RlsPlan& plan, const std::vector<Result<CheckOutcome>>& outcomes, Time now,
                 bool headers, rls::RateLimitResponse& response) {
  auto overall = rls::RateLimitResponse::OK;
  for (const Plan::Item& item : plan.items) {
    RlsStatus* s = response.add_statuses();
    if (item.kind == Plan::Kind::kNoLimit) {
      s->set_code(rls::RateLimitResponse::OK);
      continue;
    }
    if (item.kind == Plan::Kind::kUnlimited) {
      s->set_code(rls::RateLimitResponse::OK);
      s->set_limit_remaining(UINT32_MAX);
      continue;
    }
    auto status = statusOf(item, outcomes[item.check], now);
    if (!status) return status.error();
    *s = std::move(*status);
    if (s->code() == rls::RateLimitResponse::OVER_LIMIT) overall = s->code();
  }
  response.set_overall_code(overall);
  if (headers) {
    if (const auto i = headerDescriptor(response, plan)) {
      const CheckOutcome& o = *outcomes[plan.items[*i].check];
      addHeader(response, "RateLimit-Policy", rateLimitPolicyHeader(o));
      addHeader(response, "RateLimit", rateLimitHeader(o));
    }
  }
  return Ok{};
}

}  // namespace throttlex
