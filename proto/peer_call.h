// A blocking call to another node, for the threads that talk to peers off the check path (the
// adaptive exchange, the rules sync, handoffs): on the calling thread's BlockingPeerLoop
// (proto/rpc_tls.h), over a connection kept open per address and reader bound (opened again after
// a failure), bounded by `timeout`.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <kj/async.h>
#include <kj/function.h>

#include "limiter/result.h"
#include "proto/rpc_tls.h"
#include "proto/throttlex.capnp.h"

namespace throttlex::proto {

// `call` makes the request on the node's capability and reads the answer (into what it
// captured). Returns an error (kUnavailable, with KJ's description) when the connection, the call
// or the timeout failed; the connection is then closed. `tls` null: plain TCP. `keep` false: the
// connection is closed after the call (a handoff opens one per call).
Status callPeer(const std::string& address, const std::shared_ptr<const TlsConfig>& tls,
                std::chrono::milliseconds timeout, std::uint64_t reader_words,
                kj::Function<kj::Promise<void>(Node::Client&)> call, bool keep = true);

}  // namespace throttlex::proto
