// Rules across the cluster: the rules document and its versions (daemon/service/rules_doc.h),
// the limiter service's local changes and adoptions, and RulesSync's rounds between three
// services over an in-memory sender (daemon/rules_sync/rules_sync.h).
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/rules_sync/rules_sync.h"
#include "daemon/rules_sync/wire.h"
#include "daemon/service/limiter_service.h"
#include "daemon/service/rules_doc.h"

#include <capnp/message.h>

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

constexpr const char* kRules = R"(
rules:
  - name: api
    algorithm: fixed_window
    limit: 3
    period: 1h
)";

bool sameRules(const RuleSet& a, const RuleSet& b) {
  const auto x = a.rules();
  const auto y = b.rules();
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (ruleYaml(x[i]) != ruleYaml(y[i])) return false;
  }
  return true;
}

struct NodeFixture {
  explicit NodeFixture(std::string node_id, const char* rules = kRules)
      : id(std::move(node_id)),
        store(Store::make({1 << 12, 4}).value()),
        service(*store, clock, RuleSet::parseYaml(rules).value(), "") {
    service.setRulesOrigin(id, [this] { ++changes; });
  }
  std::string id;
  ManualClock clock;
  std::unique_ptr<Store> store;
  LimiterService service;
  int changes = 0;
};

Rule plain(std::string name, std::uint64_t limit) {
  return Rule{std::move(name), {Algorithm::kFixedWindow, limit, std::chrono::hours(1)}};
}

}  // namespace

TEST_CASE("a rule written as YAML parses back to the same rule, whatever its fields") {
  Rule bucket{"a:b.c-d_1", {Algorithm::kTokenBucket, 10, 1500ms, 15}, true, DegradedPolicy::kDeny};
  bucket.overload = OverloadPolicy::kDeny;
  Rule lease{"jobs", {Algorithm::kConcurrency, 50, 30s}};
  Rule adaptive{"backend", {Algorithm::kGcra, 1000, 1s}};
  // The percentile as the parser makes it of "99.9" (no double times 100 gives 0.999 itself).
  adaptive.adaptive =
      AdaptiveSpec{10, 2000, 100ms, 99.9 / 100, 0.05, ControlLaw::kAimd, 2s, 0.8, 7, 3};
  const std::vector<Rule> rules = {bucket, lease, adaptive, plain("w", 0)};
  auto parsed = RuleSet::parseYaml(rulesYaml(rules));
  REQUIRE_MESSAGE(parsed.ok(), rulesYaml(rules));
  REQUIRE(parsed->size() == 4);
  for (const Rule& r : rules) {
    const RuleSet::Entry* e = parsed->find(r.name);
    REQUIRE(e != nullptr);
    CHECK(ruleYaml(e->rule) == ruleYaml(r));
    CHECK(e->rule.spec.burst == r.spec.burst);
    CHECK(e->rule.shadow == r.shadow);
    CHECK(e->rule.degraded == r.degraded);
    CHECK(e->rule.overload == r.overload);
    CHECK(e->rule.adaptive == r.adaptive);
  }
}

TEST_CASE(
    "a document builds its sources, then its changes in order; equal documents, equal rules") {
  RuleSet start = RuleSet::parseYaml(kRules).value();
  CHECK(start.doc().version.counter == 0);
  CHECK(start.doc().version.digest == start.doc().contentDigest());

  RuleSet changed = start.with(plain("web", 5)).value().without("api");
  CHECK(changed.doc().version.counter == 2);
  REQUIRE(changed.doc().changes.size() == 2);
  CHECK(changed.find("api") == nullptr);
  CHECK(changed.find("web")->rule.spec.limit == 5);
  // Another node builds the same rules from the document alone.
  auto rebuilt = RuleSet::fromDoc(changed.doc());
  REQUIRE(rebuilt.ok());
  CHECK(sameRules(*rebuilt, changed));

  // A later change of the same rule replaces the earlier one: changes never outgrow the rules.
  RuleSet again = changed.with(plain("web", 6)).value().with(plain("web", 7)).value();
  CHECK(again.doc().changes.size() == 2);
  CHECK(RuleSet::fromDoc(again.doc())->find("web")->rule.spec.limit == 7);
  // Setting a rule the file has, then deleting it, leaves it deleted.
  RuleSet gone = start.with(plain("api", 9)).value().without("api");
  CHECK(RuleSet::fromDoc(gone.doc())->find("api") == nullptr);
}

