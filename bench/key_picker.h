// Which key a throttlex-bench check goes to: uniform, Zipf or "hot" (90% of the traffic to 1% of
// the keys). Each connection owns a KeyPicker (its own random state); a Zipf table is built once
// and shared read-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace throttlex::bench {

enum class Distribution { kUniform, kZipf, kHot };

// Cumulative Zipf probabilities: key i (0-based) has weight 1 / (i + 1)^s. keys * 8 bytes.
inline std::shared_ptr<const std::vector<double>> makeZipfTable(std::uint64_t keys, double s) {
  auto cdf = std::make_shared<std::vector<double>>(keys);
  double total = 0;
  for (std::uint64_t i = 0; i < keys; ++i) {
    total += 1.0 / std::pow(static_cast<double>(i + 1), s);
    (*cdf)[i] = total;
  }
  for (double& c : *cdf) c /= total;
  return cdf;
}

class KeyPicker {
 public:
  KeyPicker(Distribution distribution, std::uint64_t keys,
            std::shared_ptr<const std::vector<double>> zipf_cdf, std::uint64_t seed)
      : distribution_(distribution),
        keys_(keys),
        hot_keys_(std::max<std::uint64_t>(1, keys / 100)),
        zipf_cdf_(std::move(zipf_cdf)),
        state_(seed) {}

  // A key index in [0, keys).
  std::uint64_t next() {
    switch (distribution_) {
      case Distribution::kUniform:
        return below(keys_);
      case Distribution::kZipf: {
        const auto& cdf = *zipf_cdf_;
        const auto it = std::lower_bound(cdf.begin(), cdf.end(), unit());
        return std::min<std::uint64_t>(static_cast<std::uint64_t>(it - cdf.begin()), keys_ - 1);
      }
      case Distribution::kHot:
        if (below(10) < 9 || keys_ <= hot_keys_) return below(hot_keys_);
        return hot_keys_ + below(keys_ - hot_keys_);
    }
    return 0;
  }

 private:
  // splitmix64: fast, and plenty random for picking keys.
  std::uint64_t random() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) by multiply-shift (Lemire), no division.
  std::uint64_t below(std::uint64_t n) {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(random()) * n) >> 64);
  }
  double unit() { return static_cast<double>(random() >> 11) * 0x1.0p-53; }

  Distribution distribution_;
  std::uint64_t keys_;
  std::uint64_t hot_keys_;
  std::shared_ptr<const std::vector<double>> zipf_cdf_;
  std::uint64_t state_;
};

}  // namespace throttlex::bench
