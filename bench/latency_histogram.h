// A log-linear latency histogram in the style of HdrHistogram, for throttlex-bench.
//
// Values below 128 ns are exact; above that every power of two of nanoseconds is split into 64
// equal buckets, so a reported value is at most 1/64 (1.6%) above the true one. Values from 2^40 ns
// (~18 minutes) up land in the last bucket; max() stays exact. Fixed size (2240 buckets, 18 KB):
// recording never allocates.
//
// Threads: one writer at a time; any thread may read at the same time (the progress line). With a
// single writer no read-modify-write is needed, so the counters are relaxed atomics updated by
// load + store: as cheap as plain integers, and a concurrent reader sees a slightly stale, never a
// torn, value.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace throttlex::bench {

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 6;  // 64 buckets per power of two
  static constexpr int kMaxBits = 40;
  static constexpr std::size_t kBucketCount = std::size_t{kMaxBits - kSubBucketBits + 1}
                                              << kSubBucketBits;

  // The bucket of a value: index = shift * 64 + (ns >> shift), where shift keeps the top 7
  // significant bits; contiguous from 0.
  static std::size_t indexOf(std::uint64_t ns) {
    ns = std::min(ns, (std::uint64_t{1} << kMaxBits) - 1);
    const int msb = 63 - std::countl_zero(ns | 1);
    const int shift = std::max(0, msb - kSubBucketBits);
    return (static_cast<std::size_t>(shift) << kSubBucketBits) +
           static_cast<std::size_t>(ns >> shift);
  }
  // The highest value that falls into bucket `index`.
  static std::uint64_t highestIn(std::size_t index) {
    if (index < (std::size_t{2} << kSubBucketBits)) return index;
    const std::size_t shift = (index >> kSubBucketBits) - 1;
    const std::uint64_t sub = index - (shift << kSubBucketBits);
    return ((sub + 1) << shift) - 1;
  }

  void record(std::uint64_t ns) {
    bump(buckets_[indexOf(ns)], 1);
    bump(count_, 1);
    bump(sum_, ns);
    if (ns > max_.load(std::memory_order_relaxed)) max_.store(ns, std::memory_order_relaxed);
  }

  // Adds `other`'s samples; the caller is this histogram's writer.
  void merge(const LatencyHistogram& other) {
    for (std::size_t i = 0; i < kBucketCount; ++i) {
      const std::uint64_t n = other.buckets_[i].load(std::memory_order_relaxed);
      if (n != 0) bump(buckets_[i], n);
    }
    bump(count_, other.count());
    bump(sum_, other.sum_.load(std::memory_order_relaxed));
    max_.store(std::max(max(), other.max()), std::memory_order_relaxed);
  }

  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  std::uint64_t max() const { return max_.load(std::memory_order_relaxed); }
  double mean() const {
    const std::uint64_t n = count();
    return n == 0
               ? 0.0
               : static_cast<double>(sum_.load(std::memory_order_relaxed)) / static_cast<double>(n);
  }

  // The smallest bucket bound v with at least a fraction q (0..1] of the samples <= v, capped by
  // max(); 0 when empty.
  std::uint64_t quantile(double q) const {
    std::uint64_t total = 0;
    for (const auto& b : buckets_) total += b.load(std::memory_order_relaxed);
    if (total == 0) return 0;
    const double wanted = std::ceil(q * static_cast<double>(total));
    const std::uint64_t rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(wanted));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBucketCount; ++i) {
      seen += buckets_[i].load(std::memory_order_relaxed);
      if (seen >= rank) return std::min(highestIn(i), max());
    }
    return max();
  }

 private:
  static void bump(std::atomic<std::uint64_t>& a, std::uint64_t by) {
    a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }

  std::array<std::atomic<std::uint64_t>, kBucketCount> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_{0};
  std::atomic<std::uint64_t> max_{0};
};

}  // namespace throttlex::bench
