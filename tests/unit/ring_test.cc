#include <doctest/doctest.h>

#include <algorithm>
#include <map>

#include "gossip/ring.h"

using namespace throttlex;

namespace {

std::vector<std::string> nodes(int n, int first = 0) {
  std::vector<std::string> out;
  for (int i = first; i < first + n; ++i) out.push_back("node-" + std::to_string(i));
  return out;
}

std::map<std::string, int> load(const Ring& r) {
  std::map<std::string, int> per;
  for (std::uint32_t s = 0; s < kSlotCount; ++s) per[r.ownerOf(s)]++;
  return per;
}

}  // namespace

TEST_CASE("the ring is a pure function of the member set") {
  std::vector<std::string> a = nodes(5);
  std::vector<std::string> b = {a[3], a[1], a[4], a[0], a[2], a[1]};  // shuffled, duplicated
  const Ring ra(a), rb(b);
  REQUIRE(ra.members() == rb.members());
  for (std::uint32_t s = 0; s < kSlotCount; ++s) CHECK(ra.ownerOf(s) == rb.ownerOf(s));
}

TEST_CASE("slots are balanced: max/mean load stays low for 3 to 50 members") {
  for (int n : {3, 5, 10, 20, 50}) {
    CAPTURE(n);
    const Ring r(nodes(n));
    const auto per = load(r);
    REQUIRE(per.size() == static_cast<std::size_t>(n));
    const double mean = static_cast<double>(kSlotCount) / n;
    int most = 0;
    for (const auto& [id, count] : per) most = std::max(most, count);
    CHECK(most / mean < (n <= 10 ? 1.12 : 1.3));
  }
}

TEST_CASE("a join moves about 1/N of the slots, all of them to the new member") {
  for (int n : {4, 9, 19}) {
    CAPTURE(n);
    const Ring before(nodes(n));
    const Ring after(nodes(n + 1));
    const std::string joined = "node-" + std::to_string(n);
    int moved = 0;
    for (std::uint32_t s = 0; s < kSlotCount; ++s) {
      if (before.ownerOf(s) != after.ownerOf(s)) {
        ++moved;
        CHECK(after.ownerOf(s) == joined);
      }
    }
    const double expected = static_cast<double>(kSlotCount) / (n + 1);
    CHECK(moved > expected * 0.8);
    CHECK(moved < expected * 1.2);
  }
}

TEST_CASE("a leave moves exactly the leaver's slots") {
  const Ring before(nodes(5));
  std::vector<std::string> rest = nodes(5);
  rest.erase(rest.begin() + 2);
  const Ring after(rest);
  const auto gone = before.slotsOwnedBy("node-2");
  CHECK_FALSE(gone.empty());
  for (std::uint32_t s = 0; s < kSlotCount; ++s) {
    const bool was_leavers = std::binary_search(gone.begin(), gone.end(), s);
    if (!was_leavers) CHECK(before.ownerOf(s) == after.ownerOf(s));
    CHECK(after.ownerOf(s) != "node-2");
  }
}

TEST_CASE("keys map to owners through their slot") {
  const Ring r(nodes(5));
  const KeyHash k = hashKey("", "user:42", Algorithm::kTokenBucket, std::chrono::seconds(1));
  CHECK(r.ownerOf(k) == r.ownerOf(slotOf(k)));
  CHECK(Ring().empty());
  CHECK(Ring({"solo"}).slotsOwnedBy("solo").size() == kSlotCount);
  CHECK(r.slotsOwnedBy("stranger").empty());
}

TEST_CASE("the runner-up of a slot is its owner once the owner leaves") {
  // What a node forwards to while a slot's owner is unreachable: the node that will own the slot
  // if the owner is declared dead, the same on every node.
  const std::vector<std::string> ids = {"n1", "n2", "n3", "n4", "n5"};
  const Ring full(ids);
  for (const std::string& gone : ids) {
    std::vector<std::string> rest;
    for (const auto& id : ids) {
      if (id != gone) rest.push_back(id);
    }
    const Ring after(rest);
    for (std::uint32_t slot = 0; slot < kSlotCount; ++slot) {
      if (full.ownerOf(slot) != gone) continue;
      CHECK(full.members()[full.runnerUpIndex(slot)] == after.ownerOf(slot));
      CHECK(full.runnerUpIndex(slot) != full.ownerIndex(slot));
    }
  }
  const Ring alone({"solo"});
  CHECK(alone.runnerUpIndex(7) == alone.ownerIndex(7));
}
