// Where each check is decided: here when this node owns its key, otherwise by the owner, through
// the Forwarder. The one entry point of the HTTP API and the RPC server for checks.
//
// Thread-safe. Routing reads the ring through RingHolder's per-thread cache: no lock, no shared
// write per check. Where a check goes is routeStep()'s answer (route.h: the ring, the slot's mode
// and the hops it passed; the forwarder asks it again as it sends the check). A check is decided
// here, whatever the ring says, when
//  - there is no forwarder or no cluster (one member),
//  - it already passed kMaxHops nodes (views of the ring disagree for a moment: never loop) —
//    with a slot gate (SlotKeeper), a check at the limit still goes once to its owner by this
//    node's ring, and past the limit to the member that holds its slot's state (a slot moved or
//    just handed over), up to kMaxRelayHops; it waits here while the state is on the way,
//  - it is invalid in a way this node can see (bad key, bad inline limit): the error is the same
//    everywhere, so there is nothing to ask the owner,
//  - it enters here (hops 0) with an inline limit while inline limits are off (--inline-limits
//    off): refused with kPermissionDenied, named rules only. Checks forwarded by peers carry the
//    limit their entry node accepted and are not refused again.
// A check that enters here while this thread's loop is overloaded may be shed instead: answered at
// once by its rule's overload policy, by its priority (daemon/service/overload.h). Only at entry:
// a check a peer forwarded was admitted into the cluster already and is decided.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "daemon/routing/forwarder.h"
#include "daemon/routing/ring_view.h"
#include "daemon/routing/slot_gate.h"
#include "daemon/service/limiter_service.h"

namespace throttlex {

// The checks of one request that must go to other nodes (empty: all decided).
struct Forwarding {
  std::vector<ForwardedCheck> checks;
  std::vector<std::size_t> indices;  // where each result belongs in the request
  std::uint8_t hops = 0;
  std::int64_t decide_by_ms = 0;  // from a peer: decide none of them after this (ForwardedCheck)
  // Checks whose slot's state is still on the way (daemon/slots/slot_keeper.h): they wait there.
  std::vector<ForwardedCheck> parked;
  std::vector<std::size_t> parked_indices;
  bool empty() const { return checks.empty() && parked.empty(); }
  std::size_t size() const { return checks.size() + parked.size(); }  // results still to come
};

// Collects the results of forwarded checks into `outcomes` (the request's, indexed as
// Forwarding::indices say) and calls `finish` once, with all of them, on the thread that delivers
// the last.
class ResultCollector final : public ForwardSink {
 public:
  using Finish = std::function<void(std::vector<Result<CheckOutcome>>&)>;
  ResultCollector(std::vector<Result<CheckOutcome>> outcomes, std::size_t pending, Finish finish)
      : outcomes_(std::move(outcomes)), pending_(pending), finish_(std::move(finish)) {}
  void deliver(std::size_t index, Result<CheckOutcome> outcome) override {
    outcomes_[index] = std::move(outcome);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) finish_(outcomes_);
  }

 private:
  std::vector<Result<CheckOutcome>> outcomes_;
  std::atomic<std::size_t> pending_;
  Finish finish_;
};

// An all-or-nothing batch's answer (Router::checkAtomic()).
struct AtomicOutcome {
  // Every check's outcome, in request order. When the batch was denied, the checks that had been
  // admitted were given back: their outcome is the refund's (allowed false, `refunded` true).
  std::vector<Result<CheckOutcome>> outcomes;
  std::vector<bool> refunded;
  std::optional<std::size_t> denied_by;  // the first check not allowed (or failed); none: allowed
};

// A client's batch shed as a whole (Router::shedWhole()): one answer per rule, shed reason and
// priority, and which of them each check gets.
struct ShedBatch {
  struct Answer {
    std::string_view rule;  // a view into the request
    ShedReason reason{};
    Priority priority{};
    Result<CheckOutcome> outcome;
    std::uint64_t checks = 0;  // how many checks of the batch get it
  };
  static constexpr std::size_t kMaxAnswers = 16;  // more kinds: shed check by check
  std::vector<Answer> answers;
  std::vector<std::uint8_t> which;  // per check, the index of its answer
};

class Router final : public Rerouter {
 public:
  // `ring` and `forwarder` may be null: every check is then decided here. `keeper` may be null
  // (no recovery or handoff): then every slot is open.
  // `inline_limits` false: checks entering here must name a rule.
  Router(LimiterService& service, const RingHolder* ring, Forwarder* forwarder,
         SlotGate* keeper = nullptr, bool inline_limits = true);

