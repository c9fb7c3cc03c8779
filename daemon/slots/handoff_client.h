// Sending a handoff (daemon/slots/slot_keeper.h) to a peer's RPC port: blocking, for the slot
// keeper's worker thread, on the thread's BlockingPeerLoop (proto/rpc_tls.h); each call opens a
// fresh connection (handoffs are rare: ring changes and drains) and is bounded by `timeout`.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "limiter/result.h"
#include "limiter/store.h"
#include "proto/rpc_tls.h"

namespace throttlex {

// `tls`: this node's peer certificate (proto/rpc_tls.h); null: plain TCP.
Status sendHandoff(const std::string& address, const std::string& from,
                   std::span<const std::uint16_t> slots, std::span<const StoredEntry> entries,
                   std::chrono::milliseconds timeout,
                   const std::shared_ptr<const proto::TlsConfig>& tls = nullptr);

}  // namespace throttlex
