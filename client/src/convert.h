// Between the public types (throttlex/client.h) and the wire types (proto/throttlex.capnp).
#pragma once

#include <cstdint>
#include <string>

#include "proto/throttlex.capnp.h"
#include "throttlex/client.h"

namespace throttlex::client::detail {

void toProto(const CheckSpec& spec, proto::CheckRequest::Builder out);
// The words toProto(spec) adds to a message as a list element, for exact message size hints.
std::uint64_t wireWords(const CheckSpec& spec);
void toProto(const Rule& rule, proto::Rule::Builder out);
void toProto(const Report& report, proto::Report::Builder out);

Error fromProto(proto::Error::Reader error);
CheckResult fromProto(proto::CheckResult::Reader result);
Rule fromProto(proto::Rule::Reader rule);
NodeInfo fromProto(proto::NodeInfo::Reader info);
KeyInspection fromProto(proto::KeyInspection::Reader inspection);

// The answer for a check that no node answered, as `policy` says.
CheckResult unavailableResult(OnUnavailable policy, ErrorCode code, std::string why);
CheckResult errorResult(ErrorCode code, std::string message);

// "host:port" or "[v6]:port" with a port in 1..65535.
bool validNodeAddress(const std::string& address);

}  // namespace throttlex::client::detail
