// The hash ring: which live member owns each of the kSlotCount slots (limiter/key.h's slotOf()).
//
// A pure function of the member list: every node that sees the same members derives the same
// owners, with no coordination. Rendezvous (highest-random-weight) hashing per slot: the owner of
// slot s is the member m with the largest hash(m, s). Hence
//  - balance: each member owns about 1/N of the slots (4096 slots keep max/mean near 1.1 for 5–20
//    members), no virtual nodes needed;
//  - minimal movement: when a member joins, exactly the slots it now wins move to it; when one
//    leaves, exactly its slots move, each to its runner-up. No other slot changes owner.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "limiter/key.h"

namespace throttlex {

class Ring {
 public:
  // Members are identified by node id; duplicates are ignored and order does not matter.
  explicit Ring(std::vector<std::string> member_ids = {});

  bool empty() const { return members_.empty(); }
  const std::vector<std::string>& members() const { return members_; }  // sorted
  // Index into members() of the owner of `slot`; the ring must not be empty.
  std::uint32_t ownerIndex(std::uint32_t slot) const { return owner_[slot]; }
  const std::string& ownerOf(std::uint32_t slot) const { return members_[owner_[slot]]; }
  const std::string& ownerOf(const KeyHash& key) const { return ownerOf(slotOf(key)); }
  // Index of the member with the second-largest weight for `slot`: who owns the slot once its
  // owner leaves (the owner itself when it is the only member).
  std::uint32_t runnerUpIndex(std::uint32_t slot) const { return runner_up_[slot]; }
  std::vector<std::uint32_t> slotsOwnedBy(std::string_view member_id) const;

 private:
  std::vector<std::string> members_;
  std::array<std::uint32_t, kSlotCount> owner_{};
  std::array<std::uint32_t, kSlotCount> runner_up_{};
};

// The weight of `member_id` for `slot` in the rendezvous; exposed for tests.
std::uint64_t rendezvousWeight(std::string_view member_id, std::uint32_t slot);

}  // namespace throttlex
