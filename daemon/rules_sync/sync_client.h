// Calling syncRules on another member (RulesSync's RulesSender over Cap'n Proto): blocking, for
// the sync thread, on its BlockingPeerLoop (proto/rpc_tls.h). Connections stay open between
// calls and are opened again after a failure; each call is bounded by `timeout`.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "daemon/rules_sync/rules_sync.h"
#include "proto/rpc_tls.h"

namespace throttlex {

// `tls`: this node's peer certificate (proto/rpc_tls.h); null: plain TCP.
Result<RulesAnswer> sendRules(const std::string& address, const std::string& from,
                              const RulesVersion& mine, const RulesDoc* doc,
                              std::chrono::milliseconds timeout,
                              const std::shared_ptr<const proto::TlsConfig>& tls = nullptr);

}  // namespace throttlex
