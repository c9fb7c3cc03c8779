#include "daemon/slots/handoff_client.h"

#include <capnp/message.h>
#include <kj/async-io.h>
#include <kj/timer.h>

#include <memory>

#include "daemon/slots/slot_keeper.h"
#include "proto/node_connection.h"
#include "proto/throttlex.capnp.h"

namespace throttlex {

Status sendHandoff(const std::string& address, const std::string& from,
                   std::span<const std::uint16_t> slots, std::span<const StoredEntry> entries,
                   std::chrono::milliseconds timeout,
                   const std::shared_ptr<const proto::TlsConfig>& tls) {
  proto::BlockingPeerLoop& loop = proto::BlockingPeerLoop::ofThisThread();
  kj::AsyncIoContext& io = loop.io();
  const std::vector<std::uint8_t> data = SlotKeeper::encode(entries);
  capnp::ReaderOptions reader;
  reader.traversalLimitInWords = 64 * 1024;  // the answer is an error and a count
  kj::Own<proto::NodeConnection> conn;       // outlives the promise chain that uses it
  Status result = Ok{};
  auto failed = kj::runCatchingExceptions([&] {
    loop.wake();
    auto call =
        proto::connectNode(io.provider->getNetwork(), kj::StringPtr(address.c_str()), loop.tls(tls))
            .then([&](kj::Own<kj::AsyncIoStream> stream) {
              conn = kj::heap<proto::NodeConnection>(kj::mv(stream), reader);
              auto req = conn->node.castAs<proto::Limiter>().handoffRequest();
              req.setVersion(proto::PROTOCOL_VERSION);
              req.setFrom(kj::StringPtr(from.c_str()));
              auto list = req.initSlots(static_cast<unsigned>(slots.size()));
              for (std::size_t i = 0; i < slots.size(); ++i) {
                list.set(static_cast<unsigned>(i), slots[i]);
              }
              req.setEntries(kj::arrayPtr(data.data(), data.size()));
              return req.send().then([](auto response) -> Status {
                if (response.hasError() &&
                    response.getError().getCode() != proto::ErrorCode::NONE) {
                  return Error{ErrorCode::kUnavailable,
                               std::string(response.getError().getMessage().cStr())};
                }
                return Ok{};
              });
            });
    result = io.provider->getTimer()
                 .timeoutAfter(timeout.count() * kj::MILLISECONDS, kj::mv(call))
                 .wait(io.waitScope);
  });
  conn = nullptr;
  KJ_IF_MAYBE (e, failed) {
    return Error{ErrorCode::kUnavailable, std::string(e->getDescription().cStr())};
  }
  return result;
}

}  // namespace throttlex
