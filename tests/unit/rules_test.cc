#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>

#include "daemon/service/rules.h"

using namespace throttlex;
using namespace std::chrono_literals;

TEST_CASE("a rules file parses into validated rules") {
  auto set = RuleSet::parseYaml(R"(
rules:
  - name: api-per-user
    algorithm: token_bucket
    limit: 100
    period: 60s
    burst: 150
  - name: login
    algorithm: sliding_window
    limit: 5
    period: 1m
    shadow: true
    degraded: deny
  - name: plain
    limit: 10
    period: 1s
    degraded: allow
  - name: shared
    limit: 10
    period: 1s
    degraded: share
)");
  REQUIRE_MESSAGE(set.ok(), (set.ok() ? "" : set.error().message));
  CHECK(set->size() == 4);
  const auto* api = set->find("api-per-user");
  REQUIRE(api != nullptr);
  CHECK(api->limit.limit() == 100);
  CHECK(api->limit.burst() == 150);
  CHECK(api->limit.period() == 60s);
  CHECK_FALSE(api->rule.shadow);
  CHECK(set->find("login")->rule.shadow);
  CHECK(set->find("plain")->limit.algorithm() == Algorithm::kTokenBucket);  // the default
  CHECK(set->find("nope") == nullptr);
  // What a node decides while the key's owner is unreachable; share unless said otherwise.
  CHECK(api->rule.degraded == DegradedPolicy::kShare);
  CHECK(set->find("login")->rule.degraded == DegradedPolicy::kDeny);
  CHECK(set->find("plain")->rule.degraded == DegradedPolicy::kAllow);
  CHECK(set->find("shared")->rule.degraded == DegradedPolicy::kShare);
}

TEST_CASE("a concurrency rule's period is its leases' time to live") {
  auto set = RuleSet::parseYaml(
      "rules:\n  - {name: db, limit: 50, algorithm: concurrency, lease_ttl: 30s}\n"
      "  - {name: pool, limit: 8, algorithm: concurrency, period: 5s,\n"
      "     adaptive: {min: 2, max: 64, latency_target: 50ms}}");
  REQUIRE_MESSAGE(set.ok(), (set.ok() ? "" : set.error().message));
  const auto* db = set->find("db");
  REQUIRE(db != nullptr);
  CHECK(db->limit.algorithm() == Algorithm::kConcurrency);
  CHECK(db->limit.limit() == 50);
  CHECK(db->limit.period() == 30s);
  CHECK(set->find("pool")->limit.period() == 5s);
}

TEST_CASE("an empty file or empty list means no rules") {
  CHECK(RuleSet::parseYaml("")->size() == 0);
  CHECK(RuleSet::parseYaml("rules:\n")->size() == 0);
  CHECK(RuleSet::parseYaml("rules: []\n")->size() == 0);
}

TEST_CASE("bad rules files are rejected with a message that names the problem") {
  struct Case {
    const char* yaml;
    const char* needle;
  };
  const Case cases[] = {
      {"rules: [", "invalid YAML"},
      {"limits: []", "top-level 'rules:'"},
      {"rules: 5", "must be a list"},
      {"rules:\n  - 5", "expected a mapping"},
      {"rules:\n  - {name: a, limit: 1}", "missing 'period'"},
      {"rules:\n  - {name: a, limit: 1, period: 1s, colour: red}", "unknown field 'colour'"},
      {"rules:\n  - {name: a, limit: -1, period: 1s}", "non-negative integer"},
      {"rules:\n  - {name: a, limit: 1, period: 1 week}", "invalid period"},
      {"rules:\n  - {name: a, limit: 1, period: 1s, algorithm: magic}", "unknown algorithm"},
      {"rules:\n  - {name: 'a b', limit: 1, period: 1s}", "may contain only"},
      {"rules:\n  - {name: a, limit: 1, period: 1s}\n  - {name: a, limit: 2, period: 1s}",
       "defined twice"},
      {"rules:\n  - {name: a, limit: 1, period: 1s, algorithm: fixed_window, burst: 5}",
       "burst applies only"},
      {"rules:\n  - {name: a, limit: 99999999999999999999999, period: 1s}", "too large"},
      {"rules:\n  - {name: a, limit: 1, period: 1s, shadow: maybe}", "invalid YAML"},
      {"rules:\n  - {name: a, limit: 1, period: 1s, degraded: maybe}",
       "degraded policy must be share, allow or deny"},
      {"rules:\n  - {name: a, limit: 1, algorithm: concurrency}", "missing 'lease_ttl'"},
      {"rules:\n  - {name: a, limit: 1, lease_ttl: 1s}", "only to algorithm: concurrency"},
      {"rules:\n  - {name: a, limit: 1, algorithm: concurrency, lease_ttl: 1s, period: 1s}",
       "not both"},
      {"rules:\n  - {name: a, limit: 70000, algorithm: concurrency, lease_ttl: 1s}",
       "above the maximum 65535"},
      {"rules:\n  - {name: a, limit: 10, algorithm: concurrency, lease_ttl: 1s,\n"
       "     adaptive: {min: 1, max: 70000, latency_target: 100ms}}",
       "above 65535"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.yaml);
    auto set = RuleSet::parseYaml(c.yaml);
    REQUIRE_FALSE(set.ok());
    CHECK_MESSAGE(set.error().message.find(c.needle) != std::string::npos, set.error().message);
  }
}

TEST_CASE("nesting is bounded before the YAML parser recurses, and the line is named") {
  // yaml-cpp recurses per level; 100,000 levels of brackets or of "- " would take its stack.
  const std::string brackets = "rules:\n  - " + std::string(100'000, '[');
  auto deep = RuleSet::parseYaml(brackets);
  REQUIRE_FALSE(deep.ok());
  CHECK(deep.error().message == "line 2: brackets nested deeper than 64 levels");
  std::string dashes = "rules:\n";
  for (int i = 0; i < 200; ++i) dashes += "- ";
  dashes += "x\n";
  auto seqs = RuleSet::parseYaml("# comment [[[[\n" + dashes);
  REQUIRE_FALSE(seqs.ok());
  CHECK(seqs.error().message == "line 3: nested or indented deeper than 256 columns");
  // Brackets in quotes and comments do not count; ordinary files pass.
  std::string quoted =
      "rules:  # " + std::string(100, '[') + "\n  - {name: a, limit: 1, period: 1s}";
  quoted += "\n# '" + std::string(100, '{') + "\n";
  auto ok = RuleSet::parseYaml(quoted);
  REQUIRE_MESSAGE(ok.ok(), ok.error().message);
  CHECK(ok->size() == 1);
}

TEST_CASE("a missing rules file is a clear error") {
  auto set = RuleSet::loadFile("/nonexistent/rules.yaml");
  REQUIRE_FALSE(set.ok());
  CHECK(set.error().message.find("/nonexistent/rules.yaml") != std::string::npos);
}

TEST_CASE("with and without return changed copies") {
  auto set = RuleSet::make({{"a", {Algorithm::kGcra, 5, 1s}, false}});
  REQUIRE(set.ok());
  auto more = set->with({"b", {Algorithm::kFixedWindow, 7, 1s}, true});
  REQUIRE(more.ok());
  CHECK(more->size() == 2);
  CHECK(set->size() == 1);
  auto replaced = more->with({"a", {Algorithm::kGcra, 9, 1s}, false});
  CHECK(replaced->find("a")->limit.limit() == 9);
  CHECK(replaced->without("a").size() == 1);
  CHECK_FALSE(set->with({"bad name!", {Algorithm::kGcra, 1, 1s}, false}).ok());
}
