#include "proto/peer_call.h"

#include <capnp/message.h>
#include <kj/async-io.h>
#include <kj/timer.h>

#include <map>
#include <utility>

#include "proto/node_connection.h"

namespace throttlex::proto {
namespace {

// The calling thread's open connections, by address and reader bound.
using Connections = std::map<std::pair<std::string, std::uint64_t>, kj::Own<NodeConnection>>;
Connections& connections() {
  thread_local Connections c;
  return c;
}

}  // namespace

Status callPeer(const std::string& address, const std::shared_ptr<const TlsConfig>& tls,
                std::chrono::milliseconds timeout, std::uint64_t reader_words,
                kj::Function<kj::Promise<void>(Node::Client&)> call, bool keep) {
  BlockingPeerLoop& loop = BlockingPeerLoop::ofThisThread();
  kj::AsyncIoContext& io = loop.io();
  Connections& open = connections();
  const auto key = std::make_pair(address, reader_words);
  capnp::ReaderOptions reader;
  reader.traversalLimitInWords = reader_words;
  auto failed = kj::runCatchingExceptions([&] {
    loop.wake();
    bool switched = false;
    kj::TlsContext* context = loop.tls(tls, &switched);
    if (switched) open.clear();  // made with another config's contexts
    kj::Promise<void> connected = kj::READY_NOW;
    if (!open.contains(key)) {
      connected = connectNode(io.provider->getNetwork(), kj::StringPtr(address.c_str()), context)
                      .then([&](kj::Own<kj::AsyncIoStream> stream) {
                        open[key] = kj::heap<NodeConnection>(kj::mv(stream), reader);
                      });
    }
    auto called = connected.then([&] { return call(open[key]->node); });
    io.provider->getTimer()
        .timeoutAfter(timeout.count() * kj::MILLISECONDS, kj::mv(called))
        .wait(io.waitScope);
  });
  KJ_IF_MAYBE (e, failed) {
    open.erase(key);  // opened again next time
    return throttlex::Error{throttlex::ErrorCode::kUnavailable,
                            std::string(e->getDescription().cStr())};
  }
  if (!keep) open.erase(key);
  return Ok{};
}

}  // namespace throttlex::proto
