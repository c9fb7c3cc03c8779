// Client-side adaptive throttling (docs/overload.md, "In the client"), after the Google SRE
// book's "Handling Overload": a client that sees a node shed its checks answers a share of the
// next ones itself, by the rule's overload policy as the node answered it, so that the node
// spends nothing on them. The share is max(0, (requests - K * accepts) / (requests + 1)) over the
// last second: while the node decides everything it gets, nothing is answered here; the more it
// sheds, the more stays here, and the node still receives about K times what it decides, so it
// keeps shedding the excess itself and the client notices when it recovers.
#pragma once

#include <array>
#include <cstdint>

namespace throttlex::client::detail {

class AdaptiveThrottle {
 public:
  static constexpr std::int64_t kBucketNs = 100'000'000;  // 100 ms
  static constexpr std::size_t kBuckets = 10;             // a window of one second

  // A check for this node at `now_ns` (any monotonic origin), whether sent or answered here.
  void request(std::int64_t now_ns) { bucket(now_ns).requests += 1; }
  // `n` checks the node decided (answered, and not shed).
  void accept(std::int64_t now_ns, std::uint64_t n) { bucket(now_ns).accepts += n; }

  // The share of checks to answer here now, in [0, 1). `k` >= 1: how many times what the node
  // decides it still gets (the SRE book's K; 2 there).
  double rejectShare(std::int64_t now_ns, double k) const {
    std::uint64_t requests = 0;
    std::uint64_t accepts = 0;
    const std::int64_t now_index = now_ns / kBucketNs;
    for (const Bucket& b : buckets_) {
      if (b.index > now_index - static_cast<std::int64_t>(kBuckets) && b.index <= now_index) {
        requests += b.requests;
        accepts += b.accepts;
      }
    }
    const double excess = static_cast<double>(requests) - k * static_cast<double>(accepts);
    return excess <= 0 ? 0 : excess / (static_cast<double>(requests) + 1);
  }

 private:
  struct Bucket {
    std::int64_t index = -1;  // now_ns / kBucketNs of the 100 ms it counts
    std::uint64_t requests = 0;
    std::uint64_t accepts = 0;
  };

  Bucket& bucket(std::int64_t now_ns) {
    const std::int64_t index = now_ns / kBucketNs;
    Bucket& b = buckets_[static_cast<std::size_t>(index) % kBuckets];
    if (b.index != index) b = Bucket{index, 0, 0};
    return b;
  }

  std::array<Bucket, kBuckets> buckets_{};
};

}  // namespace throttlex::client::detail
