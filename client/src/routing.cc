#include "client/src/routing.h"

#include <algorithm>

#include "gossip/ring.h"
#include "limiter/key.h"

namespace throttlex::client::detail {

std::uint32_t slotOf(const CheckSpec& spec) {
  return throttlex::slotOf(spec.rule, spec.key);
}

bool ownsSlots(const std::string& state) {
  return state == "alive" || state == "suspect";
}

OwnerTable::OwnerTable() = default;
OwnerTable::~OwnerTable() = default;

std::size_t OwnerTable::members() const {
  return ring_ ? ring_->members().size() : 0;
}

std::optional<std::size_t> OwnerTable::owner(std::uint32_t slot) const {
  if (slot >= owner_node_.size() || owner_node_[slot] == kNoNode) return std::nullopt;
  return owner_node_[slot];
}

void OwnerTable::assign(std::vector<std::string> member_ids, const NodeOf& node_of) {
  std::sort(member_ids.begin(), member_ids.end());
  member_ids.erase(std::unique(member_ids.begin(), member_ids.end()), member_ids.end());
  if (member_ids.size() < 2) {
    clear();
    return;
  }
  if (!ring_ || ring_->members() != member_ids) {
    ring_ = std::make_unique<Ring>(std::move(member_ids));
  }

  const std::vector<std::string>& ids = ring_->members();  // sorted, as ownerIndex() counts
  std::vector<std::uint8_t> node_of_member(ids.size(), kNoNode);
  for (std::size_t m = 0; m < ids.size(); ++m) {
    const std::optional<std::size_t> node = node_of(ids[m]);
    if (node && *node < kNoNode) node_of_member[m] = static_cast<std::uint8_t>(*node);
  }
  owner_node_.assign(kSlotCount, kNoNode);
  for (std::uint32_t slot = 0; slot < kSlotCount; ++slot) {
    owner_node_[slot] = node_of_member[ring_->ownerIndex(slot)];
  }
}

void OwnerTable::clear() {
  ring_.reset();
  owner_node_.clear();
}

}  // namespace throttlex::client::detail
