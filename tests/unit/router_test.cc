// Router (daemon/routing/router.h): where each check is decided — here (this node owns its key),
// by its owner (handed back in Forwarding for the forwarder), or later (parked in the slot gate).
//
// No network: the tests publish the router's ring by hand. The router consults its ring only when
// it has a forwarder, so each node starts one, but that forwarder reads an empty ring of its own
// and is never handed a check: it connects nowhere. What happens to forwarded checks is
// tests/unit/forwarder_test.cc's subject.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/routing/forwarder.h"
#include "daemon/routing/ring_view.h"
#include "daemon/routing/router.h"
#include "daemon/routing/slot_gate.h"
#include "daemon/service/limiter_service.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kLimit = 2;  // per key and hour: a third check of a key is limited

CheckArgs inlineCheck(std::string_view key) {
  CheckArgs a;
  a.key = key;
  a.limit = {Algorithm::kTokenBucket, kLimit, 1h, 0};
  return a;
}

CheckArgs ruleCheck(std::string_view key, std::string_view rule) {
  CheckArgs a;
  a.key = key;
  a.rule = rule;
  return a;
}

// The ring of `ids` as member "a" sees it (addresses are never dialled here).
std::shared_ptr<const RingView> ringOf(const std::vector<std::string>& ids) {
  auto v = std::make_shared<RingView>();
  v->ring = Ring(ids);
  for (std::size_t i = 0; i < v->ring.members().size(); ++i) {
    v->rpc_address.push_back("127.0.0.1:1");
    if (v->ring.members()[i] == "a") v->self = static_cast<std::uint32_t>(i);
  }
  return v;
}

// `count` keys of namespace `ns` (a rule's name; "" for inline limits) that `owner` owns in a
// ring of `ids`, and that `inline_owner` owns under inline limits (empty: anyone).
std::vector<std::string> keysOwnedBy(const std::vector<std::string>& ids, const std::string& owner,
                                     std::size_t count, std::string_view ns = "",
                                     const std::string& inline_owner = "") {
  const Ring ring(ids);
  std::vector<std::string> keys;
  for (int i = 0; keys.size() < count && i < 100'000; ++i) {
    std::string k = "user:" + std::to_string(i);
    if (ring.ownerOf(slotOf(ns, k)) != owner) continue;
    if (!inline_owner.empty() && ring.ownerOf(slotOf("", k)) != inline_owner) continue;
    keys.push_back(std::move(k));
  }
  REQUIRE(keys.size() == count);
  return keys;
}

// A key of more than kMaxKeyBytes bytes that `owner` owns in a ring of `ids`.
std::string longKeyOwnedBy(const std::vector<std::string>& ids, const std::string& owner) {
  const Ring ring(ids);
  for (int i = 0; i < 100'000; ++i) {
    std::string k = std::string(kMaxKeyBytes, 'k') + std::to_string(i);
    if (ring.ownerOf(slotOf("", k)) == owner) return k;
  }
  FAIL("no long key owned by " << owner);
  return {};
}

