#include "daemon/rules_sync/sync_client.h"

#include <capnp/message.h>
#include <kj/async-io.h>
#include <kj/timer.h>

#include <map>

#include "daemon/rules_sync/wire.h"
#include "proto/node_connection.h"

namespace throttlex {
namespace {

// The sync thread's open connections, by address.
using Connections = std::map<std::string, kj::Own<proto::NodeConnection>>;
Connections& connections() {
  thread_local Connections c;
  return c;
}

Result<RulesAnswer> decodeAnswer(proto::Limiter::SyncRulesResults::Reader r) {
  if (r.hasError() && r.getError().getCode() != proto::ErrorCode::NONE) {
    return Error{ErrorCode::kUnavailable, std::string(r.getError().getMessage().cStr())};
  }
  RulesAnswer answer{decode(r.getRules()), std::nullopt};
  if (r.hasDoc()) {
    auto doc = decode(r.getDoc());
    if (!doc) return doc.error();
    answer.doc = std::move(*doc);
  }
  return answer;
}

}  // namespace

Result<RulesAnswer> sendRules(const std::string& address, const std::string& from,
                              const RulesVersion& mine, const RulesDoc* doc,
                              std::chrono::milliseconds timeout,
                              const std::shared_ptr<const proto::TlsConfig>& tls) {
  proto::BlockingPeerLoop& loop = proto::BlockingPeerLoop::ofThisThread();
  kj::AsyncIoContext& io = loop.io();
  Connections& open = connections();
  capnp::ReaderOptions reader;
  reader.traversalLimitInWords = 2 * RulesDoc::kMaxBytes / 8 + 64 * 1024;  // a whole document
  Result<RulesAnswer> result = RulesAnswer{};
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
      auto req = open[address]->node.castAs<proto::Limiter>().syncRulesRequest();
      req.setVersion(proto::PROTOCOL_VERSION);
      req.setFrom(kj::StringPtr(from.c_str()));
      encode(mine, req.initRules());
      if (doc != nullptr) encode(*doc, req.initDoc());
      return req.send().then(
          [](auto response) -> Result<RulesAnswer> { return decodeAnswer(response); });
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
