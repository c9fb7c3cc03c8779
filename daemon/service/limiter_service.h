// The decision service of one node: validates a check, resolves its limit (inline or a named rule),
// decides it in the store and applies shadow mode. Shared by the HTTP API and the RPC server.
//
// Thread-safe; every method may be called from any thread at once. check() never blocks: no I/O,
// no locks beyond the store's shard lock; the rule set is read through a per-thread cache that is
// refreshed only when the rules change.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/base/published.h"
#include "daemon/base/route.h"
#include "daemon/service/overload.h"
#include "daemon/service/rules.h"
#include "limiter/limiter.h"
#include "limiter/mutex.h"

namespace throttlex {

inline constexpr std::size_t kMaxKeyBytes = 1024;

// How LimiterService::adoptRules() takes another node's rules.
enum class RulesAdoption : std::uint8_t { kNewer, kReplaceFile };
inline constexpr std::size_t kMaxBatchChecks = 1000;

struct CheckArgs {
  std::string_view key;    // 1..kMaxKeyBytes bytes
  std::string_view rule;   // a named rule; empty: use `limit`
  LimitSpec limit;         // the inline limit, when `rule` is empty
  std::uint64_t hits = 1;  // 0 reads without consuming; at most kMaxCost
  bool refund = false;     // gives `hits` units back instead of spending them (state.h refund())
  // Concurrency rules (limiter/lease.h): a lease to release, or to renew, instead of acquiring
  // one; 0: none (at most one of the two).
  std::uint64_t release = 0;
  std::uint64_t renew = 0;
  Priority priority = Priority::kNormal;  // what is shed first when the node is overloaded
  // The caller's deadline (monotonic): a check that waited past it here is not forwarded but shed
  // (docs/overload.md). None: no bound.
  std::optional<Instant> deadline;
};

// What an application reports about one admitted call of an adaptive rule (docs/adaptive.md).
struct ReportArgs {
  std::string_view rule;
  std::optional<Duration> latency;  // 0..kMaxReportLatency; none: only the outcome counts
  ReportOutcome outcome = ReportOutcome::kOk;
};
inline constexpr std::size_t kMaxBatchReports = 1000;

struct CheckOutcome {
  Decision decision;     // what the limiter decided
  bool allowed = false;  // what the caller must do: decision.allowed, or true for a shadow rule
  bool shadow = false;   // the rule is in shadow (dry-run) mode
  std::string policy;    // the rule's name, or "default" for inline limits (RateLimit headers)
  Duration period{0};    // the limit's period (RateLimit-Policy w=)
  RouteKind route = RouteKind::kLocal;  // set by whoever decided it (daemon/routing/router.h)
  // Concurrency rules: the lease an allowed acquire holds (id 0: none), and what a release found
  // (nullopt: the check was no release).
  std::uint64_t lease_id = 0;
  std::int64_t lease_expiry_ms = 0;  // ms since the Unix epoch
  std::optional<LeaseRelease> released;
  std::optional<LeaseRenewal> renewed;  // what a renewal found (its new expiry: lease_expiry_ms)
  // Answered by the rule's overload policy instead of decided (daemon/service/overload.h).
  std::optional<ShedReason> shed;
  Priority priority = Priority::kNormal;  // of a shed check (for throttlex_shed_total)
};

struct KeyInspection {
  bool found = false;  // the store holds state for this key
  StateView state;     // decoded state (when found)
  Decision peek;       // a cost-0 check now: remaining, reset_after
};

class LimiterService {
 public:
  // `rules_path` may be empty (no rules file: reloadRules() then fails with a clear error).
  LimiterService(Store& store, const Clock& clock, RuleSet rules, std::string rules_path);

  Result<CheckOutcome> check(const CheckArgs& args);
  // Decides each element in order (validation errors are per element). Prefetches like
  // Store::checkBatch. `out` must have args.size() elements.
  void checkBatch(std::span<const CheckArgs> args, std::vector<Result<CheckOutcome>>& out);

  // Decides here although the key's owner is elsewhere and unreachable: by the rule's degraded
  // policy (daemon/service/rules.h), with `alive` members sharing the limit. route = kDegraded.
  Result<CheckOutcome> checkDegraded(const CheckArgs& args, std::size_t alive);

