#include "daemon/adaptive/exchange_client.h"

#include "daemon/adaptive/wire.h"
#include "proto/peer_call.h"

namespace throttlex {

Result<std::vector<RuleVerdict>> sendDigests(const std::string& address, const std::string& from,
                                             std::span<const RuleDigest> digests,
                                             std::chrono::milliseconds timeout,
                                             const std::shared_ptr<const proto::TlsConfig>& tls) {
  constexpr std::uint64_t kReaderWords = 8 * 1024 * 1024;  // verdicts: a few words per rule
  Result<std::vector<RuleVerdict>> result = std::vector<RuleVerdict>{};
  const Status called =
      proto::callPeer(address, tls, timeout, kReaderWords, [&](proto::Node::Client& node) {
        auto req = node.castAs<proto::Limiter>().adaptiveExchangeRequest();
        req.setVersion(proto::PROTOCOL_VERSION);
        req.setFrom(kj::StringPtr(from.c_str()));
        auto list = req.initDigests(static_cast<unsigned>(digests.size()));
        for (unsigned i = 0; i < digests.size(); ++i) encode(digests[i], list[i]);
        return req.send().then([&](auto response) {
          if (response.hasError() && response.getError().getCode() != proto::ErrorCode::NONE) {
            result = Error{ErrorCode::kUnavailable,
                           std::string(response.getError().getMessage().cStr())};
          } else {
            result = decodeVerdicts(response.getVerdicts());
          }
        });
      });
  if (!called) return called.error();
  return result;
}

}  // namespace throttlex
