// RedisStore and SnapshotWriter against a real redis-server started by the test on a free
// loopback port (label `redis`). Waits are bounded polls; no sleep stands in for synchronisation.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <string>

#include "limiter/clock.h"
#include "persistence/redis_layout.h"
#include "persistence/redis_store.h"
#include "persistence/snapshot_writer.h"
#include "tests/redis/redis_server.h"

using namespace throttlex;
using namespace throttlex::persistence;
using namespace throttlex::persistence::testing;
using namespace std::chrono_literals;
namespace layout = throttlex::persistence::redis_layout;

namespace {

RedisStoreOptions optionsFor(int port) {
  RedisStoreOptions o;
  o.port = port;
  o.cluster = "test";
  o.connect_timeout = 300ms;
  o.command_timeout = 300ms;
  o.reconnect_min = 10ms;
  o.reconnect_max = 100ms;
  return o;
}

std::unique_ptr<RedisStore> connectedStore(const RedisStoreOptions& o, const Clock& clock) {
  auto s = RedisStore::make(o, clock);
  REQUIRE(s.ok());
  auto store = std::move(s).value();
  REQUIRE(eventually([&] { return store->stats().connected; }));
  return store;
}

std::map<std::pair<std::uint64_t, std::uint64_t>, SnapshotEntry> byKey(
    const std::vector<SnapshotEntry>& v) {
  std::map<std::pair<std::uint64_t, std::uint64_t>, SnapshotEntry> m;
  for (const auto& e : v) m[{e.key.hi, e.key.lo}] = e;
  return m;
}

}  // namespace

TEST_CASE("options are validated") {
  SystemClock clock;
  RedisStoreOptions o;
  o.cluster = "a{b}";
  CHECK_FALSE(RedisStore::make(o, clock).ok());
  o = {};
  o.port = 0;
  CHECK_FALSE(RedisStore::make(o, clock).ok());
  o = {};
  o.reconnect_max = 1ms;
  CHECK_FALSE(RedisStore::make(o, clock).ok());
}

TEST_CASE("writes of many slots read back exactly, per slot") {
  RedisServer redis;
  SystemClock clock;
  auto store = connectedStore(optionsFor(redis.port()), clock);
  std::mt19937_64 rng(1);
  const std::int64_t exp = nowMs() + 60'000;
  std::vector<SnapshotEntry> all;
  for (int i = 0; i < 3000; ++i) {
    all.push_back(
        entry(static_cast<std::uint32_t>(i % 40), rng, exp, static_cast<std::uint64_t>(i)));
  }
  REQUIRE(writeSync(*store, all).ok());
  CHECK(store->stats().entries_written == 3000);

  auto r = readSync(*store, {0, 1, 2});
  REQUIRE(r.ok());
  std::vector<SnapshotEntry> want;
  std::copy_if(all.begin(), all.end(), std::back_inserter(want),
               [](const auto& e) { return e.slot <= 2; });
  CHECK(r->size() == want.size());
  CHECK(byKey(*r) == byKey(want));

  // Rewriting a key replaces its entry; empty slots read as nothing.
  SnapshotEntry changed = all[0];
  changed.state.w1 = 12345;
  REQUIRE(writeSync(*store, {changed}).ok());
  r = readSync(*store, {0, 4000});
  REQUIRE(r.ok());
  CHECK(byKey(*r).at({changed.key.hi, changed.key.lo}) == changed);
  CHECK(r->size() == static_cast<std::size_t>(std::count_if(
                         all.begin(), all.end(), [](const auto& e) { return e.slot == 0; })));
  CHECK(store->stats().malformed == 0);
  CHECK(store->stats().latency.count == store->stats().commands);
}

