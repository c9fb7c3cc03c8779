// Adaptive rules on the wire (proto/throttlex.capnp: adaptiveExchange, report): digests and
// verdicts between nodes, reports from applications. Decoders validate everything a peer or a
// client could get wrong (fuzz/adaptive_wire.cc).
#pragma once

#include <string>
#include <vector>

#include "daemon/adaptive/controller.h"
#include "proto/throttlex.capnp.h"

namespace throttlex {

inline constexpr std::size_t kMaxExchangeDigests = 10000;

void encode(const RuleDigest& d, proto::AdaptiveDigest::Builder out);
Result<std::vector<RuleDigest>> decodeDigests(capnp::List<proto::AdaptiveDigest>::Reader in);

void encode(const RuleVerdict& v, proto::AdaptiveVerdict::Builder out);
Result<std::vector<RuleVerdict>> decodeVerdicts(capnp::List<proto::AdaptiveVerdict>::Reader in);

// An adaptive rule's block and where its limit stands here (listRules).
void encodeAdaptive(const AdaptiveSpec& spec, const AdaptiveCell& cell, bool controlled_here,
                    proto::Rule::Builder out);

// Reports as LimiterService::report() takes them; their rule views point into `in`.
Result<std::vector<ReportArgs>> decodeReports(capnp::List<proto::Report>::Reader in);

}  // namespace throttlex
