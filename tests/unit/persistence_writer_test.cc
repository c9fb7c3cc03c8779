// SnapshotWriter against the in-memory fake store: deterministic (flushOnce() on the test thread,
// failures and held completions switched by the test).
#include <doctest/doctest.h>

#include <atomic>
#include <random>
#include <thread>

#include "limiter/clock.h"
#include "persistence/fake_snapshot_store.h"
#include "persistence/snapshot_writer.h"
#include "tests/unit/persistence_test_support.h"

using namespace throttlex;
using namespace throttlex::persistence;
using namespace throttlex::persistence::testing;
using namespace std::chrono_literals;

namespace {

const Time kNow = Time(std::chrono::milliseconds(1'700'000'000'000));
constexpr std::int64_t kNowMs = 1'700'000'000'000;

std::unique_ptr<SnapshotWriter> mustMake(SnapshotStore& store, const Clock& clock,
                                         SnapshotWriterOptions o = {}) {
  auto w = SnapshotWriter::make(store, clock, o);
  REQUIRE(w.ok());
  return std::move(w).value();
}

void mark(SnapshotWriter& w, const SnapshotEntry& e) {
  w.markDirty(e.slot, e.key, e.state, e.expiry_ms);
}

}  // namespace

TEST_CASE("options are validated") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  CHECK_FALSE(SnapshotWriter::make(store, clock, {.interval = 0ms}).ok());
  CHECK_FALSE(SnapshotWriter::make(store, clock, {.max_pending = 0}).ok());
  CHECK_FALSE(SnapshotWriter::make(store, clock, {.batch_entries = 0}).ok());
  CHECK_FALSE(SnapshotWriter::make(store, clock, {.shards = 3}).ok());
}

TEST_CASE("a flush writes every pending entry and empties the pending set") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock);
  std::mt19937_64 rng(1);
  std::vector<SnapshotEntry> entries;
  for (int i = 0; i < 100; ++i)
    entries.push_back(entry(static_cast<std::uint32_t>(i % 7), rng, kNowMs + 1000));
  for (const auto& e : entries) mark(*w, e);
  CHECK(w->stats().pending == 100);
  CHECK(w->flushOnce());
  CHECK(w->stats().pending == 0);
  CHECK(w->stats().entries_written == 100);
  CHECK(w->stats().flushes == 1);
  CHECK(w->stats().lag == 0ms);
  for (const auto& e : entries) CHECK(store.get(e.key) == e);
}

TEST_CASE("marking a key again keeps only the newest state") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock);
  std::mt19937_64 rng(2);
  SnapshotEntry e = entry(5, rng, kNowMs + 1000, 1);
  mark(*w, e);
  e.state.w1 = 2;
  mark(*w, e);
  e.state.w1 = 3;
  mark(*w, e);
  CHECK(w->stats().pending == 1);
  CHECK(w->flushOnce());
  CHECK(store.writeCalls() == 1);
  CHECK(store.get(e.key)->state.w1 == 3);
}

TEST_CASE("entries are sent in batches of batch_entries") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock, {.batch_entries = 10});
  std::mt19937_64 rng(3);
  for (int i = 0; i < 95; ++i) mark(*w, entry(1, rng, kNowMs + 1000));
  CHECK(w->flushOnce());
  CHECK(store.writeCalls() == 10);
  CHECK(store.largestWrite() == 10);
  CHECK(store.size() == 95);
}

TEST_CASE("failed writes stay pending and are written after the store recovers") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock, {.batch_entries = 7});
  std::mt19937_64 rng(4);
  std::vector<SnapshotEntry> entries;
  for (int i = 0; i < 50; ++i) entries.push_back(entry(2, rng, kNowMs + 1000));
  for (const auto& e : entries) mark(*w, e);

  store.setFailure(Error{ErrorCode::kDeadlineExceeded, "slow"});  // connected, but failing
  CHECK_FALSE(w->flushOnce());
  CHECK(w->stats().pending == 50);
  CHECK(w->stats().failed_flushes == 1);
  CHECK(w->stats().write_errors == 8);
  CHECK(store.size() == 0);

  store.setFailure(std::nullopt);
  CHECK(w->flushOnce());
  CHECK(w->stats().pending == 0);
  for (const auto& e : entries) CHECK(store.get(e.key) == e);
}

