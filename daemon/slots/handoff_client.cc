#include "daemon/slots/handoff_client.h"

#include <capnp/message.h>
#include <kj/async-io.h>
#include <kj/timer.h>

#include <memory>

#include "daemon/slots/slot_keeper.h"
#include "proto/node_connection.h"
#include "proto/throttlex.capnp.h"

namespace throttlex {
namespace {

struct Loop {
  kj::AsyncIoContext io = kj::setupAsyncIo();
  const proto::TlsConfig* tls_config = nullptr;  // what `tls` was made from
  std::uint64_t tls_generation = 0;              // and its generation (reloads)
  kj::Own<kj::TlsContext> tls;
};

}  // namespace

Status sendHandoff(const std::string& address, const std::string& from,
                   std::span<const std::uint16_t> slots, std::span<const StoredEntry> entries,
                   std::chrono::milliseconds timeout, const proto::TlsConfig* tls) {
  thread_local std::unique_ptr<Loop> loop;
  if (!loop) loop = std::make_unique<Loop>();
  kj::AsyncIoContext& io = loop->io;
  const std::vector<std::uint8_t> data = SlotKeeper::encode(entries);
  capnp::ReaderOptions reader;
  reader.traversalLimitInWords = 64 * 1024;  // the answer is an error and a count
  kj::Own<proto::NodeConnection> conn;       // outlives the promise chain that uses it
  Status result = Ok{};
  auto failed = kj::runCatchingExceptions([&] {
    // The loop may have idled since its last call: its timer's "now" is only refreshed when the
    // loop polls, and a stale "now" would make the deadline below expire at once.
    io.waitScope.poll();
    const std::uint64_t generation = tls != nullptr ? tls->generation() : 0;
    if (tls != loop->tls_config || generation != loop->tls_generation) {  // new, or reloaded
      loop->tls = tls != nullptr ? tls->clientContext() : kj::Own<kj::TlsContext>();
      loop->tls_config = tls;
      loop->tls_generation = generation;
    }
    auto call = proto::connectNode(io.provider->getNetwork(), kj::StringPtr(address.c_str()),
                                   loop->tls.get())
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
