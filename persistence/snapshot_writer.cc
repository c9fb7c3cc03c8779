#include "persistence/snapshot_writer.h"
#include "limiter/mutex.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <bit>
#include <limits>
#include <utility>
#include <vector>

namespace throttlex::persistence {
namespace {

struct Pending {
  KeyHash key;  // all-zero: an empty place
  State state;
  std::int64_t expiry_ms;
  std::uint32_t slot;
};

// The pending entries of one shard: an open-addressing table (linear probing, no per-entry
// allocation: markDirty() is on the hot path, and a node-based map cost a malloc per new key and
// a cache miss per lookup). take() empties it and keeps its capacity for the next interval, unless
// that interval used less than a quarter of it: then half is given back. A burst (Redis slow or
// down while pending piles up to the cap) then costs memory for a few intervals, not for the
// life of the process — measured: 5 nodes filled with 200,000 keys each while Redis fell behind
// kept ~20 MB per node of empty places, ~100 B per live key, before this; a steady load keeps a
// table between 1.4x and 4x of what one interval marks.
class PendingTable {
 public:
  static constexpr std::size_t kMinPlaces = 64;

  std::size_t size() const { return used_; }
  bool empty() const { return used_ == 0; }
  std::size_t bytes() const { return places_.capacity() * sizeof(Pending); }

  Pending* find(const KeyHash& key) {
    if (places_.empty()) return nullptr;
    for (std::size_t i = home(key);; i = (i + 1) & mask()) {
      if (places_[i].key == key) return &places_[i];
      if (isEmpty(places_[i].key)) return nullptr;
    }
  }
  // `p.key` must not be present.
  void insert(const Pending& p) {
    if ((used_ + 1) * 10 > places_.size() * 7) grow();
    std::size_t i = home(p.key);
    while (!isEmpty(places_[i].key)) i = (i + 1) & mask();
    places_[i] = p;
    ++used_;
  }
  // Appends every entry to `out`, empties the table and shrinks it if it was mostly empty.
  void take(std::vector<Pending>& out) {
    const std::size_t taken = used_;
    if (taken != 0) {
      for (Pending& p : places_) {
        if (isEmpty(p.key)) continue;
        out.push_back(p);
        p = Pending{};
      }
      used_ = 0;
    }
    if (places_.size() > kMinPlaces && taken * 4 < places_.size()) {
      std::vector<Pending>(places_.size() / 2).swap(places_);  // empty: nothing to move
    }
  }

