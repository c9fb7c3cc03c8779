#include "daemon/routing/wire.h"

#include <algorithm>
#include <chrono>
#include <limits>

namespace throttlex {
namespace {

// The wire enum and the limiter's share numeric values, so conversion is a cast.
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
static_assert(kAlgorithmCount == 6, "a new algorithm needs its wire value here");
static_assert(static_cast<int>(proto::LeaseRelease::ALREADY_RELEASED) ==
              static_cast<int>(LeaseRelease::kAlreadyReleased));
static_assert(static_cast<int>(proto::Priority::SHEDDABLE) ==
              static_cast<int>(Priority::kSheddable));
static_assert(static_cast<int>(proto::ShedReason::DEADLINE) ==
              static_cast<int>(ShedReason::kDeadline));

}  // namespace

void setError(proto::Error::Builder out, proto::ErrorCode code, const std::string& message) {
  out.setCode(code);
  out.setMessage(kjText(message));
}
void setError(proto::Error::Builder out, const Error& error) {
  setError(out, toProto(error.code), error.message);
}

void encode(const Result<CheckOutcome>& r, proto::CheckResult::Builder out) {
  if (!r) {
    setError(out.initError(), r.error());
    return;
  }
  // error stays a null pointer: it reads as code none and costs no bytes.
  const CheckOutcome& o = *r;
  out.setAllowed(o.allowed);
  out.setDecidedAllowed(o.decision.allowed);
  out.setShadow(o.shadow);
  out.setLimit(o.decision.limit);
  out.setRemaining(o.decision.remaining);
  out.setResetAfterNs(o.decision.reset_after.count());
  out.setRetryAfterNs(o.decision.retry_after.count());  // kRetryNever is -1 ns, as on the wire
  out.setPolicy(kjText(o.policy));
  out.setPeriodMs(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(o.period).count()));
  out.setRoute(static_cast<proto::Route>(o.route));
  if (o.lease_id != 0) {
    out.setLeaseId(o.lease_id);
    out.setLeaseExpiryMs(o.lease_expiry_ms);
  }
  if (o.released) out.setReleased(static_cast<proto::LeaseRelease>(*o.released));
  if (o.renewed) out.setRenewed(static_cast<proto::LeaseRenewal>(*o.renewed));
  if (o.shed) out.setShed(static_cast<proto::ShedReason>(*o.shed));
}

void encode(const LimitSpec& spec, proto::LimitSpec::Builder out) {
  out.setAlgorithm(toProto(spec.algorithm));
  out.setLimit(spec.limit);
  out.setPeriodMs(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(spec.period).count()));
  out.setBurst(spec.burst);
}

proto::ErrorCode toProto(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return proto::ErrorCode::INVALID_ARGUMENT;
    case ErrorCode::kNotFound:
      return proto::ErrorCode::NOT_FOUND;
    case ErrorCode::kUnavailable:
      return proto::ErrorCode::UNAVAILABLE;
    case ErrorCode::kDeadlineExceeded:
      return proto::ErrorCode::DEADLINE_EXCEEDED;
    case ErrorCode::kResourceExhausted:
      return proto::ErrorCode::RESOURCE_EXHAUSTED;
    case ErrorCode::kInternal:
      return proto::ErrorCode::INTERNAL;
    case ErrorCode::kNotDecided:
      return proto::ErrorCode::NOT_DECIDED;
    case ErrorCode::kPermissionDenied:
      return proto::ErrorCode::PERMISSION_DENIED;
  }
  return proto::ErrorCode::INTERNAL;
}

Result<LimitSpec> fromProto(proto::LimitSpec::Reader spec) {
  LimitSpec out;
  const auto algorithm = static_cast<int>(spec.getAlgorithm());
  if (algorithm > kAlgorithmCount) {
    return invalidArgument("unknown algorithm " + std::to_string(algorithm));
  }
  // unspecified (0) means the default, as an omitted 'algorithm' does over HTTP.
  if (algorithm != 0) out.algorithm = static_cast<Algorithm>(algorithm);
  out.limit = spec.getLimit();
  out.burst = spec.getBurst();
  // Clamped just past the maximum so that Limit::make rejects it with its usual message instead
  // of the conversion to nanoseconds overflowing.
  constexpr std::uint64_t kMaxPeriodMs =
      std::chrono::duration_cast<std::chrono::milliseconds>(kMaxPeriod).count() + 1;
  out.period = std::chrono::milliseconds(std::min(spec.getPeriodMs(), kMaxPeriodMs));
  return out;
}

