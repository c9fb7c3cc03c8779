#include "daemon/service/limiter_service.h"

#include "daemon/service/rules_doc.h"
#include "limiter/mutex.h"

#include <algorithm>
#include <random>

namespace throttlex {
namespace {

constexpr std::string_view kInlinePolicy = "default";

}  // namespace

LimiterService::LimiterService(Store& store, const Clock& clock, RuleSet rules,
                               std::string rules_path)
    : store_(store),
      clock_(clock),
      rules_path_(std::move(rules_path)),
      rules_(std::make_shared<const RuleSet>(std::move(rules))) {}

void LimiterService::publish(RuleSet next) {
  next.adoptCells(*currentRules(), clock_.now());
  rules_.publish(std::make_shared<const RuleSet>(std::move(next)));
}

Result<LimiterService::Resolved> LimiterService::resolve(const CheckArgs& args,
                                                         const RuleSet& rules) const {
  if (args.key.empty()) return invalidArgument("key must not be empty");
  if (args.key.size() > kMaxKeyBytes) {
    return invalidArgument("key is " + std::to_string(args.key.size()) +
                           " bytes; the maximum is 1024");
  }
  if (args.hits > kMaxCost) return invalidArgument("hits must be at most 2^40");
  if (!args.rule.empty()) {
    const RuleSet::Entry* e = rules.find(args.rule);
    if (e == nullptr) {
      return Error{ErrorCode::kNotFound, "unknown rule '" + std::string(args.rule) + "'"};
    }
    Resolved r{e->limit, hashKey(e->rule.name, args.key, e->limit), e->rule.shadow, e->rule.name,
               e->rule.degraded};
    r.overload = e->rule.overload;
    if (e->cell) {
      r.cell = e->cell.get();
      r.limit = e->limit.withLimit(r.cell->limit());
    }
    return r;
  }
  auto limit = Limit::make(args.limit);
  if (!limit) return limit.error();
  return Resolved{*limit, hashKey("", args.key, *limit), false, kInlinePolicy};
}

namespace {

// A new key while the store is full of keys in use (limiter/store.h): not a decision about the
// key, so not an answer a caller could act on as one; 503, counted by the store.
Error storeFull() {
  return {ErrorCode::kUnavailable,
          "this node's key store is full (--max-keys) of keys in use: new keys are refused until "
          "some recover"};
}

Result<CheckOutcome> outcome(const Decision& d, bool shadow, std::string_view policy,
                             Duration period) {
  if (d.refused) return storeFull();
  CheckOutcome o;
  o.decision = d;
  o.allowed = d.allowed || shadow;
  o.shadow = shadow;
  o.policy = std::string(policy);
  o.period = period;
  return o;
}

// A lease id: 64 random bits from a per-thread generator, never 0 (0 means "no lease").
std::uint64_t newLeaseId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uint64_t id = 0;
  while (id == 0) id = rng();
  return id;
}

// An acquire allowed by a policy (degraded, overload) rather than decided: a lease no node holds,
// so its release is answered "unknown".
void grantUnheldLease(CheckOutcome& o, const Limit& limit, const CheckArgs& args, Time now) {
  if (!o.decision.allowed || args.hits == 0) return;
  o.lease_id = newLeaseId();
  o.lease_expiry_ms = leaseExpiryMs(limit, now);
}

}  // namespace

bool LimiterService::isLeaseCheck(const Resolved& r, const CheckArgs& args) {
  return args.release != 0 || args.renew != 0 || r.limit.algorithm() == Algorithm::kConcurrency;
}

