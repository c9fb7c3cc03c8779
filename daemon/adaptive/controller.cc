#include "daemon/adaptive/controller.h"

#include <algorithm>
#include <cmath>

#include "limiter/key.h"

namespace throttlex {

std::uint32_t adaptiveSlot(std::string_view rule) {
  return slotOf("throttlex.adaptive", rule);
}

Time nextAligned(Time now, Duration interval, double phase) {
  const std::int64_t i = std::max<std::int64_t>(1, interval.count());
  const auto offset = static_cast<std::int64_t>(static_cast<double>(i) * phase);
  const std::int64_t t = now.time_since_epoch().count() - offset;
  std::int64_t k = t / i;  // floor division, negative t included
  if (t % i < 0) --k;
  return Time(Duration((k + 1) * i + offset));
}

AdaptiveController::AdaptiveController(LimiterService& service, const Clock& clock)
    : service_(service), clock_(clock) {}

std::vector<RuleVerdict> AdaptiveController::absorb(std::span<const RuleDigest> digests) {
  const std::shared_ptr<const RuleSet> rules = service_.currentRules();
  const Time now = clock_.now();
  std::vector<RuleVerdict> out;
  out.reserve(digests.size());
  MutexLock lock(mu_);
  for (const RuleDigest& d : digests) {
    RuleVerdict v;
    v.rule = d.rule;
    const RuleSet::Entry* e = rules->find(d.rule);
    if (e == nullptr || !e->rule.adaptive) {
      out.push_back(std::move(v));
      continue;
    }
    const AdaptiveSpec& spec = *e->rule.adaptive;
    auto it = states_.find(d.rule);
    if (it == states_.end()) {
      State s;
      if (d.known_limit > 0) {
        s.verdict.limit = std::clamp(d.known_limit, spec.min, spec.max);
        s.verdict.reason = "controller moved here; kept the limit the nodes applied";
      } else {
        s.verdict.limit = e->rule.spec.limit;
        s.verdict.reason = "the rule's starting limit";
      }
      s.next_step = nextAligned(now, spec.interval, 0.5);
      it = states_.emplace(d.rule, std::move(s)).first;
    }
    it->second.merged.merge(d.digest);
    it->second.heard = now;
    v.controlled = true;
    v.verdict = it->second.verdict;
    out.push_back(std::move(v));
  }
  return out;
}

void AdaptiveController::step() {
  const std::shared_ptr<const RuleSet> rules = service_.currentRules();
  const Time now = clock_.now();
  MutexLock lock(mu_);
  for (auto it = states_.begin(); it != states_.end();) {
    const RuleSet::Entry* e = rules->find(it->first);
    if (e == nullptr || !e->rule.adaptive) {
      it = states_.erase(it);
      continue;
    }
    const AdaptiveSpec& spec = *e->rule.adaptive;
    State& s = it->second;
    if (now - s.heard > 3 * spec.interval) {
      it = states_.erase(it);
      continue;
    }
    if (now >= s.next_step && !s.warm) {
      // The state began part way into an interval: what was merged so far covers less than one,
      // and the laws would read it as a fall in delivered calls.
      s.warm = true;
      s.merged = SignalDigest{};
      s.next_step = nextAligned(now, spec.interval, 0.5);
    } else if (now >= s.next_step) {
      const IntervalSignals signals = signalsOf(s.merged, spec);
      const std::uint64_t current = std::clamp(s.verdict.limit, spec.min, spec.max);
      const Duration period = e->rule.spec.algorithm == Algorithm::kConcurrency
                                  ? concurrencyPeriod(spec, signals, e->rule.spec.period)
                                  : e->rule.spec.period;
      LimitStep next = nextLimit(spec, current, period, signals, &s.memory);
      s.verdict = {next.limit, std::move(next.reason), signals};
      s.merged = SignalDigest{};
      s.next_step = nextAligned(now, spec.interval, 0.5);
    }
    ++it;
  }
}

std::size_t AdaptiveController::controlled() const {
  MutexLock lock(mu_);
  return states_.size();
}

bool AdaptiveController::controls(std::string_view rule) const {
  MutexLock lock(mu_);
  return states_.contains(rule);
}

std::optional<Time> AdaptiveController::nextStep() const {
  MutexLock lock(mu_);
  std::optional<Time> next;
  for (const auto& [name, s] : states_) {
    if (!next || s.next_step < *next) next = s.next_step;
  }
  return next;
}

}  // namespace throttlex