  // The answer to a check the node sheds: by its rule's overload policy (inline limits: allow),
  // with the rule's limit and nothing spent or read from the store. Errors as check() would
  // give them (a bad key, an unknown rule).
  Result<CheckOutcome> shedOutcome(const CheckArgs& args, ShedReason reason);
  // Whether every check of `rule` gets the same shed answer (shedOutcome()) whatever its key: all
  // but a concurrency rule's (an acquire shed by `overload: allow` gets a lease of its own).
  bool shedAlike(std::string_view rule) const;

  // Adaptive rules: folds reports into this node's digest of each rule (any thread; a lock per
  // rule, held for a histogram increment). All or nothing: an unknown rule (kNotFound), a rule
  // without an adaptive block or a latency out of range (kInvalidArgument) refuses the whole
  // batch, naming the element. Returns how many were taken.
  Result<std::size_t> report(std::span<const ReportArgs> reports);
  std::vector<AdaptiveRuleStats> adaptiveStats() const;

  // Admin.
  std::vector<Rule> rules() const;
  Status setRule(const Rule& rule);
  Result<bool> deleteRule(std::string_view name);  // false if there was no such rule
  Result<std::size_t> reloadRules();               // re-reads the rules file; returns the count

  // Rules across the cluster (daemon/service/rules_doc.h). Each change above makes a new version
  // (the newest this node knows, one counter on), named by `origin`; `changed` is called after
  // each, outside any lock, so the version can go to the other members. Set before serving.
  // A reload that reads what the node runs already makes no version.
  void setRulesOrigin(std::string origin, std::function<void()> changed);
  std::shared_ptr<const RulesDoc> rulesDoc() const;  // the version this node runs
  // Another node's version: built and run when it is newer than this node's (true), else left
  // (false). kReplaceFile (a node joining a cluster): while this node runs its rules file as
  // loaded (counter 0, no origin), any other version replaces it, even one that orders below.
  // A document that fails its checks or does not build is refused, naming why.
  Result<bool> adoptRules(const RulesDoc& doc, RulesAdoption how = RulesAdoption::kNewer);
  Result<KeyInspection> inspect(const CheckArgs& args);  // hits is ignored
  Result<bool> reset(const CheckArgs& args);             // drops the key's state; false if none

  Store& store() { return store_; }
  const Clock& clock() const { return clock_; }
  // The calling thread's current view of the rules. The reference stays valid until this thread's
  // next call into the service; hold a copy across anything that may call back in.
  const std::shared_ptr<const RuleSet>& currentRules() const { return rules_.current(); }

 private:
  struct Resolved {
    Limit limit;
    KeyHash key;
    bool shadow = false;
    std::string_view policy;
    DegradedPolicy degraded = DegradedPolicy::kShare;
    AdaptiveCell* cell = nullptr;  // an adaptive rule's (the rules hold it)
    OverloadPolicy overload = OverloadPolicy::kAllow;
  };
  Result<Resolved> resolve(const CheckArgs& args, const RuleSet& rules) const;
  // A concurrency rule's acquire or release, or a release on a rule that is none (an error).
  static bool isLeaseCheck(const Resolved& r, const CheckArgs& args);
  Result<CheckOutcome> lease(const Resolved& r, const CheckArgs& args, const Limit& limit);
  // An adaptive rule's check counts feed its controller (daemon/service/adaptive.h).
  static void countAdaptive(const Resolved& r, const CheckArgs& args, const Decision& d);
  // Publishes `next`, its adaptive rules keeping the cells the current rules have for them.
  void publish(RuleSet next) REQUIRES(admin_mu_);
  // A change made here: `next` becomes the next version, from this node (refused when the
  // counter is at RulesDoc::kMaxCounter).
  Status publishLocal(RuleSet next) REQUIRES(admin_mu_);
  void notifyChanged() EXCLUDES(admin_mu_);

  // Constant after construction.
  Store& store_;
  const Clock& clock_;
  const std::string rules_path_;

  // Writers (admin calls) serialise on admin_mu_; readers use Published's per-thread cache.
  Mutex admin_mu_;
  Published<RuleSet> rules_;
  std::string origin_ GUARDED_BY(admin_mu_);
  std::function<void()> rules_changed_ GUARDED_BY(admin_mu_);
};

}  // namespace throttlex
