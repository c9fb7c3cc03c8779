#include "daemon/adaptive/exchange.h"

#include <algorithm>

namespace throttlex {

AdaptiveExchange::AdaptiveExchange(LimiterService& service, AdaptiveController& controller,
                                   const RingHolder* ring, const Clock& clock, DigestSender send)
    : service_(service),
      controller_(controller),
      ring_(ring),
      clock_(clock),
      send_(std::move(send)) {}

AdaptiveExchange::~AdaptiveExchange() {
  stop();
}

void AdaptiveExchange::start() {
  thread_ = std::thread([this] { run(); });
}

void AdaptiveExchange::stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

ExchangeStats AdaptiveExchange::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

void AdaptiveExchange::round(bool all) {
  // The controller steps first: digests sent in this round count towards the next interval, and
  // the verdicts answered to them already carry the new step.
  controller_.step();
  const Time now = clock_.now();
  const std::shared_ptr<const RuleSet> rules = service_.currentRules();
  std::shared_ptr<const RingView> ring = ring_ != nullptr ? ring_->current() : nullptr;
  if (ring_ != nullptr && !ring) return;  // membership not up yet: who controls what is unknown

  // The due digests, grouped by controller: the member index, or kNoPeer for this node.
  std::map<std::uint32_t, std::vector<RuleDigest>> by_owner;
  std::map<std::string, AdaptiveCell*, std::less<>> cells;
  for (const Rule& rule : rules->rules()) {
    if (!rule.adaptive) continue;
    const RuleSet::Entry* e = rules->find(rule.name);
    auto [it, fresh] = next_send_.try_emplace(rule.name, Time{});
    if (!all && !fresh && now < it->second) continue;
    const Duration interval = rule.adaptive->interval;
    it->second = std::min(nextAligned(now, interval, 0.1), nextAligned(now, interval, 0.6));
    const std::uint32_t owner = ring ? ring->peerFor(adaptiveSlot(rule.name)) : RingView::kNoPeer;
    by_owner[owner].push_back({rule.name, e->cell->take(), e->cell->limit()});
    cells.emplace(rule.name, e->cell.get());
  }
  // Rules no longer adaptive leave the schedule.
  std::erase_if(next_send_, [&](const auto& kv) {
    const RuleSet::Entry* e = rules->find(kv.first);
    return e == nullptr || !e->cell;
  });

  std::uint64_t calls = 0, failures = 0;
  for (auto& [owner, digests] : by_owner) {
    Result<std::vector<RuleVerdict>> verdicts = std::vector<RuleVerdict>{};
    if (owner == RingView::kNoPeer) {
      verdicts = controller_.absorb(digests);
    } else {
      ++calls;
      verdicts = send_(ring->rpc_address[owner], digests);
    }
    if (!verdicts || verdicts->size() != digests.size()) {
      ++failures;
      for (const RuleDigest& d : digests) cells[d.rule]->putBack(d.digest);
      continue;
    }
    for (const RuleVerdict& v : *verdicts) {
      if (v.controlled) cells[v.rule]->apply(v.verdict, now);
    }
  }
  MutexLock lock(mu_);
  ++stats_.rounds;
  stats_.calls += calls;
  stats_.failures += failures;
}

Time AdaptiveExchange::nextWake() const {
  // Sends are scheduled in next_send_; the controller's steps fall between them. At least every
  // 100 ms, for rules added meanwhile.
  Time wake = clock_.now() + std::chrono::milliseconds(100);
  for (const auto& [name, at] : next_send_) wake = std::min(wake, at);
  if (auto step = controller_.nextStep()) wake = std::min(wake, *step);
  return wake;
}

void AdaptiveExchange::run() {
  for (;;) {
    round();
    const Duration wait = std::max(Duration(0), nextWake() - clock_.now());
    MutexLock lock(mu_);
    if (wake_.wait_for(lock.native(), wait, [this]() REQUIRES(mu_) { return stopping_; })) return;
  }
}

}  // namespace throttlex
