#include "limiter/store.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <new>
#include <random>

#include <sys/mman.h>

#include "limiter/spin_lock.h"

namespace throttlex {
namespace {

struct Entry {
  KeyHash key;  // all-zero: empty slot
  State state;
};
static_assert(sizeof(Entry) == 32, "the per-key budget is 32 bytes plus table slack");

// Tables grow by 1.25x at 85% load (so load stays in 68%..85%: 38..47 bytes per key). Small growth
// steps are cheap because shards are small; linear probing stays short enough at 85% (a hit needs
// about 4 probes, 2 cache lines; the 80% setting cost 12% more memory for ~10% faster batches).
constexpr std::uint32_t kMinSlots = 8;
constexpr std::uint64_t kLoadNum = 17, kLoadDen = 20;      // grow above 85%
constexpr std::uint64_t kTargetNum = 17, kTargetDen = 25;  // size to 68% after a rebuild
constexpr int kEvictionSample = 16;  // as Redis samples for LRU: few enough to be cheap
constexpr int kEvictionScan = 64;

// Table memory. Large tables come straight from mmap so that a table freed when its shard grows
// goes back to the OS at once; through malloc, the ever-larger tables of many shards would leave
// the heap fragmented (growth by 1.25x frees 4x the live table size over a shard's life).
constexpr std::size_t kMmapBytes = 16 * 1024;

struct TableDeleter {
  std::size_t bytes = 0;
  void operator()(Entry* p) const {
    if (bytes >= kMmapBytes) {
      munmap(p, bytes);
    } else {
      std::free(p);
    }
  }
};
using TablePtr = std::unique_ptr<Entry[], TableDeleter>;

// Zeroed memory for `slots` entries. Allocation failure is fatal, as with operator new.
TablePtr allocateTable(std::uint32_t slots) {
  const std::size_t bytes = std::size_t{slots} * sizeof(Entry);
  void* p = nullptr;
  if (bytes >= kMmapBytes) {
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) p = nullptr;
  } else {
    p = std::calloc(slots, sizeof(Entry));
  }
  if (p == nullptr) throw std::bad_alloc();
  return TablePtr(static_cast<Entry*>(p), TableDeleter{bytes});
}

bool isEmpty(const KeyHash& k) {
  return k.hi == 0 && k.lo == 0;
}
std::uint32_t roundUp8(std::uint64_t n) {
  return static_cast<std::uint32_t>((n + 7) & ~std::uint64_t{7});
}
std::int64_t toMs(Time t) {
  return t.time_since_epoch().count() / 1'000'000;
}

}  // namespace

struct alignas(64) Store::Shard {
  mutable SpinLock lock;
  // Constant after construction.
  std::uint32_t cap = 0;        // most entries this shard may hold
  std::uint32_t max_slots = 0;  // table size that holds `cap` entries at the growth load
  // State below is protected by `lock`. `table` and `slots` are atomics only so that checkBatch()
  // can prefetch without the lock (a stale address is harmless for a prefetch); they are written
  // only under the lock.
  std::atomic<Entry*> table{nullptr};
  std::atomic<std::uint32_t> slots{0};
  std::uint32_t used = 0;
  std::uint64_t evictions = 0;     // restored state that could not be kept (full of keys in use)
  std::uint64_t refused = 0;       // new keys refused (full of keys in use)
  std::int64_t full_until_ms = 0;  // dropRecovered() finds nothing before this
  std::uint64_t rng = 0x9E3779B97F4A7C15ull;
  TablePtr storage;

  static std::uint32_t home(const KeyHash& k, std::uint32_t n) {
    return static_cast<std::uint32_t>(((k.hi & 0xFFFFFFFFull) * n) >> 32);
  }
  Entry* t() const { return table.load(std::memory_order_relaxed); }
  std::uint32_t n() const { return slots.load(std::memory_order_relaxed); }
  std::uint32_t next(std::uint32_t i) const { return i + 1 == n() ? 0 : i + 1; }

  std::uint32_t slotsFor(std::uint64_t entries) const {
    const std::uint64_t want = (entries * kTargetDen + kTargetNum - 1) / kTargetNum;
    return std::clamp<std::uint32_t>(roundUp8(want), std::min(kMinSlots, max_slots), max_slots);
  }

  // Index of `key`, or of the empty slot that ends its probe sequence (found = false).
  std::uint32_t find(const KeyHash& key, bool& found) const {
    Entry* tab = t();
    for (std::uint32_t i = home(key, n());; i = next(i)) {
      if (tab[i].key == key) {
        found = true;
        return i;
      }
      if (isEmpty(tab[i].key)) {
        found = false;
        return i;
      }
    }
  }