// Member "a" of a cluster: its store and service, the ring its router routes by (none published
// until a test does), and a forwarder that never sends anything.
struct Node {
  ManualClock clock;
  std::unique_ptr<Store> store = Store::make({100'000, 16}).value();
  LimiterService service;
  RingHolder ring;
  RingHolder no_peers;  // the forwarder's own ring: empty, so it dials no one
  std::unique_ptr<Forwarder> forwarder = Forwarder::start({}, service, no_peers).value();
  Router router{service, &ring, forwarder.get()};

  explicit Node(RuleSet rules = RuleSet::make({}).value())
      : service(*store, clock, std::move(rules), "") {}
  std::size_t entries() const { return store->stats().entries; }
};

// A slot gate whose listed slots are parked (their state is on the way); records what it holds.
class FakeGate final : public SlotGate {
 public:
  struct Parked {
    std::string key;
    std::uint32_t slot;
    std::size_t index;
    const ForwardSink* sink;
    std::uint8_t hops;
  };

  explicit FakeGate(std::set<std::uint32_t> parked_slots)
      : parked_slots_(std::move(parked_slots)) {}

  bool active() const override { return true; }
  SlotMode mode(std::uint32_t slot) const override {
    return parked_slots_.contains(slot) ? SlotMode::kParked : SlotMode::kOpen;
  }
  Quiescence& quiescence() override { return quiescence_; }
  void park(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
            std::uint8_t hops, Rerouter&) override {
    parked.push_back({check.key, check.slot, index, sink.get(), hops});
  }
  bool standInNeedsRecovery(std::uint32_t) override { return false; }
  std::string proxyTarget(std::uint32_t) const override { return {}; }
  bool handedOver(std::uint32_t) const override { return false; }

  std::vector<Parked> parked;

 private:
  const std::set<std::uint32_t> parked_slots_;
  Quiescence quiescence_;
};

// A sink for forward() calls whose checks must never be answered through it.
struct CountingSink final : ForwardSink {
  int delivered = 0;
  void deliver(std::size_t, Result<CheckOutcome>) override { ++delivered; }
};

std::vector<std::size_t> indicesOf(const std::vector<CheckArgs>& args,
                                   const std::vector<std::string>& keys) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    for (const auto& k : keys) {
      if (args[i].key == k) out.push_back(i);
    }
  }
  return out;
}

// One row of the routing table below: a check entering member "a" of `ring` after `hops` nodes.
enum class Goes { kHere, kPeer };
struct RouteCase {
  const char* name;
  std::vector<std::string> ring;  // empty: no ring published
  std::uint8_t hops;
  CheckArgs args;
  Goes goes;
  std::optional<ErrorCode> error = std::nullopt;  // decided here with this error
};

// Routes `c` on `n` and checks it went where the row says, and what that did to n's store.
void checkRoute(Node& n, const RouteCase& c) {
  CAPTURE(c.name);
  n.ring.publish(c.ring.empty() ? nullptr : ringOf(c.ring));
  const std::size_t entries_before = n.entries();
  Forwarding f;
  const auto decided = n.router.check(c.args, c.hops, f);
  if (c.goes == Goes::kPeer) {
    CHECK_FALSE(decided.has_value());
    REQUIRE(f.checks.size() == 1);
    CHECK(f.checks[0].key == c.args.key);
    CHECK(f.checks[0].slot == slotOf(c.args.rule, c.args.key));
    CHECK(f.indices == std::vector<std::size_t>{0});
    CHECK(f.hops == c.hops);
    CHECK(n.entries() == entries_before);
    return;
  }
  REQUIRE(decided.has_value());
  CHECK(f.empty());
  if (c.error) {
    REQUIRE_FALSE(decided->ok());
    CHECK(decided->error().code == *c.error);
    CHECK(n.entries() == entries_before);
  } else {
    REQUIRE(decided->ok());
    CHECK((*decided)->route == RouteKind::kLocal);
    CHECK((*decided)->decision.remaining == kLimit - 1);  // its first check, counted here
    CHECK(n.entries() == entries_before + 1);
  }
}

}  // namespace

TEST_CASE("a batch: keys owned here are decided here, the rest come back in request order") {
  Node n;
  n.ring.publish(ringOf({"a", "b"}));
  const auto here = keysOwnedBy({"a", "b"}, "a", 4);
  const auto there = keysOwnedBy({"a", "b"}, "b", 4);
  std::vector<CheckArgs> args;  // a0 b0 a1 b1 ... three rounds: each key is checked 3 times
  for (int round = 0; round < 3; ++round) {
    for (std::size_t k = 0; k < here.size(); ++k) {
      args.push_back(inlineCheck(here[k]));
      args.push_back(inlineCheck(there[k]));
    }
  }
  std::vector<Result<CheckOutcome>> out;
  const Forwarding f = n.router.checkBatch(args, 0, out);

  REQUIRE(out.size() == args.size());
  const std::vector<std::size_t> expected = indicesOf(args, there);
  REQUIRE(expected.size() == 12);
  std::vector<std::size_t> sorted_expected(expected);
  std::sort(sorted_expected.begin(), sorted_expected.end());
  CHECK(f.indices == sorted_expected);  // every check of b's keys, none of a's, in request order
  REQUIRE(f.checks.size() == f.indices.size());
  for (std::size_t j = 0; j < f.checks.size(); ++j) {
    const CheckArgs& sent = args[f.indices[j]];
    CHECK(f.checks[j].key == sent.key);
    CHECK(f.checks[j].slot == slotOf("", sent.key));
    CHECK(f.checks[j].hits == 1);
    CHECK(f.checks[j].limit.limit == kLimit);
  }
  CHECK(f.hops == 0);
  CHECK(f.parked.empty());
  CHECK(f.size() == 12);
  for (std::size_t i : indicesOf(args, here)) {
    REQUIRE(out[i].ok());
    const std::size_t round = i / (2 * here.size());
    CHECK(out[i]->route == RouteKind::kLocal);
    CHECK(out[i]->allowed == (round < kLimit));
  }
  CHECK(n.entries() == here.size());  // b's keys left no state here
}

