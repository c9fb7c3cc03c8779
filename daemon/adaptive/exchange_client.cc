#include "daemon/adaptive/exchange_client.h"

#include <capnp/message.h>
#include <kj/async-io.h>
#include <kj/timer.h>

#include <map>
#include <memory>

#include "daemon/adaptive/wire.h"
#include "proto/node_connection.h"

namespace throttlex {
namespace {

// The exchange thread's open connections, by address.
using Connections = std::map<std::string, kj::Own<proto::NodeConnection>>;
Connections& connections() {
  thread_local Connections c;
  return c;
}

}  // namespace

Result<std::vector<RuleVerdict>> sendDigests(const std::string& address, const std::string& from,
                                             std::span<const RuleDigest> digests,
                                             std::chrono::milliseconds timeout,
                                             const std::shared_ptr<const proto::TlsConfig>& tls) {
  proto::BlockingPeerLoop& loop = proto::BlockingPeerLoop::ofThisThread();
  kj::AsyncIoContext& io = loop.io();
  Connections& open = connections();
  capnp::ReaderOptions reader;
  reader.traversalLimitInWords = 8 * 1024 * 1024;  // verdicts: a few words per rule
  Result<std::vector<RuleVerdict>> result = std::vector<RuleVerdict>{};
  auto failed = kj::runCatchingExceptions([&] {
    loop.wake();
    bool switched = false;
    kj::TlsContext* context = loop.tls(tls, &switched);
    if (switched) open.clear();  // made with another config's contexts
    kj::Promise<void> connected = kj::READY_NOW;
    if (!open.contains(address)) {
      connected =
          proto::connectNode(io.provider->getNetwork(), kj::StringPtr(address.c_str()), context)
              .then([&](kj::Own<kj::AsyncIoStream> stream) {
                open[address] = kj::heap<proto::NodeConnection>(kj::mv(stream), reader);
              });
    }
    auto call = connected.then([&] {
      auto req = open[address]->node.castAs<proto::Limiter>().adaptiveExchangeRequest();
      req.setVersion(proto::PROTOCOL_VERSION);
      req.setFrom(kj::StringPtr(from.c_str()));
      auto list = req.initDigests(static_cast<unsigned>(digests.size()));
      for (unsigned i = 0; i < digests.size(); ++i) encode(digests[i], list[i]);
      return req.send().then([](auto response) -> Result<std::vector<RuleVerdict>> {
        if (response.hasError() && response.getError().getCode() != proto::ErrorCode::NONE) {
          return Error{ErrorCode::kUnavailable,
                       std::string(response.getError().getMessage().cStr())};
        }
        return decodeVerdicts(response.getVerdicts());
      });
    });
    result = io.provider->getTimer()
                 .timeoutAfter(timeout.count() * kj::MILLISECONDS, kj::mv(call))
                 .wait(io.waitScope);
  });
  KJ_IF_MAYBE (e, failed) {
    open.erase(address);  // opened again next time
    return Error{ErrorCode::kUnavailable, std::string(e->getDescription().cStr())};
  }
  if (!result) open.erase(address);
  return result;
}

}  // namespace throttlex