 private:
  static bool isEmpty(const KeyHash& k) { return k.hi == 0 && k.lo == 0; }
  std::size_t mask() const { return places_.size() - 1; }
  std::size_t home(const KeyHash& k) const { return static_cast<std::size_t>(k.hi) & mask(); }
  void grow() {
    std::vector<Pending> old(std::max<std::size_t>(kMinPlaces, places_.size() * 2));
    old.swap(places_);
    used_ = 0;
    for (const Pending& p : old) {
      if (!isEmpty(p.key)) insert(p);
    }
  }
  std::vector<Pending> places_;  // size: a power of two, or 0
  std::size_t used_ = 0;
};

constexpr std::int64_t kNone = std::numeric_limits<std::int64_t>::max();
constexpr std::size_t kTrimAfterBytes = std::size_t{1} << 20;

// Hands free heap pages back to the system (glibc keeps them otherwise); nothing elsewhere.
void releaseFreeMemory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

}  // namespace

struct alignas(64) SnapshotWriter::Shard {
  Mutex mu;
  PendingTable pending GUARDED_BY(mu);
  std::int64_t oldest_ns GUARDED_BY(mu) =
      kNone;  // monotonic time of the oldest change in `pending`
};

struct SnapshotWriter::Taken {
  std::vector<SnapshotEntry> entries;
  std::int64_t oldest_ns = kNone;
};

Result<std::unique_ptr<SnapshotWriter>> SnapshotWriter::make(SnapshotStore& store,
                                                             const Clock& clock,
                                                             const SnapshotWriterOptions& options) {
  if (options.interval.count() <= 0) return invalidArgument("snapshot interval must be positive");
  if (options.max_pending == 0) return invalidArgument("max_pending must be positive");
  if (options.batch_entries == 0) return invalidArgument("batch_entries must be positive");
  if (options.shards == 0 || !std::has_single_bit(options.shards)) {
    return invalidArgument("shards must be a power of two");
  }
  return std::unique_ptr<SnapshotWriter>(new SnapshotWriter(store, clock, options));
}

SnapshotWriter::SnapshotWriter(SnapshotStore& store, const Clock& clock,
                               const SnapshotWriterOptions& options)
    : store_(store),
      clock_(clock),
      options_(options),
      shard_cap_(
          std::max<std::size_t>(1, (options.max_pending + options.shards - 1) / options.shards)),
      shards_(std::make_unique<Shard[]>(options.shards)) {}

std::int64_t SnapshotWriter::monotonicNs() const {
  return clock_.monotonic().time_since_epoch().count();
}

SnapshotWriter::~SnapshotWriter() {
  stop();
}

SnapshotWriter::Shard& SnapshotWriter::shardFor(const KeyHash& key) const {
  // The top bits of `hi`: independent of the ownership slot (top bits of `lo`).
  return shards_[static_cast<std::size_t>(key.hi >> 40) & (options_.shards - 1)];
}

void SnapshotWriter::markDirty(std::uint32_t slot, const KeyHash& key, const State& state,
                               std::int64_t expiry_ms) {
  Shard& shard = shardFor(key);
  MutexLock lock(shard.mu);
  if (Pending* p = shard.pending.find(key)) {
    p->state = state;
    p->expiry_ms = expiry_ms;
    p->slot = slot;
    return;
  }
  if (shard.pending.size() >= shard_cap_) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (shard.pending.empty()) shard.oldest_ns = monotonicNs();
  shard.pending.insert(Pending{key, state, expiry_ms, slot});
}

std::size_t SnapshotWriter::takeAll(Taken& out) {
  std::vector<Pending> taken;
  std::size_t given_back = 0;
  for (std::size_t i = 0; i < options_.shards; ++i) {
    Shard& shard = shards_[i];
    std::int64_t oldest = kNone;
    taken.clear();
    {
      MutexLock lock(shard.mu);
      const std::size_t bytes = shard.pending.bytes();
      shard.pending.take(taken);  // also when empty: an idle shard's table shrinks too
      given_back += bytes - shard.pending.bytes();
      if (taken.empty()) continue;
      std::swap(oldest, shard.oldest_ns);
    }
    out.oldest_ns = std::min(out.oldest_ns, oldest);
    for (const Pending& p : taken) out.entries.push_back({p.slot, p.key, p.state, p.expiry_ms});
  }
  return given_back;
}

void SnapshotWriter::putBack(const std::vector<SnapshotEntry>& entries, std::int64_t oldest_ns) {
  for (const SnapshotEntry& e : entries) {
    Shard& shard = shardFor(e.key);
    MutexLock lock(shard.mu);
    if (shard.pending.find(e.key) != nullptr) continue;  // marked again meanwhile: newer wins
    if (shard.pending.size() >= shard_cap_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    shard.pending.insert(Pending{e.key, e.state, e.expiry_ms, e.slot});
    shard.oldest_ns = std::min(shard.oldest_ns, oldest_ns);
  }
}

bool SnapshotWriter::flushOnce() {
  MutexLock flush_lock(flush_mu_);
  std::size_t given_back = 0;
  const bool ok = flushLocked(given_back);
  // The tables, the batches and the store's buffers of a burst were freed but glibc keeps such
  // pages (measured: ~16 MB per node after a 200,000-key burst, 2x the store itself). Rare (only
  // after a burst shrank the tables), and on this thread, never a check's.
  if (given_back >= kTrimAfterBytes) releaseFreeMemory();
  return ok;
}

bool SnapshotWriter::flushLocked(std::size_t& given_back) {
  if (!store_.stats().connected) {
    // Writing would fail at once; leave everything pending (bounded) until the store reconnects.
    skipped_flushes_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  Taken taken;
  {
    MutexLock view(view_mu_);
    given_back = takeAll(taken);
    if (taken.entries.empty()) return true;
    inflight_oldest_ns_ = taken.oldest_ns;
  }

  // By slot: a batch then spans few slots, and the store writes one command per slot and batch.
  std::sort(taken.entries.begin(), taken.entries.end(),
            [](const SnapshotEntry& a, const SnapshotEntry& b) { return a.slot < b.slot; });
  std::vector<std::vector<SnapshotEntry>> batches;
  for (std::size_t i = 0; i < taken.entries.size(); i += options_.batch_entries) {
    const std::size_t end = std::min(taken.entries.size(), i + options_.batch_entries);
    batches.emplace_back(taken.entries.begin() + static_cast<std::ptrdiff_t>(i),
                         taken.entries.begin() + static_cast<std::ptrdiff_t>(end));
  }
  taken.entries = {};

  const std::vector<bool> failed = writeInWaves(batches);
  bool all_ok = true;
  std::uint64_t written = 0;
  {
    MutexLock view(view_mu_);
    for (std::size_t i = 0; i < batches.size(); ++i) {
      if (failed[i]) {
        all_ok = false;
        write_errors_.fetch_add(1, std::memory_order_relaxed);
        putBack(batches[i], taken.oldest_ns);
      } else {
        written += batches[i].size();
      }
    }
    inflight_oldest_ns_ = 0;
  }
  entries_written_.fetch_add(written, std::memory_order_relaxed);
  (all_ok ? flushes_ : failed_flushes_).fetch_add(1, std::memory_order_relaxed);
  return all_ok;
}

// Batches go out in waves: within a wave the store pipelines them; waiting between waves keeps
// each command's deadline about its own work, not the queue of everything before it. The wave
// adapts to what the store keeps up with: a wave with a failed batch halves the next, one written
// in full widens it by one (up to kMaxWave). Several nodes writing a burst into one Redis otherwise
// queue 16 batches each behind each other, pass the command deadline, drop their connections and
// write everything again. Returns which batches failed.
std::vector<bool> SnapshotWriter::writeInWaves(
    const std::vector<std::vector<SnapshotEntry>>& batches) {
  struct Wait {  // completion state shared with the callbacks
    Mutex mu;
    std::condition_variable cv;
    std::size_t remaining = 0;
    std::vector<bool> failed;
  };
  auto wait = std::make_shared<Wait>();
  wait->failed.assign(batches.size(), false);
  MutexLock lock(wait->mu);
  for (std::size_t first = 0, end = 0; first < batches.size(); first = end) {
    const std::size_t wave = wave_.load(std::memory_order_relaxed);
    end = std::min(batches.size(), first + wave);
    wait->remaining = end - first;
    lock.unlock();
    for (std::size_t i = first; i < end; ++i) {
      store_.write(batches[i], [wait, i](Status status) {
        MutexLock guard(wait->mu);
        wait->failed[i] = !status.ok();
        if (--wait->remaining == 0) wait->cv.notify_all();
      });
    }
    lock.lock();
    wait->cv.wait(lock.native(), [&] { return wait->remaining == 0; });
    const bool wave_failed = std::any_of(wait->failed.begin() + static_cast<std::ptrdiff_t>(first),
                                         wait->failed.begin() + static_cast<std::ptrdiff_t>(end),
                                         [](bool f) { return f; });
    wave_.store(wave_failed ? std::max<std::size_t>(1, wave / 2) : std::min(kMaxWave, wave + 1),
                std::memory_order_relaxed);
  }
  return wait->failed;
}

void SnapshotWriter::start() {
  MutexLock lock(thread_mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { run(); });
}

void SnapshotWriter::stop() {
  std::thread thread;
  {
    MutexLock lock(thread_mu_);
    stopping_ = true;
    thread.swap(thread_);
  }
  wake_.notify_all();
  if (thread.joinable()) thread.join();
}

void SnapshotWriter::requestFlush() {
  {
    MutexLock lock(thread_mu_);
    flush_requested_ = true;
  }
  wake_.notify_all();
}

void SnapshotWriter::run() {
  Instant next = clock_.monotonic() + options_.interval;
  for (;;) {
    {
      MutexLock lock(thread_mu_);
      wake_.wait_for(lock.native(), next - clock_.monotonic(),
                     [&]() REQUIRES(thread_mu_) { return stopping_ || flush_requested_; });
      flush_requested_ = false;
      if (stopping_) break;
    }
    next = clock_.monotonic() + options_.interval;
    flushOnce();
  }
  flushOnce();  // the last changes, if the store is there to take them
}

SnapshotWriterStats SnapshotWriter::stats() const {
  SnapshotWriterStats s;
  MutexLock view(view_mu_);
  std::int64_t oldest = inflight_oldest_ns_ == 0 ? kNone : inflight_oldest_ns_;
  for (std::size_t i = 0; i < options_.shards; ++i) {
    MutexLock lock(shards_[i].mu);
    s.pending += shards_[i].pending.size();
    s.pending_bytes += shards_[i].pending.bytes();
    oldest = std::min(oldest, shards_[i].oldest_ns);
  }
  if (oldest != kNone) {
    s.lag = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::nanoseconds(std::max<std::int64_t>(0, monotonicNs() - oldest)));
  }
  s.dropped = dropped_.load(std::memory_order_relaxed);
  s.flushes = flushes_.load(std::memory_order_relaxed);
  s.failed_flushes = failed_flushes_.load(std::memory_order_relaxed);
  s.skipped_flushes = skipped_flushes_.load(std::memory_order_relaxed);
  s.entries_written = entries_written_.load(std::memory_order_relaxed);
  s.write_errors = write_errors_.load(std::memory_order_relaxed);
  s.wave = wave_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace throttlex::persistence
