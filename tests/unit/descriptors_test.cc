// Rules in envoyproxy/ratelimit's shape (daemon/service/descriptors.h): how a request descriptor
// finds its limit, the rules the tree makes, and errors that name the line.
#include "daemon/service/descriptors.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "daemon/service/rules.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

RuleSet parse(const std::string& text) {
  auto set = RuleSet::parseYaml(text);
  REQUIRE_MESSAGE(set.ok(), (set.ok() ? "" : set.error().message));
  return std::move(set).value();
}

std::string errorOf(const std::string& text) {
  auto set = RuleSet::parseYaml(text);
  REQUIRE_FALSE(set.ok());
  return set.error().message;
}

// The rule name the descriptor leads to, "" for no limit, "unlimited".
std::string matched(const RuleSet& set, const std::string& domain,
                    const std::vector<DescriptorEntry>& entries) {
  const Domain* d = set.findDomain(domain);
  REQUIRE(d != nullptr);
  const DescriptorLimit* limit = d->match(entries);
  if (limit == nullptr) return "";
  return limit->unlimited ? "unlimited" : limit->rule;
}

const char* const kMessaging = R"(domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
)";

}  // namespace

TEST_CASE("a descriptor finds the leaf at exactly its depth") {
  const RuleSet set = parse(kMessaging);
  CHECK(matched(set, "messaging", {{"message_type", "marketing"}, {"to_number", "206"}}) ==
        "messaging.message_type_marketing.to_number");
  CHECK(matched(set, "messaging", {{"to_number", "206"}}) == "messaging.to_number");
  // The placeholder has no limit; deeper or unknown descriptors have none either.
  CHECK(matched(set, "messaging", {{"message_type", "marketing"}}).empty());
  CHECK(matched(set, "messaging", {{"to_number", "206"}, {"x", "y"}}).empty());
  CHECK(
      matched(set, "messaging", {{"message_type", "transactional"}, {"to_number", "206"}}).empty());
  CHECK(matched(set, "messaging", {}).empty());
}

TEST_CASE("each leaf becomes a fixed-window rule of its unit, unless it names an algorithm") {
  const RuleSet set = parse(R"(domain: d
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 7}
  - key: b
    rate_limit: {unit: hour, requests_per_unit: 3, algorithm: token_bucket, burst: 6}
  - key: c
    rate_limit: {unit: year, requests_per_unit: 1, degraded: deny}
)");
  REQUIRE(set.size() == 3);
  const auto* a = set.find("d.a");
  REQUIRE(a != nullptr);
  CHECK(a->rule.spec.algorithm == Algorithm::kFixedWindow);
  CHECK(a->rule.spec.limit == 7);
  CHECK(a->rule.spec.period == Duration(60s));
  const auto* b = set.find("d.b");
  REQUIRE(b != nullptr);
  CHECK(b->rule.spec.algorithm == Algorithm::kTokenBucket);
  CHECK(b->rule.spec.burst == 6);
  CHECK(b->rule.spec.period == Duration(3600s));
  const auto* c = set.find("d.c");
  REQUIRE(c != nullptr);
  CHECK(c->rule.spec.period == Duration(365 * 86400s));
  CHECK(c->rule.degraded == DegradedPolicy::kDeny);
}

TEST_CASE("ThrottleX's later rule fields work in the envoy shape too: overload, adaptive") {
  const RuleSet set = parse(R"(domain: d
descriptors:
  - key: backend
    rate_limit:
      unit: second
      requests_per_unit: 100
      overload: deny
      adaptive: {min: 10, max: 400, latency_target: 50ms, law: aimd}
)");
  const auto* e = set.find("d.backend");
  REQUIRE(e != nullptr);
  CHECK(e->rule.overload == OverloadPolicy::kDeny);
  REQUIRE(e->rule.adaptive.has_value());
  CHECK(e->rule.adaptive->max == 400);
  CHECK(e->rule.adaptive->latency_target == Duration(50ms));
  CHECK(e->rule.adaptive->law == ControlLaw::kAimd);
  REQUIRE(e->cell != nullptr);  // an adaptive rule: its effective limit starts at 100
  CHECK(e->cell->limit() == 100);
  // A bad block names its line, as every error of the file does.
  auto bad = RuleSet::parseYaml(R"(domain: d
descriptors:
  - key: backend
    rate_limit:
      unit: second
      requests_per_unit: 100
      adaptive: {min: 10}
)");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("line 7") != std::string::npos);
  CHECK(bad.error().message.find("missing 'max'") != std::string::npos);
}

