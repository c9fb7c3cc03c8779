// Fuzz target: the decoders of adaptive rules (docs/adaptive.md). The input is read three ways:
// as a Cap'n Proto message with the server's bounds, as the parameters of adaptiveExchange (a
// peer's digests: decodeDigests, then merged as a controller merges them) and of report (an
// application's reports: decodeReports); and as the body of POST /v1/report (parseReportBody).
// Malformed messages raise a kj::Exception, which the RPC system turns into an error answer; a
// decoder's error is an answer; anything else is a bug.
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "daemon/adaptive/wire.h"
#include "daemon/http/http_api.h"
#include "daemon/rpc/rpc_server.h"

using namespace throttlex;

namespace {

capnp::ReaderOptions serverBounds() {
  return RpcServerOptions().readerOptions();
}

void readDigests(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader message(words, serverBounds());
  auto params = message.getRoot<proto::Limiter::AdaptiveExchangeParams>();
  auto digests = decodeDigests(params.getDigests());
  if (!digests) return;
  SignalDigest merged;
  for (const RuleDigest& d : *digests) {
    merged.merge(d.digest);
    (void)signalsOf(merged, AdaptiveSpec{});
  }
}

void readReports(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader message(words, serverBounds());
  auto params = message.getRoot<proto::Limiter::ReportParams>();
  auto reports = decodeReports(params.getReports());
  if (!reports) return;
  SignalDigest d;
  for (const ReportArgs& r : *reports) {
    if (r.latency) d.addLatency(*r.latency);
    d.addOutcome(r.outcome);
  }
  (void)d.quantile(0.9);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)parseReportBody(std::string_view(reinterpret_cast<const char*>(data), size));
  std::vector<capnp::word> words(size / sizeof(capnp::word));
  if (words.empty()) return 0;
  std::memcpy(words.data(), data, words.size() * sizeof(capnp::word));
  const kj::ArrayPtr<const capnp::word> view(words.data(), words.size());
  try {
    readDigests(view);
  } catch (const kj::Exception&) {
  }
  try {
    readReports(view);
  } catch (const kj::Exception&) {
  }
  return 0;
}
