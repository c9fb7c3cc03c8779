#include "daemon/router.h"

namespace throttlex {

Router::Router(LimiterService& service, const RingHolder* ring, Forwarder* forwarder)
    : service_(service), ring_(ring), forwarder_(forwarder) {}

std::uint32_t Router::ownerOf(const CheckArgs& args, const RingView* view,
                              std::uint32_t& slot) const {
  if (view == nullptr || view->ring.members().size() <= 1) return RingView::kNoPeer;
  // Errors every node would give alike are given here (LimiterService::check says which).
  if (args.key.empty() || args.key.size() > kMaxKeyBytes || args.hits > kMaxCost) {
    return RingView::kNoPeer;
  }
  if (args.rule.empty() && !Limit::make(args.limit)) return RingView::kNoPeer;
  slot = slotOf(args.rule, args.key);
  return view->peerFor(slot);
}

std::optional<Result<CheckOutcome>> Router::check(const CheckArgs& args, std::uint8_t hops,
                                                  Forwarding& forwarding) {
  const RingView* view = nullptr;
  if (forwarder_ != nullptr && ring_ != nullptr && hops < kMaxHops) view = ring_->current().get();
  std::uint32_t slot = 0;
  if (ownerOf(args, view, slot) == RingView::kNoPeer) return service_.check(args);
  forwarding.checks.push_back(ForwardedCheck::from(args, slot));
  forwarding.indices.push_back(0);
  forwarding.hops = hops;
  return std::nullopt;
}

Forwarding Router::checkBatch(std::span<const CheckArgs> args, std::uint8_t hops,
                              std::vector<Result<CheckOutcome>>& out) {
  Forwarding forwarding;
  forwarding.hops = hops;
  const RingView* view = nullptr;
  if (forwarder_ != nullptr && ring_ != nullptr && hops < kMaxHops) view = ring_->current().get();
  if (view == nullptr || view->ring.members().size() <= 1) {
    service_.checkBatch(args, out);
    return forwarding;
  }
  std::vector<CheckArgs> here;
  std::vector<std::size_t> here_index;
  here.reserve(args.size());
  here_index.reserve(args.size());
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::uint32_t slot = 0;
    if (ownerOf(args[i], view, slot) == RingView::kNoPeer) {
      here.push_back(args[i]);
      here_index.push_back(i);
    } else {
      forwarding.checks.push_back(ForwardedCheck::from(args[i], slot));
      forwarding.indices.push_back(i);
    }
  }
  std::vector<Result<CheckOutcome>> decided;
  service_.checkBatch(here, decided);
  out.assign(args.size(), Result<CheckOutcome>(Error{ErrorCode::kInternal, "not decided"}));
  for (std::size_t j = 0; j < here.size(); ++j) out[here_index[j]] = std::move(decided[j]);
  return forwarding;
}

void Router::forward(Forwarding forwarding, std::shared_ptr<ForwardSink> sink) {
  if (forwarding.empty()) return;
  forwarder_->submit(std::move(forwarding.checks), std::move(forwarding.indices), std::move(sink),
                     forwarding.hops);
}

}  // namespace throttlex
