// One RLS request, from its decoded message to its answer (no gRPC here, so that the fuzz target
// and the unit tests drive it alone): which descriptors match which limits (`replaces` applied),
// the checks to make, and the response once they are decided — as envoyproxy/ratelimit answers.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "daemon/service/descriptors.h"
#include "daemon/service/limiter_service.h"
#include "envoy/service/ratelimit/v3/rls.pb.h"

namespace throttlex {

// Bounds on what one request may ask (a bigger request is refused, nothing spent).
inline constexpr std::size_t kMaxRlsDescriptors = 64;
inline constexpr std::size_t kMaxRlsEntries = 16;  // per descriptor

struct RlsPlan {
  enum class Kind : std::uint8_t { kNoLimit, kUnlimited, kCheck };
  struct Item {
    Kind kind = Kind::kNoLimit;
    std::size_t check = 0;  // index into `args` (kCheck)
    envoy::service::ratelimit::v3::RateLimitResponse::RateLimit limit;  // current_limit (kCheck)
  };
  std::shared_ptr<const RuleSet> rules;  // keeps the matched DescriptorLimits alive
  std::vector<Item> items;               // one per descriptor, in request order
  std::vector<std::string> keys;         // reserved up front: `args` hold views of them
  std::vector<CheckArgs> args;
  bool atomic = false;  // the domain's descriptors are all or nothing (Domain::atomic())
};

// Errors: kInvalidArgument (the request's shape), kNotFound (unknown domain).
Result<RlsPlan> planRls(const envoy::service::ratelimit::v3::RateLimitRequest& request,
                        std::shared_ptr<const RuleSet> rules);

// The answer, once every check of `plan` is decided (`outcomes` indexed like plan.args). An error
// of any check fails the whole call. `headers`: add RateLimit-Policy and RateLimit for the
// descriptor envoyproxy/ratelimit would pick (the last over its limit, else the least remaining).
Status answerRls(const RlsPlan& plan, const std::vector<Result<CheckOutcome>>& outcomes, Time now,
                 bool headers, envoy::service::ratelimit::v3::RateLimitResponse& response);

}  // namespace throttlex