  // Backward-shift deletion: keeps every probe sequence free of holes without tombstones.
  void eraseAt(std::uint32_t hole) {
    Entry* tab = t();
    for (std::uint32_t j = next(hole);; j = next(j)) {
      if (isEmpty(tab[j].key)) break;
      const std::uint32_t h = home(tab[j].key, n());
      const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
      if (!stays) {
        tab[hole] = tab[j];
        hole = j;
      }
    }
    tab[hole] = Entry{};
    --used;
  }

  // Deletes every entry expired at `now_ms` in place. Backward shifts may move a not-yet-visited
  // entry (also one from the wrapped-around start) into the current slot, so it is re-checked.
  std::size_t eraseExpired(std::int64_t now_ms) {
    Entry* tab = t();
    std::size_t dropped = 0;
    for (std::uint32_t i = 0; i < n(); ++i) {
      while (!isEmpty(tab[i].key) && tab[i].state.expiredAt(now_ms)) {
        eraseAt(i);
        ++dropped;
      }
    }
    return dropped;
  }

  // Rebuilds the table with `new_slots` slots, keeping only entries live at `now_ms`.
  std::size_t rebuild(std::uint32_t new_slots, std::int64_t now_ms) {
    TablePtr fresh = allocateTable(new_slots);
    std::uint32_t kept = 0;
    std::size_t dropped = 0;
    Entry* old = t();
    const std::uint32_t old_n = n();
    for (std::uint32_t i = 0; i < old_n; ++i) {
      if (isEmpty(old[i].key)) continue;
      if (old[i].state.expiredAt(now_ms)) {
        ++dropped;
        continue;
      }
      std::uint32_t j = home(old[i].key, new_slots);
      while (!isEmpty(fresh[j].key)) j = j + 1 == new_slots ? 0 : j + 1;
      fresh[j] = old[i];
      ++kept;
    }
    storage = std::move(fresh);
    table.store(storage.get(), std::memory_order_relaxed);
    slots.store(new_slots, std::memory_order_relaxed);
    used = kept;
    return dropped;
  }

  // Makes room for one more entry: rebuild to a larger table, or at the cap drop a recovered
  // entry. False when the shard is at the cap with every entry in use.
  bool reserveOne(std::int64_t now_ms) {
    if (used >= cap) return dropRecovered(now_ms);
    if ((used + 1ull) * kLoadDen > n() * kLoadNum) rebuild(slotsFor(used + 1ull), now_ms);
    return true;
  }

  // At the cap: drops a recovered (expired) entry — one of a random sample if there is one,
  // else every recovered entry of the shard. An entry in use (a key partly or wholly spent) is
  // never dropped: that would let its user in again. When none has recovered, nothing can be
  // until the soonest of them does (`full_until_ms`): until then a new key is refused at once,
  // so a flood of new keys costs no scans.
  bool dropRecovered(std::int64_t now_ms) {
    if (now_ms < full_until_ms) return false;
    Entry* tab = t();
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    std::uint32_t i = static_cast<std::uint32_t>(rng % n());
    int seen = 0;
    for (int scanned = 0; scanned < kEvictionScan && seen < kEvictionSample;
         ++scanned, i = next(i)) {
      if (isEmpty(tab[i].key)) continue;
      ++seen;
      if (tab[i].state.expiredAt(now_ms)) {
        eraseAt(i);
        return true;
      }
    }
    if (eraseExpired(now_ms) > 0) return true;
    full_until_ms = std::numeric_limits<std::int64_t>::max();
    for (std::uint32_t j = 0; j < n(); ++j) {
      if (!isEmpty(tab[j].key)) full_until_ms = std::min(full_until_ms, tab[j].state.expiryMs());
    }
    return false;
  }

  // A stored state may recover sooner than full_until_ms said (a smaller limit, a restore).
  // Written only when it lowers the mark: most checks leave the shard's line as it is.
  void noteExpiry(const State& s) {
    if (s.expiryMs() < full_until_ms) full_until_ms = s.expiryMs();
  }

  // False (nothing stored) when the shard is full of entries in use.
  bool insert(const KeyHash& key, const State& state, std::int64_t now_ms) {
    if (!reserveOne(now_ms)) return false;
    bool found = false;
    const std::uint32_t i = find(key, found);
    assert(!found);
    t()[i] = Entry{key, state};
    ++used;
    return true;
  }