Result<CheckOutcome> LimiterService::lease(const Resolved& r, const CheckArgs& args,
                                           const Limit& limit) {
  if (limit.algorithm() != Algorithm::kConcurrency) {
    return invalidArgument("only a concurrency limit has leases to release or renew; '" +
                           std::string(r.policy) + "' is " +
                           std::string(algorithmName(limit.algorithm())));
  }
  if (args.refund) {
    return invalidArgument(
        "a concurrency limit takes units back by releasing a lease, not by a refund");
  }
  if (args.release != 0 && args.renew != 0) {
    return invalidArgument("a check either releases a lease or renews one, not both");
  }
  const Time now = clock_.now();
  if (args.renew != 0) {
    Decision counter;
    std::int64_t expiry_ms = 0;
    const LeaseRenewal found = store_.renew(r.key, limit, args.renew, now, counter, expiry_ms);
    counter.allowed = true;
    auto o = outcome(counter, r.shadow, r.policy, limit.period());
    if (o) {
      o->renewed = found;
      if (found == LeaseRenewal::kRenewed) {
        o->lease_id = args.renew;
        o->lease_expiry_ms = expiry_ms;
      }
    }
    return o;
  }
  if (args.release != 0) {
    Decision counter;
    const LeaseRelease found = store_.release(r.key, limit, args.release, now, counter);
    counter.allowed = true;
    auto o = outcome(counter, r.shadow, r.policy, limit.period());
    if (o) o->released = found;
    return o;
  }
  const std::uint64_t id = args.hits > 0 ? newLeaseId() : 0;
  const Decision d = store_.acquire(r.key, limit, args.hits, id, now);
  countAdaptive(r, args, d);
  auto o = outcome(d, r.shadow, r.policy, limit.period());
  if (o && d.allowed && id != 0) {
    o->lease_id = id;
    o->lease_expiry_ms = leaseExpiryMs(limit, now);
  }
  return o;
}

void LimiterService::countAdaptive(const Resolved& r, const CheckArgs& args, const Decision& d) {
  if (r.cell != nullptr && args.hits > 0 && !args.refund && !d.refused)
    r.cell->countCheck(d.allowed);
}

Result<CheckOutcome> LimiterService::check(const CheckArgs& args) {
  // A reference, not a copy: copying would touch the shared reference count on every check.
  const RuleSet& rules = *currentRules();
  auto r = resolve(args, rules);
  if (!r) return r.error();
  if (isLeaseCheck(*r, args)) return lease(*r, args, r->limit);
  const Decision d = args.refund ? store_.refund(r->key, r->limit, args.hits, clock_.now())
                                 : store_.check(r->key, r->limit, args.hits, clock_.now());
  countAdaptive(*r, args, d);
  return outcome(d, r->shadow, r->policy, r->limit.period());
}

void LimiterService::checkBatch(std::span<const CheckArgs> args,
                                std::vector<Result<CheckOutcome>>& out) {
  const RuleSet& rules = *currentRules();
  std::vector<Result<Resolved>> resolved;
  resolved.reserve(args.size());
  std::vector<CheckRequest> requests;
  requests.reserve(args.size());
  for (const CheckArgs& a : args) {
    resolved.push_back(resolve(a, rules));
    if (resolved.back() && !isLeaseCheck(*resolved.back(), a))
      requests.push_back({resolved.back()->key, &resolved.back()->limit, a.hits, a.refund});
  }
  std::vector<Decision> decisions(requests.size());
  store_.checkBatch(requests, clock_.now(), decisions);

  out.clear();
  out.reserve(args.size());
  std::size_t next = 0;
  for (const auto& r : resolved) {
    if (!r) {
      out.emplace_back(r.error());
      continue;
    }
    if (isLeaseCheck(*r, args[out.size()])) {
      out.push_back(lease(*r, args[out.size()], r->limit));
      continue;
    }
    countAdaptive(*r, args[out.size()], decisions[next]);
    out.emplace_back(outcome(decisions[next++], r->shadow, r->policy, r->limit.period()));
  }
}

namespace {

// This node's share of a limit while the key's owner is away: at least 1, so a small limit is not
// denied outright.
Limit shareOf(const Limit& full, std::size_t alive) {
  const std::uint64_t n = std::max<std::uint64_t>(1, alive);
  LimitSpec share;
  share.algorithm = full.algorithm();
  share.period = full.period();
  share.limit = std::max<std::uint64_t>(1, full.limit() / n);
  // burst 0 means "same as limit" (and is the only value windows accept).
  if (full.burst() != full.limit()) share.burst = std::max<std::uint64_t>(1, full.burst() / n);
  auto limit = Limit::make(share);
  return limit ? *limit : full;
}

}  // namespace

