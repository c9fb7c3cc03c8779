// SlotKeeper (daemon/slots/slot_keeper.h): checks wait for their slot's state instead of being
// decided on an empty one, handoffs move exactly the slots that changed owner, and the grace period
// waits for every decision made on the old view. Runs under TSan in CI (the "concurrency" label).
#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/routing/router.h"
#include "daemon/service/limiter_service.h"
#include "daemon/slots/slot_keeper.h"
#include "persistence/fake_snapshot_store.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

const Time kStart = Time(std::chrono::seconds(1'700'000'000));

std::unique_ptr<Store> makeStore(std::size_t max_entries = 100'000) {
  auto s = Store::make({max_entries, 16});
  REQUIRE(s.ok());
  return std::move(*s);
}

RuleSet noRules() {
  auto r = RuleSet::make({});
  REQUIRE(r.ok());
  return std::move(*r);
}

struct Sink final : ForwardSink {
  std::promise<Result<CheckOutcome>> result;
  std::atomic<int> calls{0};
  void deliver(std::size_t, Result<CheckOutcome> outcome) override {
    if (calls.fetch_add(1) == 0) result.set_value(std::move(outcome));
  }
};

// One node's pieces without a network: a store, its service, a router without ring or forwarder.
struct Node {
  explicit Node(SlotKeeperOptions options, ManualClock& clock)
      : store(makeStore()),
        service(*store, clock, noRules(), ""),
        keeper(std::move(options), *store, clock),
        router(service, nullptr, nullptr, &keeper) {}
  std::unique_ptr<Store> store;
  LimiterService service;
  SlotKeeper keeper;
  Router router;
};

// A node recovering from a snapshot store that holds every read back (Redis has not answered):
// once constructed, the first read is out and every slot waits.
struct Recovering {
  explicit Recovering(SlotKeeperOptions o = {}) {
    snapshots.setHold(true);
    o.self_id = "a";
    o.snapshots = &snapshots;
    o.recovery_timeout = 10s;
    node = std::make_unique<Node>(std::move(o), clock);
    node->keeper.recoverAll();
    REQUIRE(snapshots.waitHeld(1, 5s));
  }
  ManualClock clock{kStart};
  persistence::FakeSnapshotStore snapshots{clock};
  std::unique_ptr<Node> node;
};

CheckArgs args(const std::string& key, std::uint64_t hits = 1) {
  CheckArgs a;
  a.key = key;
  a.limit = {Algorithm::kTokenBucket, 10, 1h, 0};
  a.hits = hits;
  return a;
}

KeyHash hashOf(const std::string& key) {
  return hashKey("", key, *Limit::make({Algorithm::kTokenBucket, 10, 1h, 0}));
}

std::shared_ptr<RingView> view(std::vector<std::string> ids, const std::string& self) {
  auto v = std::make_shared<RingView>();
  v->ring = Ring(ids);
  for (std::size_t i = 0; i < v->ring.members().size(); ++i) {
    v->rpc_address.push_back(v->ring.members()[i]);  // the "address" is the id in these tests
    if (v->ring.members()[i] == self) v->self = static_cast<std::uint32_t>(i);
  }
  return v;
}

}  // namespace

TEST_CASE(
    "with a snapshot store, checks wait for their slot's snapshot instead of starting empty") {
  ManualClock clock(kStart);
  persistence::FakeSnapshotStore snapshots(clock);
  // The key spent 7 of 10 before the restart.
  State spent;
  const Limit limit = *Limit::make({Algorithm::kTokenBucket, 10, 1h, 0});
  decide(limit, spent, 7, kStart);
  const KeyHash key = hashOf("user:1");
  snapshots.plant({slotOf(key), key, spent, spent.expiryMs()});
  snapshots.setHold(true);  // Redis has not answered yet

  SlotKeeperOptions o;
  o.self_id = "a";
  o.snapshots = &snapshots;
  o.recovery_timeout = 10s;
  Node n(o, clock);
  n.keeper.recoverAll();
  CHECK(n.keeper.active());

  Forwarding forwarding;
  CHECK_FALSE(n.router.check(args("user:1"), 0, forwarding).has_value());  // parked
  REQUIRE(forwarding.parked.size() == 1);
  auto sink = std::make_shared<Sink>();
  auto answered = sink->result.get_future();
  n.router.forward(std::move(forwarding), sink);
  CHECK(answered.wait_for(50ms) == std::future_status::timeout);
  CHECK(n.keeper.stats().parked_now == 1);

  // Redis answers, one read (256 slots) at a time: each is asked once the last one answered.
  std::size_t reads = 0;
  while (reads < kSlotCount / 256) {
    REQUIRE(snapshots.waitHeld(1, 5s));
    const std::size_t released = snapshots.release();
    CHECK(released == 1);  // never two reads asked at once
    reads += released;
  }
  CHECK(reads == kSlotCount / 256);
  REQUIRE(answered.wait_for(5s) == std::future_status::ready);
  const auto outcome = answered.get();
  REQUIRE(outcome.ok());
  CHECK(outcome->decision.allowed);
  CHECK(outcome->decision.remaining == 2);  // 10 - 7 - 1: the snapshot was merged first
  REQUIRE(n.keeper.waitStarted(5s));
  CHECK(n.keeper.stats().parked_now == 0);
  CHECK(n.keeper.stats().recovered_entries == 1);
}

TEST_CASE("a check waits for its slot's snapshot until the recovery deadline, not longer") {
  SlotKeeperOptions o;
  o.startup_timeout = 10s;
  Recovering r(o);  // Redis never answers
  Node& n = *r.node;
  ManualClock& clock = r.clock;

  Forwarding forwarding;
  REQUIRE_FALSE(n.router.check(args("user:late"), 0, forwarding).has_value());
  REQUIRE(forwarding.parked.size() == 1);
  auto sink = std::make_shared<Sink>();
  auto answered = sink->result.get_future();
  n.router.forward(std::move(forwarding), sink);  // parked on this thread
  clock.advance(10s - 1ms);                       // just before the deadline: still waiting
  CHECK(answered.wait_for(0s) == std::future_status::timeout);
  CHECK(n.keeper.stats().parked_now == 1);

  clock.advance(1ms);  // the deadline: decided without the snapshot, from empty state
  REQUIRE(answered.wait_for(5s) == std::future_status::ready);
  const auto outcome = answered.get();
  REQUIRE(outcome.ok());
  CHECK(outcome->decision.remaining == 9);
  CHECK(n.keeper.stats().parked_now == 0);
  CHECK(n.keeper.stats().recovery_timeouts > 0);
  CHECK(n.keeper.waitStarted(5s));
}

// Records the checks a keeper hands back; `got` is fulfilled with the first.
struct BackRouter final : Rerouter {
  struct Back {
    std::string key;
    std::size_t index;
    std::uint8_t hops;
    std::thread::id thread;
  };
  std::mutex mu;
  std::vector<Back> back;
  std::promise<void> first;
  void reroute(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink>,
               std::uint8_t hops) override {
    std::lock_guard lock(mu);
    back.push_back({check.key, index, hops, std::this_thread::get_id()});
    if (back.size() == 1) first.set_value();
  }
  std::vector<Back> taken() {
    std::lock_guard lock(mu);
    return back;
  }
};

TEST_CASE("a parked check goes back to whoever parked it: when its slot opens, or at once") {
  Recovering rec;
  Node& n = *rec.node;
  persistence::FakeSnapshotStore& snapshots = rec.snapshots;

  BackRouter router, forwarder;  // the two that park checks in a node
  const std::uint32_t slot = slotOf(hashOf("user:1"));
  auto sink = std::make_shared<Sink>();
  n.keeper.park(ForwardedCheck::from(args("user:1"), slot), 7, sink, 0, router);
  n.keeper.park(ForwardedCheck::from(args("user:1"), slot), 9, sink, 3, forwarder);
  CHECK(n.keeper.stats().parked_now == 2);
  CHECK(router.taken().empty());
  CHECK(forwarder.taken().empty());

  auto opened = router.first.get_future();
  std::size_t reads = 0;
  while (reads < kSlotCount / 256) {  // Redis answers: every slot opens
    REQUIRE(snapshots.waitHeld(1, 5s));
    reads += snapshots.release();
  }
  REQUIRE(opened.wait_for(5s) == std::future_status::ready);
  REQUIRE(forwarder.first.get_future().wait_for(5s) == std::future_status::ready);
  const auto r = router.taken();
  const auto f = forwarder.taken();
  REQUIRE(r.size() == 1);
  REQUIRE(f.size() == 1);
  CHECK(r[0].key == "user:1");
  CHECK(r[0].index == 7);
  CHECK(r[0].hops == 0);
  CHECK(f[0].index == 9);
  CHECK(f[0].hops == 3);
  REQUIRE(n.keeper.waitStarted(5s));
  CHECK(n.keeper.stats().parked_now == 0);

  // An open slot: handed back at once, on the caller's thread.
  BackRouter now;
  n.keeper.park(ForwardedCheck::from(args("user:1"), slot), 1, sink, 0, now);
  const auto at_once = now.taken();
  REQUIRE(at_once.size() == 1);
  CHECK(at_once[0].thread == std::this_thread::get_id());
}

TEST_CASE("a keeper that stops hands back every check still waiting, to whoever parked it") {
  Recovering r;  // Redis never answers
  Node& n = *r.node;
  BackRouter a, b;
  auto sink = std::make_shared<Sink>();
  for (std::size_t i = 0; i < 3; ++i) {
    const std::string key = "user:" + std::to_string(i);
    n.keeper.park(ForwardedCheck::from(args(key), slotOf(hashOf(key))), i, sink, 0,
                  i % 2 == 0 ? a : b);
  }
  CHECK(n.keeper.stats().parked_now == 3);
  n.keeper.stop();  // before any snapshot came: each check goes back, to be decided on what is here
  CHECK(a.taken().size() == 2);
  CHECK(b.taken().size() == 1);
  CHECK(b.taken()[0].index == 1);
}

TEST_CASE("lazy recovery reads a slot when its first check arrives, and only that slot") {
  ManualClock clock(kStart);
  persistence::FakeSnapshotStore snapshots(clock);
  State spent;
  const Limit limit = *Limit::make({Algorithm::kTokenBucket, 10, 1h, 0});
  decide(limit, spent, 6, kStart);
  const KeyHash key = hashOf("user:lazy");
  snapshots.plant({slotOf(key), key, spent, spent.expiryMs()});
  snapshots.setHold(true);

  SlotKeeperOptions o;
  o.self_id = "a";
  o.snapshots = &snapshots;
  o.lazy = true;
  o.recovery_timeout = 10s;
  Node n(o, clock);
  n.keeper.recoverAll();
  CHECK(n.keeper.waitStarted(0ms));  // ready at once: nothing is read up front
  CHECK(snapshots.release() == 0);   // and nothing was asked of the store

  Forwarding forwarding;
  REQUIRE_FALSE(n.router.check(args("user:lazy"), 0, forwarding).has_value());
  auto sink = std::make_shared<Sink>();
  auto answered = sink->result.get_future();
  n.router.forward(std::move(forwarding), sink);
  // Exactly one read (of that one slot) reaches the store; the check waits for it.
  REQUIRE(snapshots.waitHeld(1, 5s));
  CHECK(snapshots.release() == 1);
  REQUIRE(answered.wait_for(5s) == std::future_status::ready);
  const auto outcome = answered.get();
  REQUIRE(outcome.ok());
  CHECK(outcome->decision.remaining == 3);  // 10 - 6 - 1
  CHECK(n.keeper.mode(slotOf(key)) == SlotMode::kOpen);
  CHECK(n.keeper.stats().slots_waiting == kSlotCount - 1);
}

TEST_CASE("with Redis unreachable, recovery gives up and checks are decided from empty state") {
  ManualClock clock(kStart);
  persistence::FakeSnapshotStore snapshots(clock);
  snapshots.setFailure(Error{ErrorCode::kUnavailable, "redis down"});
  SlotKeeperOptions o;
  o.self_id = "a";
  o.snapshots = &snapshots;
  o.recovery_timeout = 100ms;
  o.startup_timeout = 100ms;
  Node n(o, clock);
  n.keeper.recoverAll();
  // Reads fail and are retried until the deadline: the node is not started before it passes.
  REQUIRE(snapshots.waitDelivered(2, 5s));
  CHECK_FALSE(n.keeper.waitStarted(0ms));
  clock.advance(100ms);
  CHECK(n.keeper.waitStarted(5s));
  CHECK_FALSE(n.keeper.active());
  CHECK(n.keeper.stats().recovery_errors > 0);
  Forwarding forwarding;
  auto decided = n.router.check(args("user:2"), 0, forwarding);
  REQUIRE(decided.has_value());
  CHECK((*decided)->decision.remaining == 9);
}

TEST_CASE("a ring change hands exactly the lost slots to their new owner, who decides them") {
  ManualClock clock(kStart);
  std::unique_ptr<Node> a, b;
  // The network: a handoff call is the receiver's receive().
  auto sendTo = [&](const std::string& address, const std::string& from,
                    std::span<const std::uint16_t> slots, std::span<const StoredEntry> entries,
                    std::chrono::milliseconds) -> Status {
    Node& to = address == "a" ? *a : *b;
    const auto bytes = SlotKeeper::encode(entries);
    auto r = to.keeper.receive(from, slots, bytes);
    if (!r) return r.error();
    return Ok{};
  };
  SlotKeeperOptions oa, ob;
  oa.self_id = "a";
  ob.self_id = "b";
  oa.send = ob.send = sendTo;
  a = std::make_unique<Node>(oa, clock);
  b = std::make_unique<Node>(ob, clock);

  // a alone decides 200 keys (3 hits each).
  std::vector<std::string> keys;
  for (int i = 0; i < 200; ++i) keys.push_back("k" + std::to_string(i));
  for (const auto& k : keys) {
    Forwarding f;
    REQUIRE(a->router.check(args(k, 3), 0, f).has_value());
  }
  a->keeper.onRing(view({"a"}, "a"));
  const auto both = view({"a", "b"}, "a");
  const auto both_b = view({"a", "b"}, "b");
  // b joins: b's first view proxies the slots it gained to a until a hands them over.
  b->keeper.onRing(view({"b"}, "b"));
  b->keeper.onRing(both_b);
  std::size_t b_slots = 0;
  for (std::uint32_t s = 0; s < kSlotCount; ++s) {
    if (both_b->ring.ownerIndex(s) == both_b->self) ++b_slots;
  }
  // b waits for its slots, and has handed a's slots (empty) back to a.
  REQUIRE(b->keeper.waitIdle(5s));
  CHECK(b->keeper.stats().slots_waiting == b_slots);
  CHECK(b->keeper.stats().handoffs_sent == 1);
  a->keeper.onRing(both);  // a learns it: hands b's slots over
  REQUIRE(a->keeper.waitIdle(5s));
  CHECK(b->keeper.stats().slots_waiting == 0);
  CHECK(a->keeper.stats().handoffs_sent == 1);
  CHECK(b->keeper.stats().handoffs_received == 1);
  CHECK_FALSE(b->keeper.active());

  // Every key is now held by exactly its owner, with its 3 hits spent.
  std::size_t moved = 0;
  for (const auto& k : keys) {
    const KeyHash h = hashOf(k);
    const bool b_owns = both->ring.ownerOf(h) == "b";
    Node& owner = b_owns ? *b : *a;
    Node& other = b_owns ? *a : *b;
    REQUIRE(owner.store->get(h).has_value());
    CHECK_FALSE(other.store->get(h).has_value());
    Forwarding f;
    auto peek = owner.router.check(args(k, 0), 0, f);
    REQUIRE(peek.has_value());
    CHECK((*peek)->decision.remaining == 7);
    moved += b_owns ? 1 : 0;
  }
  CHECK(moved > 50);  // about half
  CHECK(b->keeper.stats().handoff_entries_received == moved);
}

TEST_CASE("a handoff from the owner that arrives before the receiver's ring is claimed") {
  ManualClock clock(kStart);
  SlotKeeperOptions o;
  o.self_id = "b";
  o.send = [](auto&&...) -> Status { return Ok{}; };
  Node b(o, clock);
  b.keeper.onRing(view({"a", "b", "c"}, "b"));
  // b's first ring hands what it does not own to a and c.
  REQUIRE(b.keeper.waitIdle(5s));
  CHECK(b.keeper.stats().handoffs_sent == 2);
  const auto v = view({"a", "b", "c"}, "b");
  std::uint32_t s = 0, t = 0;
  while (v->ring.ownerOf(s) != "a") ++s;
  while (t == s || v->ring.ownerOf(t) != "a") ++t;
  State state;
  decide(*Limit::make({Algorithm::kTokenBucket, 10, 1h, 0}), state, 4, kStart);
  const KeyHash key{0x1234, (std::uint64_t{s} << kSlotShift) | 1};
  const KeyHash other{0x5678, (std::uint64_t{t} << kSlotShift) | 1};
  const std::vector<StoredEntry> entries{{key, state}}, others{{other, state}};
  const std::vector<std::uint16_t> slot_s{static_cast<std::uint16_t>(s)};
  const std::vector<std::uint16_t> slot_t{static_cast<std::uint16_t>(t)};

  // c hands over slot t, which b's ring gives to a: c's view is not b's (a newcomer that saw
  // only part of the cluster). The state is merged, but b does not start deciding t.
  REQUIRE(b.keeper.receive("c", slot_t, SlotKeeper::encode(others)).ok());
  // a, the owner by b's ring, hands over s: a's ring already gave s to b. b decides it from the
  // moment it answers (a sends checks of s here as soon as it has the answer; were s not claimed
  // yet, b would send them back to a, its owner by b's ring).
  REQUIRE(b.keeper.receive("a", slot_s, SlotKeeper::encode(entries)).ok());
  CHECK(b.keeper.mode(s) == SlotMode::kClaimed);
  CHECK(b.keeper.mode(t) == SlotMode::kOpen);
  CHECK(b.keeper.stats().claims == 1);
  REQUIRE(b.store->get(key).has_value());
  CHECK(*b.store->get(key) == state);
  CHECK(b.store->get(other).has_value());
}

TEST_CASE("malformed handoff data is refused or skipped and counted") {
  ManualClock clock(kStart);
  SlotKeeperOptions o;
  o.self_id = "b";
  Node b(o, clock);
  const std::vector<std::uint8_t> odd(33, 1);
  CHECK(b.keeper.receive("x", {}, odd).error().code == ErrorCode::kInvalidArgument);
  const std::vector<StoredEntry> zeros{{KeyHash{0, 0}, State{}}, {KeyHash{1, 2}, State{}}};
  auto r = b.keeper.receive("x", {}, SlotKeeper::encode(zeros));
  REQUIRE(r.ok());
  CHECK(*r == 0);
  CHECK(b.keeper.stats().malformed_received == 2);
  CHECK(b.store->stats().entries == 0);
}

TEST_CASE("the grace period waits for a decision that started before the slot's mode changed") {
  Quiescence q;
  std::atomic<bool> leave{false}, waited{false};
  std::promise<void> inside;
  std::thread decider([&] {
    Quiescence::Guard g(&q);
    inside.set_value();
    while (!leave) std::this_thread::yield();
  });
  REQUIRE(inside.get_future().wait_for(5s) == std::future_status::ready);
  std::thread waiter([&] {
    q.wait();
    waited = true;
  });
  // The waiter cannot finish while the decider is inside its guard.
  for (int i = 0; i < 1000; ++i) {
    std::this_thread::yield();
    REQUIRE_FALSE(waited.load());
  }
  leave = true;
  decider.join();
  waiter.join();
  CHECK(waited);
  // Nested guards on one thread count once; a later wait() does not block on a left guard.
  {
    Quiescence::Guard outer(&q);
    { Quiescence::Guard inner(&q); }
  }
  q.wait();
}

TEST_CASE("store: collect takes a slot's entries out, merge keeps the more consumed state") {
  ManualClock clock(kStart);
  auto store = makeStore(10'000);
  const Limit limit = *Limit::make({Algorithm::kTokenBucket, 10, 1h, 0});
  std::map<std::uint32_t, int> per_slot;
  for (int i = 0; i < 500; ++i) {
    const KeyHash k = hashOf("c" + std::to_string(i));
    store->check(k, limit, 2, kStart);
    ++per_slot[slotOf(k)];
  }
  SlotSet set;
  const std::uint32_t s = per_slot.begin()->first;
  set.set(s);
  auto kept = store->collect(set, kStart, false);
  CHECK(kept.size() == static_cast<std::size_t>(per_slot[s]));
  CHECK(store->stats().entries == 500);
  auto taken = store->collect(set, kStart, true);
  CHECK(taken.size() == kept.size());
  CHECK(store->stats().entries == 500 - kept.size());
  CHECK(store->collect(set, kStart, false).empty());

  // merge: a less consumed state never replaces a more consumed one, and vice versa.
  const KeyHash k = taken.front().key;
  State more = taken.front().state;  // 2 spent
  State less;
  decide(limit, less, 1, kStart);
  // Stands in for moreConsumed (tested in persistence_merge_test).
  const auto keep_more = [](const State& a, const State& b) { return a.w0 >= b.w0 ? a : b; };
  store->merge(k, more, kStart, keep_more);  // k was taken out: merged in as it is
  REQUIRE(store->get(k).has_value());
  CHECK(*store->get(k) == more);
  store->merge(k, less, kStart, keep_more);
  CHECK(*store->get(k) == more);
  // The other order: the more consumed state replaces the less consumed one it finds.
  const KeyHash other = hashOf("merged-in-the-other-order");
  store->merge(other, less, kStart, keep_more);
  CHECK(*store->get(other) == less);
  store->merge(other, more, kStart, keep_more);
  CHECK(*store->get(other) == more);
}

TEST_CASE("store: the observer hears of admitted changes only") {
  struct Seen final : StoreObserver {
    std::vector<std::pair<KeyHash, State>> changes;
    void changed(const KeyHash& key, const State& state) override {
      changes.emplace_back(key, state);
    }
  } seen;
  auto store = makeStore(10'000);
  store->setObserver(&seen);
  const Limit limit = *Limit::make({Algorithm::kTokenBucket, 2, 1h, 0});
  const KeyHash k = hashOf("obs");
  CHECK(store->check(k, limit, 1, kStart).allowed);        // new entry
  CHECK(store->check(k, limit, 0, kStart).allowed);        // a read
  CHECK(store->check(k, limit, 1, kStart).allowed);        // spent
  CHECK_FALSE(store->check(k, limit, 1, kStart).allowed);  // denied: nothing changed
  REQUIRE(seen.changes.size() == 2);
  CHECK(seen.changes.back().second == *store->get(k));
  store->put(k, State{}, kStart);  // restores do not notify
  CHECK(seen.changes.size() == 2);
}
