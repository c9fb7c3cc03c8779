// Helpers for the persistence tests: entries with chosen slots and blocking wrappers around the
// asynchronous store calls (bounded waits). The real redis-server is in tests/redis/.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "limiter/clock.h"
#include "limiter/key.h"
#include "limiter/state.h"
#include "persistence/snapshot_store.h"

namespace throttlex::persistence::testing {

using namespace std::chrono_literals;

// A state of algorithm `a` whose expiry is `expiry_ms` (payload w1 as given).
inline State makeState(Algorithm a, std::int64_t expiry_ms, std::uint64_t w1 = 1) {
  State s;
  s.w0 = (std::uint64_t{static_cast<std::uint8_t>(a)} << 61) |
         (static_cast<std::uint64_t>(expiry_ms) << 18);
  s.w1 = w1;
  return s;
}

// A key hash in `slot` (the slot is the top 12 bits of lo), other bits from `rng`.
inline KeyHash keyInSlot(std::uint32_t slot, std::mt19937_64& rng) {
  const std::uint64_t low_mask = (std::uint64_t{1} << kSlotShift) - 1;
  return KeyHash{rng() | 1, (std::uint64_t{slot} << kSlotShift) | (rng() & low_mask)};
}

inline SnapshotEntry entry(std::uint32_t slot, std::mt19937_64& rng, std::int64_t expiry_ms,
                           std::uint64_t w1 = 1) {
  return {slot, keyInSlot(slot, rng), makeState(Algorithm::kTokenBucket, expiry_ms, w1), expiry_ms};
}

inline Status writeSync(SnapshotStore& store, std::vector<SnapshotEntry> entries) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  store.write(std::move(entries), [p](Status s) { p->set_value(std::move(s)); });
  if (f.wait_for(20s) != std::future_status::ready) {
    return Error{ErrorCode::kInternal, "write callback never came"};
  }
  return f.get();
}

inline Result<std::vector<SnapshotEntry>> readSync(SnapshotStore& store,
                                                   std::vector<std::uint32_t> slots) {
  using R = Result<std::vector<SnapshotEntry>>;
  auto p = std::make_shared<std::promise<R>>();
  auto f = p->get_future();
  store.readSlots(std::move(slots), [p](R r) { p->set_value(std::move(r)); });
  if (f.wait_for(20s) != std::future_status::ready) {
    return Error{ErrorCode::kInternal, "read callback never came"};
  }
  return f.get();
}

}  // namespace throttlex::persistence::testing
