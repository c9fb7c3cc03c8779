#include "persistence/snapshot_store.h"

#include <algorithm>

namespace throttlex::persistence {

void CommandLatency::record(std::chrono::nanoseconds d) {
  const auto us = static_cast<std::uint64_t>(
      std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(d).count()));
  const auto it = std::lower_bound(kBoundsUs.begin(), kBoundsUs.end(), us);
  const auto i = static_cast<std::size_t>(it - kBoundsUs.begin());
  // One writer: load + store is enough, and a reader never sees a torn value.
  counts_[i].store(counts_[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  count_.store(count_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  sum_us_.store(sum_us_.load(std::memory_order_relaxed) + us, std::memory_order_relaxed);
}

CommandLatency::Snapshot CommandLatency::snapshot() const {
  Snapshot s;
  for (std::size_t i = 0; i < kBuckets; ++i)
    s.counts[i] = counts_[i].load(std::memory_order_relaxed);
  s.count = count_.load(std::memory_order_relaxed);
  s.sum_us = sum_us_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace throttlex::persistence
