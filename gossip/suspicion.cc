#include "gossip/suspicion.h"

#include <algorithm>
#include <cmath>

namespace throttlex::gossip {

Suspicion::Suspicion(Time start, Duration min, Duration max, int expected_confirmations,
                     const std::string& first_from)
    : start_(start), min_(min), max_(std::max(min, max)), k_(expected_confirmations) {
  confirmed_by_.insert(first_from);
  recompute();
}

bool Suspicion::confirm(const std::string& from) {
  if (!confirmed_by_.insert(from).second) return false;
  recompute();
  return true;
}

void Suspicion::recompute() {
  if (k_ < 1) {
    deadline_ = start_ + min_;
    return;
  }
  // Confirmations beyond the first suspecter; log scale as in Lifeguard, so the first few
  // confirmations shorten the timeout the most.
  auto c = static_cast<double>(confirmed_by_.size() - 1);
  double frac = std::log(c + 1.0) / std::log(static_cast<double>(k_) + 1.0);
  auto span = static_cast<double>((max_ - min_).count());
  auto timeout = max_ - Duration(static_cast<Duration::rep>(frac * span));
  deadline_ = start_ + std::max(min_, timeout);
}

Duration suspicionTimeout(int mult, std::size_t cluster_size, Duration period) {
  double scale = std::max(1.0, std::log10(std::max(1.0, static_cast<double>(cluster_size))));
  return Duration(static_cast<Duration::rep>(mult * scale * static_cast<double>(period.count())));
}

}  // namespace throttlex::gossip
