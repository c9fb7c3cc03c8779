#include "gossip/ring.h"

#include <algorithm>
#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace throttlex {

std::uint64_t rendezvousWeight(std::string_view member_id, std::uint32_t slot) {
  // Seeding with the slot keeps the member's bytes contiguous; XXH3's seeded variant mixes fully.
  return XXH3_64bits_withSeed(member_id.data(), member_id.size(), 0x9E3779B97F4A7C15ull ^ slot);
}

Ring::Ring(std::vector<std::string> member_ids) : members_(std::move(member_ids)) {
  std::sort(members_.begin(), members_.end());
  members_.erase(std::unique(members_.begin(), members_.end()), members_.end());
  if (members_.empty()) return;
  for (std::uint32_t slot = 0; slot < kSlotCount; ++slot) {
    std::uint32_t best = 0, second = 0;
    std::uint64_t best_weight = rendezvousWeight(members_[0], slot), second_weight = 0;
    bool have_second = false;
    for (std::uint32_t m = 1; m < members_.size(); ++m) {
      const std::uint64_t w = rendezvousWeight(members_[m], slot);
      // Ties (astronomically rare) go to the smaller id, so every node breaks them alike.
      if (w > best_weight) {
        second = best;
        second_weight = best_weight;
        best = m;
        best_weight = w;
        have_second = true;
      } else if (!have_second || w > second_weight) {
        second = m;
        second_weight = w;
        have_second = true;
      }
    }
    owner_[slot] = best;
    runner_up_[slot] = have_second ? second : best;
  }
}

std::vector<std::uint32_t> Ring::slotsOwnedBy(std::string_view member_id) const {
  std::vector<std::uint32_t> out;
  const auto it = std::lower_bound(members_.begin(), members_.end(), member_id);
  if (it == members_.end() || *it != member_id) return out;
  const auto index = static_cast<std::uint32_t>(it - members_.begin());
  for (std::uint32_t slot = 0; slot < kSlotCount; ++slot) {
    if (owner_[slot] == index) out.push_back(slot);
  }
  return out;
}

}  // namespace throttlex
