#include "daemon/rules_sync/sync_client.h"

#include "daemon/rules_sync/wire.h"
#include "proto/peer_call.h"

namespace throttlex {
namespace {

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
  // A whole document, with room for Cap'n Proto's framing.
  constexpr std::uint64_t kReaderWords = 2 * RulesDoc::kMaxBytes / 8 + 64 * 1024;
  Result<RulesAnswer> result = RulesAnswer{};
  const Status called =
      proto::callPeer(address, tls, timeout, kReaderWords, [&](proto::Node::Client& node) {
        auto req = node.castAs<proto::Limiter>().syncRulesRequest();
        req.setVersion(proto::PROTOCOL_VERSION);
        req.setFrom(kj::StringPtr(from.c_str()));
        encode(mine, req.initRules());
        if (doc != nullptr) encode(*doc, req.initDoc());
        return req.send().then([&](auto response) { result = decodeAnswer(response); });
      });
  if (!called) return called.error();
  return result;
}

}  // namespace throttlex
