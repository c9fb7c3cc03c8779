// The sharded store: same decisions as the pure functions, bounded memory, eviction, sweeping,
// and exactness under concurrent use (run under TSan in CI: the "concurrency" label).
#include <doctest/doctest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "limiter/store.h"
#include "tests/unit/reference_models.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

const Time kStart = Time(std::chrono::seconds(1'700'000'000));

std::unique_ptr<Store> makeStore(std::size_t max_entries = 1'000'000, std::size_t shards = 64) {
  auto s = Store::make({max_entries, shards});
  REQUIRE(s.ok());
  return std::move(*s);
}

Limit mustMake(Algorithm a, std::uint64_t limit, Duration period, std::uint64_t burst = 0) {
  auto l = Limit::make({a, limit, period, burst});
  REQUIRE(l.ok());
  return *l;
}

KeyHash key(int i) {
  return hashKey("", "k" + std::to_string(i), Algorithm::kTokenBucket, 1s);
}

}  // namespace

TEST_CASE("bad store options are rejected") {
  CHECK_FALSE(Store::make({1000, 3}).ok());
  CHECK_FALSE(Store::make({1000, 0}).ok());
  CHECK_FALSE(Store::make({10, 64}).ok());
  CHECK(Store::make({64, 64}).ok());
}

TEST_CASE("the store decides like the pure function, key by key") {
  auto store = makeStore();
  std::mt19937_64 rng(3);
  const Limit limits[] = {mustMake(Algorithm::kTokenBucket, 5, 1s),
                          mustMake(Algorithm::kSlidingWindow, 7, 100ms),
                          mustMake(Algorithm::kFixedWindow, 3, 10ms)};
  std::vector<State> shadow(3 * 500);
  Time now = kStart;
  for (int i = 0; i < 100'000; ++i) {
    now += Duration(static_cast<std::int64_t>(rng() % 200'000));
    const int k = static_cast<int>(rng() % 500);
    const int which = static_cast<int>(rng() % 3);
    const Limit& l = limits[which];
    const KeyHash h = hashKey("", "k" + std::to_string(k), l);
    const std::uint64_t cost = rng() % 3;
    const Decision want = decide(l, shadow[static_cast<std::size_t>(which * 500 + k)], cost, now);
    REQUIRE(store->check(h, l, cost, now) == want);
  }
}

TEST_CASE("checkBatch decides exactly like check in order, duplicates included") {
  auto a = makeStore();
  auto b = makeStore();
  const Limit l = mustMake(Algorithm::kGcra, 4, 1s);
  std::mt19937_64 rng(11);
  std::vector<KeyHash> keys;
  for (int i = 0; i < 50; ++i) keys.push_back(key(i));
  Time now = kStart;
  for (int round = 0; round < 200; ++round) {
    now += 37ms;
    std::vector<CheckRequest> batch(100);
    for (auto& r : batch) r = {keys[rng() % keys.size()], &l, rng() % 3};
    std::vector<Decision> out(batch.size());
    a->checkBatch(batch, now, out);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      REQUIRE(out[i] == b->check(batch[i].key, l, batch[i].cost, now));
    }
  }
}

TEST_CASE("recovered entries are dropped: memory follows the keys being limited now") {
  auto store = makeStore();
  const Limit l = mustMake(Algorithm::kTokenBucket, 10, 1s);
  for (int i = 0; i < 10'000; ++i) store->check(key(i), l, 1, kStart);
  CHECK(store->stats().entries == 10'000);
  const std::size_t grown = store->stats().table_bytes;

  // A cost-0 read of an unknown key stores nothing.
  store->check(key(-1), l, 0, kStart);
  CHECK(store->stats().entries == 10'000);

  // 1 token refills in 100 ms; after that every bucket is full and carries no information.
  const Time later = kStart + 200ms;
  std::size_t dropped = store->sweep(later, store->shardCount());
  CHECK(dropped == 10'000);
  CHECK(store->stats().entries == 0);
  CHECK(store->stats().table_bytes < grown / 10);

  // A lookup also drops a recovered entry it meets.
  store->check(key(1), l, 1, later);
  CHECK(store->stats().entries == 1);
  store->check(key(1), l, 0, later + 1s);
  CHECK(store->stats().entries == 0);
}

TEST_CASE("sweep keeps live state") {
  auto store = makeStore();
  const Limit slow = mustMake(Algorithm::kFixedWindow, 10, 3600s);
  const Limit fast = mustMake(Algorithm::kFixedWindow, 10, 1s);
  for (int i = 0; i < 1000; ++i) store->check(key(i), i % 2 ? slow : fast, 4, kStart);
  CHECK(store->sweep(kStart + 2s, store->shardCount()) == 500);
  CHECK(store->stats().entries == 500);
  for (int i = 1; i < 1000; i += 2) {
    const Decision d = store->check(key(i), slow, 0, kStart + 2s);
    CHECK(d.remaining == 6);
  }
}

TEST_CASE("a full store never drops a key in use: new keys are refused until entries recover") {
  // One shard, room for 100 entries: 90 exhausted users and 10 that spent 1 of 10.
  auto store = makeStore(100, 1);
  const Limit hour = mustMake(Algorithm::kFixedWindow, 10, 3600s);
  for (int i = 0; i < 90; ++i) REQUIRE(store->check(key(i), hour, 10, kStart).allowed);
  for (int i = 90; i < 100; ++i) REQUIRE(store->check(key(i), hour, 1, kStart).allowed);
  // A flood of distinct new keys: every one refused, none admitted, nothing dropped.
  for (int i = 100; i < 10'100; ++i) {
    const Decision d = store->check(key(i), hour, 1, kStart + 1s);
    CHECK_FALSE(d.allowed);
    CHECK(d.refused);
  }
  StoreStats st = store->stats();
  CHECK(st.entries == 100);
  CHECK(st.refused == 10'000);
  CHECK(st.evictions == 0);
  // The limited users are still limited, the others keep their count.
  for (int i = 0; i < 90; ++i) CHECK_FALSE(store->check(key(i), hour, 1, kStart + 2s).allowed);
  for (int i = 90; i < 100; ++i) {
    const Decision d = store->check(key(i), hour, 1, kStart + 2s);
    CHECK(d.allowed);
    CHECK(d.remaining == 8);
  }
  // Reads of a new key (cost 0) store nothing and are answered.
  CHECK_FALSE(store->check(key(20'000), hour, 0, kStart + 2s).refused);
  // Once the window has passed every entry has recovered: new keys take their places.
  for (int i = 10'100; i < 10'200; ++i) {
    CHECK(store->check(key(i), hour, 1, kStart + 3601s).allowed);
  }
  st = store->stats();
  CHECK(st.entries == 100);
  CHECK(st.refused == 10'000);
  CHECK(st.evictions == 0);
}

TEST_CASE("at the cap, recovered entries make room and entries in use stay") {
  auto store = makeStore(64, 1);
  const Limit hour = mustMake(Algorithm::kFixedWindow, 10, 3600s);
  const Limit minute = mustMake(Algorithm::kFixedWindow, 10, 60s);
  for (int i = 0; i < 32; ++i) store->check(key(i), hour, 1, kStart);
  for (int i = 32; i < 64; ++i) store->check(key(i), minute, 1, kStart);
  // A minute later the minute-long entries have recovered: 32 new keys fit, 33rd does not.
  for (int i = 64; i < 96; ++i) CHECK(store->check(key(i), hour, 1, kStart + 61s).allowed);
  CHECK(store->check(key(96), hour, 1, kStart + 61s).refused);
  for (int i = 0; i < 32; ++i) CHECK(store->get(key(i)).has_value());
  CHECK(store->stats().evictions == 0);
}

TEST_CASE("a restore into a full store keeps the entries in use and counts what it lost") {
  auto store = makeStore(16, 1);
  const Limit hour = mustMake(Algorithm::kFixedWindow, 10, 3600s);
  for (int i = 0; i < 16; ++i) store->check(key(i), hour, 5, kStart);
  State spent;
  (void)decide(hour, spent, 10, kStart);
  store->put(key(100), spent, kStart);
  CHECK_FALSE(store->get(key(100)).has_value());
  CHECK(store->stats().evictions == 1);
  for (int i = 0; i < 16; ++i) CHECK(store->get(key(i)).has_value());
}

TEST_CASE("get, put and erase") {
  auto store = makeStore();
  const Limit l = mustMake(Algorithm::kTokenBucket, 10, 1s);
  CHECK_FALSE(store->get(key(1)).has_value());
  store->check(key(1), l, 3, kStart);
  const auto s = store->get(key(1));
  REQUIRE(s.has_value());
  store->put(key(2), *s, kStart);
  CHECK(store->check(key(2), l, 0, kStart).remaining == 7);
  CHECK(store->erase(key(2)));
  CHECK_FALSE(store->erase(key(2)));
  CHECK(store->check(key(2), l, 0, kStart).remaining == 10);
}

TEST_CASE("concurrent hammering of one hot key admits exactly the limit") {
  auto store = makeStore();
  const Limit l = mustMake(Algorithm::kSlidingWindow, 50'000, 3600s);
  const KeyHash hot = key(42);
  std::atomic<std::uint64_t> allowed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      std::uint64_t mine = 0;
      for (int i = 0; i < 20'000; ++i) mine += store->check(hot, l, 1, kStart).allowed ? 1u : 0u;
      allowed += mine;
    });
  }
  for (auto& th : threads) th.join();
  CHECK(allowed.load() == 50'000);
}

TEST_CASE("concurrent checks over many keys stay exact per key while tables grow and sweep") {
  auto store = makeStore(1'000'000, 16);
  const Limit l = mustMake(Algorithm::kTokenBucket, 3, 3600s);
  const Limit brief = mustMake(Algorithm::kTokenBucket, 1, 1ms);
  constexpr int kKeys = 20'000;
  std::vector<std::atomic<int>> per_key(kKeys);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      for (int i = 0; i < 5 * kKeys; ++i) {
        const int k = static_cast<int>(rng() % kKeys);
        if (store->check(key(k), l, 1, kStart).allowed) per_key[static_cast<std::size_t>(k)]++;
        store->check(key(kKeys + i), brief, 1, kStart);  // short-lived churn for the sweeper
      }
    });
  }
  std::thread sweeper([&] {
    Time t = kStart + 10ms;
    while (!stop.load()) store->sweep(t, 4);
  });
  for (auto& th : threads) th.join();
  stop = true;
  sweeper.join();
  // Every key got at most its limit of 3, and each key seen often enough got exactly 3.
  for (int k = 0; k < kKeys; ++k) {
    const Decision d = store->check(key(k), l, 0, kStart);
    CHECK(per_key[static_cast<std::size_t>(k)].load() == static_cast<int>(3 - d.remaining));
  }
}