Result<CheckArgs> fromProto(proto::CheckRequest::Reader request) {
  CheckArgs args;
  args.key = view(request.getKey());
  args.rule = view(request.getRule());
  args.hits = request.getHits();
  if (const std::int64_t hits = request.getHitsSigned(); hits != 0) {
    args.refund = hits < 0;
    // |INT64_MIN| does not fit; anything that large is refused as over kMaxCost anyway.
    args.hits = hits < 0 ? (hits == std::numeric_limits<std::int64_t>::min()
                                ? kMaxCost + 1
                                : static_cast<std::uint64_t>(-hits))
                         : static_cast<std::uint64_t>(hits);
  }
  args.release = request.getRelease();
  args.renew = request.getRenew();
  if (const auto p = static_cast<int>(request.getPriority()); p < kPriorityCount) {
    args.priority = static_cast<Priority>(p);
  }
  const auto limit = request.getLimit();
  if (!args.rule.empty()) {
    if (limit.getLimit() != 0 || limit.getPeriodMs() != 0 || limit.getBurst() != 0 ||
        limit.getAlgorithm() != proto::Algorithm::UNSPECIFIED) {
      return invalidArgument("give either 'rule' or an inline limit, not both");
    }
    return args;
  }
  auto spec = fromProto(limit);
  if (!spec) return spec.error();
  args.limit = *spec;
  return args;
}

ErrorCode fromProto(proto::ErrorCode code) {
  switch (code) {
    case proto::ErrorCode::INVALID_ARGUMENT:
      return ErrorCode::kInvalidArgument;
    case proto::ErrorCode::NOT_FOUND:
      return ErrorCode::kNotFound;
    case proto::ErrorCode::UNAVAILABLE:
      return ErrorCode::kUnavailable;
    case proto::ErrorCode::DEADLINE_EXCEEDED:
      return ErrorCode::kDeadlineExceeded;
    case proto::ErrorCode::RESOURCE_EXHAUSTED:
      return ErrorCode::kResourceExhausted;
    case proto::ErrorCode::UNSUPPORTED_VERSION:
      return ErrorCode::kInvalidArgument;
    case proto::ErrorCode::NOT_DECIDED:
      return ErrorCode::kNotDecided;
    case proto::ErrorCode::PERMISSION_DENIED:
      return ErrorCode::kPermissionDenied;
    case proto::ErrorCode::NONE:
    case proto::ErrorCode::INTERNAL:
      break;
  }
  return ErrorCode::kInternal;
}

Result<CheckOutcome> decode(proto::CheckResult::Reader r) {
  if (r.hasError() && r.getError().getCode() != proto::ErrorCode::NONE) {
    return Error{fromProto(r.getError().getCode()), std::string(view(r.getError().getMessage()))};
  }
  CheckOutcome o;
  o.decision.allowed = r.getDecidedAllowed();
  o.decision.limit = r.getLimit();
  o.decision.remaining = r.getRemaining();
  o.decision.reset_after = Duration(r.getResetAfterNs());
  o.decision.retry_after = Duration(r.getRetryAfterNs());
  o.allowed = r.getAllowed();
  o.shadow = r.getShadow();
  o.policy = std::string(view(r.getPolicy()));
  o.period = std::chrono::milliseconds(r.getPeriodMs());
  // The owner decided it (local there); if the owner itself had to fall back, say so.
  o.route = r.getRoute() == proto::Route::DEGRADED ? RouteKind::kDegraded : RouteKind::kForwarded;
  o.lease_id = r.getLeaseId();
  o.lease_expiry_ms = r.getLeaseExpiryMs();
  if (const auto rel = static_cast<int>(r.getReleased());
      rel >= static_cast<int>(LeaseRelease::kReleased) &&
      rel <= static_cast<int>(LeaseRelease::kAlreadyReleased)) {
    o.released = static_cast<LeaseRelease>(rel);
  }
  if (const auto ren = static_cast<int>(r.getRenewed());
      ren >= 1 && ren <= static_cast<int>(LeaseRenewal::kReleased)) {
    o.renewed = static_cast<LeaseRenewal>(ren);
  }
  if (const auto shed = static_cast<int>(r.getShed()); shed >= 1 && shed <= kShedReasonCount) {
    o.shed = static_cast<ShedReason>(shed);
  }
  return o;
}

void encode(const CheckArgs& c, proto::CheckRequest::Builder out) {
  out.setKey(capnp::Text::Reader(c.key.data(), c.key.size()));
  out.setPriority(static_cast<proto::Priority>(c.priority));
  if (c.release != 0 || c.renew != 0) {
    out.setHits(0);  // a node that predates them only reads the key
    out.setRelease(c.release);
    out.setRenew(c.renew);
  } else if (c.refund) {
    out.setHits(0);
    out.setHitsSigned(-static_cast<std::int64_t>(std::min(c.hits, kMaxCost + 1)));
  } else {
    out.setHits(c.hits);
  }
  if (!c.rule.empty()) {
    out.setRule(capnp::Text::Reader(c.rule.data(), c.rule.size()));
    return;
  }
  encode(c.limit, out.initLimit());
}

}  // namespace throttlex