Result<CheckOutcome> LimiterService::checkDegraded(const CheckArgs& args, std::size_t alive) {
  const RuleSet& rules = *currentRules();
  auto r = resolve(args, rules);
  if (!r) return r.error();
  const Time now = clock_.now();
  if (args.refund) {
    // Given back in this node's copy of the key, whatever the policy: what it spent here while
    // the owner was away comes back; the owner's copy keeps what it counted.
    return outcome(store_.refund(r->key, r->limit, args.hits, now), false, r->policy,
                   r->limit.period());
  }
  const bool leases = isLeaseCheck(*r, args);
  const bool held = args.release != 0 || args.renew != 0;
  if (leases && (held || r->degraded == DegradedPolicy::kShare)) {
    // A release or renewal here finds only what this node granted while the owner was away; the
    // owner's leases come back at their expiry.
    auto o = lease(*r, args, held ? r->limit : shareOf(r->limit, alive));
    if (o) o->route = RouteKind::kDegraded;
    return o;
  }
  Decision d;
  State fresh;
  d = decide(r->limit, fresh, 0, now);  // a full limit's view, nothing consumed
  switch (r->degraded) {
    case DegradedPolicy::kShare:
      // This node's share of the limit, in the key's own state: what it consumes here still
      // counts if it becomes the owner.
      d = store_.check(r->key, shareOf(r->limit, alive), args.hits, now);
      break;
    case DegradedPolicy::kAllow:
      d.allowed = true;
      break;
    case DegradedPolicy::kDeny:
      d.allowed = false;
      d.remaining = 0;
      d.retry_after = std::max(d.reset_after, Duration(1));
      break;
  }
  auto o = outcome(d, r->shadow, r->policy, r->limit.period());
  if (!o) return o;
  o->route = RouteKind::kDegraded;
  if (leases) grantUnheldLease(*o, r->limit, args, now);
  return o;
}

Result<CheckOutcome> LimiterService::shedOutcome(const CheckArgs& args, ShedReason reason) {
  const RuleSet& rules = *currentRules();
  auto r = resolve(args, rules);
  if (!r) return r.error();
  State fresh;
  Decision d = decide(r->limit, fresh, 0, clock_.now());  // the limit's view, nothing consumed
  if (r->overload == OverloadPolicy::kDeny) {
    // Limited, with a short Retry-After: the overload, not the key, is what to wait out.
    d.allowed = false;
    d.remaining = 0;
    d.retry_after = std::chrono::seconds(1);
  } else {
    d.allowed = true;
  }
  auto o = outcome(d, false, r->policy, r->limit.period());
  if (!o) return o;
  o->shed = reason;
  if (r->limit.algorithm() == Algorithm::kConcurrency) {
    grantUnheldLease(*o, r->limit, args, clock_.now());
  }
  return o;
}

bool LimiterService::shedAlike(std::string_view rule) const {
  const RuleSet::Entry* e = currentRules()->find(rule);
  return e == nullptr || e->limit.algorithm() != Algorithm::kConcurrency;
}

Result<std::size_t> LimiterService::report(std::span<const ReportArgs> reports) {
  if (reports.size() > kMaxBatchReports) {
    return invalidArgument("at most " + std::to_string(kMaxBatchReports) + " reports per call");
  }
  const RuleSet& rules = *currentRules();
  std::vector<AdaptiveCell*> cells;
  cells.reserve(reports.size());
  for (std::size_t i = 0; i < reports.size(); ++i) {
    const ReportArgs& r = reports[i];
    const std::string where = reports.size() > 1 ? "report #" + std::to_string(i) + ": " : "";
    const RuleSet::Entry* e = rules.find(r.rule);
    if (e == nullptr) {
      return Error{ErrorCode::kNotFound, where + "unknown rule '" + std::string(r.rule) + "'"};
    }
    if (!e->cell) {
      return invalidArgument(where + "rule '" + std::string(r.rule) +
                             "' is not adaptive (it has no adaptive block): nothing to report to");
    }
    if (r.latency && (*r.latency < Duration(0) || *r.latency > kMaxReportLatency)) {
      return invalidArgument(where + "latency must lie within 0 and 1 hour");
    }
    cells.push_back(e->cell.get());
  }
  for (std::size_t i = 0; i < reports.size(); ++i) {
    cells[i]->report(reports[i].latency, reports[i].outcome);
  }
  return reports.size();
}

std::vector<AdaptiveRuleStats> LimiterService::adaptiveStats() const {
  const std::shared_ptr<const RuleSet> rules = currentRules();
  std::vector<AdaptiveRuleStats> out;
  for (const Rule& rule : rules->rules()) {
    if (!rule.adaptive) continue;
    const RuleSet::Entry* e = rules->find(rule.name);
    AdaptiveRuleStats st;
    st.rule = rule.name;
    st.start = rule.spec.limit;
    st.verdict = e->cell->verdict();
    st.verdict.limit = e->cell->limit();
    st.reported = e->cell->reported();
    out.push_back(std::move(st));
  }
  return out;
}

