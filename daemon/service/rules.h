// Named rules: limits configured on the node (from a YAML rules file, or set at run time through
// the admin API) instead of sent inline with every request.
//
// Rules file (YAML; see docs/api.md):
//
//   rules:
//     - name: api-per-user        # [A-Za-z0-9_.:-], at most 128 bytes
//       algorithm: token_bucket   # or leaky_bucket, fixed_window, sliding_window, gcra
//       limit: 100
//       period: 60s               # ms, s, m, h, d
//       burst: 150                # optional, bucket algorithms only
//       shadow: false             # optional: decide and count, but always allow (dry run)
//       degraded: share           # optional: share (default) | allow | deny, when the key's owner
//                                 # cannot be reached (docs/architecture.md)
//       adaptive:                 # optional: the limit follows reported latency / errors
//         min: 10                 #   (docs/adaptive.md; daemon/service/adaptive.h)
//         max: 2000
//         latency_target: 100ms
//
// A file with a top-level `domain:` is in envoyproxy/ratelimit's shape instead
// (daemon/service/descriptors.h); a directory holds several files of either shape.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/service/adaptive.h"
#include "limiter/limit.h"
#include "limiter/result.h"

namespace throttlex {

class Domain;     // daemon/service/descriptors.h
struct RulesDoc;  // daemon/service/rules_doc.h

inline constexpr std::size_t kMaxRuleNameBytes = 128;

// What a node decides for a key whose owner it cannot reach (owner down, breaker open):
//  - share: a local limit of limit / (alive members), so that N nodes together admit about the
//    limit while they cannot agree;
//  - allow: admit everything (availability first);
//  - deny: refuse everything (protection first).
// Wire values (proto DegradedPolicy) equal these.
enum class DegradedPolicy : std::uint8_t { kShare = 0, kAllow = 1, kDeny = 2 };
std::string_view nameOf(DegradedPolicy p);
Result<DegradedPolicy> parseDegradedPolicy(std::string_view text);

// What a check of the rule answers when the node sheds it (daemon/service/overload.h): allowed,
// or limited with a Retry-After. Either is marked shed, never counted as a decision.
enum class OverloadPolicy : std::uint8_t { kAllow = 0, kDeny = 1 };
std::string_view nameOf(OverloadPolicy p);
Result<OverloadPolicy> parseOverloadPolicy(std::string_view text);

struct Rule {
  std::string name;
  LimitSpec spec;
  bool shadow = false;
  DegradedPolicy degraded = DegradedPolicy::kShare;
  std::optional<AdaptiveSpec> adaptive = std::nullopt;
  OverloadPolicy overload = OverloadPolicy::kAllow;  // spec.limit is the starting limit
};

// An immutable, validated set of rules. Swapped as a whole on reload.
class RuleSet {
 public:
  struct Entry {
    Rule rule;
    Limit limit;                         // the rule's own (starting) limit
    std::shared_ptr<AdaptiveCell> cell;  // adaptive rules only: the effective limit
  };

  using Domains = std::map<std::string, std::shared_ptr<const Domain>, std::less<>>;

  // Validates every rule and unique names. The set's document has the rules as one source.
  static Result<RuleSet> make(std::vector<Rule> rules);
  static Result<RuleSet> parseYaml(std::string_view text);
  // A file, or a directory: every *.yaml / *.yml in it (several domains, or rules split up).
  static Result<RuleSet> loadFile(const std::string& path);
  // The texts loadFile() reads, as the sources of a document (version 0).
  static Result<RulesDoc> readFile(const std::string& path);
  // The rules a document describes: its sources in order, then its changes. Errors name the
  // source or the change at fault. The set keeps the document (doc()).
  static Result<RuleSet> fromDoc(const RulesDoc& doc);

  // What this set was built from: every node that builds the same document runs the same rules.
  const RulesDoc& doc() const { return *doc_; }
  // Makes the document a version of its own: `counter`, made by `origin` at `made_ms`.
  void stamp(std::uint64_t counter, std::string origin, std::int64_t made_ms);

  const Entry* find(std::string_view name) const;         // nullptr if unknown
  const Domain* findDomain(std::string_view name) const;  // nullptr if unknown
  const Domains& domains() const { return domains_; }
  std::vector<Rule> rules() const;  // sorted by name
  std::size_t size() const { return entries_.size(); }

  // Copies with one rule added / replaced, or removed; their documents record the change.
  Result<RuleSet> with(const Rule& rule) const;
  RuleSet without(std::string_view name) const;

  // Adaptive rules that `previous` also had (as adaptive) keep its cells: the effective limit, the
  // node's digest and the history survive a reload. Cells whose bounds changed are clamped to
  // them. Called on a new set before it is published.
  void adoptCells(const RuleSet& previous, Time now);

 private:
  // Validates every rule and unique names; no document yet.
  static Result<RuleSet> assemble(std::vector<Rule> rules, Domains domains);
  // A copy with `rule` added or replaced; the same document.
  Result<RuleSet> assembledWith(const Rule& rule) const;

  std::map<std::string, Entry, std::less<>> entries_;
  Domains domains_;                      // immutable once made: copies of the set share them
  std::shared_ptr<const RulesDoc> doc_;  // never null once made
};

Status validateRuleName(std::string_view name);
bool isRuleNameChar(char c);  // [A-Za-z0-9_.:-]

}  // namespace throttlex
