// The snapshot store: where owners write their state behind, and where a node that gains slots
// reads it back (docs/persistence.md). Redis is the real implementation (redis_store.h);
// FakeSnapshotStore (fake_snapshot_store.h) is the in-memory one for tests.
//
// Contracts, for every implementation:
//  - write() and readSlots() never block on I/O: they hand the work to the store and return at once
//    (microseconds). A store that cannot reach its backend fails the call through its callback.
//  - `done` is called exactly once per call, on a thread of the store's choosing, possibly before
//  the
//    call returns (a fake, or a fast failure). It must not block; it may call into the store again.
//  - Entries are fixed size and carry no key strings: the slot, the 128-bit key hash, the 16-byte
//    limiter State and the time (Unix ms) after which the state carries no information. An entry is
//    live at `now_ms` while expiry_ms >= now_ms (State::expiredAt). A read never returns an entry
//    that is expired when the read is answered; expired entries disappear from the backend by
//    themselves.
//  - Writing a key again replaces its entry (the last write wins; callers merge before writing).
//  - Data that the store cannot decode (foreign or corrupt) is skipped and counted in
//    SnapshotStoreStats::malformed, never trusted.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "limiter/key.h"
#include "limiter/result.h"
#include "limiter/state.h"

namespace throttlex::persistence {

struct SnapshotEntry {
  std::uint32_t slot = 0;  // slotOf(key); the unit a new owner fetches
  KeyHash key;
  State state;
  std::int64_t expiry_ms = 0;  // Unix ms; normally state.expiryMs()
  friend bool operator==(const SnapshotEntry&, const SnapshotEntry&) = default;
};

using WriteCallback = std::function<void(Status)>;
using ReadCallback = std::function<void(Result<std::vector<SnapshotEntry>>)>;

// Fixed buckets (upper bounds in microseconds, then +Inf), so a Prometheus histogram can be
// exported without translation. Thread-safe: one writer (the store's thread), any readers.
class CommandLatency {
 public:
  static constexpr std::array<std::uint64_t, 14> kBoundsUs = {
      100,    250,    500,     1'000,   2'500,   5'000,     10'000,
      25'000, 50'000, 100'000, 250'000, 500'000, 1'000'000, 2'500'000};
  static constexpr std::size_t kBuckets = kBoundsUs.size() + 1;

  struct Snapshot {
    std::array<std::uint64_t, kBuckets> counts{};  // not cumulative; last = above the last bound
    std::uint64_t count = 0;
    std::uint64_t sum_us = 0;
  };

  void record(std::chrono::nanoseconds d);
  Snapshot snapshot() const;

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets> counts_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_us_{0};
};

struct SnapshotStoreStats {
  bool connected = false;        // the backend is reachable right now
  std::uint64_t commands = 0;    // backend commands answered (any outcome)
  std::uint64_t errors = 0;      // failed calls' commands: refused, error replies, timeouts, I/O
  std::uint64_t timeouts = 0;    // of which: deadline exceeded
  std::uint64_t reconnects = 0;  // connections established after the first one
  std::uint64_t malformed = 0;   // entries or keys skipped because they could not be decoded
  std::uint64_t entries_written = 0;
  std::uint64_t entries_read = 0;
  CommandLatency::Snapshot latency;  // per backend command, send to reply
};

class SnapshotStore {
 public:
  virtual ~SnapshotStore() = default;

  // Stores `entries` (any slots, any order). Expired entries delete the key's entry. `done` gets
  // ok once every entry is stored; an error means some or none were (writing again is harmless).
  virtual void write(std::vector<SnapshotEntry> entries, WriteCallback done) = 0;

  // All live entries of `slots`. An error means the caller learned nothing and should retry.
  virtual void readSlots(std::vector<std::uint32_t> slots, ReadCallback done) = 0;

  // Thread-safe, cheap (no I/O).
  virtual SnapshotStoreStats stats() const = 0;
};

}  // namespace throttlex::persistence