TEST_CASE("one check: owned here it returns the outcome, owned elsewhere it is held at index 0") {
  Node n;
  n.ring.publish(ringOf({"a", "b"}));
  const std::string mine = keysOwnedBy({"a", "b"}, "a", 1)[0];
  const std::string theirs = keysOwnedBy({"a", "b"}, "b", 1)[0];

  Forwarding local;
  const auto decided = n.router.check(inlineCheck(mine), 1, local);
  REQUIRE(decided.has_value());
  REQUIRE(decided->ok());
  CHECK((*decided)->decision.remaining == kLimit - 1);
  CHECK(local.empty());

  Forwarding away;
  CHECK_FALSE(n.router.check(inlineCheck(theirs), 1, away).has_value());
  REQUIRE(away.checks.size() == 1);
  CHECK(away.checks[0].key == theirs);
  CHECK(away.indices == std::vector<std::size_t>{0});
  CHECK(away.hops == 1);
  CHECK(n.entries() == 1);
}

TEST_CASE("where a check goes, by ring, hops, rule and validity") {
  const std::vector<std::string> ab = {"a", "b"};
  const Rule api{"api", {Algorithm::kTokenBucket, kLimit, 1h, 0}, false, DegradedPolicy::kShare};
  Node n(RuleSet::make({api}).value());
  const auto b_keys = keysOwnedBy(ab, "b", 10);
  const auto c_key = keysOwnedBy({"a", "b", "c"}, "c", 1)[0];
  const auto a_key = keysOwnedBy(ab, "a", 1)[0];
  const std::string long_key = longKeyOwnedBy(ab, "b");
  // Under rule "api" the slot comes from the rule's name and the key, not the inline namespace.
  const auto b_by_rule = keysOwnedBy(ab, "b", 1, "api", "a")[0];
  const auto a_by_rule = keysOwnedBy(ab, "a", 1, "api", "b")[0];

  CheckArgs zero_period = inlineCheck(b_keys[5]);
  zero_period.limit.period = 0ms;
  CheckArgs huge_limit = inlineCheck(b_keys[6]);
  huge_limit.limit.limit = kMaxLimit + 1;
  CheckArgs too_many_hits = inlineCheck(b_keys[7]);
  too_many_hits.hits = kMaxCost + 1;
  const std::vector<RouteCase> cases = {
      {"owned here", ab, 0, inlineCheck(a_key), Goes::kHere},
      {"owned by b", ab, 0, inlineCheck(b_keys[0]), Goes::kPeer},
      {"owned by b, one hop in", ab, 1, inlineCheck(b_keys[1]), Goes::kPeer},
      {"owned by c of three", {"a", "b", "c"}, 0, inlineCheck(c_key), Goes::kPeer},
      {"owned by b, at the hop limit", ab, kMaxHops, inlineCheck(b_keys[2]), Goes::kHere},
      {"owned by b, past the hop limit", ab, kMaxHops + 1, inlineCheck(b_keys[3]), Goes::kHere},
      {"a ring of this node alone", {"a"}, 0, inlineCheck(b_keys[4]), Goes::kHere},
      {"no ring yet", {}, 0, inlineCheck(b_keys[8]), Goes::kHere},
      {"an empty key", ab, 0, inlineCheck(""), Goes::kHere, ErrorCode::kInvalidArgument},
      {"a key over 1024 bytes", ab, 0, inlineCheck(long_key), Goes::kHere,
       ErrorCode::kInvalidArgument},
      {"a period of 0", ab, 0, zero_period, Goes::kHere, ErrorCode::kInvalidArgument},
      {"a limit over 2^40", ab, 0, huge_limit, Goes::kHere, ErrorCode::kInvalidArgument},
      {"hits over 2^40", ab, 0, too_many_hits, Goes::kHere, ErrorCode::kInvalidArgument},
      // The owner's rules decide whether the rule exists: not an error this node may give.
      {"an unknown rule", ab, 0, ruleCheck(b_keys[9], "nope"), Goes::kPeer},
      {"rule api, b owns the key under it", ab, 0, ruleCheck(b_by_rule, "api"), Goes::kPeer},
      {"rule api, a owns the key under it", ab, 0, ruleCheck(a_by_rule, "api"), Goes::kHere},
  };

  for (const RouteCase& c : cases) checkRoute(n, c);
}

