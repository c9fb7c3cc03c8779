// Fuzz target: the RPC request readers. The input is a Cap'n Proto message as it arrives on the
// wire, read with the server's bounds (daemon/rpc/rpc_server.h: traversal limit, nesting 16) as
// the parameters of checkBatch and of check, and converted as the server converts them
// (daemon/routing/wire.h). Malformed messages raise a kj::Exception, which the RPC system turns
// into an error answer; anything else is a bug.
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "daemon/routing/wire.h"
#include "daemon/rpc/rpc_server.h"
#include "proto/throttlex.capnp.h"

using namespace throttlex;

namespace {

capnp::ReaderOptions serverBounds() {
  return RpcServerOptions().readerOptions();
}

void readBatch(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader message(words, serverBounds());
  auto params = message.getRoot<proto::Limiter::CheckBatchParams>();
  (void)params.getVersion();
  (void)params.getHops();
  (void)params.getDecideByMs();
  for (auto check : params.getChecks()) (void)fromProto(check);
}

void readOne(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader message(words, serverBounds());
  auto params = message.getRoot<proto::Limiter::CheckParams>();
  (void)params.getVersion();
  (void)fromProto(params.getRequest());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<capnp::word> words(size / sizeof(capnp::word));
  if (words.empty()) return 0;
  std::memcpy(words.data(), data, words.size() * sizeof(capnp::word));
  const kj::ArrayPtr<const capnp::word> view(words.data(), words.size());
  try {
    readBatch(view);
  } catch (const kj::Exception&) {
  }
  try {
    readOne(view);
  } catch (const kj::Exception&) {
  }
  return 0;
}
