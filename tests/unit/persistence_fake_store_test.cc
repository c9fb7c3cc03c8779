// The in-memory SnapshotStore: the semantics every SnapshotStore promises, and its fault switches.
#include <doctest/doctest.h>

#include <random>

#include "limiter/clock.h"
#include "persistence/fake_snapshot_store.h"
#include "tests/unit/persistence_test_support.h"

using namespace throttlex;
using namespace throttlex::persistence;
using namespace throttlex::persistence::testing;
using namespace std::chrono_literals;

namespace {
constexpr std::int64_t kNowMs = 1'700'000'000'000;
}

TEST_CASE("fake store: reads return the live entries of the asked slots only") {
  ManualClock clock{Time(std::chrono::milliseconds(kNowMs))};
  FakeSnapshotStore store(clock);
  std::mt19937_64 rng(1);
  const SnapshotEntry a = entry(1, rng, kNowMs + 100);
  const SnapshotEntry b = entry(2, rng, kNowMs + 200);
  const SnapshotEntry c = entry(3, rng, kNowMs + 100);
  REQUIRE(writeSync(store, {a, b, c}).ok());
  auto r = readSync(store, {1, 2});
  REQUIRE(r.ok());
  CHECK(r->size() == 2);

  clock.advance(150ms);  // a expired
  r = readSync(store, {1, 2});
  REQUIRE(r.ok());
  REQUIRE(r->size() == 1);
  CHECK((*r)[0] == b);

  SnapshotEntry gone = b;
  gone.expiry_ms = kNowMs;  // writing an expired entry deletes the key
  REQUIRE(writeSync(store, {gone}).ok());
  CHECK_FALSE(store.get(b.key));
}

TEST_CASE("fake store: malformed planted entries are skipped and counted") {
  ManualClock clock{Time(std::chrono::milliseconds(kNowMs))};
  FakeSnapshotStore store(clock);
  std::mt19937_64 rng(2);
  SnapshotEntry wrong_slot = entry(7, rng, kNowMs + 100);
  wrong_slot.slot = 8;
  SnapshotEntry empty_state = entry(8, rng, kNowMs + 100);
  empty_state.state = State{};
  store.plant(wrong_slot);
  store.plant(empty_state);
  store.plant(entry(8, rng, kNowMs + 100));
  auto r = readSync(store, {8});
  REQUIRE(r.ok());
  CHECK(r->size() == 1);
  CHECK(store.stats().malformed == 2);
}

TEST_CASE("fake store: failures and held completions") {
  ManualClock clock{Time(std::chrono::milliseconds(kNowMs))};
  FakeSnapshotStore store(clock);
  std::mt19937_64 rng(3);
  store.setFailure(Error{ErrorCode::kUnavailable, "down"});
  CHECK_FALSE(store.stats().connected);
  auto s = writeSync(store, {entry(1, rng, kNowMs + 100)});
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code == ErrorCode::kUnavailable);
  CHECK(store.stats().errors == 1);
  store.setFailure(std::nullopt);

  store.setHold(true);
  bool done = false;
  store.write({entry(1, rng, kNowMs + 100)}, [&](Status st) { done = st.ok(); });
  CHECK_FALSE(done);
  CHECK(store.size() == 0);
  CHECK(store.release() == 1);
  CHECK(done);
  CHECK(store.size() == 1);
}