  // One check: decided here (returns the outcome) or, when another node owns it, nullopt and
  // `forwarding` holds it (index 0) for forward().
  std::optional<Result<CheckOutcome>> check(const CheckArgs& args, std::uint8_t hops,
                                            Forwarding& forwarding);
  // A batch: decides what this node owns into `out` (resized to args.size()) and returns the
  // rest. Per key, order is kept: all checks of one key go the same way. A batch entering here
  // (hops 0) is admitted as one message: `entry` if the caller admitted it already, else now.
  Forwarding checkBatch(std::span<const CheckArgs> args, std::uint8_t hops,
                        std::vector<Result<CheckOutcome>>& out, Admission* entry = nullptr);
  // A message entering this thread now: when, and (drawn when first asked) whether it falls in the
  // thread's share of normal checks to shed (never on a thread without an overload detector).
  Admission admit();
  // Overload: when this thread's loop sheds every check of a batch entering here, and each check's
  // shed answer is its rule's alike for all its checks (a named rule, not a concurrency rule; no
  // release, renewal or refund; a valid key and cost), fills `out` and returns true: the answers
  // are worked out once per rule, not per check, and nothing is decided. Otherwise returns false
  // and the batch goes to checkBatch(), which sheds check by check. A shed answer must cost far
  // less than a decision, or shedding spends the capacity it frees (docs/overload.md).
  // `entry`: the batch's admit(), which checkBatch() gets too when this returns false.
  bool shedWhole(std::span<const CheckArgs> args, Admission& entry, ShedBatch& out);
  // Sends what check()/checkBatch() left over; each result reaches sink->deliver(index, ...),
  // normally on the forwarder thread.
  void forward(Forwarding forwarding, std::shared_ptr<ForwardSink> sink);
  // Routes one check again (a parked check whose slot opened): its result goes to
  // sink->deliver(index, ...), now or later.
  void reroute(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
               std::uint8_t hops) override;

  // Decides `args` here and at their owners; `done` gets every outcome in request order, once: on
  // this thread when nothing was forwarded, else where the last answer arrives.
  void decideAll(std::span<const CheckArgs> args, ResultCollector::Finish done);
  // All or nothing: allowed only if every check is (a shadow rule's check counts as allowed); when
  // one is not, the checks already admitted are given back (refunds, at their owners, exactly what
  // they spent) before `done` is called, so nothing of the batch stays spent. The check views of
  // `args` must stay valid until `done` (keep their storage in `keep`). While a denied batch's
  // units are out, concurrent checks of the same keys may be denied by them: the cost is early
  // denials, never an admission beyond a limit.
  void checkAtomic(std::vector<CheckArgs> args, std::shared_ptr<const void> keep,
                   std::function<void(AtomicOutcome&)> done);

  LimiterService& service() { return service_; }
  // The calling worker thread forwards its own checks from now on (Forwarder::attachThread());
  // null when there is no forwarder.
  std::unique_ptr<ForwarderThread> attachThread(kj::Timer& timer, PeerConnector connect) {
    return forwarder_ != nullptr ? forwarder_->attachThread(timer, std::move(connect)) : nullptr;
  }

 private:
  enum class Where : std::uint8_t { kHere, kPeer, kPark };
  // Where a check goes; sets `slot` unless kHere. Call inside a Quiescence::Guard.
  Where where(const CheckArgs& args, std::uint8_t hops, const RingView* view,
              std::uint32_t& slot) const;
  const RingView* viewFor(std::uint8_t hops) const;
  bool refused(const CheckArgs& args, std::uint8_t hops) const {
    return !inline_limits_ && hops == 0 && args.rule.empty();
  }
  // The answer a check gets at entry without being routed: refused (inline limits off) or shed.
  std::optional<Result<CheckOutcome>> atEntry(const CheckArgs& args, std::uint8_t hops,
                                              Admission& entry);
  // check() past the entry: decided here, or left in `forwarding` (to send or to park).
  std::optional<Result<CheckOutcome>> routeOne(const CheckArgs& args, std::uint8_t hops,
                                               Forwarding& forwarding);
  Forwarding checkRouted(std::span<const CheckArgs> args, std::uint8_t hops,
                         std::vector<Result<CheckOutcome>>& out);

  LimiterService& service_;
  const RingHolder* const ring_;
  Forwarder* const forwarder_;
  SlotGate* const keeper_;
  const bool inline_limits_;
};

}  // namespace throttlex