TEST_CASE("key_value is tried before a wildcard, a wildcard before the key alone") {
  const RuleSet set = parse(R"(domain: w
descriptors:
  - key: path
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: /api/*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: /api/v*
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: path
    value: /api/v2
    rate_limit: {unit: second, requests_per_unit: 4}
)");
  auto limitOf = [&](const char* value) {
    const DescriptorLimit* l =
        set.findDomain("w")->match(std::vector<DescriptorEntry>{{"path", value}});
    REQUIRE(l != nullptr);
    return l->requests_per_unit;
  };
  CHECK(limitOf("/api/v2") == 4);
  CHECK(limitOf("/api/v1") == 2);  // wildcards in the file's order: /api/* comes first
  CHECK(limitOf("/other") == 1);
  // Rule names keep only [A-Za-z0-9_.:-].
  CHECK(set.find("w.path__api__") != nullptr);
}

TEST_CASE("the chosen branch is not left again: no fallback to the key alone") {
  const RuleSet set = parse(R"(domain: nb
descriptors:
  - key: a
    value: x
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: a
    descriptors:
      - key: b
        rate_limit: {unit: second, requests_per_unit: 2}
)");
  CHECK(matched(set, "nb", {{"a", "y"}, {"b", "1"}}) == "nb.a.b");
  // a=x matches the exact node, which has no children: the request is unlimited there, as in
  // envoyproxy/ratelimit.
  CHECK(matched(set, "nb", {{"a", "x"}, {"b", "1"}}).empty());
}

TEST_CASE("unlimited, shadow_mode, name and replaces are kept on the leaf") {
  const RuleSet set = parse(R"(domain: f
descriptors:
  - key: free
    rate_limit: {unlimited: true}
  - key: s
    shadow_mode: true
    detailed_metric: true
    rate_limit:
      name: base
      unit: second
      requests_per_unit: 2
      replaces: [{name: other}]
)");
  CHECK(matched(set, "f", {{"free", "1"}}) == "unlimited");
  CHECK(set.size() == 1);  // an unlimited leaf makes no rule
  const DescriptorLimit* s = set.findDomain("f")->match(std::vector<DescriptorEntry>{{"s", "1"}});
  REQUIRE(s != nullptr);
  CHECK(s->shadow);
  CHECK(s->detailed_metric);
  CHECK(s->name == "base");
  CHECK(s->replaces == std::vector<std::string>{"other"});
  CHECK(set.find(s->rule)->rule.shadow);
}

TEST_CASE("errors in the file name the line") {
  CHECK(errorOf("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: week\n"
                "      requests_per_unit: 1\n")
            .find("line 5") != std::string::npos);
  CHECK(errorOf("domain: d\ndescriptors:\n  - key: a\n    colour: red\n").find("line 4: ") !=
        std::string::npos);
  CHECK(errorOf("domain: d\ndescriptors:\n  - value: x\n")
            .find("line 3: descriptor: missing "
                  "'key'") != std::string::npos);
  CHECK(errorOf("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n")
            .find("missing 'requests_per_unit'") != std::string::npos);
  CHECK(errorOf("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n"
                "      requests_per_unit: -1\n")
            .find("line 6") != std::string::npos);
  CHECK(errorOf("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n"
                "      requests_per_unit: 4294967296\n")
            .find("0 to 4294967295") != std::string::npos);
  CHECK(errorOf("domain: d\ndescriptors:\n  - key: a\n  - key: a\n")
            .find("line 4: descriptor 'a'"
                  " is defined twice") != std::string::npos);
  CHECK(errorOf("domain: ''\n").find("line 1") != std::string::npos);
  CHECK(errorOf("domain: d\nrules: []\n").find("unknown field 'rules'") != std::string::npos);
  CHECK(errorOf("domain: d\natomic: yes please\n").find("line 2: 'atomic' must be true or false") !=
        std::string::npos);
}

TEST_CASE("a domain is all or nothing only when it says atomic: true") {
  CHECK_FALSE(parse(kMessaging).findDomain("messaging")->atomic());
  CHECK(parse(std::string(kMessaging) + "atomic: true\n").findDomain("messaging")->atomic());
  CHECK_FALSE(parse(std::string(kMessaging) + "atomic: false\n").findDomain("messaging")->atomic());
}

TEST_CASE("descriptor keys are unambiguous: separators inside values are escaped") {
  const std::vector<DescriptorEntry> one = {{"k", "a,b=c"}};
  const std::vector<DescriptorEntry> two = {{"k", "a"}, {"b", "c"}};
  CHECK(descriptorKey(one) == "k=a%2Cb%3Dc");
  CHECK(descriptorKey(two) == "k=a,b=c");
  CHECK(descriptorKey(std::vector<DescriptorEntry>{{"k", "100%"}}) == "k=100%25");
}

TEST_CASE(
    "a rules directory loads every file; a domain defined twice is an error naming the file") {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("throttlex-descriptors-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "a.yaml") << kMessaging;
  std::ofstream(dir / "b.yml") << "rules:\n  - {name: plain, limit: 5, period: 1s}\n";
  std::ofstream(dir / "notes.txt") << "not rules";
  auto set = RuleSet::loadFile(dir.string());
  REQUIRE_MESSAGE(set.ok(), (set.ok() ? "" : set.error().message));
  CHECK(set->findDomain("messaging") != nullptr);
  CHECK(set->find("plain") != nullptr);
  CHECK(set->size() == 3);
  // A run-time rule change keeps the domains.
  auto changed = set->with(Rule{"extra", {Algorithm::kGcra, 1, 1s, 0}});
  REQUIRE(changed.ok());
  CHECK(changed->findDomain("messaging") != nullptr);

  std::ofstream(dir / "c.yaml") << kMessaging;
  auto twice = RuleSet::loadFile(dir.string());
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.error().message.find("c.yaml") != std::string::npos);
  CHECK(twice.error().message.find("domain 'messaging' is defined twice") != std::string::npos);
  std::filesystem::remove_all(dir);
}
