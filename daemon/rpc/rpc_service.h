// The Node capability (proto/throttlex.capnp: Limiter + Admin) over LimiterService: decodes and
// validates requests, decides, encodes answers. Internal to the RPC server
// (daemon/rpc/rpc_server.h).
//
// One instance per RPC thread (with TLS: per connection, for its role): a capability belongs to
// the event loop of its thread. Checks are
// routed (daemon/routing/router.h): those this node owns are answered synchronously, the rest when
// their owners answered (through the forwarder). Admin methods answer synchronously and never block
// except reloadRules (reads the rules file).
//
// Protocol version: every request carries `version`. 0 is what an unset field reads as, i.e. a
// client that did not say which protocol it speaks; like a version above proto::PROTOCOL_VERSION
// it is refused with ErrorCode unsupportedVersion (per check for `check`, for the whole call for
// `checkBatch` and the admin calls that have an error field). nodeInfo answers any version: it is
// how a client learns the node's protocolVersion. listRules has no error field in the schema, so
// it refuses with an RPC exception.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "daemon/adaptive/controller.h"
#include "daemon/base/node_control.h"
#include "daemon/base/node_info.h"
#include "daemon/routing/router.h"
#include "daemon/rules_sync/rules_sync.h"
#include "daemon/service/limiter_service.h"
#include "proto/rpc_tls.h"
#include "proto/throttlex.capnp.h"

namespace throttlex {

class Metrics;

// Counters of one RPC thread, written only by that thread (relaxed), summed by RpcServer::stats().
struct alignas(64) RpcCounters {
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> checks{0};
};

// Generated capability bases and KJ's interfaces have no virtual destructors of their own (they are
// destroyed through kj::Own with the right type); GCC's -Wnon-virtual-dtor flags every subclass.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class RpcService final : public proto::Node::Server {
 public:
  // `router` (and its service), `metrics` (may be null) and `counters` must outlive this object.
  // `control` may be null (handoff, snapshot, drain and keyring are then refused as
  // unavailable).
  // `role` is what the connection's certificate grants (proto/rpc_tls.h); without TLS every
  // connection is kAdmin, as before roles existed.
  RpcService(Router& router, NodeInfoProvider info, Metrics* metrics, RpcCounters& counters,
             const NodeControl* control = nullptr, proto::Role role = proto::Role::kAdmin,
             AdaptiveController* adaptive = nullptr, RulesSync* rules_sync = nullptr);

 protected:
  kj::Promise<void> check(CheckContext context) override;
  kj::Promise<void> checkBatch(CheckBatchContext context) override;
  kj::Promise<void> nodeInfo(NodeInfoContext context) override;
  kj::Promise<void> listRules(ListRulesContext context) override;
  kj::Promise<void> setRule(SetRuleContext context) override;
  kj::Promise<void> deleteRule(DeleteRuleContext context) override;
  kj::Promise<void> reloadRules(ReloadRulesContext context) override;
  kj::Promise<void> inspectKey(InspectKeyContext context) override;
  kj::Promise<void> resetKey(ResetKeyContext context) override;
  kj::Promise<void> handoff(HandoffContext context) override;
  kj::Promise<void> adaptiveExchange(AdaptiveExchangeContext context) override;
  kj::Promise<void> report(ReportContext context) override;
  kj::Promise<void> syncRules(SyncRulesContext context) override;
  kj::Promise<void> snapshot(SnapshotContext context) override;
  kj::Promise<void> drain(DrainContext context) override;
  kj::Promise<void> keyring(KeyringContext context) override;

 private:
  // permissionDenied unless this connection's role is at least `needed`.
  std::optional<Error> denied(proto::Role needed, const char* call) const;
  // The opening of every call with an error field: counts the call, then refuses an unsupported
  // protocol version or a role below `needed` into the error builder `error()` returns. True
  // when the call may go on.
  template <typename MakeError>
  bool admit(std::uint16_t version, proto::Role needed, const char* call, MakeError&& error);
  void countCall(std::uint64_t checks);
  Duration elapsedSince(Instant start) const;  // on the service's monotonic clock
  void record(const Result<CheckOutcome>& outcome, Instant start);
  kj::Promise<void> checkAtomic(CheckBatchContext context, std::vector<CheckArgs> args,
                                const std::vector<std::optional<Error>>& errors, Instant start);
  // A batch Router::shedWhole() shed: each check's answer in request order, or (`compact`: the
  // caller asked for compactShed) each answer once and an index per check; counted per answer.
  void answerShed(proto::Limiter::CheckBatchResults::Builder results, const ShedBatch& shed,
                  Instant start, bool compact);
  void answerBatch(proto::Limiter::CheckBatchResults::Builder results,
                   const std::vector<std::optional<Error>>& errors,
                   const std::vector<Result<CheckOutcome>>& outcomes, Instant start,
                   bool from_peer);

  // Constant after construction.
  LimiterService& service_;
  Router& router_;
  const NodeInfoProvider info_;
  Metrics* const metrics_;
  RpcCounters& counters_;
  const NodeControl* const control_;
  AdaptiveController* const adaptive_;
  RulesSync* const rules_sync_;
  const proto::Role role_;
};
#pragma GCC diagnostic pop

// Version check as described above: nullopt when supported, else the error message.
// (throttlex::ErrorCode has no "unsupported version"; the caller sets the proto code itself.)
std::optional<std::string> unsupportedVersion(std::uint16_t version);

}  // namespace throttlex
