// Which node owns a key: the cluster's ring (gossip/ring.h), as a node's nodeInfo described it,
// mapped onto the client's node indexes. Belongs to the client thread, like the Core that owns it.
//
// The ring itself is a pure function of the members' ids, so the client derives exactly the
// owners every node derives from the same member list; this file only adds "and which of our
// connections is that member".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "throttlex/client.h"

namespace throttlex {
class Ring;
}

namespace throttlex::client::detail {

// The key's slot (limiter/key.h slotOf): the namespace is the rule name, "" for inline limits.
std::uint32_t slotOf(const CheckSpec& spec);

// Whether a member in gossip state `state` is in the ring. As the nodes do (daemon/node/cluster.cc,
// publishRing): alive and suspect members own slots, since suspicion is often a slow packet and
// moving slots back and forth would split keys' state; dead and left ones do not.
bool ownsSlots(const std::string& state);

class OwnerTable {
 public:
  // Node indexes are below this (the client's 64-node limit) and fit a byte.
  using NodeOf = std::function<std::optional<std::size_t>(const std::string& member_id)>;

  OwnerTable();
  ~OwnerTable();
  OwnerTable(const OwnerTable&) = delete;
  OwnerTable& operator=(const OwnerTable&) = delete;

  // Routing is on: a ring of two or more members is known.
  bool active() const { return !owner_node_.empty(); }
  std::size_t members() const;  // 0 while inactive
  // The node index of the owner of `slot`; nullopt while inactive or when the owner has no node
  // the client can reach (no usable address, or over the node limit).
  std::optional<std::size_t> owner(std::uint32_t slot) const;

  // Takes the ring over `member_ids` (duplicates and order do not matter). The ring is rebuilt only
  // when the set of ids changed (it costs kSlotCount hashes per member); the member -> node map is
  // redone every time, as addresses may have been learned since. Fewer than two ids: inactive.
  void assign(std::vector<std::string> member_ids, const NodeOf& node_of);
  void clear();

 private:
  static constexpr std::uint8_t kNoNode = 0xFF;

  std::unique_ptr<Ring> ring_;            // null while inactive
  std::vector<std::uint8_t> owner_node_;  // per slot: a node index or kNoNode; empty: inactive
};

}  // namespace throttlex::client::detail
