#include "daemon/routing/router.h"

namespace throttlex {

Router::Router(LimiterService& service, const RingHolder* ring, Forwarder* forwarder,
               SlotGate* keeper, bool inline_limits)
    : service_(service),
      ring_(ring),
      forwarder_(forwarder),
      keeper_(keeper),
      inline_limits_(inline_limits) {}

namespace {

Error inlineRefused() {
  return {ErrorCode::kPermissionDenied,
          "inline limits are switched off on this node (--inline-limits off): name a rule"};
}

// Errors every node would give alike are given here (LimiterService::check says which).
bool routable(const CheckArgs& args) {
  if (args.key.empty() || args.key.size() > kMaxKeyBytes || args.hits > kMaxCost) return false;
  return !args.rule.empty() || static_cast<bool>(Limit::make(args.limit));
}

}  // namespace

const RingView* Router::viewFor(std::uint8_t hops) const {
  if (forwarder_ == nullptr || ring_ == nullptr || hops >= kMaxHops) return nullptr;
  return ring_->current().get();
}

Router::Where Router::where(const CheckArgs& args, std::uint8_t hops, const RingView* view,
                            std::uint32_t& slot) const {
  const bool multi = view != nullptr && view->ring.members().size() > 1;
  // From the hop limit on, the ring is not consulted for ordinary routing, but the slot gate's
  // modes and the ring's owner still matter (route.h).
  const bool at_limit = keeper_ != nullptr && hops >= kMaxHops && ring_ != nullptr;
  const bool keeping = keeper_ != nullptr && (keeper_->active() || at_limit);
  if (!multi && !keeping) return Where::kHere;
  if (!routable(args)) return Where::kHere;
  slot = slotOf(args.rule, args.key);
  RouteFacts facts;
  facts.hops = hops;
  facts.gate = keeper_ != nullptr;
  facts.forwarder = forwarder_ != nullptr;
  facts.mode = keeping ? keeper_->mode(slot) : SlotMode::kOpen;
  const RingView* ring = ring_ != nullptr ? ring_->current().get() : nullptr;  // `view` or null
  facts.owned_elsewhere = ring != nullptr && ring->peerFor(slot) != RingView::kNoPeer;
  facts.handed_over =
      facts.gate && hops > kMaxHops && facts.owned_elsewhere && keeper_->handedOver(slot);
  switch (routeStep(facts)) {
    case RouteStep::kDecide:
      return Where::kHere;
    case RouteStep::kDecideStandIn:
      return keeper_->standInNeedsRecovery(slot) ? Where::kPark : Where::kHere;
    case RouteStep::kPark:
      return Where::kPark;
    case RouteStep::kOwner:
    case RouteStep::kStandIn:
    case RouteStep::kHandOver:
      return Where::kPeer;  // the forwarder routes it again as it sends it
  }
  return Where::kHere;
}

Admission Router::admit() {
  return {service_.clock().monotonic(), OverloadDetector::current()};
}

std::optional<Result<CheckOutcome>> Router::atEntry(const CheckArgs& args, std::uint8_t hops,
                                                    Admission& entry) {
  if (hops != 0) return std::nullopt;
  if (refused(args, hops)) return inlineRefused();
  const OverloadDetector* overload = OverloadDetector::current();
  // A release or a refund gives capacity back, and is never shed: shedding it would hold units
  // the caller is done with until they expire. Nor is a renewal: a lease that expired under a
  // caller still working would let another acquire past the limit.
  if (overload == nullptr || args.release != 0 || args.renew != 0 || args.refund) {
    return std::nullopt;
  }
  const auto why = overload->shed(args.priority, entry, args.deadline);
  if (!why) return std::nullopt;
  auto o = service_.shedOutcome(args, *why);
  if (o) o->priority = args.priority;
  return o;
}

std::optional<Result<CheckOutcome>> Router::check(const CheckArgs& args, std::uint8_t hops,
                                                  Forwarding& forwarding) {
  if (hops == 0) {
    Admission entry = admit();
    if (auto answered = atEntry(args, hops, entry)) return answered;
  }
  return routeOne(args, hops, forwarding);
}

std::optional<Result<CheckOutcome>> Router::routeOne(const CheckArgs& args, std::uint8_t hops,
                                                     Forwarding& forwarding) {
  Quiescence::Guard guard(keeper_ != nullptr ? &keeper_->quiescence() : nullptr);
  std::uint32_t slot = 0;
  forwarding.hops = hops;
  switch (where(args, hops, viewFor(hops), slot)) {
    case Where::kHere:
      return service_.check(args);
    case Where::kPeer:
      forwarding.checks.push_back(ForwardedCheck::from(args, slot));
      forwarding.indices.push_back(0);
      return std::nullopt;
    case Where::kPark:
      forwarding.parked.push_back(ForwardedCheck::from(args, slot));
      forwarding.parked_indices.push_back(0);
      return std::nullopt;
  }
  return service_.check(args);
}

namespace {

// Whether a check entering here may share its shed answer with the other checks of its rule
// (Router::shedWhole()); the rest are answered (shed, refused or decided) check by check.
bool shedAlike(const CheckArgs& a) {
  return !a.rule.empty() && a.release == 0 && a.renew == 0 && !a.refund && !a.key.empty() &&
         a.key.size() <= kMaxKeyBytes && a.hits <= kMaxCost;
}

}  // namespace

bool Router::shedWhole(std::span<const CheckArgs> args, Admission& entry, ShedBatch& out) {
  const OverloadDetector* overload = OverloadDetector::current();
  if (overload == nullptr || args.empty()) return false;
  out.which.resize(args.size());
  for (std::size_t i = 0; i < args.size(); ++i) {
    const CheckArgs& a = args[i];
    if (!shedAlike(a)) return false;
    const auto why = overload->shed(a.priority, entry, a.deadline);
    if (!why) return false;
    std::size_t k = 0;
    while (k < out.answers.size() &&
           !(out.answers[k].rule == a.rule && out.answers[k].reason == *why &&
             out.answers[k].priority == a.priority)) {
      ++k;
    }
    if (k == out.answers.size()) {
      if (k == ShedBatch::kMaxAnswers || !service_.shedAlike(a.rule)) return false;
      auto o = service_.shedOutcome(a, *why);
      if (o) o->priority = a.priority;
      out.answers.push_back({a.rule, *why, a.priority, std::move(o), 0});
    }
    ++out.answers[k].checks;
    out.which[i] = static_cast<std::uint8_t>(k);
  }
  return true;
}

Forwarding Router::checkBatch(std::span<const CheckArgs> args, std::uint8_t hops,
                              std::vector<Result<CheckOutcome>>& out, Admission* entry) {
  if (hops != 0 || (inline_limits_ && OverloadDetector::current() == nullptr)) {
    return checkRouted(args, hops, out);  // nothing to refuse or shed
  }
  std::optional<Admission> own;
  if (entry == nullptr) entry = &own.emplace(admit());
  std::vector<std::optional<Result<CheckOutcome>>> answered;
  answered.reserve(args.size());
  std::size_t count = 0;
  for (const CheckArgs& a : args) {
    answered.push_back(atEntry(a, hops, *entry));
    if (answered.back()) ++count;
  }
  if (count == 0) return checkRouted(args, hops, out);
  // Route the rest as a batch of its own; refused and shed ones answer here, in their place.
  std::vector<CheckArgs> rest;
  std::vector<std::size_t> rest_index;
  rest.reserve(args.size() - count);
  rest_index.reserve(args.size() - count);
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (answered[i]) continue;
    rest.push_back(args[i]);
    rest_index.push_back(i);
  }
  std::vector<Result<CheckOutcome>> decided;
  Forwarding forwarding = checkRouted(rest, hops, decided);
  out.clear();
  out.reserve(args.size());
  std::size_t next = 0;
  for (auto& a : answered) out.push_back(a ? std::move(*a) : std::move(decided[next++]));
  for (auto& i : forwarding.indices) i = rest_index[i];
  for (auto& i : forwarding.parked_indices) i = rest_index[i];
  return forwarding;
}

