// The in-memory bucket store: 32 bytes per key (a 128-bit key hash and 16 bytes of state), in
// open-addressing tables spread over many shards, each behind its own short spin lock.
//
// Contracts:
//  - Thread-safe. Any number of threads may call check()/checkBatch()/sweep() at once; there is no
//    global lock. Calls never block on I/O and never allocate except when a shard's table grows,
//    shrinks or is rebuilt by sweep() (no per-entry allocation).
//  - Entries whose state has recovered (full bucket, finished window) carry no information: the
//    store drops them when it meets them (on lookup, on insert, in sweep()). Memory follows the
//    keys that are being limited right now.
//  - At most `max_entries` entries are held (a cap per shard). Inserting into a full shard drops
//    a recovered entry first; an entry in use is never dropped (that would let a limited user in
//    again). When every entry of the shard is in use, a new key is refused: its check is not
//    admitted (Decision::refused) and counted, until entries recover. Shards are chosen by a
//    hash keyed with a per-process random seed, so no shard can be aimed at from outside.
#pragma once

#include <atomic>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "limiter/clock.h"
#include "limiter/decision.h"
#include "limiter/key.h"
#include "limiter/lease.h"
#include "limiter/limit.h"
#include "limiter/result.h"
#include "limiter/state.h"

namespace throttlex {

struct StoreOptions {
  std::size_t max_entries = 10'000'000;  // hard cap over all shards (~45 bytes per entry)
  std::size_t shards = 1024;             // a power of two; many more than threads
};

struct StoreStats {
  std::size_t entries = 0;
  std::size_t table_bytes = 0;  // memory held by the tables
  std::uint64_t evictions = 0;  // restored (snapshot, handoff) states not kept: store full
  std::uint64_t refused = 0;    // checks of new keys refused: the store was full of keys in use
};

struct CheckRequest {
  KeyHash key;
  const Limit* limit = nullptr;  // must outlive the call
  std::uint64_t cost = 1;
  bool refund = false;  // gives `cost` units back instead (refund() in state.h)
};

// Told of every state a check changed (an admitted check with a cost, or a new entry), after the
// shard lock is released, on the deciding thread. Must be quick and must not call into the Store.
// put() and merge() (restores) do not notify.
class StoreObserver {
 public:
  virtual ~StoreObserver() = default;
  virtual void changed(const KeyHash& key, const State& state) = 0;
};

using SlotSet = std::bitset<kSlotCount>;

struct StoredEntry {
  KeyHash key;
  State state;
};

class Store {
 public:
  using MergeFn = State (*)(const State&, const State&);

  static Result<std::unique_ptr<Store>> make(const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  Decision check(const KeyHash& key, const Limit& limit, std::uint64_t cost, Time now);
  // Gives `units` back to the key (refund() in state.h); a key with no state stays without.
  Decision refund(const KeyHash& key, const Limit& limit, std::uint64_t units, Time now);
  // Same decisions as check() on each request in order; faster, because it prefetches the table
  // slots of the whole batch before deciding. `out` must have requests.size() elements.
  void checkBatch(std::span<const CheckRequest> requests, Time now, std::span<Decision> out);

  // Concurrency leases (limiter/lease.h). record() stores a state the caller made (a new lease's
  // entry) and tells the observer, as a check would; false when the store was full of keys in use
  // (nothing stored, counted as refused).
  bool record(const KeyHash& key, const State& state, Time now);
  // Acquires `cost` units of concurrency limit `limit` for `key` as lease `lease_id` (a random id
  // the caller chose), which expires at leaseExpiryMs(limit, now). Decides like check(); an
  // allowed acquire with a cost also stores the lease's entry, and is refused (Decision::refused,
  // nothing held) when there is no room for it.
  Decision acquire(const KeyHash& key, const Limit& limit, std::uint64_t cost,
                   std::uint64_t lease_id, Time now);
  // Releases lease `lease_id` of `key` (a concurrency limit's counter): marks its entry released
  // and gives its units back to the counter. `counter` gets the counter's state as a cost-0
  // acquire sees it afterwards (remaining, reset_after). The two entries are locked one after
  // the other, never both: a release racing the lease's expiry gives nothing back twice
  // (releaseUnits ignores an expired generation).
  LeaseRelease release(const KeyHash& key, const Limit& limit, std::uint64_t lease_id, Time now,
                       Decision& counter);
  // Renews lease `lease_id` of `key`: a held lease then expires at leaseExpiryMs(limit, now)
  // (`expiry_ms`), its units counted in now's generation. Same locking as release(); a renewal
  // racing the lease's expiry either renews it (expiry not reached at `now`) or finds it expired.
  LeaseRenewal renew(const KeyHash& key, const Limit& limit, std::uint64_t lease_id, Time now,
                     Decision& counter, std::int64_t& expiry_ms);

  // Drops recovered entries and shrinks tables in up to `shard_count` shards (round robin), for a
  // background caller (e.g. every few ms). Returns the number of entries dropped.
  std::size_t sweep(Time now, std::size_t shard_count);

  std::optional<State> get(const KeyHash& key) const;  // the stored state, if any
  bool erase(const KeyHash& key);                      // true if the key had state
  // Stores `state` for `key` (restore from a snapshot, handoff). Respects the cap like an insert.
  void put(const KeyHash& key, const State& state, Time now);

  // Stores moreConsumed(current, state) (or `state` if there is none): restoring a snapshot or a
  // handoff never makes a key less consumed than it is here.
  void merge(const KeyHash& key, const State& state, Time now, MergeFn more_consumed);
  // The live entries of `slots` (a full scan: for handoffs and tests, not the hot path); with
  // `erase`, they (and expired entries of those slots) are removed as they are collected.
  std::vector<StoredEntry> collect(const SlotSet& slots, Time now, bool erase);

  // May be set once before checks start, or changed while they run (an atomic pointer); null: none.
  void setObserver(StoreObserver* observer);

  StoreStats stats() const;
  std::size_t shardCount() const;

 private:
  struct Shard;
  explicit Store(const StoreOptions& options);
  Shard& shardFor(const KeyHash& key) const;
  // A release or renewal: `on_entry(State&) -> bool` changes lease entry `lease_id` of `key` under
  // its lock and says whether the counter changes too; then, under the key's own lock,
  // `on_counter(State&) -> Decision` when it does, else a cost-0 view of the counter. The two
  // entries are locked one after the other, never both.
  template <class OnEntry, class OnCounter>
  Decision leaseStep(const KeyHash& key, const Limit& limit, std::uint64_t lease_id, Time now,
                     OnEntry on_entry, OnCounter on_counter);

  std::unique_ptr<Shard[]> shards_;           // constant after construction
  std::size_t shard_count_;                   // constant after construction
  int shard_shift_;                           // constant after construction
  std::uint64_t shard_seed_;                  // constant after construction
  std::atomic<std::size_t> sweep_cursor_{0};  // where the next sweep() starts
  std::atomic<StoreObserver*> observer_{nullptr};
  void notify(const KeyHash& key, const State& state);
};

}  // namespace throttlex