  // Decides under the lock. When the stored state changed (not only normalised: a new entry or a
  // different state), `*changed` gets the new state and the function returns true in `did_change`.
  [[gnu::always_inline]] Decision check(const KeyHash& key, const Limit& limit, std::uint64_t cost,
                                        bool give_back, Time now, State& after, bool& did_change) {
    return update(
        key, now, cost > 0,
        [&](State& s) {
          return give_back ? throttlex::refund(limit, s, cost, now) : decide(limit, s, cost, now);
        },
        after, did_change);
  }

  // Applies `apply` (State& -> Decision) to the key's state under the lock, as check() does. A
  // change is reported in `did_change` when it was allowed and `counts` (it spent or gave back).
  // Inlined into each caller, as check() is: as calls of their own (GCC's choice once leases added
  // callers) they cost a hot key's check up to a third of its speed (docs/benchmarks.md, "Then
  // and now").
  template <class Apply>
  [[gnu::always_inline]] Decision update(const KeyHash& key, Time now, bool counts, Apply apply,
                                         State& after, bool& did_change) {
    const std::int64_t now_ms = toMs(now);
    std::lock_guard guard(lock);
    bool found = false;
    const std::uint32_t i = find(key, found);
    did_change = false;
    if (found) {
      Entry& e = t()[i];
      State s = e.state;
      const Decision d = apply(s);
      if (s != e.state) {
        e.state = s;
        noteExpiry(s);
        after = s;
        did_change = d.allowed && counts;
      } else if (s.expiredAt(now_ms)) {
        eraseAt(i);  // recovered: carries nothing, drop it now
      }
      return d;
    }
    State s;
    Decision d = apply(s);
    if (!s.empty()) {
      if (!insert(key, s, now_ms)) {
        // Full of keys in use: this one cannot be remembered, so it is not admitted.
        ++refused;
        d.allowed = false;
        d.refused = true;
        d.remaining = 0;
        return d;
      }
      after = s;
      did_change = true;
    }
    return d;
  }
};

Result<std::unique_ptr<Store>> Store::make(const StoreOptions& options) {
  if (options.shards == 0 || !std::has_single_bit(options.shards) || options.shards > 65536) {
    return invalidArgument("store shards must be a power of two between 1 and 65536");
  }
  if (options.max_entries < options.shards) {
    return invalidArgument("store max_entries must be at least the number of shards");
  }
  if (options.max_entries / options.shards > (std::uint64_t{1} << 30)) {
    return invalidArgument("store max_entries is too large for the number of shards");
  }
  return std::unique_ptr<Store>(new Store(options));
}