TEST_CASE("without a ring or without a forwarder, every check is decided here") {
  Node n;
  n.ring.publish(ringOf({"a", "b"}));
  const auto there = keysOwnedBy({"a", "b"}, "b", 3);
  std::vector<CheckArgs> args;
  for (const auto& k : there) args.push_back(inlineCheck(k));

  Router no_ring(n.service, nullptr, n.forwarder.get());
  Router no_forwarder(n.service, &n.ring, nullptr);
  int round = 0;
  for (Router* router : {&no_ring, &no_forwarder, &no_ring}) {
    CAPTURE(round);
    std::vector<Result<CheckOutcome>> out;
    CHECK(router->checkBatch(args, 0, out).empty());
    REQUIRE(out.size() == args.size());
    for (const auto& r : out) {
      REQUIRE(r.ok());
      CHECK(r->route == RouteKind::kLocal);
      CHECK(r->allowed == (round < static_cast<int>(kLimit)));  // one store counts every round
    }
    CheckArgs peek = inlineCheck(there[0]);
    peek.hits = 0;  // reads without spending
    Forwarding f;
    CHECK(router->check(peek, 0, f).has_value());
    CHECK(f.empty());
    ++round;
  }
  CHECK(n.entries() == there.size());
}

TEST_CASE("checks whose slot is not open wait in the slot gate, with their request indices") {
  Node n;
  const auto keys = keysOwnedBy({"a"}, "a", 6);
  const std::vector<std::string> open = {keys[0], keys[1], keys[2]};
  const std::vector<std::string> waiting = {keys[3], keys[4], keys[5]};
  std::set<std::uint32_t> parked_slots;
  for (const auto& k : waiting) parked_slots.insert(slotOf("", k));
  for (const auto& k : open) REQUIRE_FALSE(parked_slots.contains(slotOf("", k)));
  FakeGate gate(parked_slots);
  Router router(n.service, nullptr, nullptr, &gate);  // nothing to forward to: all here or parked

  std::vector<CheckArgs> args;  // o0 w0 o1 w1 o2 w2 w0
  for (std::size_t k = 0; k < open.size(); ++k) {
    args.push_back(inlineCheck(open[k]));
    args.push_back(inlineCheck(waiting[k]));
  }
  args.push_back(inlineCheck(waiting[0]));
  std::vector<Result<CheckOutcome>> out;
  Forwarding f = router.checkBatch(args, 1, out);

  const std::vector<std::size_t> parked_at = {1, 3, 5, 6};
  CHECK(f.parked_indices == parked_at);
  REQUIRE(f.parked.size() == parked_at.size());
  for (std::size_t j = 0; j < f.parked.size(); ++j) {
    CHECK(f.parked[j].key == args[parked_at[j]].key);
  }
  CHECK(f.checks.empty());
  for (std::size_t i : {0u, 2u, 4u}) {
    REQUIRE(out[i].ok());
    CHECK(out[i]->decision.remaining == kLimit - 1);
  }
  CHECK(n.entries() == open.size());  // parked checks spent nothing yet

  // forward() hands each parked check to the gate with its index, the sink and the hops.
  auto sink = std::make_shared<CountingSink>();
  router.forward(std::move(f), sink);
  REQUIRE(gate.parked.size() == parked_at.size());
  for (std::size_t j = 0; j < parked_at.size(); ++j) {
    CHECK(gate.parked[j].key == args[parked_at[j]].key);
    CHECK(gate.parked[j].slot == slotOf("", args[parked_at[j]].key));
    CHECK(gate.parked[j].index == parked_at[j]);
    CHECK(gate.parked[j].sink == sink.get());
    CHECK(gate.parked[j].hops == 1);
  }
  CHECK(sink->delivered == 0);

  Forwarding one;
  CHECK_FALSE(router.check(inlineCheck(waiting[1]), 0, one).has_value());
  CHECK(one.parked_indices == std::vector<std::size_t>{0});
  CHECK(one.checks.empty());
}