TEST_CASE("while the store is disconnected, flushes are skipped and entries wait") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock);
  std::mt19937_64 rng(5);
  mark(*w, entry(3, rng, kNowMs + 1000));
  store.setFailure(Error{ErrorCode::kUnavailable, "down"});
  CHECK_FALSE(w->flushOnce());
  CHECK(w->stats().skipped_flushes == 1);
  CHECK(store.writeCalls() == 0);
  CHECK(w->stats().pending == 1);
  store.setFailure(std::nullopt);
  CHECK(w->flushOnce());
  CHECK(store.size() == 1);
}

TEST_CASE("a key marked while its failed write was in flight keeps the newer state") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock);
  std::mt19937_64 rng(6);
  SnapshotEntry e = entry(4, rng, kNowMs + 1000, 1);
  mark(*w, e);

  store.setHold(true);
  store.setFailure(Error{ErrorCode::kDeadlineExceeded, "slow"});
  std::thread flusher([&] { CHECK_FALSE(w->flushOnce()); });
  REQUIRE(store.waitHeld(1, 5s));  // the flush took the entry and is writing it
  CHECK(w->stats().pending == 0);
  e.state.w1 = 2;
  mark(*w, e);  // newer, during the flush
  CHECK(store.release() == 1);
  flusher.join();
  CHECK(w->stats().failed_flushes == 1);
  store.setHold(false);
  store.setFailure(std::nullopt);
  CHECK(w->stats().pending == 1);
  CHECK(w->flushOnce());
  CHECK(store.get(e.key)->state.w1 == 2);
}

TEST_CASE("pending entries are capped: new keys are dropped and counted, updates never") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock, {.max_pending = 100, .shards = 1});
  std::mt19937_64 rng(7);
  std::vector<SnapshotEntry> kept;
  for (int i = 0; i < 100; ++i) {
    kept.push_back(entry(6, rng, kNowMs + 1000));
    mark(*w, kept.back());
  }
  for (int i = 0; i < 50; ++i) mark(*w, entry(6, rng, kNowMs + 1000));
  CHECK(w->stats().pending == 100);
  CHECK(w->stats().dropped == 50);
  kept[0].state.w1 = 99;
  mark(*w, kept[0]);  // an update of a pending key is accepted at the cap
  CHECK(w->stats().dropped == 50);
  CHECK(w->flushOnce());
  CHECK(store.get(kept[0].key)->state.w1 == 99);
}

