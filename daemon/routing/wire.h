// The Cap'n Proto form of checks and their answers, both ways: the RPC service reads requests and
// writes results with it, the forwarder writes requests and reads results. One place, so that a
// node and its peers can never disagree on what a field means.
#pragma once

#include <string>
#include <string_view>

#include "daemon/service/limiter_service.h"
#include "proto/text.h"
#include "proto/throttlex.capnp.h"

namespace throttlex {

using proto::kjText;
using proto::view;

// Algorithms share their numeric values with the wire enum (checked in wire.cc).
inline proto::Algorithm toProto(Algorithm a) {
  return static_cast<proto::Algorithm>(a);
}

// Error codes. The wire has more (unsupportedVersion): those read back as kInvalidArgument.
proto::ErrorCode toProto(ErrorCode code);
ErrorCode fromProto(proto::ErrorCode code);
void setError(proto::Error::Builder out, proto::ErrorCode code, const std::string& message);
void setError(proto::Error::Builder out, const Error& error);

// A check request. Reading: the result views into `request` (valid while the message is); an
// inline limit with a rule, or an unknown algorithm, is an error.
Result<CheckArgs> fromProto(proto::CheckRequest::Reader request);
Result<LimitSpec> fromProto(proto::LimitSpec::Reader spec);
void encode(const CheckArgs& check, proto::CheckRequest::Builder out);
void encode(const LimitSpec& spec, proto::LimitSpec::Builder out);

// A check's answer. Reading one from an owner marks it forwarded (or degraded, if the owner had
// to fall back itself).
void encode(const Result<CheckOutcome>& outcome, proto::CheckResult::Builder out);
Result<CheckOutcome> decode(proto::CheckResult::Reader result);

}  // namespace throttlex
