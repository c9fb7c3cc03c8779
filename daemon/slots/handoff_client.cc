#include "daemon/slots/handoff_client.h"

#include "daemon/slots/slot_keeper.h"
#include "proto/peer_call.h"

namespace throttlex {

Status sendHandoff(const std::string& address, const std::string& from,
                   std::span<const std::uint16_t> slots, std::span<const StoredEntry> entries,
                   std::chrono::milliseconds timeout,
                   const std::shared_ptr<const proto::TlsConfig>& tls) {
  constexpr std::uint64_t kReaderWords = 64 * 1024;  // the answer is an error and a count
  const std::vector<std::uint8_t> data = SlotKeeper::encode(entries);
  Status result = Ok{};
  const Status called = proto::callPeer(
      address, tls, timeout, kReaderWords,
      [&](proto::Node::Client& node) {
        auto req = node.castAs<proto::Limiter>().handoffRequest();
        req.setVersion(proto::PROTOCOL_VERSION);
        req.setFrom(kj::StringPtr(from.c_str()));
        auto list = req.initSlots(static_cast<unsigned>(slots.size()));
        for (std::size_t i = 0; i < slots.size(); ++i) {
          list.set(static_cast<unsigned>(i), slots[i]);
        }
        req.setEntries(kj::arrayPtr(data.data(), data.size()));
        return req.send().then([&](auto response) {
          if (response.hasError() && response.getError().getCode() != proto::ErrorCode::NONE) {
            result = Error{ErrorCode::kUnavailable,
                           std::string(response.getError().getMessage().cStr())};
          }
        });
      },
      /*keep=*/false);
  if (!called) return called.error();
  return result;
}

}  // namespace throttlex