std::vector<Rule> LimiterService::rules() const {
  return currentRules()->rules();
}

void LimiterService::setRulesOrigin(std::string origin, std::function<void()> changed) {
  MutexLock admin(admin_mu_);
  origin_ = std::move(origin);
  rules_changed_ = std::move(changed);
}

std::shared_ptr<const RulesDoc> LimiterService::rulesDoc() const {
  const std::shared_ptr<const RuleSet> rules = currentRules();
  return {rules, &rules->doc()};  // shares the set's ownership
}

Status LimiterService::publishLocal(RuleSet next) {
  const RuleSet& current = *currentRules();
  if (current.doc().version.counter >= RulesDoc::kMaxCounter) {
    return Error{ErrorCode::kResourceExhausted,
                 "rules version " + formatRulesVersion(current.doc().version) +
                     ": the counter is at its end; restart the cluster from its rules files"};
  }
  const auto made =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_.now().time_since_epoch());
  next.stamp(current.doc().version.counter + 1, origin_, made.count());
  publish(std::move(next));
  return Ok{};
}

void LimiterService::notifyChanged() {
  std::function<void()> changed;
  {
    MutexLock admin(admin_mu_);
    changed = rules_changed_;
  }
  if (changed) changed();
}

Status LimiterService::setRule(const Rule& rule) {
  {
    MutexLock admin(admin_mu_);
    auto next = currentRules()->with(rule);
    if (!next) return next.error();
    if (Status s = publishLocal(std::move(*next)); !s) return s.error();
  }
  notifyChanged();
  return Ok{};
}

Result<bool> LimiterService::deleteRule(std::string_view name) {
  {
    MutexLock admin(admin_mu_);
    const std::shared_ptr<const RuleSet> rules = currentRules();
    if (rules->find(name) == nullptr) return false;
    if (Status s = publishLocal(rules->without(name)); !s) return s.error();
  }
  notifyChanged();
  return true;
}

Result<std::size_t> LimiterService::reloadRules() {
  std::size_t count = 0;
  {
    MutexLock admin(admin_mu_);
    if (rules_path_.empty()) {
      return Error{ErrorCode::kNotFound, "no rules file configured (start with --rules FILE)"};
    }
    auto loaded = RuleSet::loadFile(rules_path_);
    if (!loaded) return loaded.error();  // the running rules stay as they were
    count = loaded->size();
    // The file as the cluster already runs it: no new version.
    if (loaded->doc().version.digest == currentRules()->doc().version.digest) return count;
    if (Status s = publishLocal(std::move(*loaded)); !s) return s.error();
  }
  notifyChanged();
  return count;
}

Result<bool> LimiterService::adoptRules(const RulesDoc& doc, RulesAdoption how) {
  if (Status valid = doc.validate(); !valid) return valid.error();
  MutexLock admin(admin_mu_);
  const RulesDoc& current = currentRules()->doc();
  const bool file_as_loaded = current.version.counter == 0 && current.origin.empty();
  const bool take = how == RulesAdoption::kReplaceFile && file_as_loaded
                        ? doc.version != current.version
                        : current.version < doc.version;
  if (!take) return false;
  auto next = RuleSet::fromDoc(doc);
  if (!next) {
    return invalidArgument("rules version " + formatRulesVersion(doc.version) + " from " +
                           doc.origin + " does not load here: " + next.error().message);
  }
  publish(std::move(*next));
  return true;
}

Result<KeyInspection> LimiterService::inspect(const CheckArgs& args) {
  const std::shared_ptr<const RuleSet> rules = currentRules();
  auto r = resolve(args, *rules);
  if (!r) return r.error();
  KeyInspection ins;
  const auto state = store_.get(r->key);
  State copy;
  if (state) {
    ins.found = true;
    ins.state = view(*state);
    copy = *state;
  }
  ins.peek = decide(r->limit, copy, 0, clock_.now());
  return ins;
}

Result<bool> LimiterService::reset(const CheckArgs& args) {
  const std::shared_ptr<const RuleSet> rules = currentRules();
  auto r = resolve(args, *rules);
  if (!r) return r.error();
  return store_.erase(r->key);
}

}  // namespace throttlex