TEST_CASE("versions order by counter, then digest; the digest covers every text and boundary") {
  CHECK(RulesVersion{1, 0} > RulesVersion{0, ~0ULL});
  CHECK(RulesVersion{1, 5} > RulesVersion{1, 4});
  RulesDoc a;
  a.sources = {{"x.yaml", "ab"}, {"y.yaml", "c"}};
  RulesDoc b;
  b.sources = {{"x.yaml", "a"}, {"y.yaml", "bc"}};
  CHECK(a.contentDigest() != b.contentDigest());
  RulesDoc c = a;
  c.sources[0].name = "z.yaml";
  CHECK(a.contentDigest() != c.contentDigest());
  // The version, origin and time are not content: the same rules made elsewhere digest the same.
  RulesDoc d = a;
  d.origin = "n2";
  d.version.counter = 9;
  CHECK(a.contentDigest() == d.contentDigest());
}

TEST_CASE("a document is refused when its digest does not match or it passes its bounds") {
  RulesDoc doc = RuleSet::parseYaml(kRules)->doc();
  CHECK(doc.validate().ok());
  RulesDoc forged = doc;
  forged.sources[0].text += "  - {name: free, limit: 1000000, period: 1s}\n";
  CHECK(forged.validate().error().message.find("digest") != std::string::npos);
  RulesDoc big;
  big.sources.assign(RulesDoc::kMaxSources + 1, {"f.yaml", ""});
  big.version.digest = big.contentDigest();
  CHECK_FALSE(big.validate().ok());
  RulesDoc huge;
  huge.sources = {{"f.yaml", std::string(RulesDoc::kMaxBytes + 1, '#')}};
  huge.version.digest = huge.contentDigest();
  CHECK_FALSE(huge.validate().ok());
}

TEST_CASE("a document survives the wire; a decoded one with a wrong digest is refused") {
  RulesDoc doc = RuleSet::parseYaml(kRules)->with(plain("web", 5))->doc();
  doc.origin = "n1";
  doc.made_ms = 1234;
  capnp::MallocMessageBuilder message;
  auto out = message.initRoot<proto::RulesDoc>();
  encode(doc, out);
  auto back = decode(out.asReader());
  REQUIRE(back.ok());
  CHECK(back->version == doc.version);
  CHECK(back->origin == "n1");
  CHECK(back->made_ms == 1234);
  CHECK(back->sources == doc.sources);
  CHECK(back->changes == doc.changes);
  out.getVersion().setDigest(doc.version.digest + 1);
  CHECK_FALSE(decode(out.asReader()).ok());
}

TEST_CASE("local changes make the next version, from this node; adoption takes only newer ones") {
  NodeFixture a("a");
  NodeFixture b("b");
  REQUIRE(a.service.setRule(plain("web", 5)).ok());
  const std::shared_ptr<const RulesDoc> made = a.service.rulesDoc();
  CHECK(made->version.counter == 1);
  CHECK(made->origin == "a");
  CHECK(a.changes == 1);

  CHECK(b.service.adoptRules(*made).value());
  CHECK(b.service.rulesDoc()->version == made->version);
  CHECK(b.service.currentRules()->find("web")->rule.spec.limit == 5);
  CHECK(b.changes == 0);  // an adoption is not a change of b's to send on
  CHECK_FALSE(b.service.adoptRules(*made).value());  // the same version again: nothing
  // b changes next: its version is newer than a's.
  REQUIRE(b.service.deleteRule("api").value());
  CHECK(b.service.rulesDoc()->version.counter == 2);
  CHECK_FALSE(b.service.adoptRules(*made).value());  // older
  CHECK(b.service.currentRules()->find("api") == nullptr);

  // A newer version that does not build here is refused; the rules stay.
  RulesDoc broken = *b.service.rulesDoc();
  broken.changes.push_back({"bad", "{name: bad, limit: -1, period: 1s}"});
  broken.version = {9, broken.contentDigest()};
  auto refused = a.service.adoptRules(broken);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("change of rule 'bad'") != std::string::npos);
  CHECK(a.service.rulesDoc()->version == made->version);
}

