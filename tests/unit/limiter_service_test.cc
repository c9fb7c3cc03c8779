#include <doctest/doctest.h>

#include <unistd.h>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <thread>

#include "daemon/service/limiter_service.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

struct Fixture {
  ManualClock clock{Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<Store> store = Store::make({100'000, 64}).value();
  std::string rules_path;
  std::unique_ptr<LimiterService> service;

  explicit Fixture(const std::string& rules_yaml = "") {
    if (!rules_yaml.empty()) {
      rules_path = "/tmp/throttlex-rules-" + std::to_string(getpid()) + "-" +
                   std::to_string(reinterpret_cast<std::uintptr_t>(this)) + ".yaml";
      writeRules(rules_yaml);
    }
    auto rules = rules_path.empty() ? RuleSet::make({}) : RuleSet::loadFile(rules_path);
    REQUIRE(rules.ok());
    service = std::make_unique<LimiterService>(*store, clock, std::move(*rules), rules_path);
  }
  ~Fixture() {
    if (!rules_path.empty()) std::remove(rules_path.c_str());
  }
  void writeRules(const std::string& yaml) const { std::ofstream(rules_path) << yaml; }
};

CheckArgs inlineCheck(std::string_view key, std::uint64_t limit = 100, Duration period = 60s) {
  CheckArgs a;
  a.key = key;
  a.limit = {Algorithm::kTokenBucket, limit, period, 0};
  return a;
}

CheckArgs ruleCheck(std::string_view key, std::string_view rule) {
  CheckArgs a;
  a.key = key;
  a.rule = rule;
  return a;
}

}  // namespace

TEST_CASE("100 per minute: 150 checks give exactly 100 allowed and 50 limited") {
  Fixture f;
  int allowed = 0;
  for (int i = 0; i < 150; ++i) allowed += f.service->check(inlineCheck("user:1"))->allowed ? 1 : 0;
  CHECK(allowed == 100);
  const auto o = f.service->check(inlineCheck("user:1"));
  CHECK(o->policy == "default");
  CHECK(o->period == 60s);
  CHECK(o->decision.retry_after == 600ms);
}

TEST_CASE("invalid checks are errors, not decisions") {
  Fixture f;
  CHECK(f.service->check(inlineCheck("")).error().code == ErrorCode::kInvalidArgument);
  const std::string long_key(1025, 'k');
  CHECK(f.service->check(inlineCheck(long_key)).error().message.find("1024") != std::string::npos);
  CHECK(f.service->check(inlineCheck(std::string(1024, 'k'))).ok());
  CHECK(f.service->check(inlineCheck("k", kMaxLimit + 1)).error().code ==
        ErrorCode::kInvalidArgument);
  CheckArgs too_many = inlineCheck("k");
  too_many.hits = kMaxCost + 1;
  CHECK_FALSE(f.service->check(too_many).ok());
  auto unknown = f.service->check(ruleCheck("k", "nope"));
  CHECK(unknown.error().code == ErrorCode::kNotFound);
  CHECK(unknown.error().message == "unknown rule 'nope'");
}

TEST_CASE("named rules and inline limits keep separate state for the same key") {
  Fixture f("rules:\n  - {name: api, limit: 2, period: 1m}\n");
  CHECK(f.service->check(ruleCheck("u", "api"))->allowed);
  CHECK(f.service->check(ruleCheck("u", "api"))->allowed);
  const auto third = f.service->check(ruleCheck("u", "api"));
  CHECK_FALSE(third->allowed);
  CHECK(third->policy == "api");
  CHECK(f.service->check(inlineCheck("u", 2, 60s))->allowed);
}

TEST_CASE("a shadow rule decides and reports, but always allows") {
  Fixture f("rules:\n  - {name: dry, limit: 1, period: 1m, shadow: true}\n");
  const auto first = f.service->check(ruleCheck("u", "dry"));
  CHECK(first->allowed);
  CHECK(first->decision.allowed);
  const auto second = f.service->check(ruleCheck("u", "dry"));
  CHECK(second->allowed);
  CHECK(second->shadow);
  CHECK_FALSE(second->decision.allowed);
}

TEST_CASE("rules reload from the file without a restart; a bad file keeps the old rules") {
  Fixture f("rules:\n  - {name: api, algorithm: fixed_window, limit: 1, period: 1m}\n");
  CHECK(f.service->check(ruleCheck("u", "api"))->allowed);
  CHECK_FALSE(f.service->check(ruleCheck("u", "api"))->allowed);

  f.writeRules(
      "rules:\n  - {name: api, algorithm: fixed_window, limit: 3, period: 1m}\n"
      "  - {name: new, limit: 1, period: 1s}\n");
  auto reloaded = f.service->reloadRules();
  REQUIRE(reloaded.ok());
  CHECK(*reloaded == 2);
  // Same algorithm and period: the consumed unit is kept, the new limit applies.
  CHECK(f.service->check(ruleCheck("u", "api"))->allowed);
  CHECK(f.service->check(ruleCheck("u", "api"))->allowed);
  CHECK_FALSE(f.service->check(ruleCheck("u", "api"))->allowed);
  CHECK(f.service->check(ruleCheck("u", "new"))->allowed);

  f.writeRules("rules: [\n");
  auto bad = f.service->reloadRules();
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("invalid YAML") != std::string::npos);
  CHECK(f.service->rules().size() == 2);
}

TEST_CASE("reload without a rules file says how to configure one") {
  Fixture f;
  auto r = f.service->reloadRules();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("--rules") != std::string::npos);
}

