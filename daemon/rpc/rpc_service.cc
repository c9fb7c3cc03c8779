#include "daemon/rpc/rpc_service.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string_view>

#include <kj/debug.h>

#include "daemon/adaptive/wire.h"
#include "daemon/loop/kj_on_asio.h"
#include "daemon/metrics/metrics.h"
#include "daemon/routing/wire.h"
#include "daemon/rules_sync/wire.h"

namespace throttlex {

std::optional<std::string> unsupportedVersion(std::uint16_t version) {
  if (version != 0 && version <= proto::PROTOCOL_VERSION) return std::nullopt;
  return "protocol version " + std::to_string(version) + " is not supported; this node speaks 1.." +
         std::to_string(proto::PROTOCOL_VERSION) +
         (version == 0 ? " (the version field is unset)" : "");
}

RpcService::RpcService(Router& router, NodeInfoProvider info, Metrics* metrics,
                       RpcCounters& counters, const NodeControl* control, proto::Role role,
                       AdaptiveController* adaptive, RulesSync* rules_sync)
    : service_(router.service()),
      router_(router),
      info_(std::move(info)),
      metrics_(metrics),
      counters_(counters),
      control_(control),
      adaptive_(adaptive),
      rules_sync_(rules_sync),
      role_(role) {}

std::optional<Error> RpcService::denied(proto::Role needed, const char* call) const {
  if (role_ >= needed) return std::nullopt;
  return Error{ErrorCode::kPermissionDenied, std::string(call) + " needs a certificate with role " +
                                                 nameOf(needed) + "; this connection's role is " +
                                                 nameOf(role_)};
}

template <typename MakeError>
bool RpcService::admit(std::uint16_t version, proto::Role needed, const char* call,
                       MakeError&& error) {
  countCall(0);
  if (auto bad = unsupportedVersion(version)) {
    setError(error(), proto::ErrorCode::UNSUPPORTED_VERSION, *bad);
    return false;
  }
  if (auto no = denied(needed, call)) {
    setError(error(), *no);
    return false;
  }
  return true;
}

void RpcService::countCall(std::uint64_t checks) {
  // Only this thread writes these counters: load + store, no read-modify-write on the bus.
  counters_.calls.store(counters_.calls.load(std::memory_order_relaxed) + 1,
                        std::memory_order_relaxed);
  counters_.checks.store(counters_.checks.load(std::memory_order_relaxed) + checks,
                         std::memory_order_relaxed);
}

namespace {

// Results of checks forwarded to their owners, filled on the forwarder thread; the RPC thread
// answers once the last one is in.
class ForwardWait final : public ForwardSink {
 public:
  ForwardWait(std::vector<Result<CheckOutcome>> decided, std::size_t pending)
      : outcomes(std::move(decided)), pending_(pending) {
    CrossThreadSignal signal = crossThreadSignal();
    done = kj::mv(signal.promise);
    fulfill_ = std::move(signal.fulfill);
  }
  void deliver(std::size_t index, Result<CheckOutcome> outcome) override {
    outcomes[index] = std::move(outcome);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) fulfill_();
  }
  // KJ's members may throw from their destructors in principle; these never do.
  ~ForwardWait() noexcept override {}

  std::vector<Result<CheckOutcome>> outcomes;
  kj::Promise<void> done = nullptr;  // taken by the RPC thread before any delivery can happen

 private:
  std::atomic<std::size_t> pending_;
  std::function<void()> fulfill_;
};

}  // namespace

Duration RpcService::elapsedSince(Instant start) const {
  return router_.service().clock().monotonic() - start;
}

void RpcService::record(const Result<CheckOutcome>& outcome, Instant start) {
  if (metrics_ != nullptr) metrics_->recordCheck(Api::kRpc, outcome, elapsedSince(start));
}