Forwarding Router::checkRouted(std::span<const CheckArgs> args, std::uint8_t hops,
                               std::vector<Result<CheckOutcome>>& out) {
  Quiescence::Guard guard(keeper_ != nullptr ? &keeper_->quiescence() : nullptr);
  Forwarding forwarding;
  forwarding.hops = hops;
  const RingView* view = viewFor(hops);
  const bool multi = view != nullptr && view->ring.members().size() > 1;
  const bool keeping = keeper_ != nullptr && (keeper_->active() || hops >= kMaxHops);
  if (!multi && !keeping) {
    service_.checkBatch(args, out);
    return forwarding;
  }
  std::vector<CheckArgs> here;
  std::vector<std::size_t> here_index;
  here.reserve(args.size());
  here_index.reserve(args.size());
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::uint32_t slot = 0;
    switch (where(args[i], hops, view, slot)) {
      case Where::kHere:
        here.push_back(args[i]);
        here_index.push_back(i);
        break;
      case Where::kPeer:
        forwarding.checks.push_back(ForwardedCheck::from(args[i], slot));
        forwarding.indices.push_back(i);
        break;
      case Where::kPark:
        forwarding.parked.push_back(ForwardedCheck::from(args[i], slot));
        forwarding.parked_indices.push_back(i);
        break;
    }
  }
  if (here.size() == args.size()) {
    service_.checkBatch(args, out);
    return forwarding;
  }
  std::vector<Result<CheckOutcome>> decided;
  service_.checkBatch(here, decided);
  out.assign(args.size(), Result<CheckOutcome>(Error{ErrorCode::kInternal, "not decided"}));
  for (std::size_t j = 0; j < here.size(); ++j) out[here_index[j]] = std::move(decided[j]);
  return forwarding;
}

