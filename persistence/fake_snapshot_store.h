// An in-memory SnapshotStore for tests, with switchable faults: failures, held completions (to
// control exactly when a call finishes) and latency.
//
// Every call becomes an operation that runs at delivery: by default at once, inside the call, on
// the caller's thread; while held (setHold), when release() is called, on the releasing thread;
// with a latency, after that long on the fake's own delivery thread. A failure set with
// setFailure() applies to operations delivered while it is set. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "limiter/clock.h"
#include "limiter/mutex.h"
#include "persistence/snapshot_store.h"

namespace throttlex::persistence {

class FakeSnapshotStore final : public SnapshotStore {
 public:
  explicit FakeSnapshotStore(const Clock& clock) : clock_(clock) {}
  ~FakeSnapshotStore() override;
  FakeSnapshotStore(const FakeSnapshotStore&) = delete;
  FakeSnapshotStore& operator=(const FakeSnapshotStore&) = delete;

  void write(std::vector<SnapshotEntry> entries, WriteCallback done) override;
  void readSlots(std::vector<std::uint32_t> slots, ReadCallback done) override;
  SnapshotStoreStats stats() const override;

  // Faults. A kUnavailable failure also reports connected = false, like a Redis outage.
  void setFailure(std::optional<Error> error);
  void setHold(bool hold);
  std::size_t release();  // delivers held operations on this thread; returns how many
  void setLatency(std::chrono::nanoseconds latency);

  // Inspection and planting (bypass faults and validation).
  std::optional<SnapshotEntry> get(const KeyHash& key) const;
  std::size_t size() const;  // entries held, expired or not
  void plant(const SnapshotEntry& entry);
  std::uint64_t writeCalls() const;  // write() operations delivered

  // Synchronisation for tests (a bound, not a pause): true once at least `n` operations are held
  // (setHold), or once at least `n` operations were delivered in all, callbacks included;
  // false after `bound`.
  bool waitHeld(std::size_t n, std::chrono::milliseconds bound) const;
  bool waitDelivered(std::uint64_t n, std::chrono::milliseconds bound) const;
  std::size_t largestWrite() const;  // most entries in one write() call

 private:
  using Op = std::function<void()>;
  void submit(Op op);
  void deliveryLoop();
  struct KeyLess {
    bool operator()(const KeyHash& a, const KeyHash& b) const {
      return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo;
    }
  };

  const Clock& clock_;  // constant after construction
  // setLatency() delays are real time (completions then arrive from another thread, as from a
  // real store), whatever `clock_` is.
  const SystemClock real_;

  mutable Mutex mu_;
  std::map<std::uint32_t, std::map<KeyHash, SnapshotEntry, KeyLess>> slots_ GUARDED_BY(mu_);
  std::optional<Error> failure_ GUARDED_BY(mu_);
  bool hold_ GUARDED_BY(mu_) = false;
  std::chrono::nanoseconds latency_ GUARDED_BY(mu_){0};
  std::deque<Op> held_ GUARDED_BY(mu_);
  std::deque<std::pair<Instant, Op>> delayed_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::condition_variable delivery_cv_;
  mutable std::condition_variable changed_;  // held_ grew or delivered_ moved
  std::uint64_t delivered_ GUARDED_BY(mu_) = 0;
  std::thread delivery_;  // started on the first setLatency() > 0 (under mu_)
  SnapshotStoreStats stats_ GUARDED_BY(mu_);
  std::size_t largest_write_ GUARDED_BY(mu_) = 0;
  std::uint64_t write_calls_ GUARDED_BY(mu_) = 0;
  CommandLatency latency_hist_;
};

}  // namespace throttlex::persistence