TEST_CASE("a parked slot that another member owns goes to that owner, not to the gate") {
  Node n;
  n.ring.publish(ringOf({"a", "b"}));
  const std::string mine = keysOwnedBy({"a", "b"}, "a", 1)[0];
  const std::string theirs = keysOwnedBy({"a", "b"}, "b", 1)[0];
  FakeGate gate({slotOf("", mine), slotOf("", theirs)});
  Router router(n.service, &n.ring, n.forwarder.get(), &gate);

  const std::vector<CheckArgs> args = {inlineCheck(theirs), inlineCheck(mine)};
  std::vector<Result<CheckOutcome>> out;
  const Forwarding f = router.checkBatch(args, 0, out);
  CHECK(f.indices == std::vector<std::size_t>{0});
  CHECK(f.parked_indices == std::vector<std::size_t>{1});
  CHECK(n.entries() == 0);
}

TEST_CASE("with a slot gate, a check at the hop limit goes to its owner once more, then stays") {
  // Without a gate the hop limit alone decides (the table above); with one, a check that reached
  // the limit on a node that does not own its slot is passed to the owner by this node's ring a
  // last time, and decided wherever it lands past the limit.
  Node n;
  n.ring.publish(ringOf({"a", "b"}));
  const std::string theirs = keysOwnedBy({"a", "b"}, "b", 1)[0];
  FakeGate gate(std::set<std::uint32_t>{});  // every slot open
  Router router(n.service, &n.ring, n.forwarder.get(), &gate);

  Forwarding at_limit;
  CHECK_FALSE(router.check(inlineCheck(theirs), kMaxHops, at_limit).has_value());
  CHECK(at_limit.checks.size() == 1);
  CHECK(at_limit.hops == kMaxHops);

  Forwarding past;
  const auto decided = router.check(inlineCheck(theirs), kMaxHops + 1, past);
  REQUIRE(decided.has_value());
  REQUIRE(decided->ok());
  CHECK(past.empty());
  CHECK(n.entries() == 1);
}