kj::Promise<void> RpcService::check(CheckContext context) {
  const Instant start = router_.service().clock().monotonic();
  countCall(1);
  const auto params = context.getParams();
  auto results = context.getResults();
  results.setVersion(proto::PROTOCOL_VERSION);

  if (auto bad = unsupportedVersion(params.getVersion())) {
    setError(results.initResult().initError(), proto::ErrorCode::UNSUPPORTED_VERSION, *bad);
    record(Error{ErrorCode::kInvalidArgument, *bad}, start);  // for the metrics only
    return kj::READY_NOW;
  }
  auto args = fromProto(params.getRequest());
  if (!args) {
    encode(args.error(), results.initResult());
    record(args.error(), start);
    return kj::READY_NOW;
  }
  if (const std::uint32_t ms = params.getRequest().getDeadlineMs(); ms != 0) {
    args->deadline = start + std::chrono::milliseconds(ms);
  }
  Forwarding forwarding;
  if (auto here = router_.check(*args, 0, forwarding)) {
    encode(*here, results.initResult());
    record(*here, start);
    return kj::READY_NOW;
  }
  auto wait = std::make_shared<ForwardWait>(
      std::vector<Result<CheckOutcome>>(1, Error{ErrorCode::kInternal, "not decided"}), 1);
  auto done = kj::mv(wait->done);
  router_.forward(std::move(forwarding), wait);
  return done.then([this, context, wait, start]() mutable {
    encode(wait->outcomes[0], context.getResults().initResult());
    record(wait->outcomes[0], start);
  });
}

kj::Promise<void> RpcService::checkBatch(CheckBatchContext context) {
  const Instant start = router_.service().clock().monotonic();
  const auto params = context.getParams();
  auto results = context.getResults();
  results.setVersion(proto::PROTOCOL_VERSION);
  const auto checks = params.getChecks();
  // Checks forwarded here by a peer were counted by the node they entered.
  // Only peers forward: a client's call counts as entering here, whatever it claims (a non-owner
  // deciding a key because the caller said it was forwarded would admit it N times).
  const std::uint8_t hops = role_ >= proto::Role::kPeer ? params.getHops() : 0;
  const bool from_peer = hops > 0;
  if (from_peer && checks.size() == 0) return kj::READY_NOW;  // a peer's heartbeat
  countCall(checks.size());

  const auto refuse = [&](proto::ErrorCode code, const std::string& message) {
    setError(results.initError(), code, message);
    if (metrics_ == nullptr || from_peer) return;
    const auto latency = elapsedSince(start);
    for (std::size_t i = 0; i < checks.size(); ++i) {
      metrics_->recordRequest(Api::kRpc, RouteKind::kLocal, Outcome::kError, latency);
    }
  };
  if (auto bad = unsupportedVersion(params.getVersion())) {
    refuse(proto::ErrorCode::UNSUPPORTED_VERSION, *bad);
    return kj::READY_NOW;
  }
  if (checks.size() > kMaxBatchChecks) {
    refuse(proto::ErrorCode::INVALID_ARGUMENT, "batch of " + std::to_string(checks.size()) +
                                                   " checks; the maximum is " +
                                                   std::to_string(kMaxBatchChecks));
    return kj::READY_NOW;
  }
  // The sender may have had these checks decided elsewhere since this time: decide none of them.
  const std::int64_t decide_by = from_peer ? params.getDecideByMs() : 0;
  if (pastDecideBy(decide_by, router_.service().clock())) {
    refuse(proto::ErrorCode::NOT_DECIDED, "its decide-by time passed before it came up");
    return kj::READY_NOW;
  }

  // Decode everything, decide what this node owns in one batch (it prefetches across the batch),
  // forward the rest to the owners, then answer in request order.
  std::vector<CheckArgs> args;
  args.reserve(checks.size());
  std::vector<std::optional<Error>> errors(checks.size());
  for (std::size_t i = 0; i < checks.size(); ++i) {
    auto a = fromProto(checks[static_cast<unsigned>(i)]);
    if (a) {
      const std::uint32_t ms = checks[static_cast<unsigned>(i)].getDeadlineMs();
      if (ms != 0 && !from_peer) a->deadline = start + std::chrono::milliseconds(ms);
      args.push_back(*a);
    } else {
      errors[i] = a.error();
    }
  }
  if (params.getAtomic() && !from_peer) return checkAtomic(context, std::move(args), errors, start);
  // The batch is one message: it draws the thread's shed share at most once, shed whole or not.
  Admission entry = router_.admit();
  if (ShedBatch shed;
      !from_peer && args.size() == checks.size() && router_.shedWhole(args, entry, shed)) {
    answerShed(results, shed, start, params.getCompactShed());
    return kj::READY_NOW;
  }
  std::vector<Result<CheckOutcome>> outcomes;
  Forwarding forwarding = router_.checkBatch(args, hops, outcomes, &entry);
  forwarding.decide_by_ms = decide_by;
  if (forwarding.empty()) {
    answerBatch(results, errors, outcomes, start, from_peer);
    return kj::READY_NOW;
  }
  auto wait = std::make_shared<ForwardWait>(std::move(outcomes), forwarding.size());
  auto done = kj::mv(wait->done);
  router_.forward(std::move(forwarding), wait);
  // `args` views into the request, which the context keeps until this promise resolves.
  return done.then([this, context, wait, errors = std::move(errors), start, from_peer]() mutable {
    answerBatch(context.getResults(), errors, wait->outcomes, start, from_peer);
  });
}

