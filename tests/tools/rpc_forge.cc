// rpc-forge: calls a node's RPC port the way only a peer should, so integration tests can show
// what a connection's certificate allows (docs/security.md, roles).
//
//   rpc-forge --node HOST:PORT [--tls-ca F --tls-cert F --tls-key F] checks --key K --limit N
//             --period-ms P --count C --hops H       prints: allowed=A denied=D errors=E
//   rpc-forge --node HOST:PORT [...] handoff --slot S  prints: error=<code> merged=M
//
// `checks` sends C single-check batches marked as forwarded H times (a peer's batches carry
// hops > 0; past the hop limit the receiver decides them itself). `handoff` sends one entry for
// slot S that claims a spent bucket for the next minute.
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>

#include <capnp/message.h>
#include <kj/async-io.h>
#include <CLI/CLI.hpp>

#include "limiter/clock.h"
#include "proto/node_connection.h"
#include "proto/rpc_tls.h"
#include "proto/throttlex.capnp.h"

using namespace throttlex;

namespace {

const char* codeName(proto::ErrorCode code) {
  switch (code) {
    case proto::ErrorCode::NONE:
      return "none";
    case proto::ErrorCode::PERMISSION_DENIED:
      return "permission_denied";
    case proto::ErrorCode::UNAVAILABLE:
      return "unavailable";
    case proto::ErrorCode::INVALID_ARGUMENT:
      return "invalid_argument";
    default:
      return "other";
  }
}

// What the `checks` subcommand sends: `count` single checks claiming `hops`.
struct ForgedChecks {
  std::string key = "forged";
  std::uint64_t limit = 3, period_ms = 60'000, count = 5;
  unsigned hops = 2;
};

void sendChecks(proto::Limiter::Client& limiter, kj::WaitScope& ws, const ForgedChecks& f) {
  const auto& [key, limit, period_ms, count, hops] = f;
  std::uint64_t allowed = 0, denied = 0, errors = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    auto req = limiter.checkBatchRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    req.setHops(static_cast<std::uint8_t>(hops));
    auto c = req.initChecks(1)[0];
    c.setKey(key);
    auto l = c.initLimit();
    l.setLimit(limit);
    l.setPeriodMs(period_ms);
    auto r = req.send().wait(ws);
    if (r.hasError() && r.getError().getCode() != proto::ErrorCode::NONE) {
      ++errors;
      continue;
    }
    auto result = r.getResults()[0];
    if (result.getError().getCode() != proto::ErrorCode::NONE) {
      ++errors;
    } else if (result.getAllowed()) {
      ++allowed;
    } else {
      ++denied;
    }
  }
  std::cout << "allowed=" << allowed << " denied=" << denied << " errors=" << errors << "\n";
}

// One crafted handoff entry for `slot`.
void sendHandoff(proto::Limiter::Client& limiter, kj::WaitScope& ws, unsigned slot) {
  auto req = limiter.handoffRequest();
  req.setVersion(proto::PROTOCOL_VERSION);
  req.setFrom("rpc-forge");
  req.initSlots(1).set(0, static_cast<std::uint16_t>(slot));
  // Key hash all ones; a token-bucket state (tag 1) full until a minute from now: plausible,
  // and what a spent bucket looks like.
  kj::byte entry[32];
  for (int i = 0; i < 16; ++i) entry[i] = 0xff;
  const SystemClock real;  // this tool's clock (limiter/clock.h)
  const auto now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(real.now().time_since_epoch()).count();
  const std::uint64_t w0 =
      (std::uint64_t{1} << 61) | (static_cast<std::uint64_t>(now_ms + 60'000) << 18);
  for (int i = 0; i < 8; ++i) entry[16 + i] = static_cast<kj::byte>(w0 >> (8 * i));
  for (int i = 0; i < 8; ++i) entry[24 + i] = 0;
  req.setEntries(kj::arrayPtr(entry, sizeof entry));
  auto r = req.send().wait(ws);
  std::cout << "error=" << codeName(r.getError().getCode()) << " merged=" << r.getMerged() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rpc-forge: peer-only RPC calls, for tests"};
  std::string node, tls_ca, tls_cert, tls_key;
  ForgedChecks forged;
  unsigned slot = 0;
  app.add_option("--node", node, "RPC host:port")->required();
  app.add_option("--tls-ca", tls_ca);
  app.add_option("--tls-cert", tls_cert);
  app.add_option("--tls-key", tls_key);
  auto* checks = app.add_subcommand("checks", "forwarded-looking checks");
  checks->add_option("--key", forged.key);
  checks->add_option("--limit", forged.limit);
  checks->add_option("--period-ms", forged.period_ms);
  checks->add_option("--count", forged.count);
  checks->add_option("--hops", forged.hops)->check(CLI::Range(0, 255));
  auto* handoff = app.add_subcommand("handoff", "one crafted handoff entry");
  handoff->add_option("--slot", slot)->check(CLI::Range(0, 4095));
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  std::shared_ptr<const proto::TlsConfig> tls;
  const proto::TlsFiles files{tls_ca, tls_cert, tls_key};
  if (files.enabled()) {
    auto loaded = proto::TlsConfig::load(files);
    if (!loaded) {
      std::cerr << "rpc-forge: " << loaded.error().message << "\n";
      return 2;
    }
    tls = *loaded;
  }
  auto io = kj::setupAsyncIo();
  kj::Own<kj::TlsContext> context = tls ? tls->clientContext() : kj::Own<kj::TlsContext>();
  capnp::ReaderOptions reader;
  auto failed = kj::runCatchingExceptions([&] {
    auto stream =
        proto::connectNode(io.provider->getNetwork(), node, context.get()).wait(io.waitScope);
    proto::NodeConnection conn(kj::mv(stream), reader);
    auto limiter = conn.node.castAs<proto::Limiter>();
    if (checks->parsed()) {
      sendChecks(limiter, io.waitScope, forged);
    } else {
      sendHandoff(limiter, io.waitScope, slot);
    }
  });
  KJ_IF_MAYBE (e, failed) {
    std::cerr << "rpc-forge: " << e->getDescription().cStr() << "\n";
    return 1;
  }
  return 0;
}
