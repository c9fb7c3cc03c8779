// Sending digests to a rule's controller (AdaptiveExchange's DigestSender over Cap'n Proto):
// blocking, for the exchange thread, on its BlockingPeerLoop (proto/rpc_tls.h). Connections stay
// open between rounds (two rounds per interval) and are opened again after a failure; each call
// is bounded by `timeout`.
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "daemon/adaptive/controller.h"
#include "proto/rpc_tls.h"

namespace throttlex {

// `tls`: this node's peer certificate (proto/rpc_tls.h); null: plain TCP.
Result<std::vector<RuleVerdict>> sendDigests(
    const std::string& address, const std::string& from, std::span<const RuleDigest> digests,
    std::chrono::milliseconds timeout,
    const std::shared_ptr<const proto::TlsConfig>& tls = nullptr);

}  // namespace throttlex
