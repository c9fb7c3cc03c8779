// Concurrency limits: leases acquired, released and expired in the store, and merged on restore
// and handoff without a unit granted twice (limiter/lease.h).
#include <doctest/doctest.h>

#include <optional>
#include <random>
#include <set>
#include <vector>

#include "limiter/lease.h"
#include "limiter/store.h"
#include "persistence/merge.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

const Time kStart = Time(std::chrono::seconds(1'700'000'000));

Limit concurrency(std::uint64_t limit, Duration ttl) {
  auto l = Limit::make({Algorithm::kConcurrency, limit, ttl, 0});
  REQUIRE(l.ok());
  return *l;
}

std::unique_ptr<Store> makeStore(std::size_t max_entries = 100'000) {
  auto s = Store::make({max_entries, 64});
  REQUIRE(s.ok());
  return std::move(*s);
}

const KeyHash kKey = hashKey("db", "tenant-1", Algorithm::kConcurrency, 30s);

}  // namespace

TEST_CASE("concurrency limits are validated") {
  CHECK(Limit::make({Algorithm::kConcurrency, 65535, 30s, 0}).ok());
  const auto big = Limit::make({Algorithm::kConcurrency, 65536, 30s, 0});
  REQUIRE_FALSE(big.ok());
  CHECK(big.error().message.find("65535") != std::string::npos);
  CHECK_FALSE(Limit::make({Algorithm::kConcurrency, 5, 30s, 10}).ok());  // no burst
  CHECK(parseAlgorithm("concurrency").ok());
}

TEST_CASE("at most `limit` leases are held; a release gives the slot back once") {
  auto store = makeStore();
  const Limit l = concurrency(3, 30s);
  std::vector<std::uint64_t> ids;
  for (std::uint64_t id = 1; id <= 3; ++id) {
    const Decision d = store->acquire(kKey, l, 1, id, kStart);
    REQUIRE(d.allowed);
    CHECK(d.remaining == 3 - id);
  }
  const Decision full = store->acquire(kKey, l, 1, 4, kStart + 1s);
  CHECK_FALSE(full.allowed);
  CHECK(full.remaining == 0);
  // Nothing is released: the slots come back when the oldest lease expires.
  CHECK(full.retry_after ==
        Duration(leaseExpiryMs(l, kStart) * 1'000'000) - (kStart + 1s).time_since_epoch());

  Decision counter;
  CHECK(store->release(kKey, l, 2, kStart + 2s, counter) == LeaseRelease::kReleased);
  CHECK(counter.remaining == 1);
  CHECK(store->release(kKey, l, 2, kStart + 2s, counter) == LeaseRelease::kAlreadyReleased);
  CHECK(counter.remaining == 1);
  CHECK(store->release(kKey, l, 99, kStart + 2s, counter) == LeaseRelease::kUnknown);
  CHECK(counter.remaining == 1);
  CHECK(store->acquire(kKey, l, 1, 5, kStart + 3s).allowed);
  CHECK_FALSE(store->acquire(kKey, l, 1, 6, kStart + 3s).allowed);
}

TEST_CASE("a lease expires between its time to live and a third more, and then frees its slot") {
  auto store = makeStore();
  const Limit l = concurrency(1, 30s);
  REQUIRE(store->acquire(kKey, l, 1, 7, kStart).allowed);
  const std::int64_t expiry_ms = leaseExpiryMs(l, kStart);
  const std::int64_t start_ms = kStart.time_since_epoch() / 1ms;
  CHECK(expiry_ms >= start_ms + 30'000);
  CHECK(expiry_ms <= start_ms + 40'000);
  const Time before = Time(std::chrono::milliseconds(expiry_ms - 1));
  const Time after = Time(std::chrono::milliseconds(expiry_ms));
  CHECK_FALSE(store->acquire(kKey, l, 1, 8, before).allowed);
  CHECK(store->acquire(kKey, l, 1, 9, after).allowed);
  Decision counter;
  // The expired lease's release is harmless: lease 9's slot stays held.
  CHECK(store->release(kKey, l, 7, after, counter) == LeaseRelease::kExpired);
  CHECK(counter.remaining == 0);
}

TEST_CASE("a weighted lease holds and returns all its units") {
  auto store = makeStore();
  const Limit l = concurrency(10, 1s);
  REQUIRE(store->acquire(kKey, l, 7, 1, kStart).allowed);
  CHECK_FALSE(store->acquire(kKey, l, 4, 2, kStart).allowed);
  CHECK(store->acquire(kKey, l, 0, 0, kStart).allowed);  // a read: one more fits
  Decision counter;
  REQUIRE(store->release(kKey, l, 1, kStart + 10ms, counter) == LeaseRelease::kReleased);
  CHECK(counter.remaining == 10);
}

TEST_CASE("an acquire whose lease cannot be stored is refused and holds nothing") {
  auto store = makeStore(64);  // one entry per shard
  const Limit l = concurrency(5, 30s);
  int refused = 0;
  for (std::uint64_t id = 1; id <= 50; ++id) {
    const KeyHash k = hashKey("db", "t" + std::to_string(id), l);
    const Decision d = store->acquire(k, l, 1, id, kStart);
    if (d.refused) {
      ++refused;
      // The counter (if it was stored) holds nothing for the refused acquire: its unit was given
      // back, and there is no lease to release.
      if (const std::optional<State> held = store->get(k)) CHECK(view(*held).count == 0);
      Decision counter;
      CHECK(store->release(k, l, id, kStart, counter) == LeaseRelease::kUnknown);
    }
  }
  CHECK(refused > 0);
}

TEST_CASE("a renewed lease outlives its first time to live, holds its slot and releases once") {
  auto store = makeStore();
  const Limit l = concurrency(1, 30s);
  REQUIRE(store->acquire(kKey, l, 1, 7, kStart).allowed);
  const std::int64_t first_expiry = leaseExpiryMs(l, kStart);
  Decision counter;
  std::int64_t expiry_ms = 0;
  REQUIRE(store->renew(kKey, l, 7, kStart + 20s, counter, expiry_ms) == LeaseRenewal::kRenewed);
  CHECK(expiry_ms == leaseExpiryMs(l, kStart + 20s));
  CHECK(expiry_ms > first_expiry);
  CHECK(counter.remaining == 0);
  // Past its first expiry the slot is still held, by the same lease.
  const Time after_first = Time(std::chrono::milliseconds(first_expiry));
  CHECK_FALSE(store->acquire(kKey, l, 1, 8, after_first).allowed);
  CHECK(store->release(kKey, l, 7, after_first, counter) == LeaseRelease::kReleased);
  CHECK(counter.remaining == 1);
  CHECK(store->renew(kKey, l, 7, after_first, counter, expiry_ms) == LeaseRenewal::kReleased);
  CHECK(store->renew(kKey, l, 99, after_first, counter, expiry_ms) == LeaseRenewal::kUnknown);
  REQUIRE(store->acquire(kKey, l, 1, 9, after_first).allowed);
  CHECK(counter.remaining == 1);  // the failed renewals changed nothing
  // A lease that expired cannot be renewed; its slot is free for others.
  const Time late = Time(std::chrono::milliseconds(leaseExpiryMs(l, after_first)));
  CHECK(store->renew(kKey, l, 9, late, counter, expiry_ms) == LeaseRenewal::kExpired);
  CHECK(counter.remaining == 1);
  CHECK(store->acquire(kKey, l, 1, 10, late).allowed);
}

TEST_CASE("a renewal within the lease's own generation changes nothing but keeps it held") {
  auto store = makeStore();
  const Limit l = concurrency(2, 30s);
  REQUIRE(store->acquire(kKey, l, 2, 5, kStart).allowed);
  Decision counter;
  std::int64_t expiry_ms = 0;
  REQUIRE(store->renew(kKey, l, 5, kStart + 1ms, counter, expiry_ms) == LeaseRenewal::kRenewed);
  CHECK(expiry_ms == leaseExpiryMs(l, kStart));
  CHECK(counter.remaining == 0);
  CHECK(store->release(kKey, l, 5, kStart + 2ms, counter) == LeaseRelease::kReleased);
  CHECK(counter.remaining == 2);
}

TEST_CASE("random acquires, releases, renewals and expiries never hold more than the limit") {
  // Against a model: the set of live leases with their expiries.
  auto store = makeStore();
  std::mt19937_64 rng(11);
  const Limit l = concurrency(5, 90ms);
  struct Held {
    std::uint64_t id;
    std::int64_t expiry_ms;
  };
  std::vector<Held> held;
  Time now = kStart;
  std::uint64_t next_id = 1;
  for (int i = 0; i < 20'000; ++i) {
    now += std::chrono::milliseconds(rng() % 7);
    const std::int64_t now_ms = now.time_since_epoch() / 1ms;
    std::erase_if(held, [&](const Held& h) { return h.expiry_ms <= now_ms; });
    if (rng() % 2 == 0 || held.empty()) {
      const std::uint64_t id = next_id++;
      const Decision d = store->acquire(kKey, l, 1, id, now);
      CHECK(d.allowed == (held.size() < 5));
      if (d.allowed) held.push_back({id, leaseExpiryMs(l, now)});
    } else if (rng() % 2 == 0) {
      const std::size_t which = rng() % held.size();
      Decision counter;
      CHECK(store->release(kKey, l, held[which].id, now, counter) == LeaseRelease::kReleased);
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(which));
      CHECK(counter.remaining == 5 - held.size());
    } else {
      Held& h = held[rng() % held.size()];
      Decision counter;
      std::int64_t expiry_ms = 0;
      CHECK(store->renew(kKey, l, h.id, now, counter, expiry_ms) == LeaseRenewal::kRenewed);
      CHECK(expiry_ms == leaseExpiryMs(l, now));
      h.expiry_ms = expiry_ms;
      CHECK(counter.remaining == 5 - held.size());
    }
  }
}

TEST_CASE("merging lease states never frees a held unit or revives a released lease") {
  const Limit l = concurrency(100, 30s);
  State a;
  State b;
  // Two views of one counter: b acquired one more in the same generation.
  decide(l, a, 3, kStart);
  b = a;
  decide(l, b, 1, kStart + 1ms);
  CHECK(view(persistence::moreConsumed(a, b)).count == 4);
  CHECK(view(persistence::moreConsumed(b, a)).count == 4);
  // Different generations: what the older holds is kept, none of it dropped.
  State later = a;
  decide(l, later, 2, kStart + 11s);
  const State merged = persistence::moreConsumed(a, later);
  CHECK(view(merged).count >= view(later).count);
  State probe = merged;
  const Decision d = decide(l, probe, 0, kStart + 11s);
  CHECK(d.remaining <= 100 - 5);

  // Lease entries: released wins; of two held, the renewed (later) one.
  State held = leaseEntry(leaseExpiryMs(l, kStart), 42, 1);
  State released = held;
  std::uint64_t units = 0;
  std::int64_t expiry = 0;
  REQUIRE(releaseEntry(released, 42, kStart.time_since_epoch() / 1ms, units, expiry) ==
          LeaseRelease::kReleased);
  CHECK(persistence::moreConsumed(held, released) == released);
  CHECK(persistence::moreConsumed(released, held) == released);
  State renewed = held;
  REQUIRE(renewEntry(renewed, 42, kStart.time_since_epoch() / 1ms + 20'000,
                     leaseExpiryMs(l, kStart + 20s), units, expiry) == LeaseRenewal::kRenewed);
  CHECK(persistence::moreConsumed(held, renewed) == renewed);
  CHECK(persistence::moreConsumed(renewed, held) == renewed);
  CHECK(persistence::moreConsumed(renewed, released) == released);
}

TEST_CASE("a lease lives in its key's slot and is collected with it") {
  auto store = makeStore();
  const Limit l = concurrency(2, 30s);
  REQUIRE(store->acquire(kKey, l, 1, 123, kStart).allowed);
  CHECK(slotOf(leaseKey(kKey, 123)) == slotOf(kKey));
  CHECK_FALSE(leaseKey(kKey, 123) == leaseKey(kKey, 124));
  SlotSet slots;
  slots.set(slotOf(kKey));
  const auto entries = store->collect(slots, kStart, true);
  CHECK(entries.size() == 2);  // the counter and the lease
  // Handed to another node: the lease is held there and can be released there.
  auto other = makeStore();
  for (const auto& e : entries) other->merge(e.key, e.state, kStart, persistence::moreConsumed);
  CHECK(other->acquire(kKey, l, 1, 124, kStart).allowed);
  CHECK_FALSE(other->acquire(kKey, l, 1, 125, kStart).allowed);
  Decision counter;
  CHECK(other->release(kKey, l, 123, kStart + 1s, counter) == LeaseRelease::kReleased);
  CHECK(counter.remaining == 1);
}