namespace {

// An atomic batch's answer, handed from wherever the last check was decided to this thread.
struct AtomicWait {
  AtomicOutcome result;
  std::function<void()> fulfill;
};

}  // namespace

kj::Promise<void> RpcService::checkAtomic(CheckBatchContext context, std::vector<CheckArgs> args,
                                          const std::vector<std::optional<Error>>& errors,
                                          Instant start) {
  for (std::size_t i = 0; i < errors.size(); ++i) {
    if (!errors[i]) continue;
    Error e = *errors[i];
    e.message = "check " + std::to_string(i) + ": " + e.message + " (nothing was spent)";
    setError(context.getResults().initError(), e);
    if (metrics_ != nullptr) {
      metrics_->recordRequest(Api::kRpc, RouteKind::kLocal, Outcome::kError, elapsedSince(start));
    }
    return kj::READY_NOW;
  }
  CrossThreadSignal signal = crossThreadSignal();
  auto wait = std::make_shared<AtomicWait>();
  wait->fulfill = std::move(signal.fulfill);
  // `args` views into the request, which the context keeps until this promise resolves.
  router_.checkAtomic(std::move(args), nullptr, [wait](AtomicOutcome& r) {
    wait->result = std::move(r);
    wait->fulfill();
  });
  return signal.promise.then([this, context, wait, errors, start]() mutable {
    auto results = context.getResults();
    answerBatch(results, errors, wait->result.outcomes, start, false);
    auto list = results.getResults();
    for (std::size_t i = 0; i < wait->result.refunded.size(); ++i) {
      if (wait->result.refunded[i]) list[static_cast<unsigned>(i)].setRefunded(true);
    }
    if (wait->result.denied_by)
      results.setDeniedBy(static_cast<std::int32_t>(*wait->result.denied_by));
  });
}

void RpcService::answerBatch(proto::Limiter::CheckBatchResults::Builder results,
                             const std::vector<std::optional<Error>>& errors,
                             const std::vector<Result<CheckOutcome>>& outcomes, Instant start,
                             bool from_peer) {
  auto list = results.initResults(static_cast<unsigned>(errors.size()));
  const auto latency = elapsedSince(start);
  const bool count = metrics_ != nullptr && !from_peer;
  std::size_t next = 0;
  for (std::size_t i = 0; i < errors.size(); ++i) {
    auto out = list[static_cast<unsigned>(i)];
    if (errors[i]) {
      setError(out.initError(), *errors[i]);
      if (count) metrics_->recordCheck(Api::kRpc, *errors[i], latency);
      continue;
    }
    const Result<CheckOutcome>& r = outcomes[next++];
    encode(r, out);
    // Every element of a batch waited for the whole batch: that is its latency.
    if (count) metrics_->recordCheck(Api::kRpc, r, latency);
  }
}