TEST_CASE("admin: set, list, delete rules; inspect and reset keys") {
  Fixture f;
  REQUIRE(f.service->setRule({"login", {Algorithm::kFixedWindow, 3, 60s}, false}).ok());
  CHECK_FALSE(f.service->setRule({"bad", {Algorithm::kFixedWindow, 3, 0s}, false}).ok());
  REQUIRE(f.service->rules().size() == 1);
  CHECK(f.service->rules()[0].name == "login");

  CHECK(f.service->check(ruleCheck("alice", "login"))->allowed);
  CHECK(f.service->check(ruleCheck("alice", "login"))->allowed);
  auto ins = f.service->inspect(ruleCheck("alice", "login"));
  REQUIRE(ins.ok());
  CHECK(ins->found);
  CHECK(ins->state.count == 2);
  CHECK(ins->peek.remaining == 1);

  CHECK(*f.service->reset(ruleCheck("alice", "login")));
  CHECK_FALSE(*f.service->reset(ruleCheck("alice", "login")));
  CHECK_FALSE(f.service->inspect(ruleCheck("alice", "login"))->found);
  CHECK(f.service->check(ruleCheck("alice", "login"))->decision.remaining == 2);

  CHECK(*f.service->deleteRule("login"));
  CHECK_FALSE(*f.service->deleteRule("login"));
  CHECK(f.service->check(ruleCheck("alice", "login")).error().code == ErrorCode::kNotFound);
}

TEST_CASE("checkBatch decides in order with per-element errors") {
  Fixture f;
  std::vector<CheckArgs> batch = {inlineCheck("a", 1), inlineCheck(""), inlineCheck("a", 1),
                                  ruleCheck("a", "missing"), inlineCheck("b", 1)};
  std::vector<Result<CheckOutcome>> out;
  f.service->checkBatch(batch, out);
  REQUIRE(out.size() == 5);
  CHECK(out[0]->allowed);
  CHECK_FALSE(out[1].ok());
  CHECK_FALSE(out[2]->allowed);
  CHECK(out[3].error().code == ErrorCode::kNotFound);
  CHECK(out[4]->allowed);
}

TEST_CASE("rules change while other threads check: every check sees a whole rule set") {
  Fixture f;
  REQUIRE(f.service->setRule({"r", {Algorithm::kTokenBucket, 1'000'000, 60s}, false}).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> checkers;
  for (int t = 0; t < 2; ++t) {
    checkers.emplace_back([&, t] {
      const std::string key = "k" + std::to_string(t);
      while (!stop.load()) {
        if (!f.service->check(ruleCheck(key, "r")).ok()) errors++;
      }
    });
  }
  for (int i = 0; i < 200; ++i) {
    REQUIRE(
        f.service
            ->setRule({"r",
                       {Algorithm::kTokenBucket, 1'000'000 + static_cast<std::uint64_t>(i), 60s},
                       false})
            .ok());
    REQUIRE(f.service->setRule({"other" + std::to_string(i % 5), {Algorithm::kGcra, 5, 1s}, false})
                .ok());
  }
  stop = true;
  for (auto& th : checkers) th.join();
  CHECK(errors.load() == 0);
  CHECK(f.service->rules().size() == 6);
}