Store::Store(const StoreOptions& options)
    : shards_(std::make_unique<Shard[]>(options.shards)),
      shard_count_(options.shards),
      shard_shift_(64 - std::countr_zero(options.shards)),
      shard_seed_((std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()) {
  const auto cap = static_cast<std::uint32_t>(options.max_entries / options.shards);
  for (std::size_t i = 0; i < shard_count_; ++i) {
    Shard& s = shards_[i];
    s.cap = cap;
    s.max_slots = roundUp8((std::uint64_t{cap} * kLoadDen + kLoadNum - 1) / kLoadNum + 1);
    s.rng ^= i * 0xBF58476D1CE4E5B9ull;
    s.rebuild(s.slotsFor(0), 0);
  }
}

Store::~Store() = default;

Store::Shard& Store::shardFor(const KeyHash& key) const {
  // Keyed with a seed of this process (splitmix64's finaliser over hi ^ seed): which keys share
  // a shard cannot be known from outside, so no shard can be aimed at. shard_shift_ == 64 (one
  // shard) would be undefined for a 64-bit shift.
  if (shard_count_ == 1) return shards_[0];
  std::uint64_t h = key.hi ^ shard_seed_;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  h ^= h >> 31;
  return shards_[h >> shard_shift_];
}

Decision Store::check(const KeyHash& key, const Limit& limit, std::uint64_t cost, Time now) {
  State after;
  bool changed = false;
  const Decision d = shardFor(key).check(key, limit, cost, false, now, after, changed);
  if (changed) notify(key, after);
  return d;
}

Decision Store::refund(const KeyHash& key, const Limit& limit, std::uint64_t units, Time now) {
  State after;
  bool changed = false;
  const Decision d = shardFor(key).check(key, limit, units, true, now, after, changed);
  if (changed) notify(key, after);
  return d;
}

bool Store::record(const KeyHash& key, const State& state, Time now) {
  State after;
  bool changed = false;
  const Decision d = shardFor(key).update(
      key, now, true,
      [&](State& s) {
        s = state;
        return Decision{true};
      },
      after, changed);
  if (changed) notify(key, after);
  return !d.refused;
}

Decision Store::acquire(const KeyHash& key, const Limit& limit, std::uint64_t cost,
                        std::uint64_t lease_id, Time now) {
  Decision d = check(key, limit, cost, now);
  if (!d.allowed || cost == 0) return d;
  const std::int64_t expiry_ms = leaseExpiryMs(limit, now);
  if (record(leaseKey(key, lease_id), leaseEntry(expiry_ms, lease_id, cost), now)) return d;
  // No room for the lease's entry: it could never be released, so it is not granted.
  State after;
  bool changed = false;
  const std::int64_t now_ns =
      std::clamp<std::int64_t>(now.time_since_epoch().count(), 0, kMaxTimeNs);
  shardFor(key).update(
      key, now, true, [&](State& s) { return releaseUnits(limit, s, expiry_ms, cost, now_ns); },
      after, changed);
  if (changed) notify(key, after);
  d.allowed = false;
  d.refused = true;
  d.remaining = 0;
  return d;
}

template <class OnEntry, class OnCounter>
Decision Store::leaseStep(const KeyHash& key, const Limit& limit, std::uint64_t lease_id, Time now,
                          OnEntry on_entry, OnCounter on_counter) {
  const std::int64_t now_ns =
      std::clamp<std::int64_t>(now.time_since_epoch().count(), 0, kMaxTimeNs);
  const KeyHash entry = leaseKey(key, lease_id);
  bool counts = false;
  State after;
  bool changed = false;
  shardFor(entry).update(
      entry, now, true,
      [&](State& s) {
        counts = on_entry(s);
        return Decision{counts};
      },
      after, changed);
  if (changed) notify(entry, after);
  const Decision counter = shardFor(key).update(
      key, now, counts,
      [&](State& s) {
        if (counts) return on_counter(s, now_ns);
        State probe = s;
        return acquireUnits(limit, probe, 0, now_ns);
      },
      after, changed);
  if (changed) notify(key, after);
  return counter;
}

LeaseRelease Store::release(const KeyHash& key, const Limit& limit, std::uint64_t lease_id,
                            Time now, Decision& counter) {
  LeaseRelease found = LeaseRelease::kUnknown;
  std::uint64_t units = 0;
  std::int64_t expiry_ms = 0;
  counter = leaseStep(
      key, limit, lease_id, now,
      [&](State& s) {
        found = releaseEntry(s, lease_id, toMs(now), units, expiry_ms);
        return found == LeaseRelease::kReleased;
      },
      [&](State& s, std::int64_t now_ns) {
        return releaseUnits(limit, s, expiry_ms, units, now_ns);
      });
  return found;
}

LeaseRenewal Store::renew(const KeyHash& key, const Limit& limit, std::uint64_t lease_id, Time now,
                          Decision& counter, std::int64_t& expiry_ms) {
  LeaseRenewal found = LeaseRenewal::kUnknown;
  std::uint64_t units = 0;
  std::int64_t old_expiry_ms = 0;
  counter = leaseStep(
      key, limit, lease_id, now,
      [&](State& s) {
        found = renewEntry(s, lease_id, toMs(now), leaseExpiryMs(limit, now), units, old_expiry_ms);
        if (found == LeaseRenewal::kRenewed) expiry_ms = s.expiryMs();
        return found == LeaseRenewal::kRenewed;
      },
      [&](State& s, std::int64_t now_ns) {
        return renewUnits(limit, s, old_expiry_ms, units, now_ns);
      });
  return found;
}

void Store::checkBatch(std::span<const CheckRequest> requests, Time now, std::span<Decision> out) {
  assert(out.size() >= requests.size());
  // Prefetch a window ahead: by the time a request is decided, its slot is in cache, so a batch
  // pays DRAM latency in parallel instead of once per key.
  constexpr std::size_t kAhead = 16;
  auto prefetch = [&](const CheckRequest& r) {
    const Shard& s = shardFor(r.key);
    const Entry* tab = s.table.load(std::memory_order_relaxed);
    const std::uint32_t n = s.slots.load(std::memory_order_relaxed);
    __builtin_prefetch(&s, 1);
    if (tab != nullptr && n != 0) __builtin_prefetch(tab + Shard::home(r.key, n), 1);
  };
  const std::size_t count = requests.size();
  for (std::size_t i = 0; i < std::min(kAhead, count); ++i) prefetch(requests[i]);
  for (std::size_t i = 0; i < count; ++i) {
    if (i + kAhead < count) prefetch(requests[i + kAhead]);
    const CheckRequest& r = requests[i];
    State after;
    bool changed = false;
    out[i] = shardFor(r.key).check(r.key, *r.limit, r.cost, r.refund, now, after, changed);
    if (changed) notify(r.key, after);
  }
}

void Store::notify(const KeyHash& key, const State& state) {
  if (StoreObserver* o = observer_.load(std::memory_order_acquire)) o->changed(key, state);
}

void Store::setObserver(StoreObserver* observer) {
  observer_.store(observer, std::memory_order_release);
}

std::vector<StoredEntry> Store::collect(const SlotSet& slots, Time now, bool erase) {
  const std::int64_t now_ms = toMs(now);
  std::vector<StoredEntry> out;
  for (std::size_t k = 0; k < shard_count_; ++k) {
    Shard& s = shards_[k];
    std::lock_guard guard(s.lock);
    Entry* tab = s.t();
    for (std::uint32_t i = 0; i < s.n(); ++i) {
      // eraseAt() shifts a later entry into slot i: look at slot i again before moving on.
      while (!isEmpty(tab[i].key) && slots.test(slotOf(tab[i].key))) {
        if (!tab[i].state.expiredAt(now_ms)) out.push_back({tab[i].key, tab[i].state});
        if (!erase) break;
        s.eraseAt(i);
      }
    }
  }
  return out;
}

void Store::merge(const KeyHash& key, const State& state, Time now, MergeFn more_consumed) {
  if (state.empty()) return;
  Shard& s = shardFor(key);
  std::lock_guard guard(s.lock);
  bool found = false;
  const std::uint32_t i = s.find(key, found);
  if (found) {
    s.t()[i].state = more_consumed(s.t()[i].state, state);
    s.noteExpiry(s.t()[i].state);
  } else if (!state.expiredAt(toMs(now)) && !s.insert(key, state, toMs(now))) {
    ++s.evictions;
  }
}

std::size_t Store::sweep(Time now, std::size_t shard_count) {
  const std::int64_t now_ms = toMs(now);
  std::size_t dropped = 0;
  for (std::size_t k = 0; k < std::min(shard_count, shard_count_); ++k) {
    Shard& s = shards_[sweep_cursor_.fetch_add(1, std::memory_order_relaxed) % shard_count_];
    std::lock_guard guard(s.lock);
    const Entry* tab = s.t();
    std::uint32_t expired = 0;
    for (std::uint32_t i = 0; i < s.n(); ++i) {
      if (!isEmpty(tab[i].key) && tab[i].state.expiredAt(now_ms)) ++expired;
    }
    if (expired == 0) continue;
    const std::uint32_t live = s.used - expired;
    // A rebuild copies the whole table under the shard lock (and maps/unmaps memory): worth it
    // only to shrink. A few expired entries are deleted in place instead.
    if (s.n() > s.slotsFor(live) * 2u) {
      dropped += s.rebuild(s.slotsFor(live), now_ms);
    } else {
      dropped += s.eraseExpired(now_ms);
    }
  }
  return dropped;
}

std::optional<State> Store::get(const KeyHash& key) const {
  Shard& s = shardFor(key);
  std::lock_guard guard(s.lock);
  bool found = false;
  const std::uint32_t i = s.find(key, found);
  if (!found) return std::nullopt;
  return s.t()[i].state;
}

bool Store::erase(const KeyHash& key) {
  Shard& s = shardFor(key);
  std::lock_guard guard(s.lock);
  bool found = false;
  const std::uint32_t i = s.find(key, found);
  if (found) s.eraseAt(i);
  return found;
}

void Store::put(const KeyHash& key, const State& state, Time now) {
  Shard& s = shardFor(key);
  std::lock_guard guard(s.lock);
  bool found = false;
  const std::uint32_t i = s.find(key, found);
  if (found) {
    if (state.empty()) {
      s.eraseAt(i);
    } else {
      s.t()[i].state = state;
      s.noteExpiry(state);
    }
  } else if (!state.empty() && !s.insert(key, state, toMs(now))) {
    ++s.evictions;
  }
}

StoreStats Store::stats() const {
  StoreStats st;
  for (std::size_t i = 0; i < shard_count_; ++i) {
    const Shard& s = shards_[i];
    std::lock_guard guard(s.lock);
    st.entries += s.used;
    st.table_bytes += std::size_t{s.n()} * sizeof(Entry);
    st.evictions += s.evictions;
    st.refused += s.refused;
  }
  return st;
}

std::size_t Store::shardCount() const {
  return shard_count_;
}

}  // namespace throttlex