TEST_CASE("a reload that reads what the node runs makes no version") {
  const std::string path = "/tmp/throttlex-rules-sync-" + std::to_string(getpid()) + ".yaml";
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(kRules, f);
    std::fclose(f);
  }
  ManualClock clock;
  auto store = Store::make({1 << 12, 4}).value();
  LimiterService service(*store, clock, RuleSet::loadFile(path).value(), path);
  int changes = 0;
  service.setRulesOrigin("n", [&] { ++changes; });
  const RulesVersion loaded = service.rulesDoc()->version;
  REQUIRE(service.reloadRules().value() == 1);
  CHECK(service.rulesDoc()->version == loaded);
  CHECK(changes == 0);
  REQUIRE(service.setRule(plain("web", 1)).ok());
  REQUIRE(service.reloadRules().value() == 1);  // the file again: replaces the run-time change
  CHECK(service.rulesDoc()->version.counter == 2);
  CHECK(service.currentRules()->find("web") == nullptr);
  CHECK(changes == 2);
  std::remove(path.c_str());
}

namespace {

// Three nodes whose RulesSync instances call each other's answer() directly. `c_rules`: the
// rules file c started from; `c_joins`: c started with --join; `interval`: of the rounds.
struct Trio {
  explicit Trio(const char* c_rules = kRules, bool c_joins = false,
                std::chrono::milliseconds interval = RulesSync::kInterval) {
    for (const char* id : {"a", "b", "c"}) {
      nodes.push_back(std::make_unique<NodeFixture>(id, id[0] == 'c' ? c_rules : kRules));
    }
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      RingView view;
      view.ring = Ring({"a", "b", "c"});
      for (const auto& m : view.ring.members()) view.rpc_address.push_back(m);
      view.self = static_cast<std::uint32_t>(i);
      rings[i].publish(std::make_shared<const RingView>(view));
      syncs.push_back(std::make_unique<RulesSync>(
          nodes[i]->service, &rings[i],
          [this](const std::string& address, const RulesVersion& mine,
                 const RulesDoc* doc) -> Result<RulesAnswer> {
            std::lock_guard lock(mu);
            ++calls[address];
            if (doc != nullptr) ++pushes;
            if (down == address) return Error{ErrorCode::kUnavailable, "down"};
            auto answer = syncs[static_cast<std::size_t>(address[0] - 'a')]->answer(mine, doc);
            sent.notify_all();
            return answer;
          },
          /*joining=*/i == 2 && c_joins, interval));
    }
  }
  RulesVersion version(std::size_t i) const { return nodes[i]->service.rulesDoc()->version; }

  std::vector<std::unique_ptr<NodeFixture>> nodes;
  std::array<RingHolder, 3> rings;
  std::vector<std::unique_ptr<RulesSync>> syncs;
  std::mutex mu;  // the senders may run on RulesSync threads
  std::condition_variable sent;
  std::map<std::string, int> calls;
  int pushes = 0;
  std::string down;
};

}  // namespace

TEST_CASE("sync: a change goes to every member; one that missed it catches up in a round") {
  Trio t;
  CHECK(t.version(0) == t.version(1));  // the same file everywhere: the same version
  t.down = "c";
  REQUIRE(t.nodes[0]->service.setRule(plain("web", 5)).ok());
  t.syncs[0]->round(true, true);  // what changed() makes the thread do
  CHECK(t.version(1) == t.version(0));
  CHECK(t.version(2) < t.version(0));  // c was away
  CHECK(t.syncs[0]->stats().failures == 1);

  // c is back: a plain round from b (b's version only, no rules) finds c behind and sends it.
  t.down.clear();
  t.syncs[1]->round(true);
  CHECK(t.version(2) == t.version(0));
  CHECK(t.nodes[2]->service.currentRules()->find("web")->rule.spec.limit == 5);
  CHECK(t.syncs[2]->stats().adopted == 1);
}

TEST_CASE("sync: a member that asks and is behind gets the rules in the answer") {
  Trio t;
  REQUIRE(t.nodes[1]->service.deleteRule("api").value());  // b changes, sends nothing yet
  t.syncs[2]->round(true);                                 // c asks a and b
  CHECK(t.version(2) == t.version(1));
  CHECK(t.syncs[2]->stats().adopted == 1);
  CHECK(t.version(0) < t.version(1));
  // a asks in its turn: one member a round, every member within two.
  t.syncs[0]->round(false);
  t.syncs[0]->round(false);
  CHECK(t.version(0) == t.version(1));
}