void Router::reroute(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
                     std::uint8_t hops) {
  if (pastDecideBy(check.decide_by_ms, service_.clock())) {
    // Parked past the time its sender waits: the sender may have had it decided elsewhere.
    sink->deliver(index,
                  Error{ErrorCode::kNotDecided, "its decide-by time passed while it waited"});
    return;
  }
  Forwarding forwarding;
  forwarding.decide_by_ms = check.decide_by_ms;
  // Admitted when it entered: routed again, never refused or shed as if new.
  auto decided = routeOne(check.args(), hops, forwarding);
  if (decided) {
    sink->deliver(index, std::move(*decided));
    return;
  }
  for (auto& i : forwarding.indices) i = index;
  for (auto& i : forwarding.parked_indices) i = index;
  forward(std::move(forwarding), std::move(sink));
}

void Router::decideAll(std::span<const CheckArgs> args, ResultCollector::Finish done) {
  std::vector<Result<CheckOutcome>> outcomes;
  Forwarding forwarding = checkBatch(args, 0, outcomes);
  if (forwarding.empty()) return done(outcomes);
  const std::size_t pending = forwarding.size();
  forward(std::move(forwarding),
          std::make_shared<ResultCollector>(std::move(outcomes), pending, std::move(done)));
}

namespace {

std::optional<std::size_t> firstDenied(const std::vector<Result<CheckOutcome>>& outcomes) {
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    if (!outcomes[i] || !outcomes[i]->allowed) return i;
  }
  return std::nullopt;
}

}  // namespace

void Router::checkAtomic(std::vector<CheckArgs> args, std::shared_ptr<const void> keep,
                         std::function<void(AtomicOutcome&)> done) {
  auto batch = std::make_shared<const std::vector<CheckArgs>>(std::move(args));
  decideAll(*batch, [this, batch, keep = std::move(keep),
                     done = std::move(done)](std::vector<Result<CheckOutcome>>& decided) {
    auto result = std::make_shared<AtomicOutcome>();
    result->outcomes = std::move(decided);
    result->refunded.assign(result->outcomes.size(), false);
    result->denied_by = firstDenied(result->outcomes);
    // What the denied batch spent: the admitted checks (a shadow rule's denial spent nothing).
    // Releases and renewals spent nothing: they keep their effect, whatever the verdict.
    std::vector<CheckArgs> back;
    std::vector<std::size_t> which;
    for (std::size_t i = 0; result->denied_by && i < result->outcomes.size(); ++i) {
      const auto& o = result->outcomes[i];
      const CheckArgs& a = (*batch)[i];
      if (!o || !o->decision.allowed || a.hits == 0 || a.release != 0 || a.renew != 0) continue;
      back.push_back((*batch)[i]);
      if (o->lease_id != 0) {
        back.back().release = o->lease_id;  // a concurrency rule: its lease goes back
      } else {
        back.back().refund = true;
      }
      which.push_back(i);
    }
    if (back.empty()) return done(*result);
    decideAll(back, [result, which, batch, keep, done](std::vector<Result<CheckOutcome>>& given) {
      for (std::size_t k = 0; k < which.size(); ++k) {
        Result<CheckOutcome>& o = result->outcomes[which[k]];
        result->refunded[which[k]] = given[k].ok();
        if (given[k]) o = std::move(given[k]);  // remaining and reset after the refund
        o->lease_id = 0;
        o->released.reset();
        o->allowed = false;
        o->decision.allowed = false;
      }
      done(*result);
    });
  });
}

void Router::forward(Forwarding forwarding, std::shared_ptr<ForwardSink> sink) {
  for (std::size_t i = 0; i < forwarding.parked.size(); ++i) {
    if (forwarding.decide_by_ms != 0) forwarding.parked[i].decide_by_ms = forwarding.decide_by_ms;
    keeper_->park(std::move(forwarding.parked[i]), forwarding.parked_indices[i], sink,
                  forwarding.hops, *this);
  }
  if (forwarding.checks.empty()) return;
  forwarder_->submit(std::move(forwarding.checks), std::move(forwarding.indices), std::move(sink),
                     forwarding.hops, forwarding.decide_by_ms);
}

}  // namespace throttlex
