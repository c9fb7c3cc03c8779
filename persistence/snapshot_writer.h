// SnapshotWriter: owners mark changed entries dirty; a flush thread writes them to the
// SnapshotStore every interval (default 100 ms) in pipelined batches (docs/persistence.md).
//
// Threads and blocking:
//  - markDirty() may be called from any thread, on the hot path: it takes one short shard lock
//    (a hash-map update), never does I/O and never waits for the store.
//  - The flush thread (start()/stop()) or a caller of flushOnce() does the writing; flushOnce()
//    blocks its caller until the store has answered every batch (the store's deadlines bound that).
//
// Invariants:
//  - Newest wins: at most one pending entry per key; marking a key again replaces its entry. An
//    entry that failed to be written goes back to pending unless the key was marked again meanwhile
//    (the newer state wins), so nothing is lost on a Redis outage except what the cap drops.
//  - Memory is bounded: at most `max_pending` entries wait (per shard max_pending / shards). A new
//    key marked while its shard is full is dropped and counted (SnapshotWriterStats::dropped);
//    updates of keys already pending are never dropped.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "limiter/clock.h"
#include "limiter/mutex.h"
#include "limiter/result.h"
#include "persistence/snapshot_store.h"

namespace throttlex::persistence {

struct SnapshotWriterOptions {
  std::chrono::milliseconds interval{100};  // between the starts of two flushes
  std::size_t max_pending = 1'000'000;      // entries waiting to be written (~100 bytes each)
  std::size_t batch_entries = 1'000;        // entries per SnapshotStore::write() call
  std::size_t shards = 64;                  // a power of two; spreads markDirty() over locks
};

struct SnapshotWriterStats {
  std::size_t pending = 0;            // entries waiting (not counting a flush in flight)
  std::size_t pending_bytes = 0;      // memory held by the pending tables (empty places too)
  std::uint64_t dropped = 0;          // new keys refused because pending was full
  std::uint64_t flushes = 0;          // flushes that wrote everything they took
  std::uint64_t failed_flushes = 0;   // flushes with at least one failed batch
  std::uint64_t skipped_flushes = 0;  // flushes not tried because the store was disconnected
  std::uint64_t entries_written = 0;  // entries the store confirmed
  std::uint64_t write_errors = 0;     // failed write() batches
  std::chrono::milliseconds lag{0};   // age of the oldest change not yet confirmed; 0 if none
  std::size_t wave = 0;               // write() calls the next flush has in flight at most
};

class SnapshotWriter {
 public:
  // `store` and `clock` (its monotonic reading: the flush interval and the lag) must outlive the
  // writer.
  static Result<std::unique_ptr<SnapshotWriter>> make(SnapshotStore& store, const Clock& clock,
                                                      const SnapshotWriterOptions& options);
  ~SnapshotWriter();  // stop()
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;

  void markDirty(std::uint32_t slot, const KeyHash& key, const State& state,
                 std::int64_t expiry_ms);

  void start();         // starts the flush thread; at most once
  void stop();          // stops the flush thread after one last flush; idempotent
  void requestFlush();  // wakes the flush thread now (throttlectl snapshot)

  // One flush on this thread: takes everything pending, writes it, waits for the answers, puts
  // failed entries back. Returns true when everything taken was written. Serialised with the
  // flush thread's flushes.
  bool flushOnce();

  SnapshotWriterStats stats() const;

 private:
  struct Shard;
  struct Taken;
  SnapshotWriter(SnapshotStore& store, const Clock& clock, const SnapshotWriterOptions& options);
  std::int64_t monotonicNs() const;
  Shard& shardFor(const KeyHash& key) const;
  std::size_t takeAll(Taken& out) REQUIRES(view_mu_);  // returns the bytes the tables gave back
  bool flushLocked(std::size_t& given_back);           // flushOnce() under flush_mu_
  // Writes every batch; returns which failed.
  std::vector<bool> writeInWaves(const std::vector<std::vector<SnapshotEntry>>& batches);
  void putBack(const std::vector<SnapshotEntry>& entries, std::int64_t oldest_ns)
      REQUIRES(view_mu_);
  void run();

  // Constant after construction.
  SnapshotStore& store_;
  const Clock& clock_;
  const SnapshotWriterOptions options_;
  std::size_t shard_cap_;
  std::unique_ptr<Shard[]> shards_;

  Mutex flush_mu_;  // one flush at a time
  // What stats() reads as one: the pending tables and the changes in flight. A flush takes
  // everything, and later puts back what failed and clears the in-flight mark, each under this
  // lock; so no reader sees a change in neither place (pending 0 and lag 0 while it is on its way).
  // Lock order: view_mu_, then a shard's mu. markDirty() does not take it.
  mutable Mutex view_mu_;
  std::int64_t inflight_oldest_ns_ GUARDED_BY(view_mu_) = 0;  // monotonic ns; 0: nothing in flight

  Mutex thread_mu_;
  std::condition_variable wake_;
  bool stopping_ GUARDED_BY(thread_mu_) = false;
  bool flush_requested_ GUARDED_BY(thread_mu_) = false;
  std::thread thread_;

  // Counters: written by the flusher (or, for dropped_, by markDirty on the rare drop path).
  std::atomic<std::uint64_t> dropped_{0};
  std::atomic<std::uint64_t> flushes_{0};
  std::atomic<std::uint64_t> failed_flushes_{0};
  std::atomic<std::uint64_t> skipped_flushes_{0};
  std::atomic<std::uint64_t> entries_written_{0};
  std::atomic<std::uint64_t> write_errors_{0};
  static constexpr std::size_t kMaxWave = 16;
  std::atomic<std::size_t> wave_{kMaxWave};  // written by the flushing thread (under flush_mu_)
};

}  // namespace throttlex::persistence
