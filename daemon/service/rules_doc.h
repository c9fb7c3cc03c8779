// The rules as the cluster replicates them (docs/api.md, "Rules across the cluster"): the texts
// of the rules files one node loaded, then the run-time changes made since, in order, under a
// version. Every node builds its RuleSet from the document alone (RuleSet::fromDoc), so nodes
// that hold the same version run the same rules; daemon/rules_sync/ carries the newest version
// to every member.
//
// Versions are ordered by a counter, then by a digest of the content. A change made on a node
// (a reload, a rule set or deleted) takes the counter of the newest version it knows plus one; a
// node adopts every version above its own. Two changes made at once on two nodes take the same
// counter, and the higher digest wins on every node: one of them is lost, and the nodes agree on
// which (throttlectl shows the version each node runs).
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/service/rules.h"

namespace throttlex {

struct RulesVersion {
  std::uint64_t counter = 0;  // 0: the rules file a node started with, not yet changed
  std::uint64_t digest = 0;   // of the content (RulesDoc::contentDigest)
  friend auto operator<=>(const RulesVersion&, const RulesVersion&) = default;
};

// "7.3f9a01c2d4e5b6a7": counter, then the digest in 16 hex digits.
std::string formatRulesVersion(const RulesVersion& v);

struct RulesSource {
  std::string name;  // the file's name as loaded (for error messages)
  std::string text;  // a rules file of either shape (daemon/service/rules.h)
  friend bool operator==(const RulesSource&, const RulesSource&) = default;
};

// One run-time change: the rule `rule` set to `yaml` (one rule mapping in the rules file's
// shape), or deleted when `yaml` is empty.
struct RulesChange {
  std::string rule;
  std::string yaml;
  friend bool operator==(const RulesChange&, const RulesChange&) = default;
};

struct RulesDoc {
  // Bounds on what a node accepts from a peer (and makes itself).
  static constexpr std::size_t kMaxSources = 256;
  static constexpr std::size_t kMaxChanges = 10'000;
  // Half of what an RPC message may hold (daemon/rpc/rpc_server.h: 4 MiB), so a document always
  // fits in a syncRules call with its framing.
  static constexpr std::size_t kMaxBytes = 2 << 20;
  // A counter no cluster reaches by changes (one a microsecond for 8 years); a document above it
  // is refused, so a forged one cannot make the next change wrap around to 0.
  static constexpr std::uint64_t kMaxCounter = std::uint64_t{1} << 48;

  RulesVersion version;
  std::string origin;        // the node that made this version
  std::int64_t made_ms = 0;  // when (wall clock, Unix ms)
  std::vector<RulesSource> sources;
  std::vector<RulesChange> changes;

  // FNV-1a over the sources and changes (names, texts, lengths); not over the version.
  std::uint64_t contentDigest() const;
  std::size_t bytes() const;  // of the texts
  // This document with `change` appended, one counter on; earlier changes of the same rule are
  // dropped (each change decides its rule alone).
  RulesDoc with(RulesChange change) const;
  // Checks the bounds above and that the digest matches the content.
  Status validate() const;
};

// A rule as a one-line rules-file mapping ("{name: api, algorithm: gcra, limit: 10, ...}") that
// parses back to the same rule.
std::string ruleYaml(const Rule& rule);
// Rules as a rules file ("rules:\n  - {...}\n").
std::string rulesYaml(const std::vector<Rule>& rules);

}  // namespace throttlex