TEST_CASE("with inline limits off, checks entering here must name a rule; forwarded ones pass") {
  const Rule api{"api", {Algorithm::kTokenBucket, kLimit, 1h, 0}, false, DegradedPolicy::kShare};
  Node n(RuleSet::make({api}).value());
  Router strict(n.service, &n.ring, n.forwarder.get(), nullptr, /*inline_limits=*/false);
  n.ring.publish(ringOf({"a", "b"}));
  const auto here = keysOwnedBy({"a", "b"}, "a", 2, "api", "a");  // a's as inline keys too
  const auto there = keysOwnedBy({"a", "b"}, "b", 2, "api");

  Forwarding f;
  const auto refused = strict.check(inlineCheck(here[0]), 0, f);
  REQUIRE(refused.has_value());
  REQUIRE_FALSE(refused->ok());
  CHECK(refused->error().code == ErrorCode::kPermissionDenied);
  CHECK(f.empty());
  CHECK(n.entries() == 0);  // refused before anything was counted

  // A batch: refused inline checks answer in their place; named ones are decided or forwarded,
  // with their indices in the whole request.
  const std::vector<CheckArgs> args = {inlineCheck(here[0]), ruleCheck(there[0], "api"),
                                       ruleCheck(here[1], "api"), inlineCheck(there[1]),
                                       ruleCheck(there[1], "api")};
  std::vector<Result<CheckOutcome>> out;
  const Forwarding batch = strict.checkBatch(args, 0, out);
  REQUIRE(out.size() == args.size());
  for (std::size_t i : {0u, 3u}) {
    REQUIRE_FALSE(out[i].ok());
    CHECK(out[i].error().code == ErrorCode::kPermissionDenied);
  }
  CHECK(batch.indices == std::vector<std::size_t>{1, 4});
  REQUIRE(batch.checks.size() == 2);
  CHECK(batch.checks[0].key == there[0]);
  CHECK(batch.checks[1].key == there[1]);
  REQUIRE(out[2].ok());
  CHECK(out[2]->decision.remaining == kLimit - 1);

  // A check a peer forwarded (hops 1) carries the limit its entry node accepted: decided.
  Forwarding forwarded;
  const auto decided = strict.check(inlineCheck(here[0]), 1, forwarded);
  REQUIRE(decided.has_value());
  REQUIRE(decided->ok());
  CHECK((*decided)->decision.remaining == kLimit - 1);
}

TEST_CASE("an atomic batch is all or nothing: user 5 and global 8 per hour, two users sending 10") {
  Node n;
  Router router(n.service, nullptr, nullptr);  // every key here; the forwarded case: integration
  auto pair = [](std::string_view user) {
    std::vector<CheckArgs> batch(2);
    batch[0].key = user;
    batch[0].limit = {Algorithm::kTokenBucket, 5, 1h, 0};
    batch[1].key = "global";
    batch[1].limit = {Algorithm::kTokenBucket, 8, 1h, 0};
    return batch;
  };
  auto send = [&](std::string_view user) {
    int allowed = 0;
    for (int i = 0; i < 10; ++i) {
      bool answered = false;
      router.checkAtomic(pair(user), nullptr, [&](AtomicOutcome& r) {
        answered = true;
        REQUIRE(r.outcomes.size() == 2);
        if (!r.denied_by) {
          ++allowed;
          CHECK(r.outcomes[0]->allowed);
          CHECK(r.outcomes[1]->allowed);
          return;
        }
        // The other check was given back: nothing of the batch stays spent.
        const std::size_t other = 1 - *r.denied_by;
        CHECK_FALSE(r.outcomes[other]->allowed);
        CHECK(r.refunded[other]);
        CHECK_FALSE(r.refunded[*r.denied_by]);
      });
      REQUIRE(answered);  // all local: answered at once
    }
    return allowed;
  };
  CHECK(send("user-1") == 5);
  CHECK(send("user-2") == 3);
  auto remaining = [&](std::string_view key, std::uint64_t limit) {
    CheckArgs peek;
    peek.key = key;
    peek.limit = {Algorithm::kTokenBucket, limit, 1h, 0};
    peek.hits = 0;
    return n.service.check(peek)->decision.remaining;
  };
  CHECK(remaining("global", 8) == 0);  // exactly 8 spent
  CHECK(remaining("user-1", 5) == 0);  // exactly 5
  CHECK(remaining("user-2", 5) == 2);  // exactly 3
}

TEST_CASE("an atomic batch with a failing check spends nothing and names it") {
  Node n;
  Router router(n.service, nullptr, nullptr);
  std::vector<CheckArgs> batch = {inlineCheck("fine"), ruleCheck("x", "no-such-rule")};
  bool answered = false;
  router.checkAtomic(batch, nullptr, [&](AtomicOutcome& r) {
    answered = true;
    REQUIRE(r.denied_by.has_value());
    CHECK(*r.denied_by == 1);
    CHECK(r.refunded[0]);
    CHECK_FALSE(r.outcomes[1].ok());
  });
  REQUIRE(answered);
  CheckArgs peek = inlineCheck("fine");
  peek.hits = 0;
  CHECK(n.service.check(peek)->decision.remaining == kLimit);
}
