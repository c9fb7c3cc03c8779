#include "gossip/broadcast_queue.h"

#include <algorithm>
#include <cmath>

namespace throttlex::gossip {

void BroadcastQueue::enqueue(Update update) {
  std::erase_if(items_, [&](const Item& item) { return item.update.id == update.id; });
  items_.push_back(Item{std::move(update), 0, next_order_++});
}

std::vector<Update> BroadcastQueue::take(std::size_t byte_budget, int transmit_limit) {
  std::sort(items_.begin(), items_.end(), [](const Item& a, const Item& b) {
    if (a.transmits != b.transmits) return a.transmits < b.transmits;
    return a.order > b.order;
  });
  std::vector<Update> out;
  std::size_t used = 0;
  for (Item& item : items_) {
    std::size_t size = estimatedSize(item.update);
    if (used + size > byte_budget) continue;
    used += size;
    out.push_back(item.update);
    ++item.transmits;
  }
  std::erase_if(items_, [&](const Item& item) { return item.transmits >= transmit_limit; });
  return out;
}

int retransmitLimit(int retransmit_mult, std::size_t cluster_size) {
  double scale = std::ceil(std::log10(static_cast<double>(cluster_size) + 1.0));
  return retransmit_mult * std::max(1, static_cast<int>(scale));
}

}  // namespace throttlex::gossip