void RpcService::answerShed(proto::Limiter::CheckBatchResults::Builder results,
                            const ShedBatch& shed, Instant start, bool compact) {
  if (compact) {
    auto answers = results.initShedAnswers(static_cast<unsigned>(shed.answers.size()));
    for (std::size_t k = 0; k < shed.answers.size(); ++k) {
      encode(shed.answers[k].outcome, answers[static_cast<unsigned>(k)]);
    }
    results.setShedIndex(kj::arrayPtr(shed.which.data(), shed.which.size()));
  } else {
    auto list = results.initResults(static_cast<unsigned>(shed.which.size()));
    for (std::size_t i = 0; i < shed.which.size(); ++i) {
      encode(shed.answers[shed.which[i]].outcome, list[static_cast<unsigned>(i)]);
    }
  }
  if (metrics_ == nullptr) return;
  const auto latency = elapsedSince(start);
  for (const ShedBatch::Answer& a : shed.answers) {
    metrics_->recordCheck(Api::kRpc, a.outcome, latency, a.checks);
  }
}

kj::Promise<void> RpcService::nodeInfo(NodeInfoContext context) {
  countCall(0);
  NodeInfo info;
  if (info_) {
    info = info_();
  } else {
    const StoreStats stats = service_.store().stats();
    info.keys = stats.entries;
    info.evictions = stats.evictions;
    info.rules = static_cast<std::uint32_t>(service_.rules().size());
    const std::shared_ptr<const RulesDoc> doc = service_.rulesDoc();
    info.rules_counter = doc->version.counter;
    info.rules_digest = doc->version.digest;
    info.rules_origin = doc->origin;
    info.rules_made_ms = doc->made_ms;
  }
  auto out = context.getResults().initInfo();
  out.setNodeId(kjText(info.node_id));
  out.setVersion(kjText(info.version));
  out.setProtocolVersion(proto::PROTOCOL_VERSION);
  out.setHttpAddress(kjText(info.http_address));
  out.setRpcAddress(kjText(info.rpc_address));
  out.setMetricsAddress(kjText(info.metrics_address));
  out.setUptimeMs(info.uptime_ms);
  out.setKeys(info.keys);
  out.setEvictions(info.evictions);
  out.setRules(info.rules);
  encode(RulesVersion{info.rules_counter, info.rules_digest}, out.initRulesVersion());
  out.setRulesOrigin(kjText(info.rules_origin));
  out.setRulesMadeMs(info.rules_made_ms);
  auto members = out.initMembers(static_cast<unsigned>(info.members.size()));
  for (std::size_t i = 0; i < info.members.size(); ++i) {
    const MemberInfo& m = info.members[i];
    auto w = members[static_cast<unsigned>(i)];
    w.setNodeId(kjText(m.node_id));
    w.setState(kjText(m.state));
    w.setGossipAddress(kjText(m.gossip_address));
    w.setRpcAddress(kjText(m.rpc_address));
    w.setHttpAddress(kjText(m.http_address));
    w.setIncarnation(m.incarnation);
  }
  const PersistenceInfo& p = info.persistence;
  auto po = out.initPersistence();
  po.setRedis(kjText(p.redis));
  po.setConnected(p.connected);
  po.setPending(p.pending);
  po.setLagMs(p.lag_ms);
  po.setWritten(p.written);
  po.setWriteErrors(p.write_errors);
  // The wire's subset of the slot stats (proto/throttlex.capnp, PersistenceInfo).
  const SlotKeeperStats& k = p.slots;
  po.setSlotsWaiting(static_cast<std::uint32_t>(k.slots_waiting));
  po.setParked(k.parked_now);
  po.setHandoffsSent(k.handoffs_sent);
  po.setHandoffsReceived(k.handoffs_received);
  po.setHandoffEntriesSent(k.handoff_entries_sent);
  po.setHandoffEntriesReceived(k.handoff_entries_received);
  po.setHandoffFailures(k.handoff_failures);
  po.setRecoveryTimeouts(k.recovery_timeouts);
  po.setDraining(k.draining);
  po.setDrained(k.drained);
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::listRules(ListRulesContext context) {
  countCall(0);
  // The results have no error field; an RPC exception is the only way to refuse.
  if (auto bad = unsupportedVersion(context.getParams().getVersion())) {
    KJ_FAIL_REQUIRE("unsupported protocol version", *bad);
  }
  const std::shared_ptr<const RuleSet> set = service_.currentRules();
  const std::vector<Rule> rules = set->rules();
  auto list = context.getResults().initRules(static_cast<unsigned>(rules.size()));
  for (std::size_t i = 0; i < rules.size(); ++i) {
    auto out = list[static_cast<unsigned>(i)];
    out.setName(kjText(rules[i].name));
    encode(rules[i].spec, out.initLimit());
    out.setShadow(rules[i].shadow);
    out.setDegraded(static_cast<proto::DegradedPolicy>(rules[i].degraded));
    out.setOverload(static_cast<proto::OverloadPolicy>(rules[i].overload));
    if (rules[i].adaptive) {
      const bool here = adaptive_ != nullptr && adaptive_->controls(rules[i].name);
      encodeAdaptive(*rules[i].adaptive, *set->find(rules[i].name)->cell, here, out);
    }
  }
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::setRule(SetRuleContext context) {
  const auto params = context.getParams();
  auto error = [&] { return context.getResults().initError(); };
  if (!admit(params.getVersion(), proto::Role::kAdmin, "setRule", [&] { return error(); })) {
    return kj::READY_NOW;
  }
  const auto in = params.getRule();
  auto spec = fromProto(in.getLimit());
  if (!spec) {
    setError(error(), spec.error());
    return kj::READY_NOW;
  }
  const auto degraded = static_cast<unsigned>(in.getDegraded());
  if (degraded > static_cast<unsigned>(DegradedPolicy::kDeny)) {
    setError(error(), proto::ErrorCode::INVALID_ARGUMENT,
             "unknown degraded policy " + std::to_string(degraded));
    return kj::READY_NOW;
  }
  const auto overload = static_cast<unsigned>(in.getOverload());
  if (overload > static_cast<unsigned>(OverloadPolicy::kDeny)) {
    setError(error(), proto::ErrorCode::INVALID_ARGUMENT,
             "unknown overload policy " + std::to_string(overload));
    return kj::READY_NOW;
  }
  Rule rule{std::string(view(in.getName())), *spec, in.getShadow(),
            static_cast<DegradedPolicy>(degraded)};
  rule.overload = static_cast<OverloadPolicy>(overload);
  const Status status = service_.setRule(rule);
  if (!status) {
    setError(error(), status.error());
  } else {
    encode(service_.rulesDoc()->version, context.getResults().initRules());
  }
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::deleteRule(DeleteRuleContext context) {
  const auto params = context.getParams();
  auto results = context.getResults();
  if (!admit(params.getVersion(), proto::Role::kAdmin, "deleteRule",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  const Result<bool> deleted = service_.deleteRule(view(params.getName()));
  if (deleted) {
    results.setDeleted(*deleted);
    encode(service_.rulesDoc()->version, results.initRules());
  } else {
    setError(results.initError(), deleted.error());
  }
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::reloadRules(ReloadRulesContext context) {
  auto results = context.getResults();
  if (!admit(context.getParams().getVersion(), proto::Role::kAdmin, "reloadRules",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  const Result<std::size_t> count = service_.reloadRules();
  if (count) {
    results.setCount(static_cast<std::uint32_t>(
        std::min<std::size_t>(*count, std::numeric_limits<std::uint32_t>::max())));
    encode(service_.rulesDoc()->version, results.initRules());
  } else {
    setError(results.initError(), count.error());
  }
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::inspectKey(InspectKeyContext context) {
  const auto params = context.getParams();
  auto out = context.getResults().initInspection();
  if (!admit(params.getVersion(), proto::Role::kClient, "inspectKey",
             [&] { return out.initError(); })) {
    return kj::READY_NOW;
  }
  auto args = fromProto(params.getRequest());
  const Result<KeyInspection> ins =
      args ? service_.inspect(*args) : Result<KeyInspection>(args.error());
  if (!ins) {
    setError(out.initError(), ins.error());
    return kj::READY_NOW;
  }
  out.setFound(ins->found);
  out.setAlgorithm(toProto(ins->found ? ins->state.algorithm : Algorithm{}));
  out.setLimit(ins->peek.limit);
  out.setRemaining(ins->peek.remaining);
  out.setResetAfterNs(ins->peek.reset_after.count());
  out.setExpiryMs(ins->found ? ins->state.expiry_ms : 0);
  out.setCount(ins->state.count);
  out.setPreviousCount(ins->state.prev_count);
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::resetKey(ResetKeyContext context) {
  const auto params = context.getParams();
  auto results = context.getResults();
  if (!admit(params.getVersion(), proto::Role::kAdmin, "resetKey",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  auto args = fromProto(params.getRequest());
  const Result<bool> existed = args ? service_.reset(*args) : Result<bool>(args.error());
  if (existed) {
    results.setExisted(*existed);
  } else {
    setError(results.initError(), existed.error());
  }
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::adaptiveExchange(AdaptiveExchangeContext context) {
  const auto params = context.getParams();
  auto results = context.getResults();
  if (!admit(params.getVersion(), proto::Role::kPeer, "adaptiveExchange",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  if (adaptive_ == nullptr) {
    setError(results.initError(), proto::ErrorCode::UNAVAILABLE, "this node controls no rules");
    return kj::READY_NOW;
  }
  auto digests = decodeDigests(params.getDigests());
  if (!digests) {
    setError(results.initError(), digests.error());
    return kj::READY_NOW;
  }
  const std::vector<RuleVerdict> verdicts = adaptive_->absorb(*digests);
  auto list = results.initVerdicts(static_cast<unsigned>(verdicts.size()));
  for (unsigned i = 0; i < verdicts.size(); ++i) encode(verdicts[i], list[i]);
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::syncRules(SyncRulesContext context) {
  const auto params = context.getParams();
  auto results = context.getResults();
  if (!admit(params.getVersion(), proto::Role::kPeer, "syncRules",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  if (rules_sync_ == nullptr) {
    setError(results.initError(), proto::ErrorCode::UNAVAILABLE, "this node syncs no rules");
    return kj::READY_NOW;
  }
  std::optional<RulesDoc> doc;
  if (params.hasDoc()) {
    auto decoded = decode(params.getDoc());
    if (!decoded) {
      setError(results.initError(), decoded.error());
      return kj::READY_NOW;
    }
    doc = std::move(*decoded);
  }
  const RulesAnswer answer = rules_sync_->answer(decode(params.getRules()), doc ? &*doc : nullptr);
  encode(answer.version, results.initRules());
  if (answer.doc) encode(*answer.doc, results.initDoc());
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::report(ReportContext context) {
  const auto params = context.getParams();
  auto results = context.getResults();
  if (!admit(params.getVersion(), proto::Role::kClient, "report",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  auto reports = decodeReports(params.getReports());
  if (!reports) {
    setError(results.initError(), reports.error());
    return kj::READY_NOW;
  }
  auto taken = service_.report(*reports);
  if (!taken) {
    setError(results.initError(), taken.error());
    return kj::READY_NOW;
  }
  results.setTaken(static_cast<std::uint32_t>(*taken));
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::handoff(HandoffContext context) {
  const auto params = context.getParams();
  auto results = context.getResults();
  if (!admit(params.getVersion(), proto::Role::kPeer, "handoff",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  if (control_ == nullptr || !control_->handoff) {
    setError(results.initError(), proto::ErrorCode::UNAVAILABLE, "this node takes no handoffs");
    return kj::READY_NOW;
  }
  std::vector<std::uint16_t> slots;
  for (std::uint16_t s : params.getSlots()) slots.push_back(s);
  const auto data = params.getEntries();
  const auto merged = control_->handoff(std::string(params.getFrom().cStr()), slots,
                                        std::span<const std::uint8_t>(data.begin(), data.size()));
  if (merged) {
    results.setMerged(*merged);
  } else {
    setError(results.initError(), merged.error());
  }
  return kj::READY_NOW;
}

namespace {

// A flush finishes on the snapshot writer's side; the RPC thread waits for it without blocking.
struct SnapshotWait {
  Result<SnapshotOutcome> outcome = Error{ErrorCode::kInternal, "no answer"};
  std::function<void()> fulfill;
};

}  // namespace

kj::Promise<void> RpcService::snapshot(SnapshotContext context) {
  auto results = context.getResults();
  if (!admit(context.getParams().getVersion(), proto::Role::kAdmin, "snapshot",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  if (control_ == nullptr || !control_->snapshot) {
    setError(results.initError(), proto::ErrorCode::UNAVAILABLE,
             "no snapshot store configured (start with --redis host:port)");
    return kj::READY_NOW;
  }
  CrossThreadSignal signal = crossThreadSignal();
  auto wait = std::make_shared<SnapshotWait>();
  wait->fulfill = std::move(signal.fulfill);
  control_->snapshot([wait](Result<SnapshotOutcome> r) {
    wait->outcome = std::move(r);
    wait->fulfill();
  });
  return signal.promise.then([context, wait]() mutable {
    auto out = context.getResults();
    if (wait->outcome) {
      out.setWritten(wait->outcome->written);
      out.setPending(wait->outcome->pending);
    } else {
      setError(out.initError(), wait->outcome.error());
    }
  });
}

kj::Promise<void> RpcService::drain(DrainContext context) {
  auto results = context.getResults();
  if (!admit(context.getParams().getVersion(), proto::Role::kAdmin, "drain",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  if (control_ == nullptr || !control_->drain) {
    setError(results.initError(), proto::ErrorCode::UNAVAILABLE, "this node cannot drain");
    return kj::READY_NOW;
  }
  if (auto s = control_->drain(); !s) setError(results.initError(), s.error());
  return kj::READY_NOW;
}

kj::Promise<void> RpcService::keyring(KeyringContext context) {
  auto params = context.getParams();
  auto results = context.getResults();
  if (!admit(params.getVersion(), proto::Role::kAdmin, "keyring",
             [&] { return results.initError(); })) {
    return kj::READY_NOW;
  }
  if (control_ == nullptr || !control_->keyring) {
    setError(results.initError(), proto::ErrorCode::UNAVAILABLE,
             "this node has no gossip keyring (start it with --gossip-keyring FILE)");
    return kj::READY_NOW;
  }
  KeyringOp op = KeyringOp::kList;
  switch (params.getOp()) {
    case proto::KeyringOp::LIST:
      break;
    case proto::KeyringOp::INSTALL:
      op = KeyringOp::kInstall;
      break;
    case proto::KeyringOp::USE:
      op = KeyringOp::kUse;
      break;
    case proto::KeyringOp::REMOVE:
      op = KeyringOp::kRemove;
      break;
    default:
      setError(results.initError(), proto::ErrorCode::INVALID_ARGUMENT, "unknown keyring op");
      return kj::READY_NOW;
  }
  auto keys = control_->keyring(op, std::string(view(params.getKey())));
  if (!keys) {
    setError(results.initError(), keys.error());
    return kj::READY_NOW;
  }
  auto out = results.initKeys(static_cast<unsigned>(keys->size()));
  for (unsigned i = 0; i < keys->size(); ++i) {
    out[i].setId(kjText((*keys)[i].id));
    out[i].setPrimary((*keys)[i].primary);
  }
  return kj::READY_NOW;
}

}  // namespace throttlex