TEST_CASE("expired entries are never read and vanish from Redis by themselves") {
  RedisServer redis;
  SystemClock clock;
  auto store = connectedStore(optionsFor(redis.port()), clock);
  RedisClient cli(redis.port());
  REQUIRE(cli.ok());
  std::mt19937_64 rng(2);
  const std::int64_t now = nowMs();
  // Slot 10: only short-lived entries. Slot 11: short and long-lived ones.
  std::vector<SnapshotEntry> short10, short11;
  for (int i = 0; i < 20; ++i) short10.push_back(entry(10, rng, now + 300));
  for (int i = 0; i < 20; ++i) short11.push_back(entry(11, rng, now + 300));
  const SnapshotEntry long11 = entry(11, rng, now + 60'000);
  std::vector<SnapshotEntry> all = short10;
  all.insert(all.end(), short11.begin(), short11.end());
  all.push_back(long11);
  REQUIRE(writeSync(*store, all).ok());
  CHECK(cli.integer({"HLEN", layout::hashKey("test", 11)}) == 21);

  // Reads drop expired entries at once, whatever Redis still holds.
  CHECK(eventually([&] {
    auto r = readSync(*store, {10, 11});
    return r.ok() && r->size() == 1 && (*r)[0] == long11;
  }));
  // Slot 10's keys expire as a whole (PEXPIREAT = last expiry + 1 ms).
  CHECK(eventually([&] {
    return cli.integer({"EXISTS", layout::hashKey("test", 10), layout::indexKey("test", 10)}) == 0;
  }));
  // Slot 11 keeps its long entry; the next write to the slot removes the expired ones.
  CHECK(cli.integer({"EXISTS", layout::hashKey("test", 11)}) == 1);
  REQUIRE(writeSync(*store, {entry(11, rng, nowMs() + 60'000)}).ok());
  CHECK(cli.integer({"HLEN", layout::hashKey("test", 11)}) == 2);
  CHECK(cli.integer({"ZCARD", layout::indexKey("test", 11)}) == 2);
  const long long ttl = cli.integer({"PTTL", layout::hashKey("test", 11)});
  CHECK(ttl > 50'000);
  CHECK(ttl <= 60'001);

  // Writing an expired state deletes the entry (and an emptied slot's keys).
  SnapshotEntry gone = long11;
  gone.expiry_ms = nowMs() - 1;
  REQUIRE(writeSync(*store, {gone}).ok());
  CHECK(cli.integer({"HLEN", layout::hashKey("test", 11)}) == 1);
}

TEST_CASE("malformed and foreign data in Redis is skipped and counted") {
  RedisServer redis;
  SystemClock clock;
  auto store = connectedStore(optionsFor(redis.port()), clock);
  RedisClient cli(redis.port());
  std::mt19937_64 rng(3);
  const std::int64_t exp = nowMs() + 60'000;
  const SnapshotEntry good = entry(20, rng, exp);
  REQUIRE(writeSync(*store, {good}).ok());

  const std::string h20 = layout::hashKey("test", 20);
  const SnapshotEntry other_slot = entry(21, rng, exp);
  cli.command({"HSET", h20, "short-field", layout::encodeValue(good.state, exp)});
  cli.command({"HSET", h20, layout::encodeField(keyInSlot(20, rng)), "not a value"});
  cli.command({"HSET", h20, layout::encodeField(keyInSlot(20, rng)), std::string(25, '\x07')});
  cli.command({"HSET", h20, layout::encodeField(other_slot.key),
               layout::encodeValue(other_slot.state, exp)});
  cli.command({"SET", layout::hashKey("test", 22), "a string where a hash belongs"});
  cli.command({"LPUSH", layout::indexKey("test", 23), "a list where a zset belongs"});

  auto r = readSync(*store, {20, 22});
  REQUIRE(r.ok());
  REQUIRE(r->size() == 1);
  CHECK((*r)[0] == good);
  CHECK(store->stats().malformed == 5);  // 4 bad fields + 1 foreign key

  // Writes replace foreign keys in our namespace instead of failing forever.
  const SnapshotEntry e22 = entry(22, rng, exp);
  const SnapshotEntry e23 = entry(23, rng, exp);
  REQUIRE(writeSync(*store, {e22, e23}).ok());
  CHECK(store->stats().malformed == 7);
  r = readSync(*store, {22, 23});
  REQUIRE(r.ok());
  CHECK(r->size() == 2);
}

TEST_CASE("a Redis that stops answering fails commands by their deadline, then reconnects") {
  RedisServer redis;
  SystemClock clock;
  auto store = connectedStore(optionsFor(redis.port()), clock);
  std::mt19937_64 rng(4);
  redis.pause();  // SIGSTOP: the socket stays open, nothing answers
  const auto t0 = clock.monotonic();
  const Status s = writeSync(*store, {entry(30, rng, nowMs() + 60'000)});
  const auto took = clock.monotonic() - t0;
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code == ErrorCode::kDeadlineExceeded);
  CHECK(took >= 250ms);
  CHECK(took < 2s);
  CHECK(store->stats().timeouts >= 1);
  // Connect attempts now time out too (the kernel accepts, Redis never answers SCRIPT LOAD).
  CHECK(eventually([&] { return store->stats().timeouts >= 2; }));
  CHECK_FALSE(store->stats().connected);
  redis.resume();
  CHECK(eventually([&] { return store->stats().connected; }));
  CHECK(store->stats().reconnects >= 1);
  CHECK(writeSync(*store, {entry(30, rng, nowMs() + 60'000)}).ok());
}

TEST_CASE("Redis killed mid-run: callers never block, pending stays bounded, writes resume") {
  RedisServer redis;
  SystemClock clock;
  auto store = connectedStore(optionsFor(redis.port()), clock);
  auto made = SnapshotWriter::make(
      *store, clock, {.interval = 20ms, .max_pending = 2'000, .batch_entries = 500, .shards = 16});
  REQUIRE(made.ok());
  auto writer = std::move(made).value();
  writer->start();
  std::mt19937_64 rng(5);
  const std::int64_t exp = nowMs() + 120'000;

  std::vector<SnapshotEntry> first;
  for (int i = 0; i < 500; ++i)
    first.push_back(entry(static_cast<std::uint32_t>(i % 50), rng, exp));
  for (const auto& e : first) writer->markDirty(e.slot, e.key, e.state, e.expiry_ms);
  REQUIRE(eventually([&] { return writer->stats().entries_written >= 500; }));

  redis.stop();  // kill -9
  REQUIRE(eventually([&] { return !store->stats().connected; }));

  // Direct writes fail at once, on this thread.
  std::chrono::nanoseconds worst_write{0};
  for (int i = 0; i < 200; ++i) {
    bool failed = false;
    const auto t0 = clock.monotonic();
    store->write({entry(1, rng, exp)}, [&](Status st) { failed = !st.ok(); });
    worst_write = std::max(worst_write, clock.monotonic() - t0);
    CHECK(failed);
  }
  // markDirty: updates of the first keys plus many new keys, past the cap.
  std::vector<SnapshotEntry> updates = first;
  for (auto& e : updates) e.state.w1 = 77;
  std::vector<SnapshotEntry> fresh;
  for (int i = 0; i < 5'000; ++i)
    fresh.push_back(entry(static_cast<std::uint32_t>(i % 50), rng, exp));
  std::chrono::nanoseconds total_mark{0};
  std::chrono::nanoseconds worst_mark{0};
  for (const auto* batch : {&updates, &fresh}) {
    for (const auto& e : *batch) {
      const auto t0 = clock.monotonic();
      writer->markDirty(e.slot, e.key, e.state, e.expiry_ms);
      const auto d = clock.monotonic() - t0;
      total_mark += d;
      worst_mark = std::max(worst_mark, d);
    }
  }
  const double mean_mark_ns = static_cast<double>(total_mark.count()) / 5'500.0;
  MESSAGE("while Redis is down: worst write() "
          << worst_write.count() / 1000 << " us, markDirty mean " << mean_mark_ns << " ns, worst "
          << worst_mark.count() / 1000 << " us");
  // Microseconds in practice (the figure is for docs/benchmarks.md); what is asserted is that no
  // call waits for Redis: a blocked call would take the command timeout (300 ms) at least. A
  // loaded 2-core machine can stall any thread for milliseconds, so no tighter bound here.
  CHECK(worst_write < 250ms);
  CHECK(mean_mark_ns < 20'000.0);
  const SnapshotWriterStats down = writer->stats();
  CHECK(down.pending <= 2'000);
  CHECK(down.pending >= 500);
  CHECK(down.dropped >= 3'500);
  CHECK(eventually([&] { return writer->stats().lag >= 50ms; }));

  REQUIRE(redis.start());  // same port
  CHECK(eventually([&] {
    return store->stats().connected && writer->stats().pending == 0 && writer->stats().lag == 0ms;
  }));
  CHECK(store->stats().reconnects >= 1);

  std::vector<std::uint32_t> slots;
  for (std::uint32_t s = 0; s < 50; ++s) slots.push_back(s);
  auto r = readSync(*store, slots);
  REQUIRE(r.ok());
  const auto got = byKey(*r);
  // Redis lost everything with the kill; every update made while it was down is there now.
  for (const auto& e : updates) {
    auto it = got.find({e.key.hi, e.key.lo});
    REQUIRE(it != got.end());
    CHECK(it->second == e);
  }
  CHECK(got.size() == down.pending);
  writer->stop();
}

TEST_CASE("Redis memory per live entry") {
  RedisServer redis;
  SystemClock clock;
  // Writes of 10,000 entries: the 300 ms deadline of the fault tests is not what this measures,
  // and a loaded 2-core machine exceeded it.
  RedisStoreOptions options = optionsFor(redis.port());
  options.command_timeout = std::chrono::seconds(10);
  auto store = connectedStore(options, clock);
  RedisClient cli(redis.port());
  std::mt19937_64 rng(6);
  const std::int64_t exp = nowMs() + 600'000;
  constexpr int kEntries = 100'000;
  // ~24 entries per slot (100k live keys over all 4096 slots: listpack encoding), ~244 per slot
  // (what 1M live keys give: hashtable + skiplist with Redis' default thresholds of 128), and ~244
  // per slot with the listpack thresholds raised to 512 (docs/persistence.md, "Memory").
  struct Variant {
    std::uint32_t slots;
    std::string listpack_entries;
  };
  for (const Variant& v : {Variant{4096, "128"}, Variant{410, "128"}, Variant{410, "512"}}) {
    const std::uint32_t slots = v.slots;
    cli.command({"CONFIG", "SET", "hash-max-listpack-entries", v.listpack_entries});
    cli.command({"CONFIG", "SET", "zset-max-listpack-entries", v.listpack_entries});
    REQUIRE(cli.command({"FLUSHALL"}));
    const long long before = cli.usedMemory();
    std::vector<SnapshotEntry> all;
    for (int i = 0; i < kEntries; ++i)
      all.push_back(entry(static_cast<std::uint32_t>(i) % slots, rng, exp));
    for (std::size_t i = 0; i < all.size(); i += 10'000) {
      REQUIRE(writeSync(*store, std::vector<SnapshotEntry>(
                                    all.begin() + static_cast<std::ptrdiff_t>(i),
                                    all.begin() + static_cast<std::ptrdiff_t>(i + 10'000)))
                  .ok());
    }
    const long long after = cli.usedMemory();
    const double per_key = static_cast<double>(after - before) / kEntries;
    MESSAGE(kEntries << " entries in " << slots << " slots, listpack up to " << v.listpack_entries
                     << " entries: " << per_key << " bytes per live entry");
    CHECK(per_key > 20.0);
    CHECK(per_key < 300.0);
  }
}