TEST_CASE("a burst's pending memory is given back within a few flushes; a steady load keeps its") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock, {.max_pending = 100'000, .shards = 1});
  std::mt19937_64 rng(11);
  const std::size_t idle_bytes = w->stats().pending_bytes;
  for (int i = 0; i < 20'000; ++i)
    mark(*w, entry(static_cast<std::uint32_t>(i % 64), rng, kNowMs + 1000));
  const std::size_t burst_bytes = w->stats().pending_bytes;
  CHECK(burst_bytes >= 20'000 * 40);
  REQUIRE(w->flushOnce());
  CHECK(store.size() == 20'000);

  // Steady: the same number marked every interval; the table settles and stays.
  std::vector<std::size_t> steady;
  for (int interval = 0; interval < 30; ++interval) {
    for (int i = 0; i < 500; ++i)
      mark(*w, entry(static_cast<std::uint32_t>(i % 64), rng, kNowMs + 1000));
    steady.push_back(w->stats().pending_bytes);
    REQUIRE(w->flushOnce());
  }
  CHECK(steady.back() < burst_bytes / 10);
  CHECK(steady.back() >= 500 * 40);
  for (std::size_t i = 20; i < steady.size(); ++i) CHECK(steady[i] == steady.back());

  // Idle: back to the smallest table.
  for (int interval = 0; interval < 20; ++interval) REQUIRE(w->flushOnce());
  CHECK(w->stats().pending_bytes <= std::max<std::size_t>(idle_bytes, 64 * 64));
  CHECK(w->stats().pending == 0);
}

TEST_CASE("the batches in flight halve after a failed wave and grow by one after each full one") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock, {.batch_entries = 10, .shards = 1});
  std::mt19937_64 rng(13);
  for (int i = 0; i < 400; ++i) {
    mark(*w, entry(static_cast<std::uint32_t>(i % 64), rng, kNowMs + 1000));  // 40 batches
  }
  CHECK(w->stats().wave == 16);

  store.setFailure(Error{ErrorCode::kDeadlineExceeded, "slow"});  // connected, but too slow
  CHECK_FALSE(w->flushOnce());  // waves of 16, 8, 4, 2, then 1 at a time
  CHECK(w->stats().wave == 1);
  CHECK(w->stats().pending == 400);
  CHECK(store.writeCalls() == 40);  // every batch was still tried once

  store.setFailure(std::nullopt);
  CHECK(w->flushOnce());  // waves of 1, 2, ..., 8 (36 batches), then the last 4
  CHECK(w->stats().wave == 10);
  CHECK(store.size() == 400);
  CHECK(store.writeCalls() == 80);
}

TEST_CASE("lag is the age of the oldest unwritten change") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock);
  std::mt19937_64 rng(8);
  CHECK(w->stats().lag == 0ms);
  mark(*w, entry(1, rng, kNowMs + 1000));
  clock.advance(20ms);
  CHECK(w->stats().lag == 20ms);
  mark(*w, entry(2, rng, kNowMs + 1000));  // a younger change does not make the lag younger
  clock.advance(5ms);
  CHECK(w->stats().lag == 25ms);
  store.setFailure(Error{ErrorCode::kDeadlineExceeded, "slow"});
  CHECK_FALSE(w->flushOnce());
  CHECK(w->stats().lag == 25ms);  // a failed write keeps the original age
  store.setFailure(std::nullopt);
  CHECK(w->flushOnce());
  CHECK(w->stats().lag == 0ms);
}

TEST_CASE("the flush thread writes every interval, on request, and on stop") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  store.setLatency(1ms);  // completions arrive from another thread
  auto w = mustMake(store, clock, {.interval = 10ms});
  w->start();
  std::mt19937_64 rng(9);
  mark(*w, entry(1, rng, kNowMs + 1000));
  REQUIRE(store.waitDelivered(1, 5s));  // the first interval's flush
  CHECK(store.size() == 1);

  auto slow = mustMake(store, clock, {.interval = 1h});
  slow->start();
  mark(*slow, entry(2, rng, kNowMs + 1000));
  slow->requestFlush();
  REQUIRE(store.waitDelivered(2, 5s));  // at once, not after an hour
  CHECK(store.size() == 2);
  mark(*slow, entry(2, rng, kNowMs + 1000));
  slow->stop();  // flushes what is left
  CHECK(store.size() == 3);
  w->stop();
}

TEST_CASE("markDirty from many threads while flushing loses no newest state") {
  ManualClock clock(kNow);
  FakeSnapshotStore store(clock);
  auto w = mustMake(store, clock, {.interval = 1ms, .batch_entries = 64});
  w->start();
  constexpr int kThreads = 4;
  constexpr int kKeys = 500;
  std::vector<std::vector<SnapshotEntry>> last(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(100 + t));
      std::vector<SnapshotEntry> keys;
      for (int i = 0; i < kKeys; ++i)
        keys.push_back(entry(static_cast<std::uint32_t>(i % 64), rng, kNowMs + 1000));
      for (std::uint64_t round = 1; round <= 20; ++round) {
        for (auto& e : keys) {
          e.state.w1 = round;
          mark(*w, e);
        }
      }
      last[static_cast<std::size_t>(t)] = keys;
    });
  }
  for (auto& t : threads) t.join();
  w->stop();
  CHECK(w->stats().pending == 0);
  for (const auto& keys : last) {
    for (const auto& e : keys) {
      auto got = store.get(e.key);
      REQUIRE(got);
      CHECK(got->state.w1 == 20);
    }
  }
}