TEST_CASE("sync: concurrent changes on two members end with every member on the same one") {
  Trio t;
  REQUIRE(t.nodes[0]->service.setRule(plain("x", 1)).ok());
  REQUIRE(t.nodes[1]->service.setRule(plain("y", 1)).ok());
  REQUIRE(t.version(0).counter == t.version(1).counter);
  const RulesVersion winner = std::max(t.version(0), t.version(1));
  const bool x_won = winner == t.version(0);
  for (int r = 0; r < 2; ++r)
    for (auto& s : t.syncs) s->round(true);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(t.version(i) == winner);
    const RuleSet& rules = *t.nodes[i]->service.currentRules();
    CHECK((rules.find("x") != nullptr) == x_won);
    CHECK((rules.find("y") != nullptr) == !x_won);
  }
}

TEST_CASE("sync: a joining node takes the cluster's rules over its file, whichever orders higher") {
  // c restarts with an edited file: its counter-0 version orders against the cluster's by the
  // digest alone. Both ways round, it runs the cluster's and sends its file to no one.
  for (const char* edited :
       {"rules:\n  - {name: api, algorithm: fixed_window, limit: 9, period: 1h}\n",
        "rules:\n  - {name: api, algorithm: fixed_window, limit: 8, period: 1h}\n"}) {
    Trio t(edited, /*c_joins=*/true);
    const RulesVersion cluster = t.version(0);
    REQUIRE(t.version(2) != cluster);
    REQUIRE(t.syncs[2]->join());
    CHECK(t.version(2) == cluster);
    CHECK(t.nodes[2]->service.currentRules()->find("api")->rule.spec.limit == 3);
    CHECK(t.pushes == 0);
    for (auto& s : t.syncs) s->round(true);
    CHECK(t.version(0) == cluster);
    CHECK(t.version(1) == cluster);
  }
  // A node that changed its rules already is not replaced by an older version.
  Trio t(kRules, /*c_joins=*/true);
  REQUIRE(t.nodes[2]->service.setRule(plain("web", 1)).ok());
  const RulesVersion mine = t.version(2);
  REQUIRE(t.syncs[2]->join());
  CHECK(t.version(2) == mine);
}

TEST_CASE("sync: the thread sends a change to every member at once, and waits for a first answer") {
  // Rounds an hour apart: only the change itself can send the rules within the test.
  Trio t(kRules, false, std::chrono::hours(1));
  t.nodes[0]->service.setRulesOrigin("a", [&t] { t.syncs[0]->changed(); });
  t.syncs[0]->start();
  REQUIRE(t.syncs[0]->waitFirstRound(std::chrono::seconds(10)));
  REQUIRE(t.nodes[0]->service.setRule(plain("web", 5)).ok());
  {
    std::unique_lock lock(t.mu);
    REQUIRE(t.sent.wait_for(lock, std::chrono::seconds(10), [&] { return t.pushes >= 2; }));
  }
  t.syncs[0]->stop();
  CHECK(t.version(1) == t.version(0));
  CHECK(t.version(2) == t.version(0));
}

TEST_CASE("sync: a version that does not load here is refused once, not rebuilt every round") {
  Trio t;
  RulesDoc broken = *t.nodes[0]->service.rulesDoc();
  broken.changes.push_back({"bad", "{name: bad, limit: -1, period: 1s}"});
  broken.version = {5, broken.contentDigest()};
  t.syncs[1]->answer(RulesVersion{}, &broken);
  t.syncs[1]->answer(RulesVersion{}, &broken);
  CHECK(t.syncs[1]->stats().refused == 1);
  CHECK(t.version(1) == t.version(0));
}

TEST_CASE("rules documents: bounded counters, and nesting checked in changes too") {
  NodeFixture a("a");
  RulesDoc top = *a.service.rulesDoc();
  top.version.counter = RulesDoc::kMaxCounter + 1;
  CHECK(top.validate().error().message.find("counter") != std::string::npos);
  top.version.counter = RulesDoc::kMaxCounter;
  REQUIRE(a.service.adoptRules(top).value());
  // A change now would pass the bound every peer checks: refused, the rules stay.
  const auto refused = a.service.setRule(plain("web", 1));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kResourceExhausted);
  CHECK(a.service.rulesDoc()->version == top.version);

  RulesDoc deep = *a.service.rulesDoc();
  deep.changes.push_back({"x", std::string(200, '[') + std::string(200, ']')});
  deep.version = {1, deep.contentDigest()};
  auto built = RuleSet::fromDoc(deep);
  REQUIRE_FALSE(built.ok());
  CHECK(built.error().message.find("change of rule 'x'") != std::string::npos);
}
